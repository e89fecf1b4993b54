//! Session and Delegation references of an exchange (sts.md §5.4): the governed Session a
//! mint acts for and, for the delegated mint (§4.3), the lineage of the Delegation it
//! presents, read from the Coordinator's graph (`delegation_edges`) and Sessions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use serval_domain::catalog::{Entity, EntityData, SessionData};
use serval_domain::delegation::lineage::{self, Lineage, MintAsk, SessionFacts};
use serval_projector::catalog as read;
use serval_projector::delegations;

use serval_kit::http::ApiError;
use serval_kit::mandate::Claims;
use serval_kit::App;

use super::client_auth::Client;
use super::error::StsError;
use super::form::TokenForm;
use super::zone_cache::{Lineage as CachedLineage, ZoneView};

/// The governed context of a mint.
pub struct Governed {
    pub session_id: String,
    pub session: SessionData,
    pub delegation: Option<Delegated>,
}

/// A validated Delegation and the graph epoch it was read at.
pub struct Delegated {
    pub lineage: Lineage,
    pub epoch: u64,
}

fn denied(msg: impl Into<String>) -> StsError {
    StsError::access_denied(StatusCode::FORBIDDEN, msg)
}

fn session_of(e: &Entity, zone: &str) -> Option<SessionData> {
    match &e.data {
        EntityData::Session(s) if e.zone_id == zone && e.archived_at.is_none() => Some(s.clone()),
        _ => None,
    }
}

/// Live for a mint: active (a suspended Session mints nothing), a task within its TTL or a
/// service with a future lease deadline, and a `user` subject record still active.
fn live(
    e: &Entity,
    s: &SessionData,
    records: &HashMap<String, Entity>,
    now: DateTime<Utc>,
) -> bool {
    if s.status != "active" || !s.is_live(e.created_at, now) {
        return false;
    }
    match s
        .subject_authority_record_id
        .as_ref()
        .map(|r| records.get(r))
    {
        None => true,
        Some(Some(Entity {
            data: EntityData::AuthorityRecord(r),
            ..
        })) => r.record_type != "user" || r.is_active(now),
        Some(_) => false,
    }
}

/// The Sessions `ids` of the zone with what a mint needs of them, their subject records
/// read in the same round.
async fn sessions(
    app: &App,
    zone: &str,
    ids: Vec<String>,
    now: DateTime<Utc>,
    view: Option<&ZoneView>,
) -> Result<HashMap<String, (SessionData, SessionFacts)>, StsError> {
    let rows = objects(app, &ids, view).await?;
    let record_ids: Vec<String> = rows
        .values()
        .filter_map(|e| session_of(e, zone))
        .filter_map(|s| s.subject_authority_record_id)
        .collect();
    let records = if record_ids.is_empty() {
        HashMap::new()
    } else {
        objects(app, &record_ids, view).await?
    };
    Ok(rows
        .values()
        .filter_map(|e| {
            let s = session_of(e, zone)?;
            let facts = SessionFacts {
                application_id: s.application_id.clone(),
                live: live(e, &s, &records, now),
            };
            Some((e.id.clone(), (s, facts)))
        })
        .collect())
}

/// Catalog objects by id, from the zone's view where it has them (a Session, or an
/// authority record a Session names: created before the Session, changed only by updates,
/// which move the view's position).
async fn objects(
    app: &App,
    ids: &[String],
    view: Option<&ZoneView>,
) -> Result<HashMap<String, Entity>, StsError> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for id in ids {
        match view.and_then(|v| v.object(id)) {
            Some(Some(e)) => {
                out.insert(id.clone(), e);
            }
            Some(None) => {}
            None => missing.push(id.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    // Ids may repeat (Sessions started by one lifecycle mandate share its record).
    missing.sort_unstable();
    missing.dedup();
    let loaded = read::load_many(&app.pool, &missing)
        .await
        .map_err(ApiError::from)?;
    for id in missing {
        let e = loaded.get(&id).cloned();
        if let Some(v) = view {
            v.keep_object(&id, e.clone());
        }
        if let Some(e) = e {
            out.insert(id, e);
        }
    }
    Ok(out)
}

/// The Session and Delegation an exchange rests on, and the scopes it must stay inside.
pub struct Refs {
    pub session: Option<String>,
    pub edge: Option<String>,
    pub scopes: Vec<String>,
    pub ttl_seconds: i64,
}

impl Refs {
    /// A client exchange: the form's fields and requested scopes.
    pub fn from_form(form: &TokenForm, requested: &[String]) -> Refs {
        Refs {
            session: form.get("agent_session_id").map(str::to_owned),
            edge: form.get("delegation_edge_id").map(str::to_owned),
            scopes: requested.to_vec(),
            ttl_seconds: form.ttl_seconds,
        }
    }

    /// The Gateway path (§5.1 step 6): the subject token's claims override the form's fields
    /// and must not contradict them; the presented scopes must still fit the lineage.
    pub fn from_subject(form: &TokenForm, claims: &Claims) -> Result<Refs, StsError> {
        let pick = |name: &str, what: &str| -> Result<Option<String>, StsError> {
            match (claims.text(name), form.get(name)) {
                (Some(c), Some(f)) if c != f => Err(denied(format!("{what} mismatch"))),
                (Some(c), _) => Ok(Some(c.to_owned())),
                (None, f) => Ok(f.map(str::to_owned)),
            }
        };
        let session = pick("agent_session_id", "Session")?;
        let edge = pick("delegation_edge_id", "delegation edge")?;
        if edge.is_none() {
            // The mandate-use rule needs a Delegation; a mandate without one is no
            // Gateway-ingress mandate.
            return Err(denied("delegation edge missing from the subject token"));
        }
        Ok(Refs {
            session,
            edge,
            scopes: claims.scopes(),
            ttl_seconds: 0,
        })
    }
}

/// §5.4: `agent_session_id` (live, owned by the caller) and `delegation_edge_id` (its whole
/// lineage). `None` when the exchange names no Session.
pub async fn check(
    app: &App,
    client: &Client,
    refs: &Refs,
    now: DateTime<Utc>,
    view: Option<&ZoneView>,
) -> Result<Option<Governed>, StsError> {
    let session_id = refs.session.as_deref();
    let edge_id = refs.edge.as_deref();
    let Some(session_id) = session_id else {
        if edge_id.is_some() {
            return Err(denied("delegation requires a target Session"));
        }
        return Ok(None);
    };
    let zone = client.zone_id.as_str();
    let Some(edge_id) = edge_id else {
        let found = sessions(app, zone, vec![session_id.to_owned()], now, view).await?;
        let Some((s, facts)) = found.get(session_id) else {
            return Err(denied("Session not found"));
        };
        if !facts.live {
            return Err(denied("Session is not live"));
        }
        if s.application_id != client.id {
            return Err(denied("Session is not owned by the caller"));
        }
        return Ok(Some(Governed {
            session_id: session_id.to_owned(),
            session: s.clone(),
            delegation: None,
        }));
    };
    // The epoch first: a mandate names the graph state it was checked against or an older
    // one, never a newer one its checks did not see.
    let cached = match view.and_then(|v| v.lineage(edge_id)) {
        Some(l) => l,
        None => {
            let epoch = delegations::epoch(&app.pool, zone)
                .await
                .map_err(ApiError::from)?;
            let edges = delegations::lineage(&app.pool, zone, edge_id)
                .await
                .map_err(ApiError::from)?;
            let l = Arc::new(CachedLineage { epoch, edges });
            if let Some(v) = view {
                v.keep_lineage(edge_id, l.clone());
            }
            l
        }
    };
    let epoch = cached.epoch;
    let edges: HashMap<String, _> = cached
        .edges
        .iter()
        .map(|e| (e.id.clone(), e.clone()))
        .collect();
    let mut ids: Vec<String> = edges
        .values()
        .flat_map(|e| [e.source_session_id.clone(), e.target_session_id.clone()])
        .collect();
    ids.push(session_id.to_owned());
    ids.sort();
    ids.dedup();
    let mut found = sessions(app, zone, ids, now, view).await?;
    let facts: HashMap<String, SessionFacts> = found
        .iter()
        .map(|(id, (_, f))| (id.clone(), f.clone()))
        .collect();
    let ask = MintAsk {
        edge_id,
        agent_session_id: session_id,
        caller: &client.id,
        requested: &refs.scopes,
        ttl_seconds: refs.ttl_seconds,
        now,
    };
    let lineage = lineage::validate(&edges, &facts, &ask).map_err(|r| denied(r.to_string()))?;
    let Some((session, _)) = found.remove(session_id) else {
        return Err(denied("Session not found"));
    };
    Ok(Some(Governed {
        session_id: session_id.to_owned(),
        session,
        delegation: Some(Delegated { lineage, epoch }),
    }))
}

impl Governed {
    /// The policy input's `delegation_edge` object (§6.2).
    pub fn edge_input(&self) -> Option<Value> {
        let d = self.delegation.as_ref()?;
        let e = &d.lineage.edge;
        Some(json!({
            "id": e.id,
            "source_session_id": e.source_session_id,
            "target_session_id": e.target_session_id,
            "issuer_application_id": e.issuer_application_id,
            "receiver_application_id": e.receiver_application_id,
            "resource_id": e.resource_id,
            "scopes": e.scopes,
            "edge_version": e.edge_version,
            "path": d.lineage.path,
            "graph_epoch": d.epoch,
            "constraints_json": e.constraints_json,
        }))
    }

    /// The Session/Delegation claims of a delegated mandate (§8.2).
    pub fn claims(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("agent_session_id".into(), json!(self.session_id));
        if let Some(d) = &self.delegation {
            let e = &d.lineage.edge;
            m.insert("delegation_edge_id".into(), json!(e.id));
            m.insert("source_session_id".into(), json!(e.source_session_id));
            m.insert("target_session_id".into(), json!(e.target_session_id));
            m.insert("delegation_path".into(), json!(d.lineage.path));
            m.insert("delegation_chain".into(), json!(d.lineage.chain));
            m.insert("hop_count".into(), json!(d.lineage.path.len()));
            if d.epoch > 0 {
                m.insert("delegation_graph_epoch".into(), json!(d.epoch));
            }
        }
        m
    }
}
