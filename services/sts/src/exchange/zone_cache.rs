//! What a token exchange reads of its zone, kept in memory (sts.md "How it must
//! perform"): applications, resources, Sessions with their subject records, and Delegation
//! lineages. A zone's view is valid up to a position of the catalog projection on the
//! zone's log (`checked`); when the projection has moved on, the entries in between are
//! read from the log (`XRANGE`, at most 256) and the view is kept — and `checked` advanced —
//! only if none of them can change what it holds (`view_unaffected`). Mints add authority
//! records, which cannot, so a stream of mints costs one Redis range read per exchange
//! instead of a query per object. The records this process minted are kept too (the most
//! recent [`MAX_MINTED`]), so the Gateway's re-exchange binds its subject record without a
//! query: a record changes only by an update, which starts a new view.
//!
//! Correctness: an exchange first brings the catalog up to every entry it reads that was
//! appended before it began (`freshness::ensure_skipping`), then validates the view against
//! this process's catalog position, then looks up or loads objects. Anything loaded after
//! the view's position `p` was reached reflects `p` or later. A view is replaced on any
//! doubt (a range it cannot read, more than 256 entries, a position that went backwards)
//! and after 60 s in any case, so a read model rebuilt from the same log under the same
//! positions is picked up within a minute.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use serval_domain::catalog::runtime::AuthorityRecordData;
use serval_domain::catalog::Entity;
use serval_domain::delegation::Edge;
use serval_kit::App;
use serval_schema::projections::CATALOG;
use serval_streams::{EntryId, Envelope, LogStream};

/// Zones kept at most (past it the map starts over).
const MAX_ZONES: usize = 4_096;
/// Log entries inspected to keep a view across a moved position.
const MAX_INSPECTED: usize = 256;
/// A view is rebuilt after this long whatever the log says.
const MAX_AGE: Duration = Duration::from_secs(60);

/// Entries that cannot change what a view holds: every entry an exchange does not wait
/// for in the catalog (so a run the freshness check found skippable proves a view
/// unaffected, by construction), and the kinds the view does not keep (connections, keys).
pub fn view_unaffected(e: &Envelope) -> bool {
    (super::UNREAD_BY_EXCHANGES.accepts)(CATALOG, e)
        || matches!(
            e.aggregate_kind.as_str(),
            "provider_connection" | "signing_key" | "data_key" | "subject_issuer"
        )
}
/// Objects of one kind kept per zone view at most (past it, loads are not kept).
const MAX_PER_KIND: usize = 8_192;

/// Records minted through a view kept at most (the oldest go first: a re-exchange follows
/// its mint within seconds).
const MAX_MINTED: usize = 8_192;

/// A lineage as the read model gave it: the graph epoch read first, then the edges.
pub struct Lineage {
    pub epoch: u64,
    pub edges: Vec<Edge>,
}

/// One zone's objects, valid up to a catalog position.
pub struct ZoneView {
    checked: Mutex<EntryId>,
    born: Instant,
    apps: Mutex<HashMap<String, Option<Entity>>>,
    resources: Mutex<HashMap<String, Option<Entity>>>,
    objects: Mutex<HashMap<String, Option<Entity>>>,
    lineages: Mutex<HashMap<String, Arc<Lineage>>>,
    providers: Mutex<HashMap<String, Option<Entity>>>,
    minted: Mutex<Minted>,
}

/// Authority records created by this process while the view was current, newest last.
#[derive(Default)]
struct Minted {
    by_id: HashMap<String, Arc<AuthorityRecordData>>,
    order: VecDeque<String>,
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
    fn new(position: EntryId) -> Self {
        ZoneView {
            checked: Mutex::new(position),
            born: Instant::now(),
            apps: Mutex::default(),
            resources: Mutex::default(),
            objects: Mutex::default(),
            lineages: Mutex::default(),
            providers: Mutex::default(),
            minted: Mutex::default(),
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

    /// A credential provider by id (`None` inside: known not to exist). Provider events
    /// start a new view, so a kept absence stays true.
    pub fn provider(&self, id: &str) -> Option<Option<Entity>> {
        get(&self.providers, id)
    }
    pub fn keep_provider(&self, id: &str, e: Option<Entity>) {
        put(&self.providers, id, e);
    }

    /// An authority record this process created through this view. Its creation is an
    /// entry the view ignores, every later change of it is one that replaces the view: while
    /// the view is current, the record is as it was created.
    pub fn minted(&self, id: &str) -> Option<Arc<AuthorityRecordData>> {
        let m = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        m.by_id.get(id).cloned()
    }
    /// Called only once the record's creation is in the log.
    pub fn keep_minted(&self, id: &str, r: AuthorityRecordData) {
        let mut m = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        if m.by_id.insert(id.to_owned(), Arc::new(r)).is_none() {
            m.order.push_back(id.to_owned());
        }
        while m.order.len() > MAX_MINTED {
            if let Some(old) = m.order.pop_front() {
                m.by_id.remove(&old);
            }
        }
    }
}

#[derive(Default)]
pub struct ZoneCache {
    zones: Mutex<HashMap<String, Arc<ZoneView>>>,
}

impl ZoneCache {
    /// The zone's view as of this process's catalog position on its log (call after the
    /// exchange's read-your-writes wait).
    pub async fn view(&self, app: &App, zone: &str) -> Arc<ZoneView> {
        let key = app.store.keys().log(&LogStream::Zone(zone.to_owned()));
        let at = app.visibility.current(CATALOG, &key);
        if at == EntryId::ZERO {
            return Arc::new(ZoneView::new(at));
        }
        let existing = self
            .zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(zone)
            .cloned();
        if let Some(v) = existing.filter(|v| v.born.elapsed() < MAX_AGE) {
            let checked = *v.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked == at {
                return v;
            }
            // What the exchange's freshness check found skippable for the catalog is
            // unaffected here too (`view_unaffected` accepts all of it): no second read of
            // the same entries.
            if checked < at
                && (serval_kit::freshness::known_skippable(
                    app,
                    &key,
                    CATALOG,
                    super::UNREAD_BY_EXCHANGES,
                    (checked, at),
                ) || serval_kit::freshness::entries_all(
                    app,
                    &key,
                    (checked, at),
                    MAX_INSPECTED,
                    view_unaffected,
                )
                .await)
            {
                {
                    let mut c = v.checked.lock().unwrap_or_else(|p| p.into_inner());
                    *c = (*c).max(at);
                }
                return v;
            }
            if checked > at {
                // This request's position is older than the view's: use a view of its own.
                return Arc::new(ZoneView::new(at));
            }
        }
        let v = Arc::new(ZoneView::new(at));
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        if zones.len() >= MAX_ZONES && !zones.contains_key(zone) {
            zones.clear();
        }
        zones.insert(zone.to_owned(), v.clone());
        v
    }
}
