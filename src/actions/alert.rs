//! Alert actions: Discord, Slack, generic webhook and e-mail, configured by an AlertConfig.

use std::fmt;
use std::time::Duration;

use kube::{Api, Client};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;

use super::template::{self, AlertContext};
use super::values::{ValueError, ValueResolver};
use crate::api::alert_config::{EmailAuth, EmailEncryption, EmailSpec};
use crate::api::{ActionType, AlertConfig, ValueOrValueFrom, ValueSource};

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The action has no `data.valueFrom.alertConfigRef`.
    #[error("{action} needs data.valueFrom.alertConfigRef naming an AlertConfig")]
    NoConfigRef { action: &'static str },
    /// The AlertConfig does not exist.
    #[error("AlertConfig {name} not found in namespace {namespace}")]
    ConfigNotFound { name: String, namespace: String },
    /// The AlertConfig lacks the section this action needs.
    #[error("AlertConfig {name} has no {section} section, needed by {action}")]
    NoSection {
        name: String,
        section: &'static str,
        action: &'static str,
    },
    /// A value could not be read.
    #[error("AlertConfig {name}: {source}")]
    Value {
        name: String,
        #[source]
        source: ValueError,
    },
    /// The template is invalid.
    #[error("AlertConfig {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: template::TemplateError,
    },
    /// An invalid setting (URL, port, address, timeout).
    #[error("AlertConfig {name}: {reason}")]
    Invalid { name: String, reason: String },
    /// Delivery failed.
    #[error("{action} delivery failed: {reason}")]
    Delivery {
        action: &'static str,
        reason: String,
    },
    /// API error reading the AlertConfig.
    #[error("reading AlertConfig {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl AlertError {
    /// The error with every secret of the alert replaced in its texts (the other variants hold
    /// names and template text from the spec, never a value read from a Secret or a URL).
    fn scrubbed(self, secrets: &Redactions) -> Self {
        match self {
            AlertError::Invalid { name, reason } => AlertError::Invalid {
                name,
                reason: secrets.scrub(&reason),
            },
            AlertError::Delivery { action, reason } => AlertError::Delivery {
                action,
                reason: secrets.scrub(&reason),
            },
            other => other,
        }
    }

    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AlertError::NoConfigRef { .. } => "no_config_ref",
            AlertError::ConfigNotFound { .. } => "config_not_found",
            AlertError::NoSection { .. } => "no_section",
            AlertError::Value { .. } => "value",
            AlertError::Template { .. } => "template",
            AlertError::Invalid { .. } => "invalid",
            AlertError::Delivery { .. } => "delivery",
            AlertError::Api { .. } => "api",
        }
    }
}

/// What replaces a secret in an error text or a `Debug` output.
const REDACTED: &str = "[redacted]";

/// Values shorter than this are not scrubbed: replacing every `25` or `ops` would garble the
/// messages, and so short a value guards nothing.
const MIN_REDACTED_LEN: usize = 4;

/// Path segments and query values of a URL are scrubbed from this length on: tokens are long
/// (Slack's 24 characters, Discord's 68), while `hook` or `fail` are words of the message too.
const MIN_URL_PART_LEN: usize = 8;

/// The secrets of one alert: its URL (whole, and the parts that carry tokens), its header
/// values, its SMTP credentials and every value read from a Secret. Every error text the alert
/// produces is scrubbed of them: an Image's status and events are read by whoever may read
/// Images, and kimup's log by the operators of the kimup that serves every tenant.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactions(Vec<String>);

impl Redactions {
    /// Adds a secret value.
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.chars().count() >= MIN_REDACTED_LEN && !self.0.iter().any(|v| v == value) {
            self.0.push(value.to_string());
            // Longest first, so that a URL goes whole before its path is looked for.
            self.0.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// Adds a URL: whole as given and as normalized, its user and password, and its path,
    /// path segments and query, where Slack and Discord keep their tokens (a receiver's error
    /// answer may quote any of them).
    pub fn add_url(&mut self, url: &str) {
        self.add(url);
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return;
        };
        self.add(parsed.as_str());
        self.add(parsed.username());
        self.add(parsed.password().unwrap_or_default());
        self.add(parsed.path());
        if let Some(query) = parsed.query() {
            self.add(query);
        }
        let segments = parsed.path_segments().into_iter().flatten();
        let values = parsed.query_pairs().map(|(_, value)| value.into_owned());
        for part in segments.map(str::to_string).chain(values) {
            if part.chars().count() >= MIN_URL_PART_LEN {
                self.add(&part);
            }
        }
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }
}

impl fmt::Debug for Redactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The count only: the values are what this type hides.
        write!(f, "Redactions({} values)", self.0.len())
    }
}

/// A rendered HTTP alert: where to POST which JSON, with which headers.
#[derive(Clone, PartialEq)]
pub struct HttpAlert {
    /// Target URL.
    pub url: String,
    /// JSON body.
    pub body: serde_json::Value,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Request timeout.
    pub timeout: Duration,
    /// Secrets scrubbed from delivery errors.
    pub secrets: Redactions,
}

impl fmt::Debug for HttpAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's path and the header values are credentials; the body is rendered text.
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, _)| (name.as_str(), REDACTED))
            .collect();
        f.debug_struct("HttpAlert")
            .field("url", &redact_url(&self.url))
            .field("body", &self.body)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// A rendered e-mail and how to deliver it.
#[derive(Clone, PartialEq)]
pub struct EmailAlert {
    /// SMTP host.
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// Credentials, when any.
    pub credentials: Option<(String, String)>,
    /// Auth method.
    pub auth: EmailAuth,
    /// Encryption.
    pub encryption: EmailEncryption,
    /// Use STARTTLS when offered (Auto/None encryption).
    pub use_start_tls: bool,
    /// EHLO name.
    pub client_host: Option<String>,
    /// Sender.
    pub from: String,
    /// Sender display name.
    pub from_name: Option<String>,
    /// Recipients.
    pub to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// HTML body.
    pub html: bool,
    /// Secrets scrubbed from delivery errors.
    pub secrets: Redactions,
}

impl fmt::Debug for EmailAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The host may come from a Secret too: it is shown scrubbed, the credentials not at all.
        let credentials = self.credentials.as_ref().map(|_| (REDACTED, REDACTED));
        f.debug_struct("EmailAlert")
            .field("host", &self.secrets.scrub(&self.host))
            .field("port", &self.port)
            .field("credentials", &credentials)
            .field("auth", &self.auth)
            .field("encryption", &self.encryption)
            .field("use_start_tls", &self.use_start_tls)
            .field("client_host", &self.client_host)
            .field("from", &self.from)
            .field("from_name", &self.from_name)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("body", &self.body)
            .field("html", &self.html)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// A ready-to-send alert (its `Debug` shows no secret).
#[derive(Clone, Debug, PartialEq)]
pub enum Alert {
    /// Discord, Slack or generic webhook.
    Http(HttpAlert),
    /// SMTP.
    Email(EmailAlert),
}

/// Parses `10s`, `500ms`, `1m` (Go duration subset); None on anything else.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// Largest `timeout` an AlertConfig may set: an alert is sent from inside an Image's sync, so a
/// receiver that never answers must not hold that sync (and a concurrency slot) for longer.
pub const MAX_ALERT_TIMEOUT: Duration = Duration::from_secs(60);

/// An AlertConfig `timeout` checked: a duration above zero and at most [`MAX_ALERT_TIMEOUT`]
/// (pure; the error says what to write instead).
pub fn alert_timeout(s: &str) -> Result<Duration, String> {
    match parse_timeout(s) {
        None => Err(format!("invalid timeout {s:?} (use e.g. 10s, 500ms, 1m)")),
        Some(d) if d.is_zero() => Err(format!("timeout {s:?} must be above 0")),
        Some(d) if d > MAX_ALERT_TIMEOUT => Err(format!(
            "timeout {s:?} is above the maximum of {}s",
            MAX_ALERT_TIMEOUT.as_secs()
        )),
        Some(d) => Ok(d),
    }
}

/// Turns kimup/shoutrrr `discord://token@id` URLs into Discord's HTTPS webhook URL.
pub fn discord_url(raw: &str) -> String {
    if let Some(rest) = raw.strip_prefix("discord://")
        && let Some((token, id)) = rest.split_once('@')
    {
        let id = id.trim_end_matches('/');
        return format!("https://discord.com/api/webhooks/{id}/{token}");
    }
    raw.to_string()
}

/// Discord payload (pure).
pub fn discord_body(text: &str, mentions: &[String]) -> serde_json::Value {
    let mut content = String::new();
    for m in mentions {
        content.push_str(m);
        content.push(' ');
    }
    content.push_str(text);
    json!({ "content": content, "username": "kimup" })
}

/// Slack payload (pure).
pub fn slack_body(text: &str, channel: Option<&str>) -> serde_json::Value {
    let mut body = json!({ "text": text });
    if let Some(c) = channel {
        body["channel"] = json!(c);
    }
    body
}

/// Generic webhook payload: the alert's fields and the rendered text (pure).
pub fn webhook_body(ctx: &AlertContext, rule: &str, text: &str) -> serde_json::Value {
    let mut body = json!({
        "namespace": ctx.namespace,
        "name": ctx.name,
        "image": ctx.image_name,
        "rule": rule,
        "baseTag": ctx.base_tag,
        "actualTag": ctx.actual_tag,
        "newTag": ctx.new_tag,
        "availableTags": ctx.available_tags,
        "text": text,
    });
    // A failed rollout says so to machines too; a new tag's body is kimup (Go)'s.
    if let (Some(failure), Some(map)) = (&ctx.failure, body.as_object_mut()) {
        map.insert("rolloutFailed".into(), json!(failure));
    }
    body
}

/// Longest URL an alert may use, in bytes: the CRD's limit on an inline value, here for URLs
/// read from Secrets and ConfigMaps (whose values may be up to 1 MiB).
pub const MAX_URL_LEN: usize = crate::api::limits::VALUE;

/// Reads the AlertConfig an action names and renders the alert (I/O only to read objects).
/// Errors are scrubbed of the alert's secrets, as are the errors of [`send`].
pub async fn prepare(
    client: &Client,
    namespace: &str,
    action: ActionType,
    data: Option<&ValueOrValueFrom>,
    ctx: &AlertContext,
    rule: &str,
    values: &mut ValueResolver,
) -> Result<Alert, AlertError> {
    let mut secrets = Redactions::default();
    let prepared = prepare_alert(
        client,
        namespace,
        action,
        data,
        ctx,
        rule,
        values,
        &mut secrets,
    )
    .await;
    match prepared {
        Ok(Alert::Http(h)) => Ok(Alert::Http(HttpAlert { secrets, ..h })),
        Ok(Alert::Email(e)) => Ok(Alert::Email(EmailAlert { secrets, ..e })),
        Err(e) => Err(e.scrubbed(&secrets)),
    }
}

/// Reads a value; one read from a Secret is added to `secrets`.
async fn resolve(
    values: &mut ValueResolver,
    secrets: &mut Redactions,
    field: &str,
    v: &ValueOrValueFrom,
) -> Result<Option<String>, ValueError> {
    let value = values.resolve(field, v).await?;
    if let (Some(value), ValueSource::Secret { .. }) = (&value, v.source()) {
        secrets.add(value);
    }
    Ok(value)
}

/// [`prepare`], recording the alert's secrets in `secrets` as they are read.
#[allow(clippy::too_many_arguments)]
async fn prepare_alert(
    client: &Client,
    namespace: &str,
    action: ActionType,
    data: Option<&ValueOrValueFrom>,
    ctx: &AlertContext,
    rule: &str,
    values: &mut ValueResolver,
    secrets: &mut Redactions,
) -> Result<Alert, AlertError> {
    let action_name = action.as_str();
    let name = match data.map(|d| d.source()) {
        Some(ValueSource::AlertConfig(name)) => name,
        _ => {
            return Err(AlertError::NoConfigRef {
                action: action_name,
            });
        }
    };
    let api: Api<AlertConfig> = Api::namespaced(client.clone(), namespace);
    let config = api
        .get_opt(&name)
        .await
        .map_err(|e| AlertError::Api {
            name: name.clone(),
            source: Box::new(e),
        })?
        .ok_or_else(|| AlertError::ConfigNotFound {
            name: name.clone(),
            namespace: namespace.to_string(),
        })?;
    let spec = &config.spec;
    let render = |tpl: Option<&String>| -> Result<String, AlertError> {
        template::render_part(template::Part::Body, tpl.map(String::as_str), ctx).map_err(|e| {
            AlertError::Template {
                name: name.clone(),
                source: e,
            }
        })
    };
    let value_err = |e| AlertError::Value {
        name: name.clone(),
        source: e,
    };
    let required_url = |field: &str, v: Option<String>| -> Result<String, AlertError> {
        let invalid = |reason| AlertError::Invalid {
            name: name.clone(),
            reason,
        };
        match v {
            None => Err(invalid(format!("{field} is empty"))),
            Some(url) if url.len() > MAX_URL_LEN => Err(invalid(format!(
                "{field} is longer than {MAX_URL_LEN} bytes"
            ))),
            Some(url) => Ok(url),
        }
    };
    let timeout = |t: Option<&String>| -> Result<Duration, AlertError> {
        match t {
            None => Ok(Duration::from_secs(10)),
            Some(t) => alert_timeout(t).map_err(|reason| AlertError::Invalid {
                name: name.clone(),
                reason,
            }),
        }
    };
    let no_section = |section| AlertError::NoSection {
        name: name.clone(),
        section,
        action: action_name,
    };
    match action {
        ActionType::AlertDiscord => {
            let d = spec.discord.as_ref().ok_or_else(|| no_section("discord"))?;
            if d.template_file.is_some() {
                return Err(AlertError::Invalid {
                    name: name.clone(),
                    reason:
                        "discord.templateFile is not supported (kimup does not read files named by \
                             resources); put the template in discord.templateBody"
                            .into(),
                });
            }
            let url = required_url(
                "discord.webhookURL",
                resolve(values, secrets, "discord.webhookURL", &d.webhook_url)
                    .await
                    .map_err(value_err)?,
            )?;
            let target = discord_url(&url);
            secrets.add_url(&url);
            secrets.add_url(&target);
            let text = render(d.template_body.as_ref())?;
            Ok(Alert::Http(HttpAlert {
                url: target,
                body: discord_body(&text, &d.mentions),
                headers: Vec::new(),
                timeout: timeout(d.timeout.as_ref())?,
                secrets: Redactions::default(),
            }))
        }
        ActionType::AlertSlack => {
            let s = spec.slack.as_ref().ok_or_else(|| no_section("slack"))?;
            let url = required_url(
                "slack.webhookURL",
                resolve(values, secrets, "slack.webhookURL", &s.webhook_url)
                    .await
                    .map_err(value_err)?,
            )?;
            secrets.add_url(&url);
            let text = render(s.template_body.as_ref())?;
            Ok(Alert::Http(HttpAlert {
                url,
                body: slack_body(&text, s.channel.as_deref()),
                headers: Vec::new(),
                timeout: timeout(s.timeout.as_ref())?,
                secrets: Redactions::default(),
            }))
        }
        ActionType::AlertWebhook => {
            let w = spec.webhook.as_ref().ok_or_else(|| no_section("webhook"))?;
            let url = required_url(
                "webhook.url",
                resolve(values, secrets, "webhook.url", &w.url)
                    .await
                    .map_err(value_err)?,
            )?;
            secrets.add_url(&url);
            let mut headers = Vec::new();
            for h in &w.headers {
                let field = format!("webhook.headers[{}]", h.name);
                if let Some(v) = resolve(values, secrets, &field, &h.value)
                    .await
                    .map_err(value_err)?
                {
                    // Headers carry tokens, inline or not.
                    secrets.add(&v);
                    headers.push((h.name.clone(), v));
                }
            }
            let text = render(w.template_body.as_ref())?;
            Ok(Alert::Http(HttpAlert {
                url,
                body: webhook_body(ctx, rule, &text),
                headers,
                timeout: timeout(w.timeout.as_ref())?,
                secrets: Redactions::default(),
            }))
        }
        ActionType::AlertEmail => {
            let e = spec.email.as_ref().ok_or_else(|| no_section("email"))?;
            email(&name, e, ctx, values, secrets).await
        }
        ActionType::Apply | ActionType::RequestApproval => Err(AlertError::Invalid {
            name,
            reason: format!("{action_name} is not an alert"),
        }),
    }
}

async fn email(
    name: &str,
    e: &EmailSpec,
    ctx: &AlertContext,
    values: &mut ValueResolver,
    secrets: &mut Redactions,
) -> Result<Alert, AlertError> {
    let value_err = |err| AlertError::Value {
        name: name.to_string(),
        source: err,
    };
    let invalid = |reason: String| AlertError::Invalid {
        name: name.to_string(),
        reason,
    };
    let host = resolve(values, secrets, "email.host", &e.host)
        .await
        .map_err(value_err)?
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("email.host is empty".into()))?;
    let port = match &e.port {
        None => 25,
        Some(p) => match resolve(values, secrets, "email.port", p)
            .await
            .map_err(value_err)?
        {
            None => 25,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| invalid(format!("email.port {p:?} is not a port number")))?,
        },
    };
    let username = match &e.username {
        Some(u) => resolve(values, secrets, "email.username", u)
            .await
            .map_err(value_err)?,
        None => None,
    };
    let password = match &e.password {
        Some(p) => resolve(values, secrets, "email.password", p)
            .await
            .map_err(value_err)?,
        None => None,
    };
    // Credentials, inline or not.
    for v in [&username, &password].into_iter().flatten() {
        secrets.add(v);
    }
    let auth = e.auth.unwrap_or_default();
    if matches!(auth, EmailAuth::CramMd5 | EmailAuth::OAuth2) {
        return Err(invalid(format!(
            "email.auth {auth:?} is not supported; use Plain, Login, None or Unknown"
        )));
    }
    let credentials = match (username, password) {
        (Some(u), p) if !u.is_empty() && auth != EmailAuth::None => {
            Some((u, p.unwrap_or_default()))
        }
        _ => None,
    };
    if e.to_address.is_empty() {
        return Err(invalid("email.toAddress is empty".into()));
    }
    let subject =
        template::render_part(template::Part::Subject, e.template_subject.as_deref(), ctx)
            .map_err(|err| AlertError::Template {
                name: name.to_string(),
                source: err,
            })?;
    let body = template::render_part(template::Part::Body, e.template_body.as_deref(), ctx)
        .map_err(|err| AlertError::Template {
            name: name.to_string(),
            source: err,
        })?;
    Ok(Alert::Email(EmailAlert {
        host,
        port,
        credentials,
        auth,
        encryption: e.encryption.unwrap_or_default(),
        use_start_tls: e.use_start_tls.unwrap_or(true),
        client_host: e.client_host.clone().filter(|h| h != "auto"),
        from: e.from_address.clone(),
        from_name: e.from_name.clone(),
        to: e.to_address.clone(),
        // Subjects are one line: templates written as YAML block scalars end with a newline.
        subject: subject.trim().replace(['\r', '\n'], " "),
        body,
        html: e.use_html.unwrap_or(false),
        secrets: Redactions::default(),
    }))
}

/// Sends an alert.
pub async fn send(
    http: &reqwest::Client,
    alert: &Alert,
    action: ActionType,
) -> Result<(), AlertError> {
    let action_name = action.as_str();
    let fail = |reason: String| AlertError::Delivery {
        action: action_name,
        reason,
    };
    match alert {
        Alert::Http(h) => {
            let target = redact_url(&h.url);
            let mut req = http.post(&h.url).timeout(h.timeout).json(&h.body);
            for (k, v) in &h.headers {
                req = req.header(k, v);
            }
            // reqwest's errors end with `for url (<the whole URL>)`: dropped, and the causes
            // (refused, timed out, DNS) said instead.
            let resp = req.send().await.map_err(|e| {
                let cause = error_chain(&e.without_url());
                fail(h.secrets.scrub(&format!("POST {target}: {cause}")))
            })?;
            let status = resp.status();
            if !status.is_success() {
                let text = error_body(resp).await;
                return Err(fail(
                    h.secrets
                        .scrub(&format!("POST {target} answered {status}: {text}")),
                ));
            }
            Ok(())
        }
        Alert::Email(e) => send_email(e)
            .await
            .map_err(|reason| fail(e.secrets.scrub(&reason))),
    }
}

/// Most bytes of an error answer read: only its start is shown, and a receiver must not make
/// kimup hold (or wait for) an endless body.
pub const MAX_ERROR_BODY: usize = 4096;

/// Characters of an error answer shown in the message.
const SHOWN_ERROR_BODY: usize = 200;

/// The start of an error answer's body, on one line: at most [`MAX_ERROR_BODY`] bytes are read,
/// then the connection is dropped.
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // The end, or a broken body: what was read is all there is to show.
            Ok(None) | Err(_) => break,
        }
    }
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .take(SHOWN_ERROR_BODY)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.trim().to_string()
}

/// An error and its causes, `outer: inner: innermost`, each said once.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Scheme, host and port only: Discord and Slack URLs carry their secret in the path, and a
/// URL may carry a user and password.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

async fn send_email(e: &EmailAlert) -> Result<(), String> {
    let mailbox = |addr: &str, name: Option<&String>| -> Result<Mailbox, String> {
        let address = addr
            .trim()
            .parse()
            .map_err(|err| format!("invalid address {addr:?}: {err}"))?;
        Ok(Mailbox::new(name.cloned(), address))
    };
    let mut builder = Message::builder()
        .from(mailbox(&e.from, e.from_name.as_ref())?)
        .subject(e.subject.clone())
        .header(if e.html {
            ContentType::TEXT_HTML
        } else {
            ContentType::TEXT_PLAIN
        });
    for to in &e.to {
        builder = builder.to(mailbox(to, None)?);
    }
    let message = builder
        .body(e.body.clone())
        .map_err(|err| format!("building message: {err}"))?;
    let tls_params =
        || TlsParameters::new(e.host.clone()).map_err(|err| format!("TLS parameters: {err}"));
    let tls = match e.encryption {
        EmailEncryption::None => Tls::None,
        EmailEncryption::ImplicitTLS => Tls::Wrapper(tls_params()?),
        EmailEncryption::ExplicitTLS => Tls::Required(tls_params()?),
        EmailEncryption::Auto if e.port == 465 => Tls::Wrapper(tls_params()?),
        EmailEncryption::Auto if e.use_start_tls => Tls::Opportunistic(tls_params()?),
        EmailEncryption::Auto => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.clone())
        .port(e.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(15)));
    if let Some(h) = &e.client_host {
        transport = transport.hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            h.clone(),
        ));
    }
    if let Some((u, p)) = &e.credentials {
        transport = transport.credentials(Credentials::new(u.clone(), p.clone()));
        let mechanisms = match e.auth {
            EmailAuth::Plain => vec![Mechanism::Plain],
            EmailAuth::Login => vec![Mechanism::Login],
            _ => vec![Mechanism::Plain, Mechanism::Login],
        };
        transport = transport.authentication(mechanisms);
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|err| format!("SMTP {}:{}: {err}", e.host, e.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_urls() {
        assert_eq!(parse_timeout("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("ten"), None);
        assert_eq!(parse_timeout("10h"), None);
        assert_eq!(parse_timeout("99999999999999999999m"), None);
        assert_eq!(parse_timeout("999999999999999999m"), None, "overflow");
        assert_eq!(alert_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(alert_timeout("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(alert_timeout("250ms"), Ok(Duration::from_millis(250)));
        let err = alert_timeout("61s").expect_err("above the cap");
        assert!(err.contains("maximum of 60s"), "{err}");
        assert!(alert_timeout("5m").is_err());
        assert!(alert_timeout("0s").expect_err("zero").contains("above 0"));
        assert!(
            alert_timeout("ten")
                .expect_err("junk")
                .contains("invalid timeout")
        );
        assert_eq!(
            discord_url("discord://tok@123"),
            "https://discord.com/api/webhooks/123/tok"
        );
        assert_eq!(discord_url("http://127.0.0.1:1/x"), "http://127.0.0.1:1/x");
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T/B/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_url("http://user:pass@127.0.0.1:8080/hook?t=secret"),
            "http://127.0.0.1:8080/…"
        );
    }

    const MARKER: &str = "s3cr3tMARKERt0ken";

    /// An HTTP alert to `url` with a secret header, its secrets recorded as `prepare` does.
    fn http_alert(url: &str) -> Alert {
        let mut secrets = Redactions::default();
        secrets.add_url(url);
        secrets.add(&format!("Bearer {MARKER}-header"));
        Alert::Http(HttpAlert {
            url: url.to_string(),
            body: json!({"text": "hi"}),
            headers: vec![("Authorization".into(), format!("Bearer {MARKER}-header"))],
            timeout: Duration::from_secs(5),
            secrets,
        })
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn delivery_error(alert: &Alert) -> String {
        send(&client(), alert, ActionType::AlertWebhook)
            .await
            .expect_err("delivery fails")
            .to_string()
    }

    /// A receiver answering 500 whose body quotes the request line (as many error pages do)
    /// and then `extra` bytes; returns its URL and the count of bytes it managed to write.
    async fn echoing_server(extra: usize) -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return 0;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let line = text.lines().next().unwrap_or_default().to_string();
            let body = format!("no hook at {line}\n{text}");
            let answer = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
                body.len() + extra
            );
            let mut written = 0;
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return written;
            }
            written += answer.len();
            let chunk = vec![b'x'; 64 * 1024];
            while written < answer.len() + extra {
                match stream.write(&chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
            written
        });
        (url, task)
    }

    #[tokio::test]
    async fn delivery_errors_show_no_url_secret() {
        // Refused: reqwest's text would end with `for url (http://user:pass@127.0.0.1:1/...)`.
        let url =
            format!("http://user{MARKER}:pw{MARKER}@127.0.0.1:1/hook/{MARKER}?token={MARKER}q");
        let err = delivery_error(&http_alert(&url)).await;
        assert!(!err.contains(MARKER), "{err}");
        assert!(
            err.starts_with(
                "alert-webhook delivery failed: POST http://127.0.0.1:1/…: error sending request"
            ),
            "{err}"
        );
        assert!(err.contains("refused"), "the cause is still said: {err}");

        // Answered 500 with a body quoting the request, path and headers included.
        let (base, server) = echoing_server(0).await;
        let err = delivery_error(&http_alert(&format!("{base}/services/T0/B0/{MARKER}"))).await;
        server.await.expect("server");
        assert!(!err.contains(MARKER), "{err}");
        assert!(
            err.contains("answered 500 Internal Server Error: no hook at POST"),
            "{err}"
        );
        assert!(err.contains("[redacted]"), "{err}");
    }

    #[tokio::test]
    async fn error_answers_are_read_only_in_part() {
        // A receiver sending 64 MiB after its error line: kimup reads 4 KiB and hangs up.
        let (base, server) = echoing_server(64 << 20).await;
        let started = std::time::Instant::now();
        let err = delivery_error(&http_alert(&format!("{base}/hook"))).await;
        let written = server.await.expect("server");
        assert!(err.contains("answered 500"), "{err}");
        assert!(err.len() < 400, "{} bytes: {err}", err.len());
        assert!(
            written < 16 << 20,
            "the receiver wrote {written} bytes: the body was read to the end"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn smtp_errors_show_no_credentials() {
        let mut secrets = Redactions::default();
        secrets.add(&format!("user-{MARKER}"));
        secrets.add(&format!("pw-{MARKER}"));
        let alert = Alert::Email(EmailAlert {
            host: "127.0.0.1".into(),
            port: 1,
            credentials: Some((format!("user-{MARKER}"), format!("pw-{MARKER}"))),
            auth: EmailAuth::Plain,
            encryption: EmailEncryption::None,
            use_start_tls: false,
            client_host: None,
            from: "kimup@example.test".into(),
            from_name: None,
            to: vec!["ops@example.test".into()],
            subject: "s".into(),
            body: "b".into(),
            html: false,
            secrets,
        });
        let err = send(&client(), &alert, ActionType::AlertEmail)
            .await
            .expect_err("nothing listens on port 1")
            .to_string();
        assert!(!err.contains(MARKER), "{err}");
        assert!(err.contains("SMTP 127.0.0.1:1"), "{err}");
        let debug = format!("{alert:?}");
        assert!(!debug.contains(MARKER), "{debug}");
        assert!(
            debug.contains("credentials: Some((\"[redacted]\", \"[redacted]\"))"),
            "{debug}"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let alert = http_alert(&format!("https://hooks.slack.com/services/T0/B0/{MARKER}"));
        let debug = format!("{alert:?}");
        assert!(!debug.contains(MARKER), "{debug}");
        assert!(debug.contains("https://hooks.slack.com/…"), "{debug}");
        assert!(
            debug.contains("(\"Authorization\", \"[redacted]\")"),
            "{debug}"
        );
    }

    #[test]
    fn redactions_scrub_every_form_of_the_url() {
        let mut r = Redactions::default();
        r.add_url(&format!("discord://{MARKER}@123"));
        r.add_url(&format!(
            "https://u:p4ss{MARKER}@x.test/api/{MARKER}2?k={MARKER}3&b=4"
        ));
        r.add("25");
        r.add_url("http://127.0.0.1:1/fail/hook");
        for text in [
            format!("discord://{MARKER}@123"),
            format!("token {MARKER} refused"),
            format!("GET /api/{MARKER}2 404"),
            format!("p4ss{MARKER}"),
            format!("k={MARKER}3"),
        ] {
            let scrubbed = r.scrub(&text);
            assert!(!scrubbed.contains(MARKER), "{text} -> {scrubbed}");
            assert!(scrubbed.contains("[redacted]"), "{text} -> {scrubbed}");
        }
        assert_eq!(r.scrub("port 25"), "port 25", "too short to be scrubbed");
        assert_eq!(
            r.scrub("connection failed"),
            "connection failed",
            "a word, not a token"
        );
        assert!(!format!("{r:?}").contains(MARKER));
        let invalid = AlertError::Invalid {
            name: "team".into(),
            reason: format!("email.port \"{MARKER}\" is not a port number"),
        };
        let mut secrets = Redactions::default();
        secrets.add(MARKER);
        assert_eq!(
            invalid.scrubbed(&secrets).to_string(),
            "AlertConfig team: email.port \"[redacted]\" is not a port number"
        );
    }

    #[test]
    fn payloads() {
        assert_eq!(
            discord_body("hi", &["@here".into()]),
            json!({"content": "@here hi", "username": "kimup"})
        );
        assert_eq!(
            slack_body("hi", Some("#ops")),
            json!({"text": "hi", "channel": "#ops"})
        );
        assert_eq!(slack_body("hi", None), json!({"text": "hi"}));
        let ctx = AlertContext {
            namespace: "ns".into(),
            name: "img".into(),
            image_name: "nginx".into(),
            base_tag: "1.0".into(),
            new_tag: "1.1".into(),
            actual_tag: "1.0".into(),
            available_tags: vec!["1.0".into(), "1.1".into()],
            failure: None,
        };
        let body = webhook_body(&ctx, "minor", "text");
        assert_eq!(body["newTag"], "1.1");
        assert_eq!(body["availableTags"], json!(["1.0", "1.1"]));
        assert_eq!(body["rule"], "minor");
        assert!(
            body.get("rolloutFailed").is_none(),
            "kimup (Go)'s fields only"
        );
        let failed = AlertContext {
            failure: Some("Deployment web: ProgressDeadlineExceeded".into()),
            ..ctx
        };
        let body = webhook_body(&failed, "minor", "text");
        assert_eq!(
            body["rolloutFailed"],
            "Deployment web: ProgressDeadlineExceeded"
        );
    }
}
