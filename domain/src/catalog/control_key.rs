//! The control-key contract (sts.md §4.6): an application carrying the trait
//! `control:invoke` mints for the control audience without a policy decision, within what
//! its other `control:` traits allow. Pure: the STS feeds it the traits, the request's shape
//! and the time.

use chrono::{DateTime, Utc};

/// Why a request naming the control audience is not a control-key exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRefusal {
    #[error("the application is not a control key")]
    NotControlKey,
    #[error("a control-key exchange names only the control resource")]
    MixedResources,
    #[error(
        "a control-key exchange carries no subject token, Session, Delegation or authority record"
    )]
    Bound,
    #[error("a control-key exchange requests at least one scope")]
    NoScope,
    #[error("scope {0} is not a control scope this key holds")]
    ScopeNotHeld(String),
    #[error("the control key expired")]
    Expired,
}

/// What the request looks like, as far as the contract cares.
pub struct ControlAsk<'a> {
    /// Every requested resource is the control audience.
    pub only_control: bool,
    /// A subject token, `session_id`, `agent_session_id`, `delegation_edge_id` or
    /// `approval_id` was sent.
    pub bound: bool,
    pub scopes: &'a [String],
}

/// The contract holds: the mandate lives at most `max_ttl` seconds when set, and never past
/// `not_after` (the key's `control:expires`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlGrant {
    pub max_ttl: Option<i64>,
    pub not_after: Option<DateTime<Utc>>,
}

/// The shortest `control:max-ttl` allowed (management-api.md §6); a value that does not
/// parse, never valid, is read as this one, so a malformed trait only narrows.
pub const MIN_MAX_TTL: i64 = 60;

/// Whether `traits` make the application a control key.
pub fn is_control_key(traits: &[String]) -> bool {
    traits.iter().any(|t| t == "control:invoke")
}

/// Checks the contract for an application with `traits` at `now`.
pub fn check(
    traits: &[String],
    ask: &ControlAsk<'_>,
    now: DateTime<Utc>,
) -> Result<ControlGrant, ControlRefusal> {
    if !is_control_key(traits) {
        return Err(ControlRefusal::NotControlKey);
    }
    if !ask.only_control {
        return Err(ControlRefusal::MixedResources);
    }
    if ask.bound {
        return Err(ControlRefusal::Bound);
    }
    if ask.scopes.is_empty() {
        return Err(ControlRefusal::NoScope);
    }
    for s in ask.scopes {
        let held = s.starts_with("control:")
            && traits
                .iter()
                .any(|t| t.strip_prefix("control:scope:") == Some(s.as_str()));
        if !held {
            return Err(ControlRefusal::ScopeNotHeld(s.clone()));
        }
    }
    // A trait that does not parse never passed validation; it is treated as lapsed, so a
    // malformed expiry can only narrow.
    let lapsed = traits
        .iter()
        .filter_map(|t| t.strip_prefix("control:expires:"))
        .any(|ts| DateTime::parse_from_rfc3339(ts).map_or(true, |at| at <= now));
    if lapsed {
        return Err(ControlRefusal::Expired);
    }
    let max_ttl = traits
        .iter()
        .filter_map(|t| t.strip_prefix("control:max-ttl:"))
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|v| *v >= MIN_MAX_TTL)
                .unwrap_or(MIN_MAX_TTL)
        })
        .min();
    let not_after = traits
        .iter()
        .filter_map(|t| t.strip_prefix("control:expires:"))
        .filter_map(|ts| DateTime::parse_from_rfc3339(ts).ok())
        .map(|at| at.with_timezone(&Utc))
        .min();
    Ok(ControlGrant { max_ttl, not_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn scopes(s: &[&str]) -> Vec<String> {
        traits(s)
    }

    fn ask(scopes: &[String]) -> ControlAsk<'_> {
        ControlAsk {
            only_control: true,
            bound: false,
            scopes,
        }
    }

    #[test]
    fn a_control_key_mints_the_scopes_its_traits_hold() {
        let now = Utc::now();
        let key = traits(&[
            "control:invoke",
            "control:scope:control:read",
            "control:scope:control:write",
            "control:max-ttl:300",
            "control:expires:2999-01-01T00:00:00Z",
        ]);
        let s = scopes(&["control:read", "control:write"]);
        let until = DateTime::parse_from_rfc3339("2999-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            check(&key, &ask(&s), now),
            Ok(ControlGrant {
                max_ttl: Some(300),
                not_after: Some(until)
            })
        );
        let open = traits(&["control:invoke", "control:scope:control:read"]);
        let read = scopes(&["control:read"]);
        assert_eq!(
            check(&open, &ask(&read), now),
            Ok(ControlGrant {
                max_ttl: None,
                not_after: None
            })
        );
        // A max-ttl that never validated narrows to the minimum.
        for bad in [
            "control:max-ttl:0",
            "control:max-ttl:-5",
            "control:max-ttl:forever",
        ] {
            let mut t = open.clone();
            t.push(bad.into());
            assert_eq!(
                check(&t, &ask(&read), now).map(|g| g.max_ttl),
                Ok(Some(MIN_MAX_TTL)),
                "{bad}"
            );
        }
    }

    #[test]
    fn everything_outside_the_contract_is_refused() {
        let now = Utc::now();
        let key = traits(&["control:invoke", "control:scope:control:read"]);
        let read = scopes(&["control:read"]);
        assert_eq!(
            check(&traits(&["control:scope:control:read"]), &ask(&read), now),
            Err(ControlRefusal::NotControlKey)
        );
        for (s, why) in [
            (
                scopes(&["control:write"]),
                ControlRefusal::ScopeNotHeld("control:write".into()),
            ),
            (
                scopes(&["tickets:read"]),
                ControlRefusal::ScopeNotHeld("tickets:read".into()),
            ),
            (scopes(&[]), ControlRefusal::NoScope),
        ] {
            assert_eq!(check(&key, &ask(&s), now), Err(why));
        }
        let mixed = ControlAsk {
            only_control: false,
            ..ask(&read)
        };
        assert_eq!(
            check(&key, &mixed, now),
            Err(ControlRefusal::MixedResources)
        );
        let bound = ControlAsk {
            bound: true,
            ..ask(&read)
        };
        assert_eq!(check(&key, &bound, now), Err(ControlRefusal::Bound));
        for expiry in [
            "control:expires:2000-01-01T00:00:00Z",
            "control:expires:soon",
        ] {
            let mut lapsed = key.clone();
            lapsed.push(expiry.into());
            assert_eq!(
                check(&lapsed, &ask(&read), now),
                Err(ControlRefusal::Expired)
            );
        }
    }
}
