# Serval's platform decision contract (contract version 2026-07-12, input schema 2026-05-20).
#
# Compiled into every zone bundle; owns data.caracal.authz.result. Adopter data documents
# are evaluated once per bundle and mounted, complete with defaults, at
# data.serval_bundle.documents; the facts that depend on the documents alone (well-formed
# risk and approval data, the restriction, indexes) are derived once by derive.rego and
# mounted at data.serval_bundle.derived (see policy/bundle.rs). Default deny.
package caracal.authz

import rego.v1

_docs := data.serval_bundle.documents

_derived := data.serval_bundle.derived

_obj(x) := x if is_object(x)
else := {}

_context := _obj(input.context)

_principal := _obj(input.principal)

_resource := _obj(input.resource)

_action := _obj(input.action)

_edge := _obj(input.delegation_edge)

_subject := _obj(_context.subject_claims)

_nonempty_str(s) if {
	is_string(s)
	s != ""
}

_requested_list := l if {
	l := _context.requested_scopes
	is_array(l)
} else := []

_requested := {s | some s in _requested_list}

_labels := {l | some l in _principal.labels; is_string(l)}

_has_subject if count(_subject) > 0

_has_delegation if _nonempty_str(_edge.id)

_has_delegation if _nonempty_str(_context.delegation_edge_id)

_has_agent_session if _nonempty_str(_principal.agent_session_id)

_has_agent_session if _nonempty_str(_context.agent_session_id)

_restricted if _derived.restricted == true

# --- ownership and roles -----------------------------------------------------------

_grant := g if {
	g := _docs.grants[_resource.identifier]
	is_object(g)
}

_owner_key := k if {
	k := _grant.application
	is_string(k)
	_docs.app_ids[k] == _principal.id
}

_role_covers(scopes) if {
	some l in _labels
	roles := _grant.roles[l]
	is_array(roles)
	every s in scopes {
		s in roles
	}
}

# --- confinement (only narrows) ------------------------------------------------------

_label_matches(prefix) if {
	some l in _labels
	startswith(l, prefix)
}

_confinement_rule_ok(c) if not _label_matches(c.label_prefix)

_confinement_rule_ok(c) if {
	_label_matches(c.label_prefix)
	every s in _requested {
		s in c.scopes
	}
}

_confinement_ok if {
	_derived.confinement_ok == true
	every c in _derived.confinement {
		_confinement_rule_ok(c)
	}
}

# --- risk and approval tiers ---------------------------------------------------------

_risk_ok if _derived.risk_ok == true

_tiers_ok if _derived.tiers_ok == true

_risk_hits := [h |
	some s in _requested
	some h in _derived.risk_by_scope[s]
]

_hit_tiers := {h.tier | some h in _risk_hits}

_step_up_tiers := [e |
	some t in _hit_tiers
	some e in _derived.tiers_by_name[t]
]

_mint_diagnostics := [
	{"step_up_required": {"type": "human_approval", "tiers": _step_up_tiers}},
	{"risk": _risk_hits},
] if {
	_context.challenge_resolved != true
	count(_step_up_tiers) > 0
} else := [{"risk": _risk_hits}] if {
	count(_risk_hits) > 0
} else := []

# --- the mandate presented at the Gateway ---------------------------------------------

_presented := {s | some s in split(_subject.scope, " "); s != ""} if is_string(_subject.scope)
else := {s | some s in _subject.scope; is_string(s); s != ""} if is_array(_subject.scope)
else := set()

_targets_resource if _subject.target == _resource.identifier

_targets_resource if {
	is_string(_subject.target)
	_resource.identifier in split(_subject.target, " ")
}

_targets_resource if {
	is_array(_subject.target)
	_resource.identifier in _subject.target
}

# --- outcomes ------------------------------------------------------------------------

_deny(reason) := {
	"decision": "deny",
	"evaluation_status": "complete",
	"determining_policies": [],
	"diagnostics": [{"reason": reason}],
}

_allow(policy, diagnostics) := {
	"decision": "allow",
	"evaluation_status": "complete",
	"determining_policies": [{"policy": policy}],
	"diagnostics": diagnostics,
}

_path := "workload" if {
	_principal.type == "Workload"
	_action.id == "CredentialInjection"
} else := "use" if {
	_nonempty_str(_subject.delegation_edge_id)
} else := "bootstrap" if {
	_requested == {"agent:lifecycle"}
} else := "mint" if {
	_has_delegation
	_has_agent_session
} else := "none"

_bootstrap := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if _has_delegation
else := _deny("no_rule_matched") if _has_agent_session
else := _deny("resource_not_granted") if not _owner_key
else := _allow("caracal-bootstrap", [])

_mint := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if count(_requested) == 0
else := _deny("no_rule_matched") if "agent:lifecycle" in _requested
else := _deny("malformed_risk_data") if not _risk_ok
else := _deny("malformed_approval_data") if not _tiers_ok
else := _deny("resource_not_granted") if not _owner_key
else := _deny("delegation_scope_exceeded") if not _within_delegation
else := _deny("confinement_violation") if not _confinement_ok
else := _deny("role_scope_mismatch") if not _role_covers(_requested)
else := _allow(concat("", ["caracal-", _owner_key, "-mint"]), _mint_diagnostics)

_within_delegation if {
	is_array(_edge.scopes)
	every s in _requested {
		s in _edge.scopes
	}
}

_workload := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if _has_delegation
else := _deny("no_rule_matched") if _has_agent_session
else := _deny("malformed_risk_data") if not _risk_ok
else := _deny("malformed_approval_data") if not _tiers_ok
else := _allow("caracal-workload-mint", _mint_diagnostics)

_use := _deny("no_rule_matched") if count(_requested) > 0
else := _deny("no_rule_matched") if count(_presented) == 0
else := _deny("mandate_target_mismatch") if not _targets_resource
else := _deny("resource_not_granted") if not _owner_key
else := _deny("role_scope_mismatch") if not _role_covers(_presented)
else := _allow(concat("", ["caracal-", _owner_key, "-use"]), [])

_outcome := _bootstrap if _path == "bootstrap"
else := _mint if _path == "mint"
else := _workload if _path == "workload"
else := _use if _path == "use"
else := _deny("no_rule_matched")

default result := {
	"decision": "deny",
	"evaluation_status": "complete",
	"determining_policies": [],
	"diagnostics": [{"reason": "no_rule_matched"}],
}

result := _deny("restriction_active") if _restricted
else := _outcome
