//! The zone aggregate: the tenancy and trust boundary (spec: management-api.md §5).
//!
//! Slug uniqueness is not decided here: it spans every zone, so it is enforced by a
//! reservation in the atomic append (see `serval-streams`). `decide` checks everything
//! that depends only on the zone itself and on the command's context.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::actor::Actor;
use crate::event::EventMeta;
use crate::validation::{has_prefix_ci, RESERVED_ZONE_NAME_PREFIX, RESERVED_ZONE_SLUG_PREFIX};

pub const NAME_MAX_CHARS: usize = 120;
/// Reservation kind of zone slugs: unique across all zones, archived ones included.
pub const SLUG_RESERVATION: &str = "zone_slug";
pub const SLUG_MAX_CHARS: usize = 200;

/// The zone read model, as `evolve` builds it and as the projection stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub dcr_enabled: bool,
    pub operator_coauthor_badge: bool,
    pub operator_governed: bool,
    pub created_by: String,
    pub created_via_operator: bool,
    pub updated_by: String,
    pub updated_via_operator: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: u64,
    /// The id of the last event applied (an extension: lets a client find the zone's
    /// history in the log). `None` only for rows projected before the field existed.
    pub last_event_id: Option<String>,
}

impl Zone {
    /// A zone whose name or slug carries the reserved prefix (§3.4): hidden from lists,
    /// read-only to everyone but the bootstrap token.
    pub fn is_system(&self) -> bool {
        is_reserved(&self.name, &self.slug)
    }
}

/// The uniqueness reservations a zone holds in the log's slot: its slug, also once archived.
pub fn reservations(zone: &Zone) -> Vec<(&'static str, String)> {
    vec![(SLUG_RESERVATION, zone.slug.clone())]
}

pub fn is_reserved(name: &str, slug: &str) -> bool {
    has_prefix_ci(name, RESERVED_ZONE_NAME_PREFIX) || has_prefix_ci(slug, RESERVED_ZONE_SLUG_PREFIX)
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcrShutdownMode {
    KeepLive,
    RevokeLive,
}

/// What the DCR shutdown branch recorded (`no_live` = nothing was live).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcrShutdownOutcome {
    KeepLive,
    RevokeLive,
    NoLive,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonePatch {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub dcr_enabled: Option<bool>,
    pub dcr_shutdown: Option<DcrShutdownMode>,
    pub operator_coauthor_badge: Option<bool>,
    pub operator_governed: Option<bool>,
}

impl ZonePatch {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.slug.is_none()
            && self.dcr_enabled.is_none()
            && self.dcr_shutdown.is_none()
            && self.operator_coauthor_badge.is_none()
            && self.operator_governed.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneCommand {
    Create {
        name: String,
        /// Final slug: given by the caller or generated from the name (see [`slug_candidates`]).
        slug: String,
        dcr_enabled: bool,
    },
    Update(ZonePatch),
    Archive,
}

/// Facts from outside the aggregate that the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneContext {
    pub actor: Actor,
    /// Live DCR applications of the zone (DCR, not archived, unexpired).
    pub live_dcr_applications: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneCreated {
    pub name: String,
    pub slug: String,
    pub dcr_enabled: bool,
    pub operator_coauthor_badge: bool,
    pub operator_governed: bool,
    pub created_by: String,
    pub created_via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneUpdated {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub dcr_enabled: Option<bool>,
    pub operator_coauthor_badge: Option<bool>,
    pub operator_governed: Option<bool>,
    /// Set when the PATCH took the DCR shutdown branch (§5).
    pub dcr_shutdown: Option<DcrShutdownOutcome>,
    pub updated_by: String,
    pub updated_via_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneArchived {
    pub archived_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZoneEvent {
    Created(ZoneCreated),
    Updated(ZoneUpdated),
    Archived(ZoneArchived),
}

impl ZoneEvent {
    pub const CREATED: &'static str = "zone.created";
    pub const UPDATED: &'static str = "zone.updated";
    pub const ARCHIVED: &'static str = "zone.archived";

    pub fn event_type(&self) -> &'static str {
        match self {
            ZoneEvent::Created(_) => Self::CREATED,
            ZoneEvent::Updated(_) => Self::UPDATED,
            ZoneEvent::Archived(_) => Self::ARCHIVED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ZoneError {
    #[error("zone not found")]
    NotFound,
    #[error("zone already exists")]
    AlreadyExists,
    #[error("invalid zone: {0}")]
    Invalid(&'static str),
    #[error("no updatable field in the body")]
    NoFields,
    #[error("dcr_shutdown is only valid with dcr_enabled:false")]
    DcrShutdownNotApplicable,
    #[error("live DCR applications exist; choose dcr_shutdown keep_live or revoke_live")]
    DcrShutdownRequired { live_dcr_applications: u64 },
    #[error("the caracal.sys namespace is reserved")]
    ReservedNamespace,
}

/// Trims and checks a zone name: 1–120 characters after trimming.
pub fn normalize_name(raw: &str) -> Result<String, ZoneError> {
    let name = raw.trim();
    let n = name.chars().count();
    if n == 0 {
        return Err(ZoneError::Invalid("name must not be empty"));
    }
    if n > NAME_MAX_CHARS {
        return Err(ZoneError::Invalid("name must be at most 120 characters"));
    }
    Ok(name.to_owned())
}

/// Checks a caller-supplied slug: `^[a-z0-9-]+$`.
pub fn validate_slug(slug: &str) -> Result<(), ZoneError> {
    if slug.is_empty() || slug.len() > SLUG_MAX_CHARS {
        return Err(ZoneError::Invalid("slug must be 1-200 characters"));
    }
    if !slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ZoneError::Invalid("slug must match ^[a-z0-9-]+$"));
    }
    Ok(())
}

/// The base of a generated slug: lowercase the name, collapse runs of non-`[a-z0-9]` into
/// `-`, trim dashes; empty becomes `zone`.
pub fn slug_base(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "zone".to_owned()
    } else {
        // Leave room for the `-<32 hex>` fallback suffix within the slug limit.
        let max = SLUG_MAX_CHARS - 33;
        trimmed[..trimmed.len().min(max)]
            .trim_end_matches('-')
            .to_owned()
    }
}

/// The deterministic candidates tried in order: `base`, `base-2` … `base-999`.
/// (After those, the caller uses `base-<32 hex>` from a random id.)
pub fn slug_candidates(base: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(base.to_owned()).chain((2..=999).map(move |n| format!("{base}-{n}")))
}

pub fn decide(
    state: Option<&Zone>,
    command: &ZoneCommand,
    ctx: &ZoneContext,
) -> Result<Vec<ZoneEvent>, ZoneError> {
    match command {
        ZoneCommand::Create {
            name,
            slug,
            dcr_enabled,
        } => {
            if state.is_some() {
                return Err(ZoneError::AlreadyExists);
            }
            let name = normalize_name(name)?;
            validate_slug(slug)?;
            if is_reserved(&name, slug) && !ctx.actor.is_bootstrap {
                return Err(ZoneError::ReservedNamespace);
            }
            Ok(vec![ZoneEvent::Created(ZoneCreated {
                name,
                slug: slug.clone(),
                dcr_enabled: *dcr_enabled,
                operator_coauthor_badge: true,
                operator_governed: false,
                created_by: ctx.actor.id.clone(),
                // No zone row exists yet, so the header alone decides (§1).
                created_via_operator: ctx.actor.via_operator_header,
            })])
        }
        ZoneCommand::Update(patch) => {
            let zone = live(state)?;
            if patch.is_empty() {
                return Err(ZoneError::NoFields);
            }
            let name = patch.name.as_deref().map(normalize_name).transpose()?;
            if let Some(slug) = &patch.slug {
                validate_slug(slug)?;
            }
            if !ctx.actor.is_bootstrap {
                let renames_into_reserved = name
                    .as_deref()
                    .is_some_and(|n| has_prefix_ci(n, RESERVED_ZONE_NAME_PREFIX))
                    || patch
                        .slug
                        .as_deref()
                        .is_some_and(|s| has_prefix_ci(s, RESERVED_ZONE_SLUG_PREFIX));
                if renames_into_reserved {
                    return Err(ZoneError::ReservedNamespace);
                }
            }
            if patch.dcr_shutdown.is_some() && patch.dcr_enabled != Some(false) {
                return Err(ZoneError::DcrShutdownNotApplicable);
            }
            let updated_by = ctx.actor.id.clone();
            let updated_via_operator =
                ctx.actor.via_operator_header && zone.operator_coauthor_badge;
            let dcr_branch = patch.dcr_enabled == Some(false)
                && (zone.dcr_enabled || patch.dcr_shutdown.is_some());
            if dcr_branch {
                let live_n = ctx.live_dcr_applications;
                let outcome = match (patch.dcr_shutdown, live_n) {
                    (None, n) if n > 0 => {
                        return Err(ZoneError::DcrShutdownRequired {
                            live_dcr_applications: n,
                        })
                    }
                    (_, 0) => DcrShutdownOutcome::NoLive,
                    (Some(DcrShutdownMode::KeepLive), _) => DcrShutdownOutcome::KeepLive,
                    (Some(DcrShutdownMode::RevokeLive), _) => DcrShutdownOutcome::RevokeLive,
                    (None, _) => DcrShutdownOutcome::NoLive,
                };
                // In this branch only name, slug and dcr_enabled apply (§5).
                return Ok(vec![ZoneEvent::Updated(ZoneUpdated {
                    name,
                    slug: patch.slug.clone(),
                    dcr_enabled: Some(false),
                    operator_coauthor_badge: None,
                    operator_governed: None,
                    dcr_shutdown: Some(outcome),
                    updated_by,
                    updated_via_operator,
                })]);
            }
            Ok(vec![ZoneEvent::Updated(ZoneUpdated {
                name,
                slug: patch.slug.clone(),
                dcr_enabled: patch.dcr_enabled,
                operator_coauthor_badge: patch.operator_coauthor_badge,
                operator_governed: patch.operator_governed,
                dcr_shutdown: None,
                updated_by,
                updated_via_operator,
            })])
        }
        ZoneCommand::Archive => {
            live(state)?;
            Ok(vec![ZoneEvent::Archived(ZoneArchived {
                archived_by: ctx.actor.id.clone(),
            })])
        }
    }
}

fn live(state: Option<&Zone>) -> Result<&Zone, ZoneError> {
    match state {
        Some(z) if z.archived_at.is_none() => Ok(z),
        _ => Err(ZoneError::NotFound),
    }
}

/// Applies one event. Events that do not fit the state (which a valid log never holds)
/// leave it unchanged rather than inventing a zone.
pub fn evolve(state: Option<Zone>, meta: &EventMeta, event: &ZoneEvent) -> Option<Zone> {
    match (state, event) {
        (None, ZoneEvent::Created(c)) => Some(Zone {
            id: meta.aggregate_id.clone(),
            name: c.name.clone(),
            slug: c.slug.clone(),
            dcr_enabled: c.dcr_enabled,
            operator_coauthor_badge: c.operator_coauthor_badge,
            operator_governed: c.operator_governed,
            created_by: c.created_by.clone(),
            created_via_operator: c.created_via_operator,
            updated_by: c.created_by.clone(),
            updated_via_operator: c.created_via_operator,
            created_at: meta.occurred_at,
            updated_at: meta.occurred_at,
            archived_at: None,
            version: meta.aggregate_version,
            last_event_id: Some(meta.event_id.clone()),
        }),
        (Some(mut z), ZoneEvent::Updated(u)) => {
            if let Some(v) = &u.name {
                z.name = v.clone();
            }
            if let Some(v) = &u.slug {
                z.slug = v.clone();
            }
            if let Some(v) = u.dcr_enabled {
                z.dcr_enabled = v;
            }
            if let Some(v) = u.operator_coauthor_badge {
                z.operator_coauthor_badge = v;
            }
            if let Some(v) = u.operator_governed {
                z.operator_governed = v;
            }
            z.updated_by = u.updated_by.clone();
            z.updated_via_operator = u.updated_via_operator;
            z.updated_at = meta.occurred_at;
            z.version = meta.aggregate_version;
            z.last_event_id = Some(meta.event_id.clone());
            Some(z)
        }
        (Some(mut z), ZoneEvent::Archived(_)) => {
            z.archived_at = Some(meta.occurred_at);
            z.updated_at = meta.occurred_at;
            z.version = meta.aggregate_version;
            z.last_event_id = Some(meta.event_id.clone());
            Some(z)
        }
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::given::{self, Given, ZoneAggregate};

    fn ctx() -> ZoneContext {
        ZoneContext {
            actor: Actor {
                id: "admin:t1".into(),
                is_bootstrap: false,
                via_operator_header: false,
            },
            live_dcr_applications: 0,
        }
    }

    fn given(events: &[ZoneEvent]) -> Given<ZoneAggregate> {
        given::given(events.iter().cloned())
    }

    fn created(dcr: bool) -> ZoneEvent {
        decide(
            None,
            &ZoneCommand::Create {
                name: " Payments ".into(),
                slug: "payments".into(),
                dcr_enabled: dcr,
            },
            &ctx(),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn create_trims_the_name_and_defaults_the_operator_flags() {
        let z = given(&[])
            .when(
                &ZoneCommand::Create {
                    name: " Payments ".into(),
                    slug: "payments".into(),
                    dcr_enabled: false,
                },
                &ctx(),
            )
            .then_state()
            .unwrap();
        assert_eq!(z.name, "Payments");
        assert!(z.operator_coauthor_badge);
        assert!(!z.operator_governed);
        assert_eq!(z.version, 1);
        assert_eq!(z.created_by, "admin:t1");
    }

    #[test]
    fn reserved_namespace_needs_the_bootstrap_token() {
        let cmd = ZoneCommand::Create {
            name: "caracal.sys/ops".into(),
            slug: "ops".into(),
            dcr_enabled: false,
        };
        given(&[])
            .when(&cmd, &ctx())
            .then_error(ZoneError::ReservedNamespace);
        let mut boot = ctx();
        boot.actor.is_bootstrap = true;
        assert!(given(&[]).when(&cmd, &boot).result().is_ok());
    }

    #[test]
    fn empty_patch_is_no_fields() {
        given(&[created(false)])
            .when(&ZoneCommand::Update(ZonePatch::default()), &ctx())
            .then_error(ZoneError::NoFields);
    }

    #[test]
    fn dcr_shutdown_without_disabling_is_not_applicable() {
        let patch = ZonePatch {
            dcr_shutdown: Some(DcrShutdownMode::KeepLive),
            ..Default::default()
        };
        given(&[created(true)])
            .when(&ZoneCommand::Update(patch), &ctx())
            .then_error(ZoneError::DcrShutdownNotApplicable);
    }

    #[test]
    fn disabling_dcr_with_live_apps_requires_a_mode() {
        let mut c = ctx();
        c.live_dcr_applications = 3;
        let patch = ZonePatch {
            dcr_enabled: Some(false),
            operator_governed: Some(true),
            ..Default::default()
        };
        given(&[created(true)])
            .when(&ZoneCommand::Update(patch.clone()), &c)
            .then_error(ZoneError::DcrShutdownRequired {
                live_dcr_applications: 3,
            });
        let with_mode = ZonePatch {
            dcr_shutdown: Some(DcrShutdownMode::KeepLive),
            ..patch
        };
        let (_, events) = given(&[created(true)])
            .when(&ZoneCommand::Update(with_mode), &c)
            .events();
        let ZoneEvent::Updated(u) = &events[0] else {
            panic!("expected an update")
        };
        assert_eq!(u.dcr_shutdown, Some(DcrShutdownOutcome::KeepLive));
        // The operator flags sent with a DCR shutdown are ignored.
        assert_eq!(u.operator_governed, None);
    }

    #[test]
    fn archiving_a_live_zone_records_who_archived_it() {
        let archived = given(&[created(false)])
            .when(&ZoneCommand::Archive, &ctx())
            .then(&[ZoneEvent::Archived(ZoneArchived {
                archived_by: "admin:t1".into(),
            })]);
        assert!(archived.state().unwrap().archived_at.is_some());
    }

    #[test]
    fn archived_zones_are_not_found() {
        let z = given(&[
            created(false),
            ZoneEvent::Archived(ZoneArchived {
                archived_by: "x".into(),
            }),
        ]);
        assert!(z.state().unwrap().archived_at.is_some());
        z.when(&ZoneCommand::Archive, &ctx())
            .then_error(ZoneError::NotFound);
    }

    #[test]
    fn slug_generation_follows_the_spec() {
        assert_eq!(slug_base("  My Zone!! 2 "), "my-zone-2");
        assert_eq!(slug_base("***"), "zone");
        assert_eq!(slug_base("Ünïcode"), "n-code");
        let c: Vec<_> = slug_candidates("a").take(3).collect();
        assert_eq!(c, ["a", "a-2", "a-3"]);
        assert_eq!(slug_candidates("a").count(), 999);
    }

    #[test]
    fn name_and_slug_validation() {
        assert!(normalize_name("   ").is_err());
        assert!(normalize_name(&"x".repeat(121)).is_err());
        assert!(normalize_name(&"é".repeat(120)).is_ok());
        assert!(validate_slug("Abc").is_err());
        assert!(validate_slug("a_b").is_err());
        assert!(validate_slug("a-b-9").is_ok());
    }
}
