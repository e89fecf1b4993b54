//! The four starter data documents served by `GET /v1/policy-templates` (§10).

/// A static template: `(id, name, description, content)`.
pub struct Template {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub content: &'static str,
}

pub const TEMPLATES: [Template; 4] = [
    Template {
        id: "application-bindings",
        name: "Application bindings",
        description: "Binds keys used by resource grants to application ids (app_ids).",
        content: "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n# binding key -> application id\napp_ids := {\n\t\"my-agent\": \"00000000-0000-7000-8000-000000000000\",\n}\n",
    },
    Template {
        id: "resource-grants",
        name: "Resource grants",
        description: "Which application owns a resource and which scopes each role label may hold (grants).",
        content: "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n# resource identifier -> owning binding key and role label -> scopes\ngrants := {\"resource://example\": {\n\t\"application\": \"my-agent\",\n\t\"roles\": {\"reader\": [\"example:read\"]},\n}}\n",
    },
    Template {
        id: "label-confinement",
        name: "Label confinement",
        description: "Principals whose label starts with a prefix may only mint the listed scopes (confinement).",
        content: "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\nconfinement := [{\"label_prefix\": \"customer:\", \"scopes\": [\"example:read\"]}]\n",
    },
    Template {
        id: "zone-restriction",
        name: "Zone restriction",
        description: "Deny overlay: add any entry to deny every request in the zone (restrict).",
        content: "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n# Any entry denies every request in the zone.\nrestrict := []\n",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::document::validate;

    #[test]
    fn every_template_is_a_valid_document_defining_one_rule() {
        let rules: Vec<_> = TEMPLATES
            .iter()
            .map(|t| validate(t.content).unwrap().rules)
            .collect();
        assert_eq!(
            rules,
            vec![
                vec!["app_ids"],
                vec!["grants"],
                vec!["confinement"],
                vec!["restrict"]
            ]
        );
    }
}
