//! The Image controller of one cluster: decides when an Image syncs with the registry, converges
//! its workloads at every reconcile (level-based apply), writes status and events. Only acts
//! while this replica leads; standbys keep the watches warm.
//!
//! What a reconcile learned (alerts delivered, digests seen, the tag chosen) is kept in memory
//! until its status write succeeds, and the write is retried with per-object exponential backoff,
//! so a failed write loses nothing and repeats no action.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use opentelemetry::trace::SpanContext;
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::actions::apply::FIELD_MANAGER;
use crate::api::{ANNOTATION_ACTION, ANNOTATION_TAG, Image, ImageStatus, TriggerType};
use crate::events::{Event, Recorder};
use crate::fleet::{Fleet, ImageKey, Seen};
use crate::leader::Leadership;
use crate::promotion::{self, Gate, Peer, PromotionError};
use crate::shards::Ownership;
use crate::sync::{self, Scope, Shared, SyncReport, TriggerReason};
use crate::triggers::webhook::RepoEvent;
use crate::workloads::{self, Workloads};

/// Errors that make the controller retry an Image later, with per-object backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Writing status or annotations failed; what the reconcile learned is kept until written.
    #[error("writing {what} of {namespace}/{name}: {source}")]
    Write {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Leadership lapsed before a write: nothing more is written.
    #[error("not writing {what} of {namespace}/{name}: this replica no longer leads")]
    NotLeader {
        what: &'static str,
        namespace: String,
        name: String,
    },
    /// Some workloads could not be written; the status names them.
    #[error("{count} workload(s) of {namespace}/{name} not written")]
    Workloads {
        count: usize,
        namespace: String,
        name: String,
    },
}

impl ReconcileError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Write { what: "status", .. } => "status_write",
            ReconcileError::Write { .. } => "annotation_write",
            ReconcileError::Workloads { .. } => "workload_write",
            ReconcileError::NotLeader { .. } => "not_leader",
        }
    }
}

/// Per-Image memory of this process, by uid.
#[derive(Default)]
struct Memory {
    /// When each Image last synced with the registry and with which generation: the start-up
    /// sync, the cron schedule and spec changes are judged from it. The generation is kept
    /// because the Image's own status (observedGeneration) may not be written back yet when the
    /// watch event of our annotation patch arrives.
    /// Keyed by a hash of the uid: it holds an entry for every Image, and a uid string costs
    /// more than the entry itself (64 bits make a collision between 10,000 uids a 1 in 10^11
    /// event, and one would only move a sync).
    last_run: HashMap<u64, LastRun>,
    /// Images a registry webhook asked to sync, with the `webhook.push` spans that asked (none
    /// when traces are off): the sync links to them.
    pushed: HashMap<String, Vec<SpanContext>>,
    /// Statuses computed but not written yet (the write failed): the next reconcile starts from
    /// them, not from the stale status on the object.
    unwritten: HashMap<String, ImageStatus>,
    /// The status this process last wrote (or found already written): a reconcile queued by our
    /// own annotation patch can run before the watch cache holds the status write, and must not
    /// start from the older status the cached object carries. Only kimup writes the status.
    known: HashMap<String, ImageStatus>,
    /// Consecutive failed reconciles, for the backoff.
    failures: HashMap<String, u32>,
    /// What the promotion gate of each promoted Image let through at its last sync: a gate
    /// that lets another set through (a soak completed elsewhere) syncs the Image.
    gates: HashMap<String, String>,
}

/// The last sync of an Image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastRun {
    /// When it started.
    pub at: DateTime<Utc>,
    /// The generation it synced.
    pub generation: Option<i64>,
}

/// Per-cluster context of the reconciler.
pub struct ClusterContext {
    /// Cluster name (logs, events, metrics, spans).
    pub cluster: String,
    /// Client of this cluster.
    pub client: Client,
    /// Process-wide services.
    pub shared: Arc<Shared>,
    /// Which shards this replica may act for: the Image's shard's `is_held()` before each sync
    /// and each write.
    pub owner: Ownership,
    recorder: Recorder,
    memory: Mutex<Memory>,
    images: OnceLock<Store<Image>>,
    workloads: OnceLock<Workloads>,
}

impl ClusterContext {
    /// A context for `cluster`.
    pub fn new(
        cluster: &str,
        client: Client,
        shared: Arc<Shared>,
        owner: Ownership,
        instance: Option<String>,
    ) -> Self {
        Self {
            cluster: cluster.to_string(),
            recorder: Recorder::new(client.clone(), "kimup", instance),
            client,
            shared,
            owner,
            memory: Mutex::new(Memory::default()),
            images: OnceLock::new(),
            workloads: OnceLock::new(),
        }
    }

    /// The leadership of the shard `image` belongs to (its repository's): whether this replica
    /// may act for it now, by the monotonic clock of that shard's last lease renewal.
    pub fn lease_of(&self, image: &Image) -> &Leadership {
        self.owner.shard(self.shard_of(image))
    }

    /// The shard `image` belongs to: its repository's.
    pub fn shard_of(&self, image: &Image) -> u32 {
        let shards = self.owner.count();
        match sync::image_ref(image) {
            Ok(r) => crate::shards::shard_of(&r.registry, &r.repository, shards),
            // An invalid reference still belongs to one replica: by its text.
            Err(_) => crate::shards::shard_of("", &image.spec.image, shards),
        }
    }

    /// Forgets what this process knows of the Images of `shard` (`uids`), as [`Self::forget_all`]
    /// does for all: gaining one shard re-syncs that shard's Images, not every Image held.
    fn forget(&self, uids: &[String]) {
        self.with_memory(|m| {
            for uid in uids {
                m.last_run.remove(&uid_key(uid));
                m.unwritten.remove(uid);
                m.known.remove(uid);
                m.gates.remove(uid);
            }
        });
    }

    /// Records what the promotion gate let through at an Image's sync; returns whether that
    /// differs from the last sync's.
    fn gate_changed(&self, uid: &str, through: &str) -> bool {
        self.with_memory(|m| m.gates.get(uid).map(String::as_str) != Some(through))
            .unwrap_or(true)
    }

    fn set_gate(&self, uid: &str, through: Option<String>) {
        self.with_memory(|m| match through {
            Some(t) => m.gates.insert(uid.to_string(), t),
            None => m.gates.remove(uid),
        });
    }

    fn with_memory<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> Option<T> {
        self.memory.lock().ok().map(|mut m| f(&mut m))
    }

    fn last_run(&self, uid: &str) -> Option<LastRun> {
        self.with_memory(|m| m.last_run.get(&uid_key(uid)).copied())
            .flatten()
    }

    fn set_last_run(&self, uid: &str, run: LastRun) {
        self.with_memory(|m| m.last_run.insert(uid_key(uid), run));
    }

    fn mark_pushed(&self, uid: &str, cause: Option<&SpanContext>) {
        self.with_memory(|m| {
            let causes = m.pushed.entry(uid.to_string()).or_default();
            if let Some(cause) = cause
                && !causes.contains(cause)
            {
                // Pushes that pile up while a sync runs are answered by the next one; its links
                // keep the newest.
                if causes.len() >= MAX_CAUSES {
                    causes.remove(0);
                }
                causes.push(cause.clone());
            }
        });
    }

    /// The pushes waiting for this Image's next sync (their spans), once; None when none.
    fn take_pushed(&self, uid: &str) -> Option<Vec<SpanContext>> {
        self.with_memory(|m| m.pushed.remove(uid)).flatten()
    }

    fn unwritten(&self, uid: &str) -> Option<ImageStatus> {
        self.with_memory(|m| m.unwritten.get(uid).cloned())
            .flatten()
    }

    /// The status the API server holds, as far as this process knows: what it last wrote, until
    /// the watch cache (`cached`) shows that write; then the cached status, and the copy is
    /// dropped, so that 10,000 Images do not each keep a second status in memory.
    fn stored(&self, uid: &str, cached: Option<&ImageStatus>) -> ImageStatus {
        let known = self
            .with_memory(|m| {
                let caught_up = m.known.get(uid).is_some_and(|k| Some(k) == cached);
                if caught_up {
                    m.known.remove(uid);
                    None
                } else {
                    m.known.get(uid).cloned()
                }
            })
            .flatten();
        known.unwrap_or_else(|| cached.cloned().unwrap_or_default())
    }

    fn set_known(&self, uid: &str, status: Option<ImageStatus>) {
        self.with_memory(|m| match status {
            Some(s) => m.known.insert(uid.to_string(), s),
            None => m.known.remove(uid),
        });
    }

    fn set_unwritten(&self, uid: &str, status: Option<ImageStatus>) {
        self.with_memory(|m| match status {
            Some(s) => m.unwritten.insert(uid.to_string(), s),
            None => m.unwritten.remove(uid),
        });
    }

    /// Counts a failed reconcile and returns how many in a row.
    fn failed(&self, uid: &str) -> u32 {
        self.with_memory(|m| {
            let n = m.failures.entry(uid.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1)
    }

    fn succeeded(&self, uid: &str) {
        self.with_memory(|m| m.failures.remove(uid));
    }

    /// Forgets Images that no longer exist (their uid is not in `live`).
    fn retain(&self, live: &HashSet<String>) {
        self.with_memory(|m| {
            let live_keys: HashSet<u64> = live.iter().map(|u| uid_key(u)).collect();
            m.last_run.retain(|k, _| live_keys.contains(k));
            m.pushed.retain(|uid, _| live.contains(uid));
            m.unwritten.retain(|uid, _| live.contains(uid));
            m.known.retain(|uid, _| live.contains(uid));
            m.failures.retain(|uid, _| live.contains(uid));
            m.gates.retain(|uid, _| live.contains(uid));
        });
    }

    /// Forget everything about every Image, so that each syncs again from its stored status (a
    /// new leader re-syncs everything; another leader may have written since this replica last
    /// did, so what it remembers is stale). An alert delivered but not recorded before a
    /// failover can therefore be sent again once: alerts are at-least-once across failovers.
    pub fn forget_all(&self) {
        self.with_memory(|m| {
            m.last_run.clear();
            m.unwritten.clear();
            m.known.clear();
            m.gates.clear();
        });
    }
}

/// The key of an Image's uid in per-Image maps that hold every Image.
fn uid_key(uid: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    h.finish()
}

/// Webhook spans one sync links to at most.
const MAX_CAUSES: usize = 16;

/// Whether a push announced by a webhook makes `image` sync: it has a webhook trigger and
/// watches the pushed repository (pure).
pub fn triggered_by(image: &Image, event: &RepoEvent) -> bool {
    image
        .spec
        .triggers
        .iter()
        .any(|t| t.type_ == TriggerType::Webhook)
        && sync::image_ref(image).is_ok_and(|r| crate::triggers::webhook::matches(event, &r))
}

/// Backoff of the `n`th consecutive failed reconcile of one Image: 1 s doubling to 5 min.
pub fn backoff(n: u32) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// What the controller should do with an Image now (pure).
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Sync with the registry now, for this reason.
    Sync(TriggerReason),
    /// No trigger: converge only, and sync at this time (next cron fire), or on a change when
    /// None.
    Wait(Option<DateTime<Utc>>),
}

/// Decides whether an Image syncs with the registry now (pure: everything it needs is passed
/// in). `conflict` tells whether another Image claims its repository now.
pub fn plan(
    image: &Image,
    last_run: Option<LastRun>,
    pushed: bool,
    conflict: bool,
    now: DateTime<Utc>,
) -> Plan {
    let annotation = image
        .annotations()
        .get(ANNOTATION_ACTION)
        .map(|v| v.trim().to_ascii_lowercase());
    if matches!(annotation.as_deref(), Some("refresh" | "reload")) {
        return Plan::Sync(TriggerReason::Annotation);
    }
    if pushed {
        return Plan::Sync(TriggerReason::Webhook);
    }
    let Some(LastRun {
        at: last,
        generation: synced,
    }) = last_run
    else {
        return Plan::Sync(TriggerReason::Startup);
    };
    let observed = image.status.as_ref().and_then(|s| s.observed_generation);
    let generation = image.metadata.generation;
    if generation.is_some() && generation != synced && generation != observed {
        return Plan::Sync(TriggerReason::SpecChange);
    }
    // The other Image went away: the rules never ran during the conflict, run them now.
    let was_conflict = image.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == sync::CONDITION_READY && c.reason == sync::REASON_CONFLICT)
    });
    if was_conflict && !conflict {
        return Plan::Sync(TriggerReason::SpecChange);
    }
    // An invalid cron was reported by the last sync; nothing to schedule until the spec changes.
    let schedules = sync::schedules(image).unwrap_or_default();
    let next = schedules.iter().filter_map(|s| s.next_after(last)).min();
    match next {
        Some(t) if t <= now => Plan::Sync(TriggerReason::Cron),
        other => Plan::Wait(other),
    }
}

/// Runs the Image controller of one cluster until `shutdown` resolves.
pub async fn run(
    ctx: Arc<ClusterContext>,
    health: crate::server::Health,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    concurrency: u16,
) {
    let images: Api<Image> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // Leadership gained => forget and re-sync everything; a standby's view may be stale.
    let ctx_for_leader = ctx.clone();
    // With shards, gaining a shard re-syncs the Images of that shard only (its other shards'
    // Images are this replica's already, and stay as they are).
    let (gained_tx, gained_rx) = futures::channel::mpsc::unbounded::<u32>();
    let gains = futures::stream::select_all(ctx.owner.all().iter().enumerate().map(|(i, l)| {
        let tx = gained_tx.clone();
        let shard = u32::try_from(i).unwrap_or(0);
        leadership_gained(l.changes(), move || {
            let _ = tx.unbounded_send(shard);
        })
        .boxed()
    }));
    drop(gained_tx);
    // Polled for the side effect of forwarding gains; stopped with the controller.
    let gains = tokio::spawn(gains.for_each(|()| async {}));
    // The Images' cache holds them slimmed (src/workloads.rs `slim`): at 10,000 Images per
    // cluster, managed fields alone would be most of kimup's memory.
    let (store, writer) = kube::runtime::reflector::store();
    // Images created, deleted or whose spec changed, told apart before the cache applies them:
    // the others of their namespace reconcile too (a conflict over a repository may start or
    // end). A status write is none of these, so the writes of a sync do not make every Image of
    // the namespace reconcile, and no second watch of the Images is needed.
    let (peers_tx, peers_rx) = futures::channel::mpsc::unbounded::<Image>();
    let store_before = store.clone();
    // Promotion news of an Image (its rollout or promotion changed, or a promoted Image came or
    // went), told apart before the cache applies the event and announced to the other clusters
    // once it has: they then read the new state from this cache.
    let news: Arc<Mutex<Vec<ImageKey>>> = Arc::default();
    let (news_in, news_out) = (news.clone(), news);
    let (fleet, cluster, listed_store, listed_health) = (
        ctx.shared.fleet.clone(),
        ctx.cluster.clone(),
        store.clone(),
        health.clone(),
    );
    let events = watcher(
        images,
        // Pages of 100: a page is held whole while its Images are handed on, and 500 Images
        // with their managed fields are megabytes.
        watcher::Config::default()
            .any_semantic()
            .page_size(IMAGE_PAGE),
    )
    .modify(slim_image)
    .map(move |event| {
        if let Ok(e) = &event {
            let cached = |img: &Image| store_before.get(&ObjectRef::from_obj(img));
            if let Some(changed) = spec_event(e, cached) {
                // The receiver lives as long as the controller; nothing to do once it is gone.
                let _ = peers_tx.unbounded_send(changed);
            }
            if let Some(key) = promotion_news(e, cached)
                && let Ok(mut n) = news_in.lock()
            {
                n.push(key);
            }
        }
        event
    });
    let listed = |event: &Result<watcher::Event<Image>, watcher::Error>| {
        matches!(event, Ok(watcher::Event::InitDone))
    };
    // As Controller::new: no backoff of its own (the fault tests' reconnection times are this
    // watcher's), applied objects only (a deleted Image has nothing to reconcile).
    let image_stream = kube::runtime::reflector::reflector(writer, events)
        .inspect(move |event| {
            // The reflector has applied the event: the news can go out.
            let mut keys = news_out
                .lock()
                .map(|mut n| std::mem::take(&mut *n))
                .unwrap_or_default();
            // A (re)list done: the watch runs again, so the cluster is up (without waiting for
            // a reconcile, which may sit in a write's backoff), and the promoted Images here are
            // news to the clusters that read them, which may have looked while this cache was
            // empty or stale.
            if listed(event) {
                listed_health.set_if_changed(&cluster, Ok(()));
                keys.extend(
                    listed_store
                        .state_filter(promoted)
                        .iter()
                        .map(|img| ImageKey::of(img)),
                );
            }
            for key in keys {
                fleet.changed(&cluster, key);
            }
        })
        .applied_objects();
    let controller = Controller::for_stream(image_stream, store.clone());
    let (workload_caches, streams) = workloads::watch(&ctx.client, namespace);
    let _ = ctx.images.set(store.clone());
    let _ = ctx.workloads.set(workload_caches);
    let pushed = pushed_images(ctx.clone(), store.clone());
    let fleet_news = fleet_changes(ctx.clone(), store.clone());
    let relist = {
        let (store, ctx) = (store.clone(), ctx_for_leader.clone());
        gained_rx.flat_map(move |shard| {
            let images = store.state_filter(|img| ctx.shard_of(img) == shard);
            let uids: Vec<String> = images.iter().filter_map(|img| img.uid()).collect();
            ctx.forget(&uids);
            futures::stream::iter(
                images
                    .iter()
                    .map(|img| ObjectRef::from_obj(img.as_ref()))
                    .collect::<Vec<_>>(),
            )
        })
    };
    health.set_images(&ctx.cluster, Some(store.clone()));
    crate::metrics::rollouts_failed_known(&ctx.cluster);
    // Deleted Images never reach `reconcile`: drop what the memory holds for them now and then.
    let (gc_store, ctx_for_gc) = (store.clone(), ctx.clone());
    let gc = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            let live = gc_store.state().iter().filter_map(|i| i.uid()).collect();
            ctx_for_gc.retain(&live);
        }
    });
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        // A workload created, changed or deleted, or a namespace's opt-in changed: converge the
        // Images of that namespace (no registry request).
        .watches_stream(streams.deployments, images_of_namespace(&store))
        .watches_stream(streams.statefulsets, images_of_namespace(&store))
        .watches_stream(streams.daemonsets, images_of_namespace(&store))
        .watches_stream(streams.cronjobs, images_of_namespace(&store))
        .watches_stream(streams.namespaces, {
            let store = store.clone();
            move |n: k8s_openapi::api::core::v1::Namespace| {
                images_in(&store, n.metadata.name.as_deref())
            }
        })
        // An Image created, deleted or respecified may start or end a conflict over its
        // repository with the others of its namespace: they reconcile too.
        .watches_stream(peers_rx.map(Ok::<Image, watcher::Error>), {
            let store = store.clone();
            move |img: Image| {
                let own = ObjectRef::from_obj(&img);
                images_in(&store, img.metadata.namespace.as_deref())
                    .into_iter()
                    .filter(|r| *r != own)
                    .collect::<Vec<_>>()
            }
        })
        .reconcile_on(pushed)
        .reconcile_on(fleet_news)
        .reconcile_on(relist)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            let (health, cluster) = (health.clone(), ctx.cluster.clone());
            let (fleet, store) = (ctx.shared.fleet.clone(), store.clone());
            async move {
                match res {
                    Ok(_) => {
                        // Back up: other clusters' promotions waiting on this one (it was not
                        // watched) read it again.
                        if health.set_if_changed(&cluster, Ok(())) {
                            for img in store.state_filter(promoted) {
                                fleet.changed(&cluster, ImageKey::of(&img));
                            }
                        }
                    }
                    // A watch failed (API server gone, credentials refused): the cluster is down
                    // until the watcher's own backoff reconnects.
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        warn!(cluster = %cluster, error = %e, "watch failed; cluster down, retrying");
                        health.set_if_changed(&cluster, Err(format!("watch failed: {e}")));
                    }
                    Err(e) => debug!(error = %e, "reconcile loop"),
                }
            }
        })
        .await;
    gc.abort();
    gains.abort();
}

/// Images listed per page by the Image watch.
const IMAGE_PAGE: u32 = 100;

/// The Image of a watch event that may change who conflicts with whom in its namespace (pure
/// but for `cached`, the cache's copy before the event): one created, deleted, or whose spec
/// changed (generation). Status and metadata writes, and the initial list, are not.
pub fn spec_event(
    event: &watcher::Event<Image>,
    cached: impl FnOnce(&Image) -> Option<Arc<Image>>,
) -> Option<Image> {
    match event {
        watcher::Event::Apply(img) => {
            let before = cached(img);
            let changed = before.is_none_or(|b| b.metadata.generation != img.metadata.generation);
            changed.then(|| img.clone())
        }
        watcher::Event::Delete(img) => Some(img.clone()),
        watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => None,
    }
}

/// The Image of a watch event that other clusters' promotions must hear of (pure but for
/// `cached`, the cache's copy before the event): its `status.rollout` or `spec.promotion`
/// changed, or an Image with either was created or deleted. The Images of a (re)list are
/// announced together once it is done (see [`run`]), not one by one here.
pub fn promotion_news(
    event: &watcher::Event<Image>,
    cached: impl FnOnce(&Image) -> Option<Arc<Image>>,
) -> Option<ImageKey> {
    let news = match event {
        watcher::Event::Apply(img) => match cached(img) {
            Some(before) => {
                let rollout = |i: &Image| i.status.as_ref().and_then(|s| s.rollout.clone());
                rollout(&before) != rollout(img) || before.spec.promotion != img.spec.promotion
            }
            None => promoted(img),
        },
        watcher::Event::Delete(img) => promoted(img),
        watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => false,
    };
    let img = match event {
        watcher::Event::Apply(img) | watcher::Event::Delete(img) => img,
        _ => return None,
    };
    news.then(|| ImageKey::of(img))
}

/// Whether an Image takes part in a promotion: it has one, or records its rollout for one.
fn promoted(img: &Image) -> bool {
    img.spec.promotion.is_some() || img.status.as_ref().is_some_and(|s| s.rollout.is_some())
}

/// The Images of a namespace, as reconcile requests.
fn images_in(store: &Store<Image>, namespace: Option<&str>) -> Vec<ObjectRef<Image>> {
    let Some(ns) = namespace else {
        return Vec::new();
    };
    store
        .state_filter(|i| i.metadata.namespace.as_deref() == Some(ns))
        .iter()
        .map(|i| ObjectRef::from_obj(i.as_ref()))
        .collect()
}

/// Slims an Image for the watch cache: [`workloads::slim`], and a tag annotation equal to
/// `status.tag` (kimup's own mirror, the common case) is kept as an empty annotation map, which
/// the API server never sends (it omits empty maps): a one-entry map is a 0.5 KB node, a
/// fifth of a cached Image. [`tag_annotation`] reads it back.
pub fn slim_image(img: &mut Image) {
    workloads::slim(img);
    let tag = img.status.as_ref().and_then(|s| s.tag.as_deref());
    if let Some(a) = img.metadata.annotations.as_mut()
        && a.len() == 1
        && tag.is_some()
        && a.get(ANNOTATION_TAG).map(String::as_str) == tag
    {
        *a = std::collections::BTreeMap::new();
    }
}

/// The `kimup.cloudavenue.io/tag` annotation of an Image, slimmed or not (pure).
pub fn tag_annotation(img: &Image) -> Option<&str> {
    match img.metadata.annotations.as_ref() {
        Some(a) if a.is_empty() => img.status.as_ref().and_then(|s| s.tag.as_deref()),
        Some(a) => a.get(ANNOTATION_TAG).map(String::as_str),
        None => None,
    }
}

/// Maps a workload event to the Images of its namespace.
fn images_of_namespace<K: Resource>(
    store: &Store<Image>,
) -> impl Fn(K) -> Vec<ObjectRef<Image>> + Send + Sync + 'static {
    let store = store.clone();
    move |obj: K| images_in(&store, workloads::namespace_of(&obj).as_deref())
}

/// What a broadcast channel receives, as a stream that ends when the channel closes; messages
/// missed by a slow receiver are logged as `what` dropped, and listening goes on.
fn received<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
    what: &'static str,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(message) => return Some((message, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "{what} dropped: controller too slow");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Marks the Images of this cluster that a registry webhook announces a push for (those with a
/// webhook trigger and the pushed repository) and queues exactly those.
fn pushed_images(
    ctx: Arc<ClusterContext>,
    store: Store<Image>,
) -> impl futures::Stream<Item = ObjectRef<Image>> + Send + 'static {
    // Missed pushes are seen at the Images' next trigger.
    received(ctx.shared.pushes.subscribe(), "webhook pushes").flat_map(move |push| {
        let matching: Vec<ObjectRef<Image>> = store
            .state_filter(|img| triggered_by(img, &push.event))
            .into_iter()
            // Another replica's shard: its holder heard the push too.
            .filter(|img| ctx.lease_of(img).is_held())
            .filter_map(|img| {
                ctx.mark_pushed(&img.uid()?, push.cause.as_ref());
                Some(ObjectRef::from_obj(img.as_ref()))
            })
            .collect();
        futures::stream::iter(matching)
    })
}

/// The Image of this cluster that a rollout or promotion change of the same Image in another
/// cluster concerns: it re-checks its gate (or starts recording its rollout).
fn fleet_changes(
    ctx: Arc<ClusterContext>,
    store: Store<Image>,
) -> impl futures::Stream<Item = ObjectRef<Image>> + Send + 'static {
    // Missed changes are seen at the Images' next trigger or requeue.
    received(ctx.shared.fleet.subscribe(), "fleet changes").filter_map(move |change| {
        let found = (change.cluster != ctx.cluster)
            .then(|| store.get(&change.key.object_ref()))
            .flatten()
            .filter(|img| ctx.lease_of(img).is_held())
            .map(|img| ObjectRef::from_obj(img.as_ref()));
        futures::future::ready(found)
    })
}

/// A stream that yields once each time leadership is gained, after calling `on_gain`.
fn leadership_gained(
    rx: watch::Receiver<bool>,
    on_gain: impl Fn() + Send + Sync + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let was = *rx.borrow();
    futures::stream::unfold(
        (rx, was, on_gain),
        |(mut rx, mut was, on_gain)| async move {
            loop {
                rx.changed().await.ok()?;
                let now = *rx.borrow_and_update();
                let gained = now && !was;
                was = now;
                if gained {
                    on_gain();
                    return Some(((), (rx, was, on_gain)));
                }
            }
        },
    )
}

/// How long a reconcile waits for the workload caches' first list before trying again later.
const CACHE_WAIT: Duration = Duration::from_secs(10);

#[instrument(skip_all, fields(cluster = %ctx.cluster, namespace = %image.namespace().unwrap_or_default(), name = %image.name_any()))]
async fn reconcile(image: Arc<Image>, ctx: Arc<ClusterContext>) -> Result<Action, ReconcileError> {
    let namespace = image.namespace().unwrap_or_default();
    let name = image.name_any();
    let lease = ctx.lease_of(&image).clone();
    if !lease.is_held() {
        // Standby: keep the caches warm, act on nothing. Leadership change re-queues everything.
        return Ok(Action::await_change());
    }
    let (Some(workloads), Some(images)) = (ctx.workloads.get(), ctx.images.get()) else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    if !workloads.wait_ready(CACHE_WAIT).await {
        debug!("workload caches not listed yet");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let uid = image.uid().unwrap_or_else(|| format!("{namespace}/{name}"));
    // What the API server has, as far as this process knows: its own last write may not be in
    // the watch cache yet.
    let stored = ctx.stored(&uid, image.status.as_ref());
    let unwritten = ctx.unwritten(&uid);
    let previous = unwritten.clone().unwrap_or_else(|| stored.clone());
    // Only the namespace's: cloning 10,000 handles per reconcile is time and memory for nothing.
    let others = images.state_filter(|i| i.metadata.namespace == image.metadata.namespace);
    let conflict = sync::conflicting(&image, others.iter().map(|i| i.as_ref()));
    let now = Utc::now();
    let pushed = ctx.take_pushed(&uid);
    let key = ImageKey::of(&image);
    let fleet = &ctx.shared.fleet;
    let promotion = promotion_gate(fleet, &ctx.cluster, &image, &key, now);
    let through = promotion.as_ref().map(gate_signature);
    let record_rollout =
        image.spec.promotion.is_some() || fleet.promoted_elsewhere(&key, &ctx.cluster);
    let mut planned = plan(
        &image,
        ctx.last_run(&uid),
        pushed.is_some(),
        conflict.is_some(),
        now,
    );
    // A gate that lets other tags through than at the last sync: the rules run again.
    if let (Plan::Wait(_), Some(t)) = (&planned, &through)
        && ctx.gate_changed(&uid, t)
    {
        planned = Plan::Sync(TriggerReason::Promotion);
    }
    // A push always plans a sync: this trace is what the webhook requests caused.
    crate::telemetry::link_causes(&tracing::Span::current(), pushed.into_iter().flatten());
    let may_write = || lease.is_held();
    let due = promotion.as_ref().and_then(|g| g.as_ref().ok()?.due);
    let scope = Scope {
        workloads,
        conflict,
        may_write: &may_write,
        promotion,
        record_rollout,
    };
    let (report, reason) = match planned {
        Plan::Sync(reason) => {
            ctx.set_last_run(
                &uid,
                LastRun {
                    at: now,
                    generation: image.metadata.generation,
                },
            );
            ctx.set_gate(&uid, through);
            let report = sync::sync_image(
                &ctx.shared,
                &ctx.client,
                &ctx.cluster,
                &image,
                &previous,
                &scope,
                reason,
            )
            .await;
            (report, Some(reason))
        }
        Plan::Wait(_) => (
            sync::converge_image(&ctx.shared, &ctx.client, &image, &previous, &scope).await,
            None,
        ),
    };
    // Leadership may have been lost while the sync ran: a deposed leader writes nothing.
    if !lease.is_held() {
        warn!("leadership lost during reconcile; dropping its status write");
        return Ok(Action::await_change());
    }
    let written = write(&ctx, &image, &namespace, &name, &stored, &report, reason).await;
    if let Err(e) = &written {
        // Said at once: publishing the events below may itself wait on a failing API server.
        warn!(error = %e, label = e.metric_label(), "Image write failed; what the reconcile learned is kept and retried with backoff");
    }
    publish(&ctx, &image, &report).await;
    if let Err(e) = written {
        ctx.set_unwritten(&uid, Some(report.status));
        return Err(e);
    }
    ctx.set_unwritten(&uid, None);
    // A new rollout state here may open (or halt) the gate of the same Image elsewhere: its
    // watch event tells them (see `promotion_news`), and their decisions link to this reconcile.
    if let Some(r) = &report.status.rollout
        && promotion::newly_failed(stored.rollout.as_deref(), r)
    {
        crate::metrics::rollout_failed(&ctx.cluster);
    }
    if report.status.rollout != stored.rollout
        && report.status.rollout.is_some()
        && let Some(span) = crate::telemetry::span_context(&tracing::Span::current())
    {
        fleet.record_span(&ctx.cluster, &key, span);
    }
    // Only a status that differs from the cached one needs remembering until the cache has it.
    ctx.set_known(
        &uid,
        (image.status.as_ref() != Some(&report.status)).then(|| report.status.clone()),
    );
    let failed_workloads = report
        .workloads
        .iter()
        .filter(|w| w.error.is_some())
        .count();
    if failed_workloads > 0 {
        return Err(ReconcileError::Workloads {
            count: failed_workloads,
            namespace,
            name,
        });
    }
    ctx.succeeded(&uid);
    let last = ctx.last_run(&uid).map(|r| r.at).unwrap_or(now);
    let next = sync::schedules(&image)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.next_after(last))
        .chain(due)
        .min();
    Ok(requeue_at(next, Utc::now()))
}

/// The promotion gate of an Image with `spec.promotion`, read from the other members' watch
/// caches; a `promotion.gate` span links to the reconciles that recorded what it read.
fn promotion_gate(
    fleet: &Fleet,
    cluster: &str,
    image: &Image,
    key: &ImageKey,
    now: DateTime<Utc>,
) -> Option<Result<Gate, PromotionError>> {
    let members = fleet.members();
    let (clusters, soak) = match promotion::gate_of(image, cluster, &members)? {
        Ok(g) => g,
        Err(e) => return Some(Err(e)),
    };
    let seen: Vec<(String, Seen)> = clusters
        .iter()
        .map(|c| (c.clone(), fleet.seen(c, key, image)))
        .collect();
    let everywhere: Vec<Seen> = members.iter().map(|m| fleet.seen(m, key, image)).collect();
    let bad = promotion::failed_anywhere(everywhere.iter().filter_map(|s| match s {
        Seen::Found(st) => Some(st.as_ref()),
        _ => None,
    }));
    let peers: Vec<Peer<'_>> = seen
        .iter()
        .map(|(c, s)| Peer {
            cluster: c,
            seen: s,
        })
        .collect();
    let gate = promotion::gate(&peers, &bad, soak, now);
    let span = info_span!(
        "promotion.gate",
        after = %clusters.join(","),
        soak = %promotion::human(soak),
        eligible = %gate.eligible.iter().cloned().collect::<Vec<_>>().join(","),
        reason = gate.reason,
        message = %gate.message,
    );
    crate::telemetry::link_causes(&span, clusters.iter().filter_map(|c| fleet.span(c, key)));
    debug!(parent: &span, eligible = gate.eligible.len(), reason = gate.reason, "promotion gate");
    Some(Ok(gate))
}

/// What a gate lets through, as compared between syncs: the eligible tags, or its error.
fn gate_signature(gate: &Result<Gate, PromotionError>) -> String {
    match gate {
        Ok(g) => g.eligible.iter().cloned().collect::<Vec<_>>().join(","),
        Err(e) => format!("error: {e}"),
    }
}

fn requeue_at(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    match next {
        Some(t) => {
            let wait = (t - now).to_std().unwrap_or(Duration::ZERO);
            // A little slack so the requeue lands after the fire time, not just before it.
            Action::requeue(wait + Duration::from_millis(50))
        }
        None => Action::await_change(),
    }
}

/// Writes the annotations and the status when they differ from what the object holds.
async fn write(
    ctx: &ClusterContext,
    image: &Image,
    namespace: &str,
    name: &str,
    stored: &ImageStatus,
    report: &SyncReport,
    reason: Option<TriggerReason>,
) -> Result<(), ReconcileError> {
    let api: Api<Image> = Api::namespaced(ctx.client.clone(), namespace);
    // Each write re-checks leadership: the lease may lapse (or the process be paused) between two.
    let lapsed = |what: &'static str| ReconcileError::NotLeader {
        what,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    // kimup (Go) mirrors the tag in an annotation; the annotation trigger is removed once handled.
    // Metadata first: the watch event of the status write must not still carry the trigger
    // annotation, or the Image would sync a second time.
    let current_tag_annotation = tag_annotation(image).map(str::to_string);
    let mut annotations = serde_json::Map::new();
    if reason == Some(TriggerReason::Annotation) {
        annotations.insert(ANNOTATION_ACTION.into(), serde_json::Value::Null);
    }
    if let Some(tag) = &report.status.tag
        && current_tag_annotation.as_deref() != Some(tag)
    {
        annotations.insert(ANNOTATION_TAG.into(), json!(tag));
    }
    if !annotations.is_empty() {
        let patch = json!({"metadata": {"annotations": annotations}});
        if !ctx.lease_of(image).is_held() {
            return Err(lapsed("annotations"));
        }
        api.patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| ReconcileError::Write {
            what: "annotations",
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    }
    // A reconcile that changed nothing writes nothing: its own watch event would otherwise
    // come back as another reconcile, forever.
    if report.status == *stored {
        return Ok(());
    }
    let span = info_span!(
        "status.write",
        result = report.status.result.map(|r| r.as_str()).unwrap_or("")
    );
    async {
        let patch = json!({
            "apiVersion": "kimup.cloudavenue.io/v1alpha1",
            "kind": "Image",
            "status": report.status,
        });
        if !ctx.lease_of(image).is_held() {
            return Err(lapsed("status"));
        }
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| ReconcileError::Write {
            what: "status",
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })
    }
    .instrument(span)
    .await?;
    // The names are repeated on the event: JSON log lines carry span fields next to the span's
    // own `name`, which hides the Image name there.
    info!(
        cluster = %ctx.cluster,
        namespace,
        name,
        result = report.status.result.map(|r| r.as_str()).unwrap_or(""),
        tag = report.status.tag.as_deref().unwrap_or(""),
        trigger = reason.map(|r| r.as_str()).unwrap_or("converge"),
        "synced"
    );
    Ok(())
}

/// Publishes the report's events (best effort: a failure must not fail the reconcile).
async fn publish(ctx: &ClusterContext, image: &Image, report: &SyncReport) {
    let reference = image.object_ref(&());
    for ev in &report.events {
        let event = Event {
            warning: ev.warning,
            reason: ev.reason.clone(),
            note: truncate(&ev.note, 1000),
            action: "Sync".into(),
        };
        if !ctx.lease_of(image).is_held() {
            return;
        }
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = %ev.reason, "publishing event failed");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn error_policy(image: Arc<Image>, error: &ReconcileError, ctx: Arc<ClusterContext>) -> Action {
    let uid = image.uid().unwrap_or_else(|| image.name_any());
    let n = ctx.failed(&uid);
    let wait = backoff(n);
    crate::metrics::reconcile_error(&ctx.cluster, error.metric_label());
    warn!(cluster = %ctx.cluster, error = %error, label = error.metric_label(), attempt = n, retry_in_ms = wait.as_millis() as u64, "reconcile failed; retrying");
    Action::requeue(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageStatus;

    fn image(yaml: &str) -> Image {
        serde_yaml::from_str(yaml).expect("image yaml")
    }

    const BASE: &str = r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Image
metadata: {name: a, namespace: ns, generation: 2}
spec:
  image: nginx
  baseTag: "1.25.0"
  triggers: [{type: crontab, value: "0 */5 * * * *"}]
  rules: [{name: r, type: semver-minor, actions: [{type: apply}]}]
"#;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    /// A previous run at `t` of generation `g`.
    fn ran(t: &str, g: i64) -> Option<LastRun> {
        Some(LastRun {
            at: at(t),
            generation: Some(g),
        })
    }

    #[test]
    fn first_sight_syncs_at_startup() {
        assert_eq!(
            plan(&image(BASE), None, false, false, at("2026-01-01T00:00:00Z")),
            Plan::Sync(TriggerReason::Startup)
        );
    }

    #[test]
    fn spec_change_syncs() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert_eq!(
            plan(
                &img,
                ran("2026-01-01T00:00:00Z", 1),
                false,
                false,
                at("2026-01-01T00:00:01Z")
            ),
            Plan::Sync(TriggerReason::SpecChange)
        );
    }

    #[test]
    fn our_own_annotation_patch_is_not_a_spec_change() {
        // The Image's first status write has not landed yet (no observedGeneration), but this
        // process already synced generation 2: the watch event of its annotation patch must not
        // sync again.
        let img = image(BASE);
        assert_eq!(
            plan(
                &img,
                ran("2026-01-01T00:01:00Z", 2),
                false,
                false,
                at("2026-01-01T00:01:01Z")
            ),
            Plan::Wait(Some(at("2026-01-01T00:05:00Z")))
        );
    }

    #[test]
    fn cron_waits_then_fires() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            observed_generation: Some(2),
            ..Default::default()
        });
        let last = ran("2026-01-01T00:01:00Z", 2);
        assert_eq!(
            plan(&img, last, false, false, at("2026-01-01T00:02:00Z")),
            Plan::Wait(Some(at("2026-01-01T00:05:00Z")))
        );
        assert_eq!(
            plan(&img, last, false, false, at("2026-01-01T00:05:00Z")),
            Plan::Sync(TriggerReason::Cron)
        );
    }

    #[test]
    fn annotation_forces_a_sync() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            observed_generation: Some(2),
            ..Default::default()
        });
        img.metadata.annotations =
            Some([(ANNOTATION_ACTION.to_string(), "refresh".to_string())].into());
        assert_eq!(
            plan(
                &img,
                ran("2026-01-01T00:01:00Z", 2),
                false,
                false,
                at("2026-01-01T00:01:01Z")
            ),
            Plan::Sync(TriggerReason::Annotation)
        );
    }

    #[test]
    fn a_webhook_push_syncs_at_once() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            observed_generation: Some(2),
            ..Default::default()
        });
        assert_eq!(
            plan(
                &img,
                ran("2026-01-01T00:01:00Z", 2),
                true,
                false,
                at("2026-01-01T00:01:01Z")
            ),
            Plan::Sync(TriggerReason::Webhook)
        );
    }

    #[tokio::test]
    async fn memory_forgets_deleted_images_and_takes_pushes_once() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = Client::try_from(config).expect("client without connecting");
        let client_for_alerts = reqwest::Client::new();
        let registry = Arc::new(
            crate::registry::RegistryClient::new(Default::default()).expect("registry client"),
        );
        let shared = Arc::new(Shared {
            tags: crate::registry::TagCache::new(registry, Duration::ZERO),
            owner: Ownership::single(Leadership::always()),
            http: client_for_alerts,
            pushes: tokio::sync::broadcast::channel(4).0,
            fleet: crate::fleet::Fleet::new(crate::server::Health::default()),
        });
        let ctx = ClusterContext::new(
            "c",
            client,
            shared,
            Ownership::single(Leadership::always()),
            None,
        );
        let run = LastRun {
            at: at("2026-01-01T00:00:00Z"),
            generation: Some(1),
        };
        ctx.set_last_run("a", run);
        ctx.set_last_run("b", run);
        ctx.mark_pushed("b", None);
        ctx.retain(&["a".to_string()].into());
        assert_eq!(ctx.last_run("a"), Some(run));
        assert_eq!(ctx.last_run("b"), None);
        assert_eq!(ctx.take_pushed("b"), None, "deleted Image's push forgotten");
        ctx.mark_pushed("a", None);
        assert_eq!(ctx.take_pushed("a"), Some(vec![]), "a push without traces");
        assert_eq!(ctx.take_pushed("a"), None, "a push is taken once");
        // Every push's span is kept once, the newest when too many wait.
        let span = |n: u8| {
            SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes([n; 16]),
                opentelemetry::trace::SpanId::from_bytes([n; 8]),
                opentelemetry::trace::TraceFlags::SAMPLED,
                false,
                Default::default(),
            )
        };
        ctx.mark_pushed("a", Some(&span(1)));
        ctx.mark_pushed("a", Some(&span(1)));
        ctx.mark_pushed("a", None);
        ctx.mark_pushed("a", Some(&span(2)));
        assert_eq!(ctx.take_pushed("a"), Some(vec![span(1), span(2)]));
        for n in 1..=(MAX_CAUSES as u8 + 2) {
            ctx.mark_pushed("a", Some(&span(n)));
        }
        let kept = ctx.take_pushed("a").expect("pushed");
        assert_eq!(kept.len(), MAX_CAUSES);
        assert_eq!(kept.first(), Some(&span(3)));
        assert_eq!(kept.last(), Some(&span(MAX_CAUSES as u8 + 2)));
        ctx.forget_all();
        assert_eq!(ctx.last_run("a"), None);
    }

    #[test]
    fn a_push_triggers_images_with_a_webhook_trigger_for_its_repository() {
        let hooked = image(&BASE.replace(
            r#"[{type: crontab, value: "0 */5 * * * *"}]"#,
            "[{type: webhook}]",
        ));
        let push = |registry: Option<&str>, repository: &str| RepoEvent {
            registry: registry.map(str::to_string),
            repository: repository.to_string(),
            tag: None,
        };
        assert!(triggered_by(
            &hooked,
            &push(Some("docker.io"), "library/nginx")
        ));
        assert!(triggered_by(&hooked, &push(None, "library/nginx")));
        assert!(!triggered_by(
            &hooked,
            &push(Some("quay.io"), "library/nginx")
        ));
        assert!(!triggered_by(&hooked, &push(None, "library/other")));
        assert!(
            !triggered_by(&image(BASE), &push(None, "library/nginx")),
            "a crontab-only Image waits for its schedule"
        );
    }

    #[test]
    fn only_creations_deletions_and_spec_changes_wake_the_namespace() {
        let img = Arc::new(image(BASE));
        let mut newer = image(BASE);
        newer.metadata.generation = Some(3);
        let mut status_only = image(BASE);
        status_only.status = Some(ImageStatus {
            tag: Some("1.25.1".into()),
            ..Default::default()
        });
        let cached = |c: Option<Arc<Image>>| move |_: &Image| c;
        let apply = |i: &Image| watcher::Event::Apply(i.clone());
        assert!(spec_event(&apply(&img), cached(None)).is_some(), "created");
        assert!(
            spec_event(&apply(&newer), cached(Some(img.clone()))).is_some(),
            "respecified"
        );
        assert!(
            spec_event(&apply(&status_only), cached(Some(img.clone()))).is_none(),
            "a status write"
        );
        assert!(
            spec_event(
                &watcher::Event::Delete(image(BASE)),
                cached(Some(img.clone()))
            )
            .is_some()
        );
        assert!(
            spec_event(&watcher::Event::InitApply(image(BASE)), cached(None)).is_none(),
            "the initial list: every Image reconciles anyway"
        );
    }

    #[test]
    fn promotion_news_is_rollouts_and_promotions_changing() {
        use crate::api::image::{ClusterPattern, Promotion, RolloutStatus};
        let cached = |c: Option<Arc<Image>>| move |_: &Image| c;
        let apply = |i: &Image| watcher::Event::Apply(i.clone());
        let plain = Arc::new(image(BASE));
        let mut tagged = image(BASE);
        tagged.status = Some(ImageStatus {
            tag: Some("1.25.1".into()),
            ..Default::default()
        });
        // Nobody promotes it: neither its creation nor its status writes are news.
        assert_eq!(promotion_news(&apply(&plain), cached(None)), None);
        assert_eq!(
            promotion_news(&apply(&tagged), cached(Some(plain.clone()))),
            None
        );
        let mut rolled = tagged.clone();
        rolled.status.as_mut().expect("status").rollout = Some(Box::new(RolloutStatus {
            tag: "1.25.1".into(),
            since: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        }));
        let key = Some(ImageKey::of(&rolled));
        assert_eq!(
            promotion_news(&apply(&rolled), cached(Some(Arc::new(tagged.clone())))),
            key,
            "a rollout recorded"
        );
        let mut healthy = rolled.clone();
        if let Some(r) = healthy.status.as_mut().and_then(|s| s.rollout.as_mut()) {
            r.healthy_since = Some("2026-01-01T00:01:00Z".into());
        }
        assert_eq!(
            promotion_news(&apply(&healthy), cached(Some(Arc::new(rolled.clone())))),
            key,
            "its health changed"
        );
        let mut promoted = tagged.clone();
        promoted.spec.promotion = Some(Box::new(Promotion {
            after: vec![ClusterPattern("dev".into())],
            soak: "1h".into(),
        }));
        assert_eq!(
            promotion_news(&apply(&promoted), cached(Some(Arc::new(tagged.clone())))),
            key,
            "a promotion added"
        );
        assert_eq!(
            promotion_news(&apply(&promoted), cached(None)),
            key,
            "created"
        );
        assert_eq!(
            promotion_news(&watcher::Event::Delete(healthy.clone()), cached(None)),
            key,
            "deleted"
        );
        assert_eq!(
            promotion_news(&watcher::Event::InitApply(promoted), cached(None)),
            None,
            "the initial list"
        );
    }

    #[test]
    fn a_tag_annotation_equal_to_the_status_tag_costs_no_map() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            tag: Some("1.25.1".into()),
            ..Default::default()
        });
        img.metadata.annotations =
            Some([(ANNOTATION_TAG.to_string(), "1.25.1".to_string())].into());
        slim_image(&mut img);
        assert_eq!(img.metadata.annotations, Some(Default::default()));
        assert_eq!(tag_annotation(&img), Some("1.25.1"));
        // Another value, or other annotations, are kept as they are.
        img.metadata.annotations =
            Some([(ANNOTATION_TAG.to_string(), "1.25.0".to_string())].into());
        slim_image(&mut img);
        assert_eq!(tag_annotation(&img), Some("1.25.0"));
        img.metadata.annotations = Some(
            [
                (ANNOTATION_TAG.to_string(), "1.25.1".to_string()),
                (ANNOTATION_ACTION.to_string(), "refresh".to_string()),
            ]
            .into(),
        );
        slim_image(&mut img);
        assert_eq!(img.metadata.annotations.as_ref().map(|a| a.len()), Some(2));
        assert_eq!(tag_annotation(&img), Some("1.25.1"));
        img.metadata.annotations = None;
        assert_eq!(tag_annotation(&img), None);
    }

    #[test]
    fn invalid_cron_waits_for_a_change() {
        let mut img = image(&BASE.replace("0 */5 * * * *", "not a cron"));
        img.status = Some(ImageStatus {
            observed_generation: Some(2),
            ..Default::default()
        });
        assert_eq!(
            plan(
                &img,
                ran("2026-01-01T00:01:00Z", 2),
                false,
                false,
                at("2026-01-02T00:00:00Z")
            ),
            Plan::Wait(None)
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn a_resolved_conflict_syncs_at_once() {
        let mut img = image(BASE);
        img.status = Some(ImageStatus {
            observed_generation: Some(2),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: sync::CONDITION_READY.into(),
                status: "False".into(),
                reason: sync::REASON_CONFLICT.into(),
                message: String::new(),
                observed_generation: Some(2),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            }],
            ..Default::default()
        });
        let last = ran("2026-01-01T00:01:00Z", 2);
        let now = at("2026-01-01T00:01:01Z");
        assert_eq!(
            plan(&img, last, false, true, now),
            Plan::Wait(Some(at("2026-01-01T00:05:00Z")))
        );
        assert_eq!(
            plan(&img, last, false, false, now),
            Plan::Sync(TriggerReason::SpecChange)
        );
    }
}
