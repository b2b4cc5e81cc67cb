//! One Image sync: validate -> credentials -> tags (shared cache) -> rules -> actions -> status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use tracing::{Instrument, info, info_span, warn};

use crate::actions::alert::{self, AlertError};
use crate::actions::apply::{self, WorkloadChange};
use crate::actions::template::AlertContext;
use crate::actions::values::ValueResolver;
use crate::api::image::{AlertRecord, ImageRule};
use crate::api::{ActionType, Image, ImageStatus, SyncResult, TriggerType};
use crate::registry::credentials::{self, Credential, CredentialError};
use crate::registry::reference::{self, ImageRef, ReferenceError};
use crate::registry::{RegistryError, TagCache, TlsMode};
use crate::rules::{self, RuleError, RuleType};
use crate::triggers::cron::{CronError, Schedule};

/// Why a sync stopped, each mapped to the status result of the step that failed.
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
    /// Updating workloads failed.
    #[error("rule {rule:?}: apply {tag}: {source}")]
    Apply {
        rule: String,
        tag: String,
        #[source]
        source: Box<kube::Error>,
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
    /// This replica stopped leading during the sync: the action was not taken.
    #[error("rule {rule:?}: {action} skipped: this replica no longer leads")]
    NotLeader { rule: String, action: &'static str },
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
            SyncError::Apply { .. }
            | SyncError::Alert { .. }
            | SyncError::Unsupported { .. }
            | SyncError::NotLeader { .. } => SyncResult::ActionError,
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
            SyncError::Apply { .. } => "ApplyFailed",
            SyncError::Alert { .. } => "AlertFailed",
            SyncError::Unsupported { .. } => "UnsupportedAction",
            SyncError::NotLeader { .. } => "NotLeader",
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
            SyncError::Apply { .. } => "apply",
            SyncError::Alert { .. } => "alert",
            SyncError::Unsupported { .. } => "unsupported",
            SyncError::NotLeader { .. } => "not_leader",
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

/// What a sync produced: the status to write and the events to publish.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// Status to write (complete: it is applied under one field manager).
    pub status: ImageStatus,
    /// Events.
    pub events: Vec<SyncEvent>,
    /// Workloads changed.
    pub workloads: Vec<WorkloadChange>,
}

/// Process-wide services a sync needs.
pub struct Shared {
    /// The one tag cache.
    pub tags: TagCache,
    /// HTTP client for alerts.
    pub http: reqwest::Client,
    /// Whether this replica may act; checked right before each workload patch and alert.
    pub leadership: crate::leader::Leadership,
    /// Registry pushes announced by webhooks, fanned out to every cluster's controller.
    pub pushes: tokio::sync::broadcast::Sender<crate::triggers::webhook::RepoEvent>,
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

/// Runs one sync of `image` in `cluster` and returns the status to write. Never panics; every
/// failure becomes a status result, a message and a Warning event.
pub async fn sync_image(
    shared: &Shared,
    client: &Client,
    cluster: &str,
    image: &Image,
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
    let report = run(shared, client, image, &namespace, &name)
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

async fn run(
    shared: &Shared,
    client: &Client,
    image: &Image,
    namespace: &str,
    name: &str,
) -> SyncReport {
    let previous = image.status.clone().unwrap_or_default();
    let mut state = State {
        current: image.current_tag().to_string(),
        digest: previous.digest.clone(),
        alerts: previous.alerts.clone(),
        events: Vec::new(),
        workloads: Vec::new(),
    };
    let outcome = steps(
        shared, client, image, namespace, name, &previous, &mut state,
    )
    .await;
    let (result, message) = match &outcome {
        Ok(msg) => (SyncResult::Success, msg.clone()),
        Err(e) => {
            warn!(error = %e, result = e.result().as_str(), "sync failed");
            state.events.push(SyncEvent {
                warning: true,
                reason: e.reason().to_string(),
                note: e.to_string(),
            });
            (e.result(), e.to_string())
        }
    };
    let now = chrono::Utc::now();
    let ready = Condition {
        type_: "Ready".into(),
        status: if outcome.is_ok() { "True" } else { "False" }.into(),
        reason: if outcome.is_ok() {
            "Synced".to_string()
        } else {
            result.as_str().to_string()
        },
        message: message.clone(),
        observed_generation: image.metadata.generation,
        last_transition_time: previous
            .conditions
            .iter()
            .find(|c| {
                c.type_ == "Ready" && c.status == if outcome.is_ok() { "True" } else { "False" }
            })
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_now())),
    };
    let status = ImageStatus {
        tag: Some(state.current.clone()),
        result: Some(result),
        time: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        message: Some(message),
        observed_generation: image.metadata.generation,
        digest: state.digest.clone(),
        alerts: state.alerts.clone(),
        conditions: vec![ready],
    };
    SyncReport {
        status,
        events: state.events,
        workloads: state.workloads,
    }
}

fn k8s_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

struct State {
    current: String,
    digest: Option<String>,
    alerts: Vec<AlertRecord>,
    events: Vec<SyncEvent>,
    workloads: Vec<WorkloadChange>,
}

async fn steps(
    shared: &Shared,
    client: &Client,
    image: &Image,
    namespace: &str,
    name: &str,
    previous: &ImageStatus,
    state: &mut State,
) -> Result<String, SyncError> {
    let reference = image_ref(image)?;
    schedules(image)?;
    let mut values = ValueResolver::new(client.clone(), namespace);
    let credential = credential_for(&mut values, image, &reference.registry).await?;
    let registry = shared.tags.client().clone();
    let tls = registry.tls_mode(&reference.registry, image.spec.insecure_skip_tls_verify);
    let (tags, hit) =
        tags_with_fallback(shared, &reference, credential.as_ref(), tls, image).await?;
    info!(tags = tags.len(), cache_hit = hit, "tags listed");

    let mut notes = Vec::new();
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
        .await?;
        let Some((new_tag, digest)) = chosen else {
            crate::metrics::rule("nomatch");
            continue;
        };
        crate::metrics::rule("match");
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
        notes.push(format!("rule {} selected {new_tag}", rule.name));
        let ctx = AlertContext {
            namespace: namespace.to_string(),
            name: name.to_string(),
            image_name: image.spec.image.clone(),
            base_tag: image.spec.base_tag.clone(),
            new_tag: new_tag.clone(),
            actual_tag: actual.clone(),
            available_tags: tags.to_vec(),
        };
        for action in &rule.actions {
            let span = info_span!("action", r#type = action.type_.as_str(), rule = %rule.name);
            run_action(
                shared,
                client,
                namespace,
                &reference,
                rule,
                action.type_,
                action.data.as_ref(),
                &new_tag,
                digest.as_deref(),
                &ctx,
                &mut values,
                state,
            )
            .instrument(span)
            .await
            .inspect_err(|e| crate::metrics::action(action.type_.as_str(), e.metric_label()))?;
            crate::metrics::action(action.type_.as_str(), "ok");
        }
    }
    Ok(if notes.is_empty() {
        format!("{} tags, no new tag for {}", tags.len(), state.current)
    } else {
        notes.join("; ")
    })
}

/// Lists tags; for `insecureSkipTLSVerify` Images whose registry answers HTTPS with plain HTTP,
/// retries over HTTP, as kimup (Go) did.
async fn tags_with_fallback(
    shared: &Shared,
    reference: &ImageRef,
    credential: Option<&Credential>,
    tls: TlsMode,
    image: &Image,
) -> Result<(Arc<Vec<String>>, bool), SyncError> {
    let span = info_span!("registry.list_tags", registry = %reference.registry, repository = %reference.repository, cache.hit = tracing::field::Empty);
    async {
        let first = shared.tags.tags(reference, credential, tls).await;
        let out = match first {
            Err(RegistryError::Network { reason, .. })
                if image.spec.insecure_skip_tls_verify && looks_like_plain_http(&reason) =>
            {
                shared
                    .tags
                    .tags(reference, credential, TlsMode::PlainHttp)
                    .await?
            }
            other => other?,
        };
        tracing::Span::current().record("cache.hit", out.1);
        Ok(out)
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

#[allow(clippy::too_many_arguments)]
async fn run_action(
    shared: &Shared,
    client: &Client,
    namespace: &str,
    reference: &ImageRef,
    rule: &ImageRule,
    action: ActionType,
    data: Option<&crate::api::ValueOrValueFrom>,
    new_tag: &str,
    digest: Option<&str>,
    ctx: &AlertContext,
    values: &mut ValueResolver,
    state: &mut State,
) -> Result<(), SyncError> {
    match action {
        ActionType::Apply => {
            // The lease may have lapsed during the sync (or the process was paused): no patch.
            if !shared.leadership.is_held() {
                return Err(SyncError::NotLeader {
                    rule: rule.name.clone(),
                    action: "apply",
                });
            }
            let changes = apply::apply_to_workloads(client, namespace, reference, new_tag, digest)
                .await
                .map_err(|source| SyncError::Apply {
                    rule: rule.name.clone(),
                    tag: new_tag.to_string(),
                    source: Box::new(source),
                })?;
            state.current = new_tag.to_string();
            for w in &changes {
                let list: Vec<String> = w
                    .containers
                    .iter()
                    .map(|c| format!("{} -> {}", c.container, c.to))
                    .collect();
                state.events.push(SyncEvent {
                    warning: false,
                    reason: "WorkloadUpdated".into(),
                    note: format!("{} {}: {}", w.kind, w.name, list.join(", ")),
                });
            }
            info!(tag = new_tag, workloads = changes.len(), "applied");
            state.workloads.extend(changes);
            Ok(())
        }
        ActionType::RequestApproval => Err(SyncError::Unsupported {
            rule: rule.name.clone(),
        }),
        alert_type => {
            // Once per (Image, rule, action, tag): the record lives in status, so restarts and
            // failovers do not repeat it. A digest alert is keyed by tag@digest.
            let key_tag = match digest {
                Some(d) => format!("{new_tag}@{d}"),
                None => new_tag.to_string(),
            };
            let already = state.alerts.iter().any(|a| {
                a.rule == rule.name && a.action == alert_type.as_str() && a.tag == key_tag
            });
            if already {
                info!(tag = %key_tag, "alert already sent");
                return Ok(());
            }
            let map_err = |source| SyncError::Alert {
                rule: rule.name.clone(),
                source,
            };
            let prepared =
                alert::prepare(client, namespace, alert_type, data, ctx, &rule.name, values)
                    .await
                    .map_err(map_err)?;
            if !shared.leadership.is_held() {
                return Err(SyncError::NotLeader {
                    rule: rule.name.clone(),
                    action: alert_type.as_str(),
                });
            }
            alert::send(&shared.http, &prepared, alert_type)
                .await
                .map_err(map_err)?;
            state
                .alerts
                .retain(|a| !(a.rule == rule.name && a.action == alert_type.as_str()));
            state.alerts.push(AlertRecord {
                rule: rule.name.clone(),
                action: alert_type.as_str().to_string(),
                tag: key_tag,
            });
            state.events.push(SyncEvent {
                warning: false,
                reason: "AlertSent".into(),
                note: format!("{} for {new_tag} (rule {})", alert_type.as_str(), rule.name),
            });
            Ok(())
        }
    }
}
