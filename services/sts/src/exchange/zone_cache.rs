//! What a token exchange reads of its zone, kept in memory (sts.md "How it must
//! perform"): applications, resources, Sessions with their subject records, and Delegation
//! lineages, keyed by the zone's **config position** — the log entry of the newest applied
//! event that changed any of them (`catalog_config_positions`, written by the catalog
//! projection in the same transaction as the rows). Mints write authority records, which do
//! not move it, so a steady stream of mints reads one indexed row per exchange instead of a
//! query per object.
//!
//! Correctness: an exchange first brings the catalog read model up to the log head it saw
//! (read-your-writes), then reads the position, then looks up or loads objects. Anything
//! loaded after reading position `p` reflects `p` or later, so it may be kept under `p`; a
//! view is replaced as soon as an exchange reads a newer position, and never by an older
//! one (a slow exchange with a stale position gets a throwaway view).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serval_domain::catalog::Entity;
use serval_domain::delegation::Edge;
use serval_kit::http::ApiError;
use serval_kit::App;
use serval_projector::catalog as read;
use serval_streams::EntryId;

/// Zones kept at most (past it the map starts over).
const MAX_ZONES: usize = 4_096;
/// Objects of one kind kept per zone view at most (past it, loads are not kept).
const MAX_PER_KIND: usize = 8_192;

/// A lineage as the read model gave it: the graph epoch read first, then the edges.
pub struct Lineage {
    pub epoch: u64,
    pub edges: Vec<Edge>,
}

/// One zone's objects at one config position.
pub struct ZoneView {
    position: Option<EntryId>,
    apps: Mutex<HashMap<String, Option<Entity>>>,
    resources: Mutex<HashMap<String, Option<Entity>>>,
    objects: Mutex<HashMap<String, Option<Entity>>>,
    lineages: Mutex<HashMap<String, Arc<Lineage>>>,
}

fn get<V: Clone>(m: &Mutex<HashMap<String, V>>, k: &str) -> Option<V> {
    m.lock().unwrap_or_else(|p| p.into_inner()).get(k).cloned()
}

fn put<V>(m: &Mutex<HashMap<String, V>>, k: &str, v: V) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() < MAX_PER_KIND || m.contains_key(k) {
        m.insert(k.to_owned(), v);
    }
}

impl ZoneView {
    fn new(position: Option<EntryId>) -> Self {
        ZoneView {
            position,
            apps: Mutex::default(),
            resources: Mutex::default(),
            objects: Mutex::default(),
            lineages: Mutex::default(),
        }
    }

    /// An application by id (`None` inside: known not to be one of this zone's).
    pub fn app(&self, id: &str) -> Option<Option<Entity>> {
        get(&self.apps, id)
    }
    pub fn keep_app(&self, id: &str, e: Option<Entity>) {
        put(&self.apps, id, e);
    }

    /// A resource by the name the request used (identifier or id).
    pub fn resource(&self, name: &str) -> Option<Option<Entity>> {
        get(&self.resources, name)
    }
    pub fn keep_resource(&self, name: &str, e: Option<Entity>) {
        put(&self.resources, name, e);
    }

    /// Sessions and authority records by id.
    pub fn object(&self, id: &str) -> Option<Option<Entity>> {
        get(&self.objects, id)
    }
    pub fn keep_object(&self, id: &str, e: Option<Entity>) {
        put(&self.objects, id, e);
    }

    /// A Delegation edge's lineage.
    pub fn lineage(&self, edge: &str) -> Option<Arc<Lineage>> {
        get(&self.lineages, edge)
    }
    pub fn keep_lineage(&self, edge: &str, l: Arc<Lineage>) {
        put(&self.lineages, edge, l);
    }
}

#[derive(Default)]
pub struct ZoneCache {
    zones: Mutex<HashMap<String, Arc<ZoneView>>>,
}

impl ZoneCache {
    /// The zone's view at its current config position (call after the read-your-writes
    /// wait of the exchange).
    pub async fn view(&self, app: &App, zone: &str) -> Result<Arc<ZoneView>, ApiError> {
        let position = read::config_position(&app.pool, zone)
            .await?
            .and_then(|p| p.parse::<EntryId>().ok());
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        match zones.get(zone) {
            Some(v) if v.position == position => return Ok(v.clone()),
            // A newer view is there: this exchange read the position before it moved.
            Some(v) if v.position > position => return Ok(Arc::new(ZoneView::new(position))),
            _ => {}
        }
        if zones.len() >= MAX_ZONES && !zones.contains_key(zone) {
            zones.clear();
        }
        let v = Arc::new(ZoneView::new(position));
        zones.insert(zone.to_owned(), v.clone());
        Ok(v)
    }
}
