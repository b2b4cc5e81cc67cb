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
    /// Client configuration problem (bad CA file).
    #[error("registry client configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Status result for an Image whose sync failed with this error.
    pub fn result(&self) -> SyncResult {
        match self {
            RegistryError::InvalidTagList { .. } => SyncResult::TagsError,
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
            RegistryError::Config(_) => "config",
        }
    }
}
