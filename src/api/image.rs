//! The `Image` custom resource: which image to watch, when, which tags qualify, what to do.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits;
use super::value::ValueOrValueFrom;
use crate::rules::RuleType;

/// Desired state of an Image (field names and defaults are kimup's).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kimup.cloudavenue.io",
    version = "v1alpha1",
    kind = "Image",
    namespaced,
    status = "ImageStatus",
    shortname = "img",
    category = "kimup",
    doc = "An image whose registry tags kimup watches, with the rules and actions that follow new tags",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".status.tag"}"#,
    printcolumn = r#"{"name":"Last-Result","type":"string","jsonPath":".status.result"}"#,
    printcolumn = r#"{"name":"Last-Sync","type":"date","jsonPath":".status.time"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository without tag, e.g. `nginx`, `ghcr.io/org/app`, `registry:5000/team/app`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("image must not be empty"))]
    #[schemars(length(max = limits::IMAGE))]
    pub image: String,
    /// Secrets (dockerconfigjson or dockercfg) in the Image's namespace used to reach the registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::PULL_SECRETS))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Skip TLS certificate verification for this registry (self-signed certificates).
    #[serde(
        default,
        rename = "insecureSkipTLSVerify",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure_skip_tls_verify: bool,
    /// Tag to start from when no tag has been chosen yet.
    #[serde(default = "default_base_tag")]
    #[schemars(length(max = limits::TAG))]
    pub base_tag: String,
    /// When to check the registry.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one trigger is required"))]
    #[schemars(length(max = limits::TRIGGERS))]
    pub triggers: Vec<Trigger>,
    /// Which new tags qualify, evaluated in order, each with its actions.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one rule is required"))]
    #[schemars(length(max = limits::RULES))]
    pub rules: Vec<ImageRule>,
    /// Fleet promotion: a new tag is taken here only once it ran healthy, for `soak`, in every
    /// member cluster that `after` names. Without it the Image updates on its own, as ever.
    // Boxed: most Images have none, and every cached Image would otherwise carry its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Box<Promotion>>,
}

/// Where a tag must run healthy, and for how long, before this cluster takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct Promotion {
    /// Member cluster names (as kimup names them from the kubeconfig set) or globs (`*`, `?`),
    /// e.g. `staging-*`. The same Image (namespace and name) is looked up in each.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("promotion.after must name at least one member cluster"))]
    #[schemars(length(max = limits::PROMOTION_AFTER))]
    pub after: Vec<ClusterPattern>,
    /// How long the tag must have run healthy there: e.g. `30s`, `15m`, `1h`.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s|m|h)?$')").message("soak must be a duration such as 30s, 15m or 1h"))]
    #[schemars(length(max = limits::TIMEOUT))]
    pub soak: String,
}

/// A member cluster name or glob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ClusterPattern(#[schemars(length(min = 1, max = limits::OBJECT_NAME))] pub String);

fn default_base_tag() -> String {
    "latest".to_string()
}

/// Kinds of trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerType {
    /// Cron schedule in `value` (6/7 fields with seconds, or 5 fields, or @hourly...).
    Crontab,
    /// Registry webhook (the Image syncs when its registry notifies a push).
    Webhook,
}

/// A trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type != 'crontab' || (has(self.value) && self.value.size() > 0)").message("a crontab trigger needs a cron expression in value"))]
pub struct Trigger {
    /// Trigger kind.
    #[serde(rename = "type")]
    pub type_: TriggerType,
    /// Cron expression for `crontab`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::CRON))]
    pub value: Option<String>,
}

/// A rule and the actions run when it selects a new tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type != 'regex' || (has(self.value) && self.value.size() > 0)").message("a regex rule needs a regular expression in value"))]
pub struct ImageRule {
    /// Name, used in events, alerts and status.
    #[schemars(length(max = limits::RULE_NAME))]
    pub name: String,
    /// Rule kind.
    #[serde(rename = "type")]
    pub type_: RuleType,
    /// Regex for `regex`; optional extra semver constraint (e.g. `>=1.2, <2`) for `semver-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::RULE_VALUE))]
    pub value: Option<String>,
    /// What to do when the rule selects a new tag.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one action is required"))]
    #[schemars(length(max = limits::ACTIONS))]
    pub actions: Vec<ImageAction>,
}

/// Kinds of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionType {
    /// Record the tag in status and set it on the opted-in workloads of the namespace.
    Apply,
    /// kimup's enum lists it; no approval flow exists, so an Image using it gets an ActionError.
    RequestApproval,
    /// Discord message through an AlertConfig.
    AlertDiscord,
    /// Slack message through an AlertConfig.
    AlertSlack,
    /// JSON POST to a URL through an AlertConfig.
    AlertWebhook,
    /// E-mail through an AlertConfig.
    AlertEmail,
}

impl ActionType {
    /// The manifest spelling, e.g. `alert-email`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionType::Apply => "apply",
            ActionType::RequestApproval => "request-approval",
            ActionType::AlertDiscord => "alert-discord",
            ActionType::AlertSlack => "alert-slack",
            ActionType::AlertWebhook => "alert-webhook",
            ActionType::AlertEmail => "alert-email",
        }
    }

    /// Whether this action sends an alert.
    pub fn is_alert(&self) -> bool {
        matches!(
            self,
            ActionType::AlertDiscord
                | ActionType::AlertSlack
                | ActionType::AlertWebhook
                | ActionType::AlertEmail
        )
    }
}

/// An action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageAction {
    /// Action kind.
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// Action data; alerts reference their AlertConfig with `valueFrom.alertConfigRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ValueOrValueFrom>,
}

/// Outcome of the last sync (kimup's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SyncResult {
    /// The sync completed (with or without a new tag).
    Success,
    /// Accepted by kimup; kept for compatibility (this implementation syncs at once).
    Scheduled,
    /// Invalid spec (e.g. an invalid cron) or an internal failure.
    Error,
    /// The image reference is invalid.
    GetImageError,
    /// A rule could not be evaluated (unparsable baseTag, invalid regex or constraint).
    GetRuleError,
    /// A pull secret is missing or malformed.
    PullSecretsError,
    /// The registry could not be reached or refused us (TLS, auth, 5xx, unknown repository).
    RegistryError,
    /// The registry answered with an unusable tag list.
    TagsError,
    /// An action failed (workload patch, alert delivery, missing AlertConfig).
    ActionError,
}

impl SyncResult {
    /// Every result.
    pub const ALL: [SyncResult; 9] = [
        SyncResult::Success,
        SyncResult::Scheduled,
        SyncResult::Error,
        SyncResult::GetImageError,
        SyncResult::GetRuleError,
        SyncResult::PullSecretsError,
        SyncResult::RegistryError,
        SyncResult::TagsError,
        SyncResult::ActionError,
    ];

    /// The result of a status spelling, e.g. `RegistryError`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The status spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncResult::Success => "Success",
            SyncResult::Scheduled => "Scheduled",
            SyncResult::Error => "Error",
            SyncResult::GetImageError => "GetImageError",
            SyncResult::GetRuleError => "GetRuleError",
            SyncResult::PullSecretsError => "PullSecretsError",
            SyncResult::RegistryError => "RegistryError",
            SyncResult::TagsError => "TagsError",
            SyncResult::ActionError => "ActionError",
        }
    }
}

/// Observed state, written by kimup with server-side apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Tag currently selected (kimup's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Outcome of the last sync (kimup's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SyncResult>,
    /// Time of the last sync, RFC 3339 (kimup's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Human-readable detail of the last result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Generation of the spec the last sync used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Manifest digest of the current tag at the last sync (drives the `digest` rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Digest that apply pins with `tag` (`tag@digest`), set when a `digest` rule with an apply
    /// action fired; cleared when apply moves to another tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_digest: Option<String>,
    /// Alerts delivered, per (rule, action, tag), the newest few per (rule, action), so that an
    /// alert is sent once even across restarts and failovers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertRecord>,
    /// Alerts chosen but not delivered yet; retried at every sync until delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_alerts: Vec<PendingAlert>,
    /// The opted-in workloads running the Image's repository, and those not at `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadsStatus>,
    /// How the rollout of `tag` fares here: what later clusters of a promotion read.
    // Boxed: only promoted Images have one (see `spec.promotion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<RolloutStatus>>,
    /// Standard conditions: `Ready` (result is Success), `Synced` (the last registry sync ran
    /// every rule and action without failure), `WorkloadsUpToDate` (every opted-in workload of
    /// the repository runs `tag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The rollout of the Image's tag in its cluster, kept in the status (not in kimup's memory) so
/// that a restart neither resets nor skips a soak.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The tag judged (`status.tag` when judged).
    pub tag: String,
    /// When `status.tag` became this tag (RFC 3339): the rollout's start.
    pub since: String,
    /// Since when every opted-in workload has been rolled out and available at `tag`, without a
    /// break (RFC 3339); unset while not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<String>,
    /// Why it is not healthy (a workload still rolling out, a failed rollout).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Healthy periods of the tags before, newest first (at most 5): a later cluster may take a
    /// tag that soaked here even after this cluster moved on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<HealthyPeriod>,
    /// Tags whose rollout failed here, oldest first (at most 20): no cluster promoted after this
    /// one takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tags: Vec<String>,
}

/// A tag's healthy period in a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthyPeriod {
    /// The tag.
    pub tag: String,
    /// Healthy from (RFC 3339).
    pub since: String,
    /// Until (RFC 3339): when the cluster moved to another tag or the workloads stopped being healthy.
    pub until: String,
}

/// An alert delivered for a tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRecord {
    /// Rule name.
    pub rule: String,
    /// Action type, e.g. `alert-email`.
    pub action: String,
    /// Tag alerted (`tag@digest` for digest rules).
    pub tag: String,
}

/// An alert chosen by a rule and not delivered yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingAlert {
    /// Rule name.
    pub rule: String,
    /// Action type, e.g. `alert-email`.
    pub action: String,
    /// Tag to alert (`tag@digest` for digest rules): the key of the delivered record.
    pub tag: String,
    /// `NewTag` of the alert's template.
    pub new_tag: String,
    /// `ActualTag` of the alert's template: the tag the Image was at when the rule chose.
    pub actual_tag: String,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// Set for the alert of a failed rollout of `new_tag`: what failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The workloads apply converges, as of the last reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadsStatus {
    /// Opted-in workloads running the repository.
    pub total: u32,
    /// Those whose every container of the repository runs `tag`.
    pub up_to_date: u32,
    /// The others (at most 20 listed), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_up_to_date: Vec<WorkloadState>,
}

/// A workload that does not run `tag`, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadState {
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// The images it runs of the repository.
    pub images: Vec<String>,
    /// `NewerVersion` (held, never rolled back), `ApplyFailed` (retried) or `Pending`.
    pub reason: String,
    /// Detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Image {
    /// Whether a rule of the Image applies its tag to workloads.
    pub fn has_apply(&self) -> bool {
        self.apply_order().is_some()
    }

    /// The type of the first rule with an apply action: its ordering decides whether a running
    /// workload is newer than the Image's tag.
    pub fn apply_order(&self) -> Option<RuleType> {
        self.spec
            .rules
            .iter()
            .find(|r| r.actions.iter().any(|a| a.type_ == ActionType::Apply))
            .map(|r| r.type_)
    }

    /// The tag the Image is at: `status.tag`, else `spec.baseTag`.
    pub fn current_tag(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.tag.as_deref())
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.spec.base_tag)
    }
}
