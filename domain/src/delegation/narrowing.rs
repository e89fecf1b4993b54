//! Authority only narrows (§11.1): what a child edge may hold given the edge it narrows.

use super::{Constraints, DelegationRefusal, Edge};

/// A resource an edge is bound to, resolved in the zone: row id and public identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedResource {
    pub id: String,
    pub identifier: String,
}

fn exceeds(dimension: &'static str) -> DelegationRefusal {
    DelegationRefusal::ExceedsParent(dimension)
}

/// Checks every dimension of §11.1 of `child` (with its parsed constraints and resolved
/// resources) against `parent`.
pub fn check_narrowing(
    parent: &Edge,
    child: &Edge,
    child_constraints: &Constraints,
    child_resources: &[ResolvedResource],
) -> Result<(), DelegationRefusal> {
    let pc = parent
        .constraints()
        .map_err(|_| exceeds("parent_constraints"))?;
    if !child.scopes.iter().all(|s| parent.scopes.contains(s)) {
        return Err(exceeds("scopes"));
    }
    if let Some(r) = &parent.resource_id {
        let bound = child.resource_id.as_ref() == Some(r)
            || (!child_resources.is_empty() && child_resources.iter().all(|c| &c.id == r));
        if !bound {
            return Err(exceeds("resources"));
        }
    } else if let Some(list) = &pc.resources {
        if child_resources.is_empty()
            || !child_resources.iter().all(|c| list.contains(&c.identifier))
        {
            return Err(exceeds("resources"));
        }
    }
    if child.expires_at > parent.expires_at {
        return Err(exceeds("expiry"));
    }
    let p = pc.hops();
    if p <= 1 || child_constraints.hops() > p - 1 {
        return Err(exceeds("max_hops"));
    }
    if let Some(t) = pc.ttl_seconds {
        match child_constraints.ttl_seconds {
            Some(c) if c <= t => {}
            _ => return Err(exceeds("ttl_seconds")),
        }
    }
    if let Some(b) = pc.budget {
        let c = child_constraints
            .budget
            .map(u64::from)
            .unwrap_or(child.scopes.len() as u64);
        if c > u64::from(b) {
            return Err(exceeds("budget"));
        }
    }
    Ok(())
}
