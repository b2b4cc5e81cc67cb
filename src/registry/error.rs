//! Registry errors, each mapped to an Image status result and a metric label.

use crate::api::SyncResult;

/// What went wrong talking to a registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached (DNS, refused connection, reset).
    #[error("registry {registry} unreachable: {reason}")]
    Network { registry: String, reason: String },
    /// TLS verification failed.
    #[error("TLS error talking to registry {registry}: {reason}")]
    Tls { registry: String, reason: String },
    /// No answer in time.
    #[error("registry {registry} timed out")]
    Timeout { registry: String },
    /// Credentials refused, or none given where needed.
    #[error("registry {registry} refused the credentials ({status}): {detail}")]
    Unauthorized {
        registry: String,
        status: u16,
        detail: String,
    },
    /// Token negotiation failed.
    #[error("authentication with registry {registry} failed: {reason}")]
    Auth { registry: String, reason: String },
    /// Unknown repository.
    #[error("repository {repository} not found: {detail}")]
    NotFound { repository: String, detail: String },
    /// Still rate-limited after the allowed retries.
    #[error("registry {registry} is rate-limiting requests (429) after retries")]
    RateLimited { registry: String },
    /// Any other unexpected status.
    #[error("registry {registry} answered {status}: {detail}")]
    Status {
        registry: String,
        status: u16,
        detail: String,
    },
    /// The tag list could not be read.
    #[error("unusable tag list for {repository}: {reason}")]
    InvalidTagList { repository: String, reason: String },
    /// A pagination `Link` pointed to another scheme, host or port (https to http included):
    /// not followed, since the request would carry the registry's credentials or token there.
    #[error(
        "registry {registry} sent a pagination Link to another origin ({target}); it is not followed, so that no request or credential leaves the registry"
    )]
    ForeignLink { registry: String, target: String },
    /// Credentials (basic, or a token they bought) would travel over plain HTTP to a host the
    /// operator did not list with `--insecure-registry`: the registry itself (the
    /// `insecureSkipTLSVerify` fallback to HTTP) or a token realm. Nothing was sent.
    #[error(
        "refusing to send the credentials for registry {registry} to {target} over plain HTTP: only hosts the operator lists with --insecure-registry get credentials without TLS"
    )]
    InsecureCredentials { registry: String, target: String },
    /// A tag list over a limit: a page over `ClientSettings::max_tag_page_bytes`, or more than
    /// `ClientSettings::max_tags` tags in the repository. Reading stopped at the limit.
    #[error("tag list for {repository} exceeds the limit of {limit}")]
    TagsLimit { repository: String, limit: String },
    /// A response body over its limit (token responses: `ClientSettings::max_token_bytes`).
    /// Reading stopped at the limit.
    #[error("registry {registry} sent a {what} larger than the limit of {limit}")]
    ResponseTooLarge {
        registry: String,
        what: &'static str,
        limit: String,
    },
    /// Client configuration problem (bad CA file).
    #[error("registry client configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Status result for an Image whose sync failed with this error.
    pub fn result(&self) -> SyncResult {
        match self {
            RegistryError::InvalidTagList { .. } | RegistryError::TagsLimit { .. } => {
                SyncResult::TagsError
            }
            _ => SyncResult::RegistryError,
        }
    }

    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RegistryError::Network { .. } => "network",
            RegistryError::Tls { .. } => "tls",
            RegistryError::Timeout { .. } => "timeout",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::Auth { .. } => "auth",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::RateLimited { .. } => "rate_limited",
            RegistryError::Status { .. } => "status",
            RegistryError::InvalidTagList { .. } => "invalid_tag_list",
            RegistryError::ForeignLink { .. } => "foreign_link",
            RegistryError::InsecureCredentials { .. } => "insecure_credentials",
            RegistryError::TagsLimit { .. } => "tags_limit",
            RegistryError::ResponseTooLarge { .. } => "response_too_large",
            RegistryError::Config(_) => "config",
        }
    }
}

/// A URL as an error may show it: scheme, host, port and path. Userinfo, query and fragment are
/// dropped, since registries and token realms put credentials and tokens there.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// The origin of a URL (`scheme://host[:port]`), for errors that name where a request would go.
pub fn redact_origin(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown
}

/// Outside text (a registry's error body, an HTTP library's message) made safe for a status
/// message, an event or a log: every URL in it goes through [`redact_url`] (an unparsable one
/// becomes `[url]`), and every non-empty `secret` (a password, a bearer token) becomes
/// `[redacted]`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme is the run of scheme characters just before "://".
        let start = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(i, |(j, _)| j);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        match reqwest::Url::parse(&rest[start..end]) {
            Ok(url) => out.push_str(&redact_url(&url)),
            Err(_) => out.push_str("[url]"),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "[redacted]");
    }
    out
}

/// A byte count as limits are written: `4 MiB`, `64 KiB`, else bytes.
pub fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_reduces_urls_and_replaces_secrets() {
        assert_eq!(
            scrub(
                "error sending request for url (http://u:p@h:5000/v2/x?token=t#f): refused",
                &[]
            ),
            "error sending request for url (http://h:5000/v2/x): refused"
        );
        assert_eq!(
            scrub("see https://x/a,b?token=SECRET", &[]),
            "see https://x/a,b"
        );
        assert_eq!(scrub("a https://[bad b", &[]), "a [url] b");
        assert_eq!(scrub("a :// b", &[]), "a [url] b");
        assert_eq!(
            scrub("password hunter2 refused", &["hunter2", ""]),
            "password [redacted] refused"
        );
        let url = reqwest::Url::parse("https://u:p@h/t?q=1#f").expect("url");
        assert_eq!(redact_url(&url), "https://h/t");
        assert_eq!(redact_origin(&url), "https://h");
        assert_eq!(human_bytes(4 * 1024 * 1024), "4 MiB");
        assert_eq!(human_bytes(64 * 1024), "64 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
