//! The `Image` custom resource: which image to watch, when, which tags qualify, what to do.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    pub image: String,
    /// Secrets (dockerconfigjson or dockercfg) in the Image's namespace used to reach the registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    pub base_tag: String,
    /// When to check the registry.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one trigger is required"))]
    pub triggers: Vec<Trigger>,
    /// Which new tags qualify, evaluated in order, each with its actions.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one rule is required"))]
    pub rules: Vec<ImageRule>,
}

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
    pub value: Option<String>,
}

/// A rule and the actions run when it selects a new tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type != 'regex' || (has(self.value) && self.value.size() > 0)").message("a regex rule needs a regular expression in value"))]
pub struct ImageRule {
    /// Name, used in events, alerts and status.
    pub name: String,
    /// Rule kind.
    #[serde(rename = "type")]
    pub type_: RuleType,
    /// Regex for `regex`; optional extra semver constraint (e.g. `>=1.2, <2`) for `semver-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What to do when the rule selects a new tag.
    #[x_kube(validation = Rule::new("self.size() >= 1").message("at least one action is required"))]
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
    /// Alerts already delivered, one entry per rule with the last tag alerted, so that an alert is
    /// sent once per (Image, rule, tag) even across restarts and failovers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertRecord>,
    /// Standard conditions: `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The last tag an alert of a rule and action was delivered for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRecord {
    /// Rule name.
    pub rule: String,
    /// Action type, e.g. `alert-email`.
    pub action: String,
    /// Tag alerted.
    pub tag: String,
}

impl Image {
    /// The tag the Image is at: `status.tag`, else `spec.baseTag`.
    pub fn current_tag(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.tag.as_deref())
            .filter(|t| !t.is_empty())
            .unwrap_or(&self.spec.base_tag)
    }
}
