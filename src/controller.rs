//! The Image controller of one cluster: decides when an Image syncs, runs the sync, writes status
//! and events. Only acts while this replica leads; standbys keep the watch warm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::actions::apply::FIELD_MANAGER;
use crate::api::{ANNOTATION_ACTION, ANNOTATION_TAG, Image, TriggerType};
use crate::sync::{self, Shared, SyncReport, TriggerReason};

/// Errors that make the controller retry an Image later.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Writing status or annotations failed.
    #[error("writing {what} of {namespace}/{name}: {source}")]
    Write {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Write { .. } => "write",
        }
    }
}

/// When each Image last ran and with which generation, in memory: the start-up sync, the cron
/// schedule and spec changes are judged from it. The generation is remembered because the
/// Image's own status (observedGeneration) may not have been written back yet when a watch
/// event for our annotation patch arrives.
#[derive(Default)]
struct Memory {
    last_run: HashMap<String, LastRun>,
    /// Images a registry webhook asked to sync, by uid.
    pushed: std::collections::HashSet<String>,
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
    /// True while this replica leads.
    pub leader: watch::Receiver<bool>,
    recorder: Recorder,
    memory: Mutex<Memory>,
}

impl ClusterContext {
    /// A context for `cluster`.
    pub fn new(
        cluster: &str,
        client: Client,
        shared: Arc<Shared>,
        leader: watch::Receiver<bool>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "kimup".into(),
            instance,
        };
        Self {
            cluster: cluster.to_string(),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            shared,
            leader,
            memory: Mutex::new(Memory::default()),
        }
    }

    fn last_run(&self, uid: &str) -> Option<LastRun> {
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.last_run.get(uid).copied())
    }

    fn set_last_run(&self, uid: &str, run: LastRun) {
        if let Ok(mut m) = self.memory.lock() {
            m.last_run.insert(uid.to_string(), run);
        }
    }

    fn mark_pushed(&self, uid: &str) {
        if let Ok(mut m) = self.memory.lock() {
            m.pushed.insert(uid.to_string());
        }
    }

    fn take_pushed(&self, uid: &str) -> bool {
        self.memory
            .lock()
            .map(|mut m| m.pushed.remove(uid))
            .unwrap_or(false)
    }

    /// Forgets Images that no longer exist (their uid is not in `live`).
    fn retain(&self, live: &std::collections::HashSet<String>) {
        if let Ok(mut m) = self.memory.lock() {
            m.last_run.retain(|uid, _| live.contains(uid));
            m.pushed.retain(|uid| live.contains(uid));
        }
    }

    /// Forget every Image, so that each syncs again (a new leader re-syncs everything).
    pub fn forget_all(&self) {
        if let Ok(mut m) = self.memory.lock() {
            m.last_run.clear();
        }
    }
}

/// What the controller should do with an Image now (pure).
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Sync now, for this reason.
    Sync(TriggerReason),
    /// Nothing to do until this time (next cron fire), or until a change when None.
    Wait(Option<DateTime<Utc>>),
}

/// Decides whether an Image syncs now (pure: everything it needs is passed in).
pub fn plan(image: &Image, last_run: Option<LastRun>, pushed: bool, now: DateTime<Utc>) -> Plan {
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
    let relist = leadership_gained(ctx.leader.clone(), move || ctx_for_leader.forget_all());
    let controller = Controller::new(images, watcher::Config::default().any_semantic());
    health.set_images(&ctx.cluster, Some(controller.store()));
    let pushed = pushed_images(ctx.clone(), controller.store());
    // Deleted Images never reach `reconcile`: drop what the memory holds for them now and then.
    let (store, ctx_for_gc) = (controller.store(), ctx.clone());
    let gc = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            let live = store.state().iter().filter_map(|i| i.uid()).collect();
            ctx_for_gc.retain(&live);
        }
    });
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .reconcile_all_on(pushed)
        .reconcile_all_on(relist)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            let (health, cluster) = (health.clone(), ctx.cluster.clone());
            async move {
                match res {
                    Ok(_) => health.set_if_changed(&cluster, Ok(())),
                    // The watch failed (API server gone, credentials refused): the cluster is down
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
}

/// Marks the Images of this cluster that a registry webhook announces a push for (those with a
/// webhook trigger and the pushed repository) and yields once per push that marked any, to
/// re-queue every Image: `plan` syncs the marked ones and leaves the others waiting. (Queueing
/// only the marked ones needs kube's unstable `reconcile_on`.)
fn pushed_images(
    ctx: Arc<ClusterContext>,
    store: kube::runtime::reflector::Store<Image>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let rx = ctx.shared.pushes.subscribe();
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => return Some((event, rx)),
                // Missed pushes are seen at the Images' next trigger; keep listening.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "webhook pushes dropped: controller too slow");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .flat_map(move |event| {
        let matching = store
            .state()
            .into_iter()
            .filter(|img| {
                img.spec
                    .triggers
                    .iter()
                    .any(|t| t.type_ == TriggerType::Webhook)
            })
            .filter(|img| {
                sync::image_ref(img).is_ok_and(|r| crate::triggers::webhook::matches(&event, &r))
            })
            .filter_map(|img| img.uid())
            .inspect(|uid| ctx.mark_pushed(uid))
            .count();
        futures::stream::iter((matching > 0).then_some(()))
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

#[instrument(skip_all, fields(cluster = %ctx.cluster, namespace = %image.namespace().unwrap_or_default(), name = %image.name_any()))]
async fn reconcile(image: Arc<Image>, ctx: Arc<ClusterContext>) -> Result<Action, ReconcileError> {
    let namespace = image.namespace().unwrap_or_default();
    let name = image.name_any();
    if !*ctx.leader.borrow() {
        // Standby: keep the cache warm, act on nothing. Leadership change re-queues everything.
        return Ok(Action::await_change());
    }
    let uid = image.uid().unwrap_or_else(|| format!("{namespace}/{name}"));
    let now = Utc::now();
    let reason = match plan(&image, ctx.last_run(&uid), ctx.take_pushed(&uid), now) {
        Plan::Sync(reason) => reason,
        Plan::Wait(next) => return Ok(requeue_at(next, now)),
    };
    ctx.set_last_run(
        &uid,
        LastRun {
            at: now,
            generation: image.metadata.generation,
        },
    );
    let report = sync::sync_image(&ctx.shared, &ctx.client, &ctx.cluster, &image, reason).await;
    // Leadership may have been lost while the sync ran: a deposed leader writes nothing.
    if !*ctx.leader.borrow() {
        warn!("leadership lost during sync; dropping its status write");
        return Ok(Action::await_change());
    }
    write(&ctx, &image, &namespace, &name, &report, reason).await?;
    let next = sync::schedules(&image)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.next_after(now))
        .min();
    Ok(requeue_at(next, Utc::now()))
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

async fn write(
    ctx: &ClusterContext,
    image: &Image,
    namespace: &str,
    name: &str,
    report: &SyncReport,
    reason: TriggerReason,
) -> Result<(), ReconcileError> {
    let api: Api<Image> = Api::namespaced(ctx.client.clone(), namespace);
    // kimup (Go) mirrors the tag in an annotation; the annotation trigger is removed once handled.
    // Metadata first: the watch event of the status write must not still carry the trigger
    // annotation, or the Image would sync a second time.
    let current_tag_annotation = image.annotations().get(ANNOTATION_TAG).cloned();
    let mut annotations = serde_json::Map::new();
    if reason == TriggerReason::Annotation {
        annotations.insert(ANNOTATION_ACTION.into(), serde_json::Value::Null);
    }
    if let Some(tag) = &report.status.tag
        && current_tag_annotation.as_deref() != Some(tag)
    {
        annotations.insert(ANNOTATION_TAG.into(), json!(tag));
    }
    if !annotations.is_empty() {
        let patch = json!({"metadata": {"annotations": annotations}});
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

    let reference = image.object_ref(&());
    for ev in &report.events {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.clone(),
            note: Some(truncate(&ev.note, 1000)),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            // Events are best effort: a failure must not fail the sync or hide its status.
            warn!(error = %e, reason = %ev.reason, "publishing event failed");
        }
    }
    // The names are repeated on the event: JSON log lines carry span fields next to the span's
    // own `name`, which hides the Image name there.
    info!(
        cluster = %ctx.cluster,
        namespace,
        name,
        result = report.status.result.map(|r| r.as_str()).unwrap_or(""),
        tag = report.status.tag.as_deref().unwrap_or(""),
        trigger = reason.as_str(),
        "synced"
    );
    Ok(())
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

fn error_policy(_image: Arc<Image>, error: &ReconcileError, ctx: Arc<ClusterContext>) -> Action {
    warn!(cluster = %ctx.cluster, error = %error, label = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
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
            plan(&image(BASE), None, false, at("2026-01-01T00:00:00Z")),
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
            plan(&img, last, false, at("2026-01-01T00:02:00Z")),
            Plan::Wait(Some(at("2026-01-01T00:05:00Z")))
        );
        assert_eq!(
            plan(&img, last, false, at("2026-01-01T00:05:00Z")),
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
            http: client_for_alerts,
            pushes: tokio::sync::broadcast::channel(4).0,
        });
        let ctx = ClusterContext::new("c", client, shared, watch::channel(true).1, None);
        let run = LastRun {
            at: at("2026-01-01T00:00:00Z"),
            generation: Some(1),
        };
        ctx.set_last_run("a", run);
        ctx.set_last_run("b", run);
        ctx.mark_pushed("b");
        ctx.retain(&["a".to_string()].into());
        assert_eq!(ctx.last_run("a"), Some(run));
        assert_eq!(ctx.last_run("b"), None);
        assert!(!ctx.take_pushed("b"), "deleted Image's push forgotten");
        ctx.mark_pushed("a");
        assert!(ctx.take_pushed("a"));
        assert!(!ctx.take_pushed("a"), "a push is taken once");
        ctx.forget_all();
        assert_eq!(ctx.last_run("a"), None);
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
                at("2026-01-02T00:00:00Z")
            ),
            Plan::Wait(None)
        );
    }
}
