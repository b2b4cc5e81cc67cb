//! One Image sync: validate -> credentials -> tags (shared cache) -> every rule -> its actions ->
//! pending alerts -> converge workloads -> status. A failing rule or action never stops the
//! others; every failure is named in the status and the first decides `result`.
//!
//! A reconcile without a trigger runs only the convergence ([`converge_image`]): no registry
//! request, and the status is rewritten only when the workloads' state changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use tracing::{Instrument, info, info_span, warn};

use crate::actions::alert::{self, AlertError};
use crate::actions::apply::{self, Desired, Verdict, WorkloadOutcome};
use crate::actions::template::AlertContext;
use crate::actions::values::ValueResolver;
use crate::api::image::{
    AlertRecord, ImageRule, PendingAlert, RolloutStatus, WorkloadState, WorkloadsStatus,
};
use crate::api::{ActionType, Image, ImageStatus, SyncResult, TriggerType};
use crate::promotion::{self, CONDITION_PROMOTION, Gate, PromotionError};
use crate::registry::credentials::{self, Credential, CredentialError};
use crate::registry::reference::{self, ImageRef, ReferenceError};
use crate::registry::{RegistryError, TagCache, TlsMode};
use crate::rules::{self, RuleError, RuleType};
use crate::triggers::cron::{CronError, Schedule};
use crate::workloads::Workloads;

/// What failed in a sync, each mapped to the status result of the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// `spec.image` is not a valid repository.
    #[error("invalid image {image:?}: {source}")]
    Image {
        image: String,
        #[source]
        source: ReferenceError,
    },
    /// `spec.image` names a tag or digest; kimup takes the tag from `baseTag`.
    #[error("image {0:?} must not carry a tag or digest: put the tag in baseTag")]
    ImageHasTag(String),
    /// A crontab trigger does not parse.
    #[error("trigger {index}: {source}")]
    Cron {
        index: usize,
        #[source]
        source: CronError,
    },
    /// A pull secret is missing.
    #[error("pull secret {0} not found")]
    SecretNotFound(String),
    /// A pull secret is malformed.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// Reading a pull secret failed.
    #[error("reading pull secret {name}: {source}")]
    SecretApi {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Registry failure.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A rule could not be evaluated.
    #[error("rule {rule:?}: {source}")]
    Rule {
        rule: String,
        #[source]
        source: RuleError,
    },
    /// An alert failed.
    #[error("rule {rule:?}: {source}")]
    Alert {
        rule: String,
        #[source]
        source: AlertError,
    },
    /// An action kimup lists but does not implement.
    #[error("rule {rule:?}: action request-approval is not supported by kimup")]
    Unsupported { rule: String },
    /// `spec.promotion` cannot be followed.
    #[error(transparent)]
    Promotion(#[from] PromotionError),
}

impl SyncError {
    /// Status result (kimup's values).
    pub fn result(&self) -> SyncResult {
        match self {
            SyncError::Image { .. } | SyncError::ImageHasTag(_) => SyncResult::GetImageError,
            SyncError::Cron { .. } => SyncResult::Error,
            SyncError::SecretNotFound(_)
            | SyncError::Credentials(_)
            | SyncError::SecretApi { .. } => SyncResult::PullSecretsError,
            SyncError::Registry(e) => e.result(),
            SyncError::Rule { .. } => SyncResult::GetRuleError,
            SyncError::Alert { .. } | SyncError::Unsupported { .. } => SyncResult::ActionError,
            SyncError::Promotion(_) => SyncResult::Error,
        }
    }

    /// Event reason (CamelCase).
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Image { .. } | SyncError::ImageHasTag(_) => "InvalidImage",
            SyncError::Cron { .. } => "InvalidTrigger",
            SyncError::SecretNotFound(_)
            | SyncError::Credentials(_)
            | SyncError::SecretApi { .. } => "PullSecretError",
            SyncError::Registry(_) => "RegistryError",
            SyncError::Rule { .. } => "RuleError",
            SyncError::Alert { .. } => "AlertFailed",
            SyncError::Unsupported { .. } => "UnsupportedAction",
            SyncError::Promotion(_) => "InvalidPromotion",
        }
    }

    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SyncError::Image { .. } | SyncError::ImageHasTag(_) => "image",
            SyncError::Cron { .. } => "cron",
            SyncError::SecretNotFound(_) => "secret_not_found",
            SyncError::Credentials(_) => "credentials",
            SyncError::SecretApi { .. } => "secret_api",
            SyncError::Registry(e) => e.metric_label(),
            SyncError::Rule { .. } => "rule",
            SyncError::Alert { .. } => "alert",
            SyncError::Unsupported { .. } => "unsupported",
            SyncError::Promotion(e) => e.metric_label(),
        }
    }
}

/// Why a sync ran (span attribute and log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerReason {
    /// First sync since this process (or leadership) started.
    Startup,
    /// The spec changed (generation).
    SpecChange,
    /// A crontab trigger fired.
    Cron,
    /// The `kimup.cloudavenue.io/action` annotation asked.
    Annotation,
    /// A registry webhook.
    Webhook,
    /// A promotion let a new tag through (a soak completed in a gate cluster).
    Promotion,
}

impl TriggerReason {
    /// Label.
    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerReason::Startup => "startup",
            TriggerReason::SpecChange => "spec-change",
            TriggerReason::Cron => "crontab",
            TriggerReason::Annotation => "annotation",
            TriggerReason::Webhook => "webhook",
            TriggerReason::Promotion => "promotion",
        }
    }
}

/// An event to publish on the Image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub note: String,
}

/// What a reconcile produced: the status to write and the events to publish.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// Status to write (complete: it is applied under one field manager).
    pub status: ImageStatus,
    /// Events.
    pub events: Vec<SyncEvent>,
    /// Workloads apply looked at, and what it did.
    pub workloads: Vec<WorkloadOutcome>,
}

/// What a reconcile needs besides the Image: the cluster's watched workloads, whether another
/// Image claims the repository, and whether this replica may still write.
pub struct Scope<'a> {
    /// Watched workloads and namespaces of the Image's cluster.
    pub workloads: &'a Workloads,
    /// Set when another Image of the namespace applies the same repository: both are refused.
    pub conflict: Option<String>,
    /// Asked before every write (leadership): once false, nothing more is written.
    pub may_write: &'a (dyn Fn() -> bool + Send + Sync),
    /// The promotion gate of an Image with `spec.promotion` (None without): the tags it lets
    /// through, or why it cannot be followed.
    pub promotion: Option<Result<Gate, PromotionError>>,
    /// Whether `status.rollout` is kept: the Image or the same Image in another member cluster
    /// has a promotion (the others do not pay for it).
    pub record_rollout: bool,
}

/// Delivered alerts kept per (rule, action): enough to never resend a recent tag, bounded so
/// that a long-lived Image's status does not grow.
pub const DELIVERED_PER_ACTION: usize = 10;
/// Pending alerts kept at most; older ones are dropped with a Warning event.
pub const MAX_PENDING_ALERTS: usize = 20;
/// Workloads listed by name in `status.workloads.notUpToDate`.
pub const MAX_LISTED_WORKLOADS: usize = 20;

/// Condition types kimup writes.
pub const CONDITION_READY: &str = "Ready";
/// The last registry sync ran every rule and action without failure.
pub const CONDITION_SYNCED: &str = "Synced";
/// Every opted-in workload of the repository runs `status.tag`.
pub const CONDITION_WORKLOADS: &str = "WorkloadsUpToDate";
/// Ready's reason when two Images apply one repository in one namespace.
pub const REASON_CONFLICT: &str = "DuplicateRepository";

/// Another Image of the same namespace that applies the same repository, if any (pure): both
/// are refused, so that two Images never fight over the same workloads.
pub fn conflicting<'a>(
    image: &Image,
    others: impl IntoIterator<Item = &'a Image>,
) -> Option<String> {
    if !image.has_apply() {
        return None;
    }
    let mine = image_ref(image).ok()?;
    let ns = image.metadata.namespace.as_deref();
    let name = image.metadata.name.as_deref().unwrap_or_default();
    let mut names: Vec<&str> = others
        .into_iter()
        .filter(|o| o.metadata.namespace.as_deref() == ns)
        .filter(|o| o.metadata.name.as_deref().unwrap_or_default() != name)
        .filter(|o| o.has_apply())
        .filter(|o| image_ref(o).is_ok_and(|r| r.same_repository(&mine)))
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort_unstable();
    Some(format!(
        "Images {} in namespace {} all apply repository {}: kimup serves none of them until only one does",
        std::iter::once(name)
            .chain(names)
            .collect::<Vec<_>>()
            .join(", "),
        ns.unwrap_or_default(),
        mine.repository_key()
    ))
}

/// Process-wide services a sync needs.
pub struct Shared {
    /// The one tag cache.
    pub tags: TagCache,
    /// HTTP client for alerts.
    pub http: reqwest::Client,
    /// Which shards this replica may act for (the leader election without sharding); each
    /// cluster's controller asks the Image's shard before every write.
    pub owner: crate::shards::Ownership,
    /// Registry pushes announced by webhooks, with the span that announced each, fanned out to
    /// every cluster's controller.
    pub pushes: tokio::sync::broadcast::Sender<crate::triggers::webhook::Push>,
    /// The member clusters' Image caches, which promotions read.
    pub fleet: crate::fleet::Fleet,
}

/// Validates the Image's triggers and returns its cron schedules (pure).
pub fn schedules(image: &Image) -> Result<Vec<Schedule>, SyncError> {
    let mut out = Vec::new();
    for (index, t) in image.spec.triggers.iter().enumerate() {
        if t.type_ == TriggerType::Crontab {
            let value = t.value.as_deref().unwrap_or("");
            out.push(
                value
                    .parse::<Schedule>()
                    .map_err(|source| SyncError::Cron { index, source })?,
            );
        }
    }
    Ok(out)
}

/// Parses `spec.image` into a repository reference (pure).
pub fn image_ref(image: &Image) -> Result<ImageRef, SyncError> {
    let r = reference::parse(image.spec.image.trim()).map_err(|source| SyncError::Image {
        image: image.spec.image.clone(),
        source,
    })?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(SyncError::ImageHasTag(image.spec.image.clone()));
    }
    Ok(r)
}

/// Reads the Image's pull secrets and picks the credential for `registry`.
pub async fn credential_for(
    values: &mut ValueResolver,
    image: &Image,
    registry: &str,
) -> Result<Option<Credential>, SyncError> {
    let mut all: Vec<(String, Credential)> = Vec::new();
    for s in &image.spec.image_pull_secrets {
        let name = s.name.clone();
        let secret: Secret = values
            .secret(&name)
            .await
            .map_err(|e| match e {
                crate::actions::values::ValueError::Api { source, .. } => SyncError::SecretApi {
                    name: name.clone(),
                    source,
                },
                _ => SyncError::SecretNotFound(name.clone()),
            })?
            .ok_or_else(|| SyncError::SecretNotFound(name.clone()))?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        all.extend(credentials::parse_secret(
            &name,
            secret.type_.as_deref(),
            &data,
        )?);
    }
    Ok(credentials::select(registry, &all).cloned())
}

/// Runs one sync of `image` in `cluster`, from `previous` (its status, or what an earlier
/// reconcile learned and could not write yet), and returns the status to write. Never panics;
/// every failure becomes a status result, a message and a Warning event.
pub async fn sync_image(
    shared: &Shared,
    client: &Client,
    cluster: &str,
    image: &Image,
    previous: &ImageStatus,
    scope: &Scope<'_>,
    trigger: TriggerReason,
) -> SyncReport {
    let namespace = image.metadata.namespace.clone().unwrap_or_default();
    let name = image.metadata.name.clone().unwrap_or_default();
    let span = info_span!(
        "image.sync",
        cluster = %cluster,
        namespace = %namespace,
        name = %name,
        image = %image.spec.image,
        trigger = trigger.as_str(),
        result = tracing::field::Empty,
    );
    let started = Instant::now();
    let report = run(shared, client, image, previous, scope, &namespace, &name)
        .instrument(span.clone())
        .await;
    let result = report
        .status
        .result
        .map(|r| r.as_str())
        .unwrap_or("Unknown");
    span.record("result", result);
    crate::metrics::sync_done(cluster, result, started.elapsed().as_secs_f64());
    report
}

/// Converges the Image's workloads to its `status.tag` without asking the registry: what a
/// workload or namespace change, or a reconcile between triggers, runs.
pub async fn converge_image(
    shared: &Shared,
    client: &Client,
    image: &Image,
    previous: &ImageStatus,
    scope: &Scope<'_>,
) -> SyncReport {
    let namespace = image.metadata.namespace.clone().unwrap_or_default();
    let name = image.metadata.name.clone().unwrap_or_default();
    let outcomes = converge(
        client,
        image,
        previous.tag.as_deref(),
        previous.pinned_digest.as_deref(),
        scope,
        &namespace,
    )
    .await;
    let mut state = State::from_previous(image, previous);
    let rollout = judge_rollout(
        shared,
        client,
        image,
        (&namespace, &name),
        previous,
        (previous.tag.as_deref(), outcomes.as_deref()),
        scope,
        &mut state,
    )
    .await;
    let synced = carried_sync(previous);
    let status = compose(
        image,
        previous,
        Composed {
            tag: previous.tag.clone(),
            digest: previous.digest.clone(),
            pinned: previous.pinned_digest.clone(),
            alerts: state.alerts,
            pending_alerts: state.pending,
            time: previous.time.clone(),
            synced,
            conflict: scope.conflict.clone(),
            outcomes: outcomes.as_deref(),
            rollout,
            promotion: scope.promotion.as_ref(),
        },
    );
    let mut events = state.events;
    workload_events(previous, outcomes.as_deref(), &mut events);
    conflict_event(previous, scope.conflict.as_deref(), &mut events);
    promotion_event(previous, scope.promotion.as_ref(), &mut events);
    SyncReport {
        status,
        events,
        workloads: outcomes.unwrap_or_default(),
    }
}

/// The outcome of the last registry sync, as recorded in the `Synced` condition.
#[derive(Clone, Debug, PartialEq)]
struct SyncOutcome {
    /// First failure's result, or Success.
    result: SyncResult,
    /// Every failure, or what the rules found.
    message: String,
}

fn carried_sync(previous: &ImageStatus) -> SyncOutcome {
    let cond = previous
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_SYNCED);
    match cond {
        Some(c) if c.status == "False" => SyncOutcome {
            result: SyncResult::from_name(&c.reason).unwrap_or(SyncResult::Error),
            message: c.message.clone(),
        },
        Some(c) => SyncOutcome {
            result: SyncResult::Success,
            message: c.message.clone(),
        },
        // A status written by an older kimup: its result and message are the sync's.
        None => SyncOutcome {
            result: previous.result.unwrap_or(SyncResult::Success),
            message: previous.message.clone().unwrap_or_default(),
        },
    }
}

struct State {
    current: String,
    digest: Option<String>,
    pinned: Option<String>,
    alerts: Vec<AlertRecord>,
    pending: Vec<PendingAlert>,
    events: Vec<SyncEvent>,
    failures: Vec<SyncError>,
    notes: Vec<String>,
}

impl State {
    fn from_previous(image: &Image, previous: &ImageStatus) -> Self {
        State {
            current: previous
                .tag
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| image.spec.base_tag.clone()),
            digest: previous.digest.clone(),
            pinned: previous.pinned_digest.clone(),
            alerts: previous.alerts.clone(),
            pending: previous.pending_alerts.clone(),
            events: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn fail(&mut self, e: SyncError) {
        warn!(error = %e, result = e.result().as_str(), "sync step failed");
        self.events.push(SyncEvent {
            warning: true,
            reason: e.reason().to_string(),
            note: e.to_string(),
        });
        self.failures.push(e);
    }
}

async fn run(
    shared: &Shared,
    client: &Client,
    image: &Image,
    previous: &ImageStatus,
    scope: &Scope<'_>,
    namespace: &str,
    name: &str,
) -> SyncReport {
    let mut state = State::from_previous(image, previous);
    // A conflict refuses the whole Image: no rule, no action, no workload.
    let rules_ran = if scope.conflict.is_some() {
        false
    } else {
        steps(
            shared, client, image, namespace, name, previous, scope, &mut state,
        )
        .await
    };
    let now = chrono::Utc::now();
    let synced = if scope.conflict.is_some() {
        carried_sync(previous)
    } else {
        match state.failures.first() {
            Some(first) => SyncOutcome {
                result: first.result(),
                message: state
                    .failures
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            None => SyncOutcome {
                result: SyncResult::Success,
                message: state.notes.join("; "),
            },
        }
    };
    // status.tag becomes the desired tag only once rules have run: an Image whose first sync
    // failed never pushes its baseTag onto running workloads.
    let tag = if rules_ran {
        Some(state.current.clone())
    } else {
        previous.tag.clone()
    };
    let outcomes = converge(
        client,
        image,
        tag.as_deref(),
        state.pinned.as_deref(),
        scope,
        namespace,
    )
    .await;
    let rollout = judge_rollout(
        shared,
        client,
        image,
        (namespace, name),
        previous,
        (tag.as_deref(), outcomes.as_deref()),
        scope,
        &mut state,
    )
    .await;
    let mut events = state.events;
    workload_events(previous, outcomes.as_deref(), &mut events);
    conflict_event(previous, scope.conflict.as_deref(), &mut events);
    promotion_event(previous, scope.promotion.as_ref(), &mut events);
    let status = compose(
        image,
        previous,
        Composed {
            tag,
            digest: state.digest,
            pinned: state.pinned,
            alerts: state.alerts,
            pending_alerts: state.pending,
            time: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            synced,
            conflict: scope.conflict.clone(),
            outcomes: outcomes.as_deref(),
            rollout,
            promotion: scope.promotion.as_ref(),
        },
    );
    let status = keep_time_if_unchanged(status, previous, now, heartbeat(image, now));
    SyncReport {
        status,
        events,
        workloads: outcomes.unwrap_or_default(),
    }
}

/// `status.rollout` after this reconcile, reported ([`report_rollout`]) when it newly failed.
#[allow(clippy::too_many_arguments)]
async fn judge_rollout(
    shared: &Shared,
    client: &Client,
    image: &Image,
    (namespace, name): (&str, &str),
    previous: &ImageStatus,
    (tag, outcomes): (Option<&str>, Option<&[WorkloadOutcome]>),
    scope: &Scope<'_>,
    state: &mut State,
) -> Option<RolloutStatus> {
    let rollout = rollout_of(image, previous, tag, outcomes, scope, chrono::Utc::now());
    report_rollout(
        shared,
        client,
        image,
        namespace,
        name,
        previous,
        rollout.as_ref(),
        scope,
        state,
    )
    .await;
    rollout
}

/// The rollout of `tag` judged from apply's outcomes, when the Image records one (see
/// [`Scope::record_rollout`]) (pure but for the clock passed in).
fn rollout_of(
    image: &Image,
    previous: &ImageStatus,
    tag: Option<&str>,
    outcomes: Option<&[WorkloadOutcome]>,
    scope: &Scope<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<RolloutStatus> {
    if !scope.record_rollout {
        return None;
    }
    let tag = tag.filter(|t| !t.is_empty())?;
    // Refused Images do not converge: their rollout is what it was.
    if scope.conflict.is_some() {
        return previous.rollout.as_deref().cloned();
    }
    let prev = previous.rollout.as_deref();
    let since = promotion::rollout_since(prev, tag, now);
    let judged = promotion::judge(image.has_apply(), outcomes, since, now);
    Some(promotion::next_rollout(prev, tag, &judged, now))
}

/// Reports a rollout that newly failed here: a Warning event, and the alert actions of the
/// Image's rules told, once per tag. Failure alerts go out at once (a failure is found between
/// syncs) and are retried at every reconcile until delivered.
#[allow(clippy::too_many_arguments)]
async fn report_rollout(
    shared: &Shared,
    client: &Client,
    image: &Image,
    namespace: &str,
    name: &str,
    previous: &ImageStatus,
    rollout: Option<&RolloutStatus>,
    scope: &Scope<'_>,
    state: &mut State,
) {
    if let Some(r) = rollout
        && promotion::newly_failed(previous.rollout.as_deref(), r)
    {
        warn!(tag = %r.tag, message = %r.message, "rollout failed");
        state.events.push(SyncEvent {
            warning: true,
            reason: "RolloutFailed".into(),
            note: format!(
                "{}: {}; clusters promoted after this one will not take it",
                r.tag, r.message
            ),
        });
        let actual = previous
            .rollout
            .as_deref()
            .and_then(|p| p.earlier.first())
            .map(|e| e.tag.clone())
            .unwrap_or_default();
        for rule in &image.spec.rules {
            for action in rule.actions.iter().filter(|a| a.type_.is_alert()) {
                queue_alert(
                    state,
                    &rule.name,
                    action.type_,
                    &r.tag,
                    None,
                    &actual,
                    Some(&r.message),
                );
            }
        }
    }
    if !state.pending.iter().any(|p| p.failure.is_some()) {
        return;
    }
    let (failures, others): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending)
        .into_iter()
        .partition(|p| p.failure.is_some());
    state.pending = failures;
    let mut values = ValueResolver::new(client.clone(), namespace);
    send_pending_alerts(
        shared,
        client,
        image,
        namespace,
        name,
        &Arc::new(Vec::new()),
        scope,
        &mut values,
        state,
    )
    .await;
    let failures = std::mem::replace(&mut state.pending, others);
    state.pending.extend(failures);
}

/// A Warning event when the promotion gate starts halting on a tag that failed elsewhere (not at
/// every reconcile). An unusable `spec.promotion` is a sync failure, with its own event.
fn promotion_event(
    previous: &ImageStatus,
    gate: Option<&Result<Gate, PromotionError>>,
    events: &mut Vec<SyncEvent>,
) {
    let before = previous
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_PROMOTION)
        .map(|c| c.reason.as_str());
    match gate {
        Some(Ok(g)) if g.reason == "Halted" && before != Some("Halted") => {
            events.push(SyncEvent {
                warning: true,
                reason: "PromotionHalted".into(),
                note: g.message.clone(),
            });
        }
        _ => {}
    }
}

/// Unchanged syncs write at most once in this many (the heartbeat of `status.time`).
pub const HEARTBEAT_SYNCS: u32 = 10;
/// The heartbeat of an Image without a crontab (webhook and annotation triggers).
pub const HEARTBEAT_WITHOUT_CRONTAB: Duration = Duration::from_secs(3600);

/// How long an unchanged status keeps its `time`: [`HEARTBEAT_SYNCS`] of the Image's shortest
/// crontab interval, so that a sync that changes nothing writes nothing nine times in ten (pure
/// but for the clock passed in).
pub fn heartbeat(image: &Image, now: chrono::DateTime<chrono::Utc>) -> Duration {
    let shortest = schedules(image)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            let first = s.next_after(now)?;
            let second = s.next_after(first)?;
            (second - first).to_std().ok()
        })
        .min();
    match shortest {
        Some(interval) => interval.saturating_mul(HEARTBEAT_SYNCS),
        None => HEARTBEAT_WITHOUT_CRONTAB,
    }
}

/// `status.time` (Last-Sync) moves when the status changes, or once the stored time is
/// `heartbeat` old; otherwise the stored time is kept, the status equals the stored one, and the
/// controller writes nothing (pure).
pub fn keep_time_if_unchanged(
    mut status: ImageStatus,
    previous: &ImageStatus,
    now: chrono::DateTime<chrono::Utc>,
    heartbeat: Duration,
) -> ImageStatus {
    let Some(stored) = previous.time.as_deref() else {
        return status;
    };
    let fresh = chrono::DateTime::parse_from_rfc3339(stored)
        .ok()
        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok())
        .is_some_and(|age| age < heartbeat);
    if !fresh {
        return status;
    }
    let time = std::mem::replace(&mut status.time, previous.time.clone());
    if status != *previous {
        status.time = time;
    }
    status
}

/// What [`compose`] builds a status from.
struct Composed<'a> {
    tag: Option<String>,
    digest: Option<String>,
    pinned: Option<String>,
    alerts: Vec<AlertRecord>,
    pending_alerts: Vec<PendingAlert>,
    time: Option<String>,
    synced: SyncOutcome,
    conflict: Option<String>,
    /// None when apply does not run for this Image (no apply action, no tag yet, a conflict).
    outcomes: Option<&'a [WorkloadOutcome]>,
    /// `status.rollout`.
    rollout: Option<RolloutStatus>,
    /// The promotion gate, for the `Promotion` condition.
    promotion: Option<&'a Result<Gate, PromotionError>>,
}

/// Builds the status (pure): `result` is the conflict's, else the sync's first failure, else
/// ActionError while a workload does not run `tag`, else Success.
fn compose(image: &Image, previous: &ImageStatus, c: Composed<'_>) -> ImageStatus {
    let workloads = c
        .outcomes
        .map(|o| summarize(o, c.tag.as_deref().unwrap_or_default()));
    let workloads_ok = workloads.as_ref().is_none_or(|w| w.up_to_date == w.total);
    let (result, message) = if let Some(conflict) = &c.conflict {
        (SyncResult::Error, conflict.clone())
    } else if c.synced.result != SyncResult::Success {
        (c.synced.result, c.synced.message.clone())
    } else if !workloads_ok {
        (SyncResult::ActionError, String::new())
    } else {
        (SyncResult::Success, c.synced.message.clone())
    };
    let mut message = message;
    // The workloads are news only when there are some: "0 of 0" says nothing.
    if let Some(w) = workloads.as_ref().filter(|w| w.total > 0) {
        let text = describe_workloads(w, c.tag.as_deref().unwrap_or_default());
        message = if message.is_empty() {
            text
        } else {
            format!("{message}; {text}")
        };
    }
    let generation = image.metadata.generation;
    let mut conditions = Vec::new();
    let ready_reason = if c.conflict.is_some() {
        REASON_CONFLICT.to_string()
    } else if result == SyncResult::Success {
        "Synced".to_string()
    } else {
        result.as_str().to_string()
    };
    conditions.push(condition(
        previous,
        CONDITION_READY,
        result == SyncResult::Success,
        &ready_reason,
        &message,
        generation,
    ));
    conditions.push(condition(
        previous,
        CONDITION_SYNCED,
        c.synced.result == SyncResult::Success,
        if c.synced.result == SyncResult::Success {
            "Synced"
        } else {
            c.synced.result.as_str()
        },
        &c.synced.message,
        generation,
    ));
    if let Some(w) = &workloads {
        let (ok, reason) = workloads_reason(w);
        conditions.push(condition(
            previous,
            CONDITION_WORKLOADS,
            ok,
            reason,
            &describe_workloads(w, c.tag.as_deref().unwrap_or_default()),
            generation,
        ));
    }
    match c.promotion {
        Some(Ok(gate)) => conditions.push(condition(
            previous,
            CONDITION_PROMOTION,
            gate.open(),
            gate.reason,
            &gate.message,
            generation,
        )),
        Some(Err(e)) => conditions.push(condition(
            previous,
            CONDITION_PROMOTION,
            false,
            "InvalidPromotion",
            &e.to_string(),
            generation,
        )),
        None => {}
    }
    ImageStatus {
        tag: c.tag,
        result: Some(result),
        time: c.time,
        message: Some(message),
        observed_generation: generation,
        digest: c.digest,
        pinned_digest: c.pinned,
        alerts: c.alerts,
        pending_alerts: c.pending_alerts,
        workloads,
        rollout: c.rollout.map(Box::new),
        conditions,
    }
}

/// A condition, keeping the previous transition time when its status did not change.
fn condition(
    previous: &ImageStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            // Whole seconds, as the API server stores a Time: the status read back then equals
            // the one written, and the controller need not keep its own copy.
            .unwrap_or_else(|| {
                let now = k8s_openapi::jiff::Timestamp::now();
                Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
            }),
    }
}

/// Counts and names the workloads (pure).
fn summarize(outcomes: &[WorkloadOutcome], tag: &str) -> WorkloadsStatus {
    let total = u32::try_from(outcomes.len()).unwrap_or(u32::MAX);
    let up_to_date =
        u32::try_from(outcomes.iter().filter(|w| w.up_to_date()).count()).unwrap_or(u32::MAX);
    let not_up_to_date = outcomes
        .iter()
        .filter(|w| !w.up_to_date())
        .take(MAX_LISTED_WORKLOADS)
        .map(|w| {
            let images = w.containers.iter().map(|c| c.image.clone()).collect();
            let (reason, message) = if let Some(e) = &w.error {
                ("ApplyFailed", e.clone())
            } else if w.holds_newer() {
                let newer: Vec<_> = w
                    .containers
                    .iter()
                    .filter(|c| c.verdict == Verdict::Newer)
                    .map(|c| format!("{} runs {}", c.container, c.image))
                    .collect();
                (
                    "NewerVersion",
                    format!("{}: newer than {tag}, not rolled back", newer.join(", ")),
                )
            } else {
                ("Pending", String::new())
            };
            WorkloadState {
                kind: w.kind.as_str().to_string(),
                name: w.name.clone(),
                images,
                reason: reason.to_string(),
                message,
            }
        })
        .collect();
    WorkloadsStatus {
        total,
        up_to_date,
        not_up_to_date,
    }
}

fn workloads_reason(w: &WorkloadsStatus) -> (bool, &'static str) {
    if w.up_to_date == w.total {
        return (true, "UpToDate");
    }
    if w.not_up_to_date.iter().any(|s| s.reason == "ApplyFailed") {
        (false, "ApplyFailed")
    } else if w.not_up_to_date.iter().any(|s| s.reason == "NewerVersion") {
        (false, "NewerVersion")
    } else {
        (false, "Pending")
    }
}

fn describe_workloads(w: &WorkloadsStatus, tag: &str) -> String {
    if w.up_to_date == w.total {
        return format!("{} of {} workloads run {tag}", w.up_to_date, w.total);
    }
    let listed: Vec<String> = w
        .not_up_to_date
        .iter()
        .map(|s| {
            if s.message.is_empty() {
                format!("{} {} ({})", s.kind, s.name, s.reason)
            } else {
                format!("{} {} ({}: {})", s.kind, s.name, s.reason, s.message)
            }
        })
        .collect();
    format!(
        "{} of {} workloads run {tag}; not: {}",
        w.up_to_date,
        w.total,
        listed.join(", ")
    )
}

/// Events of a convergence: one per workload written or failing, one when a workload starts
/// being held at a newer version (not at every reconcile).
fn workload_events(
    previous: &ImageStatus,
    outcomes: Option<&[WorkloadOutcome]>,
    events: &mut Vec<SyncEvent>,
) {
    let held_before = |kind: &str, name: &str| {
        previous.workloads.as_ref().is_some_and(|w| {
            w.not_up_to_date
                .iter()
                .any(|s| s.kind == kind && s.name == name && s.reason == "NewerVersion")
        })
    };
    for w in outcomes.unwrap_or_default() {
        if w.patched {
            let list: Vec<String> = w
                .containers
                .iter()
                .filter_map(|c| match &c.verdict {
                    Verdict::Update(to) => Some(format!("{} -> {to}", c.container)),
                    _ => None,
                })
                .collect();
            info!(kind = w.kind.as_str(), workload = %w.name, "workload updated");
            events.push(SyncEvent {
                warning: false,
                reason: "WorkloadUpdated".into(),
                note: format!("{} {}: {}", w.kind.as_str(), w.name, list.join(", ")),
            });
        }
        if let Some(e) = &w.error {
            events.push(SyncEvent {
                warning: true,
                reason: "ApplyFailed".into(),
                note: format!("{} {}: {e}", w.kind.as_str(), w.name),
            });
        }
        if w.holds_newer() && !held_before(w.kind.as_str(), &w.name) {
            events.push(SyncEvent {
                warning: true,
                reason: "NewerVersionRunning".into(),
                note: format!(
                    "{} {} runs a newer version than the Image's tag; not rolled back",
                    w.kind.as_str(),
                    w.name
                ),
            });
        }
    }
}

fn conflict_event(previous: &ImageStatus, conflict: Option<&str>, events: &mut Vec<SyncEvent>) {
    let Some(text) = conflict else {
        return;
    };
    let already = previous
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_READY && c.reason == REASON_CONFLICT);
    if !already {
        events.push(SyncEvent {
            warning: true,
            reason: REASON_CONFLICT.into(),
            note: text.to_string(),
        });
    }
}

/// Converges the workloads when apply runs for this Image: it has an apply action, a tag has
/// been chosen, and no other Image claims the repository. None otherwise.
async fn converge(
    client: &Client,
    image: &Image,
    tag: Option<&str>,
    pinned: Option<&str>,
    scope: &Scope<'_>,
    namespace: &str,
) -> Option<Vec<WorkloadOutcome>> {
    if scope.conflict.is_some() || !image.has_apply() {
        return None;
    }
    let tag = tag.filter(|t| !t.is_empty())?;
    let repository = image_ref(image).ok()?;
    let order = image.apply_order();
    let desired = Desired {
        repository,
        tag: tag.to_string(),
        digest: pinned.map(str::to_string),
        order,
    };
    let span = info_span!("action", r#type = "apply", tag = %tag);
    let outcomes = apply::converge(
        client,
        scope.workloads,
        namespace,
        &desired,
        scope.may_write,
    )
    .instrument(span)
    .await;
    for w in &outcomes {
        if w.patched {
            crate::metrics::action("apply", "ok");
        }
        if w.error.is_some() {
            crate::metrics::action("apply", "workload");
        }
    }
    Some(outcomes)
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    shared: &Shared,
    client: &Client,
    image: &Image,
    namespace: &str,
    name: &str,
    previous: &ImageStatus,
    scope: &Scope<'_>,
    state: &mut State,
) -> bool {
    let prepared = async {
        let reference = image_ref(image)?;
        schedules(image)?;
        if let Some(Err(e)) = &scope.promotion {
            return Err(SyncError::Promotion(e.clone()));
        }
        let mut values = ValueResolver::new(client.clone(), namespace);
        let credential = credential_for(&mut values, image, &reference.registry).await?;
        let registry = shared.tags.client().clone();
        let tls = registry.tls_mode(&reference.registry, image.spec.insecure_skip_tls_verify);
        // The digest rule's manifest requests go where the listing went (HTTPS, or the HTTP
        // fallback), so the fallback covers every registry request of the sync.
        let (tags, hit, tls) =
            tags_with_fallback(shared, &reference, credential.as_ref(), tls, image).await?;
        info!(tags = tags.len(), cache_hit = hit, "tags listed");
        Ok::<_, SyncError>((reference, credential, tls, tags, values))
    }
    .await;
    let (reference, credential, tls, listed, mut values) = match prepared {
        Ok(p) => p,
        Err(e) => {
            state.fail(e);
            return false;
        }
    };
    // A promoted Image's rules see only the tags its gate lets through (and the current one,
    // which the rules compare against).
    let tags = match &scope.promotion {
        Some(Ok(gate)) => {
            let through: Vec<String> = listed
                .iter()
                .filter(|t| gate.eligible.contains(*t) || **t == state.current)
                .cloned()
                .collect();
            info!(listed = listed.len(), eligible = through.len(), gate = %gate.message, "promotion gate");
            if through.len() < listed.len() {
                state.notes.push(format!(
                    "promotion: {} of {} tags eligible",
                    through.len(),
                    listed.len()
                ));
            }
            Arc::new(through)
        }
        _ => listed,
    };

    let mut chose = false;
    for rule in &image.spec.rules {
        let span = info_span!("rule.evaluate", rule = %rule.name, r#type = %rule.type_, chosen = tracing::field::Empty);
        let chosen = evaluate_rule(
            shared,
            rule,
            &reference,
            credential.as_ref(),
            tls,
            &tags,
            previous,
            state,
        )
        .instrument(span.clone())
        .await;
        let (new_tag, digest) = match chosen {
            Ok(Some(c)) => c,
            Ok(None) => {
                crate::metrics::rule("nomatch");
                continue;
            }
            Err(e) => {
                state.fail(e);
                continue;
            }
        };
        crate::metrics::rule("match");
        chose = true;
        span.record("chosen", new_tag.as_str());
        let actual = state.current.clone();
        state.events.push(SyncEvent {
            warning: false,
            reason: "NewTag".into(),
            note: match &digest {
                Some(d) => format!("rule {}: tag {new_tag} moved to {d}", rule.name),
                None => format!("rule {}: {actual} -> {new_tag}", rule.name),
            },
        });
        state
            .notes
            .push(format!("rule {} selected {new_tag}", rule.name));
        for action in &rule.actions {
            match action.type_ {
                ActionType::Apply => {
                    // Level-based: the tag becomes desired; the convergence after the rules
                    // writes the workloads.
                    info!(tag = %new_tag, rule = %rule.name, "apply: new desired tag");
                    state.current = new_tag.clone();
                    // A digest rule pins the moved tag's digest; a new tag starts unpinned.
                    state.pinned = digest.clone();
                }
                ActionType::RequestApproval => {
                    crate::metrics::action(action.type_.as_str(), "unsupported");
                    state.fail(SyncError::Unsupported {
                        rule: rule.name.clone(),
                    });
                }
                alert_type => queue_alert(
                    state,
                    &rule.name,
                    alert_type,
                    &new_tag,
                    digest.as_deref(),
                    &actual,
                    None,
                ),
            }
        }
    }
    send_pending_alerts(
        shared,
        client,
        image,
        namespace,
        name,
        &tags,
        scope,
        &mut values,
        state,
    )
    .await;
    if !chose {
        state.notes.push(format!(
            "{} tags, no new tag for {}",
            tags.len(),
            state.current
        ));
    }
    true
}

/// Records an alert to deliver unless it was delivered or is already pending: a new tag's, or
/// with `failure` the failed rollout of `new_tag`.
fn queue_alert(
    state: &mut State,
    rule: &str,
    action: ActionType,
    new_tag: &str,
    digest: Option<&str>,
    actual: &str,
    failure: Option<&str>,
) {
    // Once per (Image, rule, action, tag); a digest alert is keyed by tag@digest, a failed
    // rollout's by `tag rollout-failed`.
    let key = match (digest, failure) {
        (_, Some(_)) => format!("{new_tag} rollout-failed"),
        (Some(d), None) => format!("{new_tag}@{d}"),
        (None, None) => new_tag.to_string(),
    };
    let is = |r: &str, a: &str, t: &str| r == rule && a == action.as_str() && t == key;
    if state.alerts.iter().any(|a| is(&a.rule, &a.action, &a.tag)) {
        info!(tag = %key, rule, "alert already sent");
        return;
    }
    if state.pending.iter().any(|p| is(&p.rule, &p.action, &p.tag)) {
        return;
    }
    state.pending.push(PendingAlert {
        rule: rule.to_string(),
        action: action.as_str().to_string(),
        tag: key,
        new_tag: new_tag.to_string(),
        actual_tag: actual.to_string(),
        attempts: 0,
        failure: failure.map(str::to_string),
    });
    while state.pending.len() > MAX_PENDING_ALERTS {
        let dropped = state.pending.remove(0);
        state.events.push(SyncEvent {
            warning: true,
            reason: "AlertDropped".into(),
            note: format!(
                "{} of rule {} for {}: more than {MAX_PENDING_ALERTS} alerts pending",
                dropped.action, dropped.rule, dropped.tag
            ),
        });
    }
}

/// Delivers every pending alert whose rule and action still exist; a delivered one moves to
/// the delivered records, a failed one stays pending for the next sync.
#[allow(clippy::too_many_arguments)]
async fn send_pending_alerts(
    shared: &Shared,
    client: &Client,
    image: &Image,
    namespace: &str,
    name: &str,
    tags: &Arc<Vec<String>>,
    scope: &Scope<'_>,
    values: &mut ValueResolver,
    state: &mut State,
) {
    let pending = std::mem::take(&mut state.pending);
    let mut keep = Vec::new();
    for mut p in pending {
        let action = image
            .spec
            .rules
            .iter()
            .filter(|r| r.name == p.rule)
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
            .find(|(_, a)| a.type_.as_str() == p.action && a.type_.is_alert());
        // The rule or its action left the spec: the alert is no longer wanted.
        let Some((rule, action)) = action else {
            continue;
        };
        let ctx = AlertContext {
            namespace: namespace.to_string(),
            name: name.to_string(),
            image_name: image.spec.image.clone(),
            base_tag: image.spec.base_tag.clone(),
            new_tag: p.new_tag.clone(),
            actual_tag: p.actual_tag.clone(),
            available_tags: tags.to_vec(),
            failure: p.failure.clone(),
        };
        let span = info_span!("action", r#type = action.type_.as_str(), rule = %rule.name);
        let sent = async {
            let prepared = alert::prepare(
                client,
                namespace,
                action.type_,
                action.data.as_ref(),
                &ctx,
                &rule.name,
                values,
            )
            .await?;
            // Right before sending: the lease may have lapsed (or the process been paused)
            // since the sync started. Not sent stays pending, for whoever leads next.
            if !(scope.may_write)() {
                return Ok(false);
            }
            alert::send(&shared.http, &prepared, action.type_)
                .await
                .map(|()| true)
        }
        .instrument(span)
        .await;
        match sent {
            Ok(false) => {
                keep.push(p);
                continue;
            }
            Ok(true) => {
                crate::metrics::action(action.type_.as_str(), "ok");
                state.events.push(SyncEvent {
                    warning: false,
                    reason: "AlertSent".into(),
                    note: match &p.failure {
                        Some(_) => format!(
                            "{} for the failed rollout of {} (rule {})",
                            p.action, p.new_tag, p.rule
                        ),
                        None => format!("{} for {} (rule {})", p.action, p.new_tag, p.rule),
                    },
                });
                record_delivered(
                    &mut state.alerts,
                    AlertRecord {
                        rule: p.rule,
                        action: p.action,
                        tag: p.tag,
                    },
                );
            }
            Err(source) => {
                crate::metrics::action(action.type_.as_str(), source.metric_label());
                p.attempts = p.attempts.saturating_add(1);
                keep.push(p);
                state.fail(SyncError::Alert {
                    rule: rule.name.clone(),
                    source,
                });
            }
        }
    }
    state.pending = keep;
}

/// Adds a delivered record, keeping the newest [`DELIVERED_PER_ACTION`] per (rule, action).
fn record_delivered(alerts: &mut Vec<AlertRecord>, record: AlertRecord) {
    alerts.push(record.clone());
    let same = |a: &AlertRecord| a.rule == record.rule && a.action == record.action;
    let count = alerts.iter().filter(|a| same(a)).count();
    let mut excess = count.saturating_sub(DELIVERED_PER_ACTION);
    alerts.retain(|a| {
        if excess > 0 && same(a) {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// Lists tags; for `insecureSkipTLSVerify` Images whose registry answers HTTPS with plain HTTP,
/// retries over HTTP, as kimup (Go) did. The retry carries no credentials: with a pull secret the
/// client refuses it (`RegistryError::InsecureCredentials`) unless the operator listed the
/// registry with `--insecure-registry`, in which case it was reached over HTTP in the first place.
/// Returns the tags, whether the cache served them, and the mode that reached the registry.
async fn tags_with_fallback(
    shared: &Shared,
    reference: &ImageRef,
    credential: Option<&Credential>,
    tls: TlsMode,
    image: &Image,
) -> Result<(Arc<Vec<String>>, bool, TlsMode), SyncError> {
    let span = info_span!("registry.list_tags", registry = %reference.registry, repository = %reference.repository, cache.hit = tracing::field::Empty);
    async {
        let first = shared.tags.tags(reference, credential, tls).await;
        let (out, used) = match first {
            Err(RegistryError::Network { reason, .. })
                if image.spec.insecure_skip_tls_verify && looks_like_plain_http(&reason) =>
            {
                let out = shared
                    .tags
                    .tags(reference, credential, TlsMode::PlainHttp)
                    .await?;
                (out, TlsMode::PlainHttp)
            }
            other => (other?, tls),
        };
        tracing::Span::current().record("cache.hit", out.1);
        Ok((out.0, out.1, used))
    }
    .instrument(span)
    .await
}

fn looks_like_plain_http(reason: &str) -> bool {
    let r = reason.to_lowercase();
    r.contains("http response to https")
        || r.contains("invalidcontenttype")
        || r.contains("corrupt message")
        || r.contains("received corrupt")
}

#[allow(clippy::too_many_arguments)]
async fn evaluate_rule(
    shared: &Shared,
    rule: &ImageRule,
    reference: &ImageRef,
    credential: Option<&Credential>,
    tls: TlsMode,
    tags: &[String],
    previous: &ImageStatus,
    state: &mut State,
) -> Result<Option<(String, Option<String>)>, SyncError> {
    if rule.type_ == RuleType::Digest {
        let digest = shared
            .tags
            .client()
            .manifest_digest(reference, &state.current, credential, tls)
            .await?;
        // The recorded digest belongs to the tag the Image was at; after a tag change in this
        // sync it is only a new baseline.
        let same_tag = previous.tag.as_deref().unwrap_or(&state.current) == state.current;
        let prior = if same_tag {
            state.digest.as_deref()
        } else {
            None
        };
        let changed = rules::digest_changed(prior, &digest);
        state.digest = Some(digest.clone());
        return Ok(changed.then(|| (state.current.clone(), Some(digest))));
    }
    let decision = rules::evaluate(rule.type_, rule.value.as_deref(), &state.current, tags)
        .map_err(|source| {
            crate::metrics::rule("error");
            SyncError::Rule {
                rule: rule.name.clone(),
                source,
            }
        })?;
    Ok(decision
        .chosen
        .filter(|t| *t != state.current)
        .map(|t| (t, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SyncResult;

    fn image(triggers: &str) -> Image {
        serde_yaml::from_str(&format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: a, namespace: ns}}\nspec:\n  image: nginx\n  baseTag: 1.0.0\n  triggers: {triggers}\n  rules: [{{name: r, type: semver-minor, actions: [{{type: apply}}]}}]\n"
        ))
        .expect("image yaml")
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().expect("time")
    }

    fn status(time: &str, tag: &str) -> ImageStatus {
        ImageStatus {
            tag: Some(tag.into()),
            result: Some(SyncResult::Success),
            time: Some(time.into()),
            ..Default::default()
        }
    }

    #[test]
    fn heartbeat_is_ten_of_the_shortest_crontab_interval() {
        let now = at("2026-01-01T00:00:30Z");
        let every_minute = image("[{type: crontab, value: \"0 * * * * *\"}]");
        assert_eq!(heartbeat(&every_minute, now), Duration::from_secs(600));
        let two = image(
            "[{type: crontab, value: \"@hourly\"}, {type: crontab, value: \"*/5 * * * * *\"}]",
        );
        assert_eq!(heartbeat(&two, now), Duration::from_secs(50));
        let webhook = image("[{type: webhook}]");
        assert_eq!(heartbeat(&webhook, now), HEARTBEAT_WITHOUT_CRONTAB);
        let bad = image("[{type: crontab, value: \"nonsense\"}]");
        assert_eq!(heartbeat(&bad, now), HEARTBEAT_WITHOUT_CRONTAB);
    }

    #[test]
    fn an_unchanged_status_keeps_its_time_until_the_heartbeat() {
        let beat = Duration::from_secs(600);
        let stored = status("2026-01-01T00:00:00Z", "1.2.0");
        let now = at("2026-01-01T00:05:00Z");
        let fresh = status("2026-01-01T00:05:00Z", "1.2.0");
        assert_eq!(
            keep_time_if_unchanged(fresh.clone(), &stored, now, beat),
            stored
        );
        // Ten minutes on: the heartbeat writes the new time.
        let later = at("2026-01-01T00:10:00Z");
        let beat_status = status("2026-01-01T00:10:00Z", "1.2.0");
        assert_eq!(
            keep_time_if_unchanged(beat_status.clone(), &stored, later, beat),
            beat_status
        );
        // Any other change carries the new time at once.
        let moved = status("2026-01-01T00:05:00Z", "1.3.0");
        assert_eq!(
            keep_time_if_unchanged(moved.clone(), &stored, now, beat),
            moved
        );
        let mut failed = fresh.clone();
        failed.result = Some(SyncResult::RegistryError);
        assert_eq!(
            keep_time_if_unchanged(failed.clone(), &stored, now, beat),
            failed
        );
        // No stored time, or one that does not parse: the new time is written.
        let mut none = stored.clone();
        none.time = None;
        assert_eq!(
            keep_time_if_unchanged(fresh.clone(), &none, now, beat),
            fresh
        );
        let mut garbage = stored.clone();
        garbage.time = Some("yesterday".into());
        assert_eq!(
            keep_time_if_unchanged(fresh.clone(), &garbage, now, beat),
            fresh
        );
    }
}
