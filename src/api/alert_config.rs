//! The `AlertConfig` custom resource: where and how alerts are delivered.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits;
use super::value::ValueOrValueFrom;

/// Alert destinations; one AlertConfig may configure several.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kimup.cloudavenue.io",
    version = "v1alpha1",
    kind = "AlertConfig",
    namespaced,
    category = "kimup",
    doc = "Alert settings referenced by Image alert actions through valueFrom.alertConfigRef"
)]
#[serde(rename_all = "camelCase")]
pub struct AlertConfigSpec {
    /// Discord webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<DiscordSpec>,
    /// Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSpec>,
    /// Generic JSON webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// E-mail over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSpec>,
}

/// Discord settings (kimup's fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscordSpec {
    /// Webhook URL, usually from a Secret.
    #[serde(rename = "webhookURL")]
    pub webhook_url: ValueOrValueFrom,
    /// Users or roles to mention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MENTIONS), inner(length(max = limits::MENTION)))]
    pub mentions: Vec<String>,
    /// Request time limit, e.g. `10s` (default 10s, at most 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TIMEOUT))]
    pub timeout: Option<String>,
    /// Message template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TEMPLATE))]
    pub template_body: Option<String>,
    /// kimup's documented path to a template file. Not supported: a central controller must not
    /// read files named by users; an alert using it fails with a message asking for templateBody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TEMPLATE_FILE))]
    pub template_file: Option<String>,
}

/// Slack settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackSpec {
    /// Incoming-webhook URL, usually from a Secret.
    #[serde(rename = "webhookURL")]
    pub webhook_url: ValueOrValueFrom,
    /// Channel override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::CHANNEL))]
    pub channel: Option<String>,
    /// Request time limit, e.g. `10s` (default 10s, at most 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TIMEOUT))]
    pub timeout: Option<String>,
    /// Message template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TEMPLATE))]
    pub template_body: Option<String>,
}

/// Generic webhook settings: a JSON POST with the alert's fields and rendered text.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Target URL.
    pub url: ValueOrValueFrom,
    /// Extra headers, e.g. an Authorization header from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::HEADERS))]
    pub headers: Vec<WebhookHeader>,
    /// Request time limit, e.g. `10s` (default 10s, at most 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TIMEOUT))]
    pub timeout: Option<String>,
    /// Template of the `text` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TEMPLATE))]
    pub template_body: Option<String>,
}

/// A header of a webhook request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookHeader {
    /// Header name.
    #[schemars(length(max = limits::HEADER_NAME))]
    pub name: String,
    /// Header value.
    pub value: ValueOrValueFrom,
}

/// SMTP authentication methods (kimup's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EmailAuth {
    /// Pick from the server's offer (PLAIN or LOGIN when credentials are set).
    #[default]
    Unknown,
    /// AUTH PLAIN.
    Plain,
    /// AUTH LOGIN.
    Login,
    /// CRAM-MD5: not supported; refused with a clear error.
    #[serde(rename = "CRAMMD5")]
    CramMd5,
    /// No authentication.
    None,
    /// OAuth2: not supported; refused with a clear error.
    OAuth2,
}

/// SMTP transport encryption (kimup's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EmailEncryption {
    /// Implicit TLS on port 465, else STARTTLS when offered.
    #[default]
    Auto,
    /// Plain text.
    None,
    /// STARTTLS required.
    ExplicitTLS,
    /// TLS from the first byte.
    ImplicitTLS,
}

/// E-mail settings (kimup's fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailSpec {
    /// SMTP server host.
    pub host: ValueOrValueFrom,
    /// SMTP port (default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<ValueOrValueFrom>,
    /// SMTP user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<ValueOrValueFrom>,
    /// SMTP password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<ValueOrValueFrom>,
    /// Authentication method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EmailAuth>,
    /// Sender address.
    #[schemars(length(max = limits::EMAIL_ADDRESS))]
    pub from_address: String,
    /// Sender display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::EMAIL_NAME))]
    pub from_name: Option<String>,
    /// Recipients.
    #[schemars(length(min = 1, max = limits::RECIPIENTS), inner(length(max = limits::EMAIL_ADDRESS)))]
    pub to_address: Vec<String>,
    /// Name sent in EHLO (`auto` = host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::HOST_NAME))]
    pub client_host: Option<String>,
    /// Transport encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EmailEncryption>,
    /// Send the body as HTML.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "useHTML")]
    pub use_html: Option<bool>,
    /// Use STARTTLS when offered (default true).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "useStartTLS"
    )]
    pub use_start_tls: Option<bool>,
    /// Subject template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::SUBJECT_TEMPLATE))]
    pub template_subject: Option<String>,
    /// Body template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TEMPLATE))]
    pub template_body: Option<String>,
}
