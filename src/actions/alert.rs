//! Alert actions: Discord, Slack, generic webhook and e-mail, configured by an AlertConfig.

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

/// A rendered HTTP alert: where to POST which JSON, with which headers.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpAlert {
    /// Target URL.
    pub url: String,
    /// JSON body.
    pub body: serde_json::Value,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Request timeout.
    pub timeout: Duration,
}

/// A rendered e-mail and how to deliver it.
#[derive(Clone, Debug, PartialEq)]
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
}

/// A ready-to-send alert.
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
    json!({
        "namespace": ctx.namespace,
        "name": ctx.name,
        "image": ctx.image_name,
        "rule": rule,
        "baseTag": ctx.base_tag,
        "actualTag": ctx.actual_tag,
        "newTag": ctx.new_tag,
        "availableTags": ctx.available_tags,
        "text": text,
    })
}

/// Reads the AlertConfig an action names and renders the alert (I/O only to read objects).
pub async fn prepare(
    client: &Client,
    namespace: &str,
    action: ActionType,
    data: Option<&ValueOrValueFrom>,
    ctx: &AlertContext,
    rule: &str,
    values: &mut ValueResolver,
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
    let render = |tpl: Option<&String>, default: &str| -> Result<String, AlertError> {
        template::render(tpl.map(String::as_str).unwrap_or(default), ctx).map_err(|e| {
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
    let required = |field: &str, v: Option<String>| -> Result<String, AlertError> {
        v.ok_or_else(|| AlertError::Invalid {
            name: name.clone(),
            reason: format!("{field} is empty"),
        })
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
            let url = required(
                "discord.webhookURL",
                values
                    .resolve("discord.webhookURL", &d.webhook_url)
                    .await
                    .map_err(value_err)?,
            )?;
            let text = render(d.template_body.as_ref(), template::DEFAULT_BODY)?;
            Ok(Alert::Http(HttpAlert {
                url: discord_url(&url),
                body: discord_body(&text, &d.mentions),
                headers: Vec::new(),
                timeout: timeout(d.timeout.as_ref())?,
            }))
        }
        ActionType::AlertSlack => {
            let s = spec.slack.as_ref().ok_or_else(|| no_section("slack"))?;
            let url = required(
                "slack.webhookURL",
                values
                    .resolve("slack.webhookURL", &s.webhook_url)
                    .await
                    .map_err(value_err)?,
            )?;
            let text = render(s.template_body.as_ref(), template::DEFAULT_BODY)?;
            Ok(Alert::Http(HttpAlert {
                url,
                body: slack_body(&text, s.channel.as_deref()),
                headers: Vec::new(),
                timeout: timeout(s.timeout.as_ref())?,
            }))
        }
        ActionType::AlertWebhook => {
            let w = spec.webhook.as_ref().ok_or_else(|| no_section("webhook"))?;
            let url = required(
                "webhook.url",
                values
                    .resolve("webhook.url", &w.url)
                    .await
                    .map_err(value_err)?,
            )?;
            let mut headers = Vec::new();
            for h in &w.headers {
                let field = format!("webhook.headers[{}]", h.name);
                if let Some(v) = values.resolve(&field, &h.value).await.map_err(value_err)? {
                    headers.push((h.name.clone(), v));
                }
            }
            let text = render(w.template_body.as_ref(), template::DEFAULT_BODY)?;
            Ok(Alert::Http(HttpAlert {
                url,
                body: webhook_body(ctx, rule, &text),
                headers,
                timeout: timeout(w.timeout.as_ref())?,
            }))
        }
        ActionType::AlertEmail => {
            let e = spec.email.as_ref().ok_or_else(|| no_section("email"))?;
            email(&name, e, ctx, values).await
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
) -> Result<Alert, AlertError> {
    let value_err = |err| AlertError::Value {
        name: name.to_string(),
        source: err,
    };
    let invalid = |reason: String| AlertError::Invalid {
        name: name.to_string(),
        reason,
    };
    let host = values
        .resolve("email.host", &e.host)
        .await
        .map_err(value_err)?
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("email.host is empty".into()))?;
    let port = match &e.port {
        None => 25,
        Some(p) => match values.resolve("email.port", p).await.map_err(value_err)? {
            None => 25,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| invalid(format!("email.port {p:?} is not a port number")))?,
        },
    };
    let username = match &e.username {
        Some(u) => values
            .resolve("email.username", u)
            .await
            .map_err(value_err)?,
        None => None,
    };
    let password = match &e.password {
        Some(p) => values
            .resolve("email.password", p)
            .await
            .map_err(value_err)?,
        None => None,
    };
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
    let subject = template::render(
        e.template_subject
            .as_deref()
            .unwrap_or(template::DEFAULT_SUBJECT),
        ctx,
    )
    .map_err(|err| AlertError::Template {
        name: name.to_string(),
        source: err,
    })?;
    let body = template::render(
        e.template_body.as_deref().unwrap_or(template::DEFAULT_BODY),
        ctx,
    )
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
            let mut req = http.post(&h.url).timeout(h.timeout).json(&h.body);
            for (k, v) in &h.headers {
                req = req.header(k, v);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| fail(format!("POST {}: {e}", redact_url(&h.url))))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let text: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                return Err(fail(format!(
                    "POST {} answered {status}: {text}",
                    redact_url(&h.url)
                )));
            }
            Ok(())
        }
        Alert::Email(e) => send_email(e).await.map_err(fail),
    }
}

/// Scheme, host and path only: Discord and Slack URLs carry their secret in the path's tail.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
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
        };
        let body = webhook_body(&ctx, "minor", "text");
        assert_eq!(body["newTag"], "1.1");
        assert_eq!(body["availableTags"], json!(["1.0", "1.1"]));
        assert_eq!(body["rule"], "minor");
    }
}
