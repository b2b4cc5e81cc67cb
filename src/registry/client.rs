//! Distribution API client: tag listing with pagination, manifest digests, auth, limits, retries.
//!
//! Written on reqwest rather than through oci-client because oci-client's `list_tags` drops the
//! `Link` header (registries that cap pages would be truncated), turns 429 into an opaque error
//! (so Retry-After cannot be honoured) and keys credentials by host only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::credentials::Credential;
use super::error::{RegistryError, human_bytes, redact_origin, scrub};
use super::reference::ImageRef;

/// How to reach a registry over the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsMode {
    /// HTTPS with certificate verification (default).
    Verify,
    /// HTTPS without certificate verification (`insecureSkipTLSVerify`).
    SkipVerify,
    /// Plain HTTP (registries listed with `--insecure-registry`).
    PlainHttp,
}

impl TlsMode {
    /// Label for logs, metrics and cache keys.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsMode::Verify => "https",
            TlsMode::SkipVerify => "https-insecure",
            TlsMode::PlainHttp => "http",
        }
    }
}

/// Settings shared by every registry request.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of a whole request (headers and body).
    pub request_timeout: Duration,
    /// Concurrent requests per registry host.
    pub per_registry_concurrency: usize,
    /// Retries after 429 or 5xx (each honouring Retry-After, else exponential backoff).
    pub max_retries: u32,
    /// Cap on any single backoff wait.
    pub max_backoff: Duration,
    /// Page size asked for with `n`.
    pub page_size: usize,
    /// Hard cap on pages followed for one listing (a looping `Link` must not spin forever).
    pub max_pages: usize,
    /// Largest tag-list page read; a larger one fails the listing (`TagsLimit`).
    pub max_tag_page_bytes: usize,
    /// Most distinct tags kept for one repository; more fail the listing (`TagsLimit`).
    pub max_tags: usize,
    /// Largest token response read; a larger one fails the negotiation (`ResponseTooLarge`).
    pub max_token_bytes: usize,
    /// Most of an error response read for its message; the rest is not read.
    pub max_error_body_bytes: usize,
    /// Registries reached over plain HTTP (`host[:port]`).
    pub plain_http: Vec<String>,
    /// Extra CA certificates (PEM) trusted for every registry.
    pub extra_ca_pem: Vec<Vec<u8>>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            per_registry_concurrency: 8,
            max_retries: 3,
            max_backoff: Duration::from_secs(30),
            page_size: 1000,
            max_pages: 100,
            max_tag_page_bytes: 4 * 1024 * 1024,
            max_tags: 100_000,
            max_token_bytes: 64 * 1024,
            max_error_body_bytes: 64 * 1024,
            plain_http: Vec::new(),
            extra_ca_pem: Vec::new(),
        }
    }
}

/// Registry hosts whose concurrency cap is remembered; the least recently used is forgotten.
pub const MAX_TRACKED_REGISTRIES: u64 = 10_000;
/// A registry's concurrency cap is forgotten after this long without a request.
pub const REGISTRY_IDLE: Duration = Duration::from_secs(10 * 60);
/// Bytes of bearer tokens (with their keys) kept; the least recently used go first.
pub const TOKEN_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// A bearer token is reused for at most this long (an expired one costs a 401 and a new token).
pub const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// (registry, kind) request counters kept for [`RegistryClient::request_counts`].
pub const MAX_REQUEST_COUNTERS: u64 = 1_000;

/// Token cache key: (registry, repository, credential fingerprint).
type TokenKey = (String, String, String);

/// Registry client shared by the whole process: one HTTP client per TLS mode, one semaphore per
/// registry host, a bearer-token cache per (host, repository, credential). Every map is keyed by
/// names tenants choose, so each is bounded (entries or bytes) and forgets idle entries.
pub struct RegistryClient {
    settings: ClientSettings,
    verify: reqwest::Client,
    skip_verify: reqwest::Client,
    limits: Cache<String, Arc<Semaphore>>,
    tokens: Cache<TokenKey, Arc<str>>,
    requests: Cache<(String, String), Arc<AtomicU64>>,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

impl RegistryClient {
    /// Builds the HTTP clients; fails on an unreadable CA certificate rather than falling back.
    pub fn new(settings: ClientSettings) -> Result<Self, RegistryError> {
        // The operator's registries keep their own metric label past the tenant-host bound.
        crate::metrics::name_registries(&settings.plain_http);
        let build = |skip: bool| -> Result<reqwest::Client, RegistryError> {
            let mut certs = Vec::new();
            for pem in &settings.extra_ca_pem {
                certs.push(reqwest::Certificate::from_pem(pem).map_err(|e| {
                    RegistryError::Config(format!("invalid registry CA certificate: {e}"))
                })?);
            }
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::custom(
                    |attempt| match redirect_allowed(attempt.previous(), attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(why) => attempt.error(why),
                    },
                ))
                // The Referer would tell a redirect target the registry URL it came from.
                .referer(false)
                .connect_timeout(settings.connect_timeout)
                .timeout(settings.request_timeout)
                .user_agent(concat!("kimup/", env!("CARGO_PKG_VERSION")))
                .tls_certs_merge(certs)
                .danger_accept_invalid_certs(skip)
                .build()
                .map_err(|e| RegistryError::Config(format!("building HTTP client: {e}")))
        };
        Ok(Self {
            verify: build(false)?,
            skip_verify: build(true)?,
            settings,
            // LRU rather than moka's default TinyLFU admission: a registry seen for the first
            // time must get its own semaphore (and keep it), even when the map is full.
            limits: Cache::builder()
                .max_capacity(MAX_TRACKED_REGISTRIES)
                .time_to_idle(REGISTRY_IDLE)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            tokens: Cache::builder()
                .weigher(|k: &TokenKey, v: &Arc<str>| {
                    let bytes = k.0.len() + k.1.len() + k.2.len() + v.len();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .max_capacity(TOKEN_CACHE_BYTES)
                .time_to_live(TOKEN_TTL)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            requests: Cache::builder()
                .max_capacity(MAX_REQUEST_COUNTERS)
                .time_to_idle(Duration::from_secs(3600))
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        })
    }

    /// The TLS mode for a registry given the Image's `insecureSkipTLSVerify`.
    pub fn tls_mode(&self, registry: &str, insecure_skip_verify: bool) -> TlsMode {
        if self.settings.plain_http.iter().any(|h| h == registry) {
            TlsMode::PlainHttp
        } else if insecure_skip_verify {
            TlsMode::SkipVerify
        } else {
            TlsMode::Verify
        }
    }

    /// Whether credentials may travel to `url`: over https to any host, over plain http only
    /// to a host[:port] the operator listed with `--insecure-registry`. Everything a tenant
    /// controls (its Image's `insecureSkipTLSVerify`, its registry's realm) is held to this.
    pub fn may_carry_credentials(&self, url: &reqwest::Url) -> bool {
        match url.scheme() {
            "https" => true,
            "http" => {
                let host = url.host_str().unwrap_or("");
                let with_port = url
                    .port_or_known_default()
                    .map(|p| format!("{host}:{p}"))
                    .unwrap_or_default();
                self.settings.plain_http.iter().any(|listed| {
                    listed.eq_ignore_ascii_case(&with_port)
                        || (url.port().is_none() && listed.eq_ignore_ascii_case(host))
                })
            }
            _ => false,
        }
    }

    /// Fails, before anything is sent, when `credential` would go to `url` in clear text.
    fn check_credentials(
        &self,
        registry: &str,
        url: &reqwest::Url,
        credential: Option<&Credential>,
    ) -> Result<(), RegistryError> {
        if credential.is_some() && !self.may_carry_credentials(url) {
            return Err(RegistryError::InsecureCredentials {
                registry: registry.to_string(),
                target: redact_origin(url),
            });
        }
        Ok(())
    }

    /// Requests sent so far, by (registry, kind) where kind is `tags`, `manifest` or `token`.
    /// At most [`MAX_REQUEST_COUNTERS`] pairs are kept, the least recently counted forgotten.
    pub fn request_counts(&self) -> HashMap<(String, String), u64> {
        self.requests.run_pending_tasks();
        self.requests
            .iter()
            .map(|(k, v)| ((*k).clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// Lists every tag of the repository, following `Link` pagination (and `n`/`last` when a
    /// registry truncates without a Link).
    pub async fn list_tags(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
        tls: TlsMode,
    ) -> Result<Vec<String>, RegistryError> {
        let base = self.base_url(&image.registry, tls);
        let origin = reqwest::Url::parse(&base).map_err(|e| {
            RegistryError::Config(format!(
                "registry {} is not a URL host: {e}",
                image.registry
            ))
        })?;
        let mut url = format!(
            "{base}/v2/{}/tags/list?n={}",
            image.repository, self.settings.page_size
        );
        let mut all: BTreeSet<String> = BTreeSet::new();
        for _ in 0..self.settings.max_pages {
            let resp = self.get(image, credential, tls, &url, None, "tags").await?;
            let link = next_link(resp.headers());
            let limit = self.settings.max_tag_page_bytes;
            let body = read_capped(resp, limit)
                .await
                .map_err(|e| network_error(&image.registry, e, credential))?
                .ok_or_else(|| RegistryError::TagsLimit {
                    repository: image.repository_key(),
                    limit: format!("{} per page", human_bytes(limit)),
                })?;
            let page = parse_tag_page(image, &body)?;
            drop(body);
            let tags = page.tags.unwrap_or_default();
            let n = tags.len();
            // `last` is what the registry sent, valid or not: it is where its next page starts.
            let last = tags.last().cloned();
            let before = all.len();
            // Only valid tags are kept: a tag is at most 128 characters, which bounds what a
            // listing holds, and a tag becomes part of a manifest URL.
            let mut invalid = 0usize;
            all.extend(tags.into_iter().filter(|t| {
                let ok = super::reference::is_valid_tag(t);
                invalid += usize::from(!ok);
                ok
            }));
            if invalid > 0 {
                tracing::debug!(registry = %image.registry, invalid, "invalid tags left out");
            }
            if all.len() > self.settings.max_tags {
                return Err(RegistryError::TagsLimit {
                    repository: image.repository_key(),
                    limit: format!("{} tags", self.settings.max_tags),
                });
            }
            // A page that adds nothing means the registry is not paginating (or loops): stop.
            if all.len() == before {
                return Ok(all.into_iter().collect());
            }
            match next_page(link, last, n, self.settings.page_size) {
                NextPage::Link(next) => url = follow_link(image, &origin, &next)?.to_string(),
                NextPage::After(last) => {
                    url = format!(
                        "{base}/v2/{}/tags/list?n={}&last={}",
                        image.repository,
                        self.settings.page_size,
                        urlencode(&last)
                    )
                }
                NextPage::Done => return Ok(all.into_iter().collect()),
            }
        }
        Err(RegistryError::InvalidTagList {
            repository: image.repository_key(),
            reason: format!("more than {} pages of tags", self.settings.max_pages),
        })
    }

    /// The manifest digest of `tag` (HEAD, which Docker Hub does not count against pull limits).
    pub async fn manifest_digest(
        &self,
        image: &ImageRef,
        tag: &str,
        credential: Option<&Credential>,
        tls: TlsMode,
    ) -> Result<String, RegistryError> {
        let base = self.base_url(&image.registry, tls);
        let url = format!("{base}/v2/{}/manifests/{tag}", image.repository);
        let resp = self
            .get(
                image,
                credential,
                tls,
                &url,
                Some(MANIFEST_ACCEPT),
                "manifest",
            )
            .await?;
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::InvalidTagList {
                repository: image.repository_key(),
                reason: format!("no Docker-Content-Digest header for tag {tag}"),
            })
    }

    fn base_url(&self, registry: &str, tls: TlsMode) -> String {
        // Docker Hub's API lives on registry-1.docker.io, not on the docker.io name.
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        match tls {
            TlsMode::PlainHttp => format!("http://{host}"),
            _ => format!("https://{host}"),
        }
    }

    fn http(&self, tls: TlsMode) -> &reqwest::Client {
        match tls {
            TlsMode::SkipVerify => &self.skip_verify,
            _ => &self.verify,
        }
    }

    /// The registry's concurrency cap. A registry forgotten (idle, or evicted from a full map)
    /// while requests hold permits gets a fresh semaphore, so its cap can be exceeded for at most
    /// the duration of those requests.
    fn semaphore(&self, registry: &str) -> Arc<Semaphore> {
        self.limits.get_with_by_ref(registry, || {
            Arc::new(Semaphore::new(
                self.settings.per_registry_concurrency.max(1),
            ))
        })
    }

    fn count(&self, registry: &str, kind: &str) {
        self.requests
            .get_with((registry.to_string(), kind.to_string()), || {
                Arc::new(AtomicU64::new(0))
            })
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::registry_request(registry, kind);
    }

    /// GET (or HEAD for manifests) with auth negotiation, concurrency cap and retries.
    async fn get(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
        tls: TlsMode,
        url: &str,
        accept: Option<&str>,
        kind: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let registry = &image.registry;
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            RegistryError::Config(format!("registry {registry}: invalid request URL: {e}"))
        })?;
        // A token bought with the credentials is held to the same rule as the credentials.
        self.check_credentials(registry, &parsed, credential)?;
        let fp = super::credentials::fingerprint(credential);
        let token_key = (registry.clone(), image.repository.clone(), fp);
        let mut attempt = 0u32;
        let mut authed_once = false;
        loop {
            let permit = self
                .semaphore(registry)
                .acquire_owned()
                .await
                .map_err(|_| RegistryError::Config("registry semaphore closed".into()))?;
            let mut req = if kind == "manifest" {
                self.http(tls).head(parsed.clone())
            } else {
                self.http(tls).get(parsed.clone())
            };
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let token = self.tokens.get(&token_key);
            if let Some(token) = &token {
                req = req.header(AUTHORIZATION, format!("Bearer {token}"));
            } else if let Some(c) = credential {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            self.count(registry, kind);
            let sent = req.send().await;
            drop(permit);
            let resp = sent.map_err(|e| network_error(registry, e, credential))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && !authed_once {
                authed_once = true;
                if let Some(challenge) = bearer_challenge(resp.headers()) {
                    let token = self
                        .fetch_token(registry, tls, &challenge, image, credential)
                        .await?;
                    self.tokens.insert(token_key.clone(), Arc::from(token));
                    continue;
                }
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < self.settings.max_retries
            {
                let wait = retry_after(resp.headers())
                    .unwrap_or_else(|| Duration::from_millis(500 * 2u64.pow(attempt)))
                    .min(self.settings.max_backoff);
                attempt += 1;
                tracing::warn!(%registry, %status, attempt, wait_ms = wait.as_millis() as u64, "registry asked to back off");
                tokio::time::sleep(wait).await;
                continue;
            }
            // Only the start of an error body is read: its message is all that is shown.
            let body = read_truncated(resp, self.settings.max_error_body_bytes).await;
            let mut secrets = secrets(credential);
            secrets.extend(token.as_deref());
            return Err(status_error(image, status, &body, &secrets));
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        tls: TlsMode,
        challenge: &HashMap<String, String>,
        image: &ImageRef,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let realm = challenge.get("realm").ok_or_else(|| RegistryError::Auth {
            registry: registry.to_string(),
            reason: "bearer challenge without realm".into(),
        })?;
        // The realm is not echoed: it is the registry's text and may carry anything.
        let mut url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Auth {
            registry: registry.to_string(),
            reason: format!("invalid token realm: {e}"),
        })?;
        // Basic credentials go to a realm on any host (Docker Hub's is auth.docker.io, GitLab's
        // is not its registry's host either), but never in clear text to an unlisted host: a
        // registry, or anyone between kimup and it, could otherwise collect them with a
        // challenge naming `http://anywhere/`.
        self.check_credentials(registry, &url, credential)?;
        // Userinfo in the realm would become a Basic header of the registry's choosing.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_fragment(None);
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.get("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &format!("repository:{}:pull", image.repository));
        }
        let mut req = self.http(tls).get(url);
        if let Some(c) = credential {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        self.count(registry, "token");
        let resp = req
            .send()
            .await
            .map_err(|e| network_error(registry, e, credential))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Auth {
                registry: registry.to_string(),
                reason: format!("token endpoint answered {}", resp.status()),
            });
        }
        let limit = self.settings.max_token_bytes;
        let body = read_capped(resp, limit)
            .await
            .map_err(|e| network_error(registry, e, credential))?
            .ok_or_else(|| RegistryError::ResponseTooLarge {
                registry: registry.to_string(),
                what: "token response",
                limit: human_bytes(limit),
            })?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Auth {
                registry: registry.to_string(),
                reason: format!("unreadable token response: {}", json_error(&e)),
            })?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| RegistryError::Auth {
                registry: registry.to_string(),
                reason: "token response without token".into(),
            })
    }
}

/// The body, read chunk by chunk; `None` as soon as it is larger than `limit` (reading stops
/// there, and a Content-Length over the limit is refused before reading).
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(declared as usize);
    while let Some(chunk) = resp.chunk().await? {
        let needed = body.len() + chunk.len();
        if needed > limit {
            return Ok(None);
        }
        if needed > body.capacity() {
            // Doubling, but never past the limit.
            let target = (body.capacity() * 2).max(needed).min(limit);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// At most `limit` bytes of the body as text (lossy); a read error ends it.
async fn read_truncated(mut resp: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// A page of a tag list.
fn parse_tag_page(image: &ImageRef, body: &[u8]) -> Result<TagList, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::InvalidTagList {
        repository: image.repository_key(),
        reason: json_error(&e),
    })
}

/// The password of a credential, to scrub from outside text.
fn secrets(credential: Option<&Credential>) -> Vec<&str> {
    credential
        .map(|c| c.password.as_str())
        .into_iter()
        .collect()
}

/// A JSON error by category and position only: serde_json quotes the offending value, which is
/// the registry's text.
fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON structure",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// A request failure as an error. The URL is dropped from the reqwest error (it carries
/// registry- or realm-supplied queries), and the whole source chain is scrubbed of URLs and of
/// the credential's password.
fn network_error(
    registry: &str,
    e: reqwest::Error,
    credential: Option<&Credential>,
) -> RegistryError {
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    let reason = scrub(&reason, &secrets(credential));
    let lower = reason.to_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
    {
        return RegistryError::Tls {
            registry: registry.to_string(),
            reason: format!(
                "{reason} (trust the registry's CA with --registry-ca-file, or set insecureSkipTLSVerify)"
            ),
        };
    }
    if e.is_timeout() {
        return RegistryError::Timeout {
            registry: registry.to_string(),
        };
    }
    RegistryError::Network {
        registry: registry.to_string(),
        reason,
    }
}

/// An unexpected status as an error; the registry's message is scrubbed of URLs and `secrets`.
fn status_error(
    image: &ImageRef,
    status: StatusCode,
    body: &str,
    secrets: &[&str],
) -> RegistryError {
    // Scrubbed before it is shortened, so that a cut cannot leave part of a secret behind.
    let detail: String = scrub(&registry_error_message(body), secrets)
        .chars()
        .take(300)
        .collect();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
            registry: image.registry.clone(),
            status: status.as_u16(),
            detail,
        },
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            repository: image.repository_key(),
            detail,
        },
        StatusCode::TOO_MANY_REQUESTS => RegistryError::RateLimited {
            registry: image.registry.clone(),
        },
        _ => RegistryError::Status {
            registry: image.registry.clone(),
            status: status.as_u16(),
            detail,
        },
    }
}

/// The first `message` of a distribution error envelope, else the body.
fn registry_error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_str::<Envelope>(body)
        && let Some(first) = env.errors.first()
    {
        return format!("{}: {}", first.code, first.message);
    }
    body.to_string()
}

/// What to fetch after a page of tags (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum NextPage {
    /// Follow the `Link: <...>; rel="next"` target.
    Link(String),
    /// No Link, but a full page: ask for the tags after this one (`n`/`last`).
    After(String),
    /// The listing is complete.
    Done,
}

/// Decides the next request from a page: its Link header, its last tag, its size and the page
/// size asked for. A page larger than asked means the registry ignores `n` and sent everything
/// (Debian's distribution 2.8 does), so there is nothing more to ask.
pub fn next_page(link: Option<String>, last: Option<String>, got: usize, asked: usize) -> NextPage {
    match (link, last) {
        (Some(next), _) => NextPage::Link(next),
        (None, Some(last)) if got == asked => NextPage::After(last),
        _ => NextPage::Done,
    }
}

/// Parses `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`.
pub fn bearer_challenge(headers: &HeaderMap) -> Option<HashMap<String, String>> {
    let value = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?;
    let rest = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.insert(key.trim().to_lowercase(), val);
    }
    Some(out)
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers.get_all(LINK).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        v.split(',').find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let is_next = params
                .split(';')
                .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| target.to_string())
        })
    })
}

/// The URL a `Link` target names, resolved against the registry's origin. Only a target on
/// that same origin (scheme, host and port) is followed: requests there carry the registry's
/// credentials or token, and a Link elsewhere (another host, or http from https) would hand
/// them to whoever the registry, or someone between, names. Userinfo and fragment are dropped.
pub fn follow_link(
    image: &ImageRef,
    origin: &reqwest::Url,
    link: &str,
) -> Result<reqwest::Url, RegistryError> {
    let mut url = origin
        .join(link)
        .map_err(|e| RegistryError::InvalidTagList {
            repository: image.repository_key(),
            reason: format!("invalid pagination Link: {e}"),
        })?;
    if url.origin() != origin.origin() {
        return Err(RegistryError::ForeignLink {
            registry: image.registry.clone(),
            target: redact_origin(&url),
        });
    }
    // Setting them cannot fail on an http(s) URL with a host; a failure leaves them empty anyway.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    Ok(url)
}

/// Whether a redirect may be followed: at most 5, and never from https to anything else, so
/// that a registry answer cannot be downgraded to plain text. (reqwest itself drops the
/// Authorization header when a redirect leaves the origin.)
pub fn redirect_allowed(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
) -> Result<(), &'static str> {
    if previous.len() >= 5 {
        return Err("too many redirects");
    }
    if previous.iter().any(|p| p.scheme() == "https") && next.scheme() != "https" {
        return Err("refusing a redirect from https to plain http");
    }
    Ok(())
}

/// Retry-After as seconds (HTTP dates are rare for registries and fall back to backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// A TLS listener whose certificate no client trusts: handshakes fail on the client side.
    fn untrusted_tls_server() -> std::net::SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        kimup_testenv::install_crypto_provider();
        let ca = kimup_testenv::certs::Ca::new("untrusted").expect("ca");
        let pem = ca.serving("registry").expect("serving cert");
        let certs = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("key");
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config"),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(conn) = rustls::ServerConnection::new(config.clone()) {
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let _ = std::io::Read::read(&mut tls, &mut [0u8; 1]);
                }
            }
        });
        addr
    }

    /// A loopback HTTP server answering every request with 200 and `body` (with Content-Length).
    async fn answering(body: &'static str) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = conn.read(&mut request).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// Every variant, built by the code that builds it from a URL carrying `user:SECRET@` and
    /// `?token=SECRET` (and the password SECRET), never shows SECRET.
    #[tokio::test]
    async fn no_error_variant_shows_a_secret() {
        kimup_testenv::install_crypto_provider();
        let cred = Credential {
            username: "user".into(),
            password: "SECRET".into(),
        };
        let image = crate::registry::reference::parse("r.example/team/app").expect("ref");
        let echo = r#"{"errors":[{"code":"DENIED","message":"https://user:SECRET@x.example/v2/?token=SECRET and SECRET"}]}"#;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("http");
        let mut errors = Vec::new();

        let refused = http
            .get("http://user:SECRET@127.0.0.1:1/v2/?token=SECRET")
            .send()
            .await
            .expect_err("refused");
        errors.push(network_error("r.example", refused, Some(&cred)));

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let timed_out = http
            .get(format!("http://user:SECRET@{silent_addr}/v2/?token=SECRET"))
            .send()
            .await
            .expect_err("timeout");
        errors.push(network_error("r.example", timed_out, Some(&cred)));

        let tls = untrusted_tls_server();
        let untrusted = http
            .get(format!("https://user:SECRET@{tls}/v2/?token=SECRET"))
            .send()
            .await
            .expect_err("untrusted");
        errors.push(network_error("r.example", untrusted, Some(&cred)));

        for status in [401, 404, 429, 500] {
            let status = StatusCode::from_u16(status).expect("status");
            errors.push(status_error(&image, status, echo, &["SECRET"]));
        }

        let client = RegistryClient::new(ClientSettings::default()).expect("client");
        let challenge: HashMap<String, String> = [(
            "realm".to_string(),
            "http://user:SECRET@[::1/token?token=SECRET".to_string(),
        )]
        .into();
        errors.push(
            client
                .fetch_token(
                    "r.example",
                    TlsMode::Verify,
                    &challenge,
                    &image,
                    Some(&cred),
                )
                .await
                .expect_err("invalid realm"),
        );

        let cleartext: HashMap<String, String> = [(
            "realm".to_string(),
            "http://user:SECRET@127.0.0.1:1/token?token=SECRET".to_string(),
        )]
        .into();
        errors.push(
            client
                .fetch_token(
                    "r.example",
                    TlsMode::Verify,
                    &cleartext,
                    &image,
                    Some(&cred),
                )
                .await
                .expect_err("clear-text realm"),
        );

        let big =
            answering(r#"{"tags":["1.0.0","1.1.0"],"token":"0123456789abcdef0123456789"}"#).await;
        let small = RegistryClient::new(ClientSettings {
            max_tag_page_bytes: 16,
            max_token_bytes: 16,
            ..ClientSettings::default()
        })
        .expect("client");
        let listed = crate::registry::reference::parse(&format!("{big}/team/app")).expect("ref");
        errors.push(
            small
                .list_tags(&listed, None, TlsMode::PlainHttp)
                .await
                .expect_err("page over 16 bytes"),
        );
        let big_token: HashMap<String, String> = [(
            "realm".to_string(),
            format!("http://user:SECRET@{big}/token?token=SECRET"),
        )]
        .into();
        errors.push(
            small
                .fetch_token("r.example", TlsMode::Verify, &big_token, &image, None)
                .await
                .expect_err("token over 16 bytes"),
        );

        let page = br#"{"tags": "https://user:SECRET@x.example/v2/?token=SECRET"}"#;
        errors.push(parse_tag_page(&image, page).err().expect("invalid page"));

        let origin = reqwest::Url::parse("https://r.example").expect("origin");
        errors.push(
            follow_link(
                &image,
                &origin,
                "https://user:SECRET@other.example/v2/?token=SECRET",
            )
            .expect_err("foreign link"),
        );

        let bad_ca = b"-----BEGIN CERTIFICATE-----\nhttps://user:SECRET@x/?token=SECRET\n-----END CERTIFICATE-----\n";
        errors.push(
            RegistryClient::new(ClientSettings {
                extra_ca_pem: vec![bad_ca.to_vec()],
                ..ClientSettings::default()
            })
            .err()
            .expect("invalid CA"),
        );

        let mut seen = std::collections::BTreeSet::new();
        for e in &errors {
            // A new variant fails to compile here until it is built above.
            let name = match e {
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
            };
            seen.insert(name);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("SECRET"), "{name}: {shown}");
        }
        assert_eq!(seen.len(), 14, "every variant was built: {seen:?}");
    }

    fn headers(name: reqwest::header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn decides_the_next_page() {
        assert_eq!(
            next_page(Some("/v2/x?last=b".into()), Some("b".into()), 2, 2),
            NextPage::Link("/v2/x?last=b".into())
        );
        assert_eq!(
            next_page(None, Some("b".into()), 2, 2),
            NextPage::After("b".into())
        );
        assert_eq!(
            next_page(None, Some("b".into()), 1, 2),
            NextPage::Done,
            "short page: end"
        );
        assert_eq!(
            next_page(None, Some("e".into()), 5, 2),
            NextPage::Done,
            "n ignored: all sent"
        );
        assert_eq!(next_page(None, None, 0, 2), NextPage::Done);
    }

    #[test]
    fn parses_bearer_challenges() {
        let h = headers(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        let c = bearer_challenge(&h).expect("challenge");
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["service"], "registry.docker.io");
        assert_eq!(c["scope"], "repository:library/nginx:pull");
        assert!(bearer_challenge(&headers(WWW_AUTHENTICATE, r#"Basic realm="x""#)).is_none());
    }

    #[test]
    fn finds_next_link() {
        let h = headers(
            LINK,
            r#"</v2/library/nginx/tags/list?last=1.25&n=100>; rel="next""#,
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("/v2/library/nginx/tags/list?last=1.25&n=100")
        );
        assert_eq!(
            next_link(&headers(LINK, r#"<https://x/a>; rel="prev""#)),
            None
        );
    }

    #[test]
    fn follows_links_only_on_the_registry_origin() {
        let image = crate::registry::reference::parse("r.example:5000/team/app").expect("ref");
        let origin = reqwest::Url::parse("https://r.example:5000").expect("origin");
        let follow = |link: &str| follow_link(&image, &origin, link).map(|u| u.to_string());
        assert_eq!(
            follow("/v2/team/app/tags/list?last=b&n=2").expect("relative"),
            "https://r.example:5000/v2/team/app/tags/list?last=b&n=2"
        );
        assert_eq!(
            follow("https://u:p@r.example:5000/v2/x?last=b#frag").expect("same origin"),
            "https://r.example:5000/v2/x?last=b",
            "userinfo and fragment dropped"
        );
        for foreign in [
            "http://r.example:5000/v2/x",
            "https://r.example/v2/x",
            "https://r.example:5001/v2/x",
            "https://other.example:5000/v2/x",
            "//other.example:5000/v2/x",
            "https://r.example:5000@other.example/v2/x",
        ] {
            let err = follow(foreign).expect_err(foreign);
            assert_eq!(err.metric_label(), "foreign_link", "{foreign}");
        }
        let default_port = reqwest::Url::parse("https://r.example").expect("origin");
        assert!(follow_link(&image, &default_port, "https://r.example:443/v2/x").is_ok());
    }

    #[test]
    fn credentials_travel_in_clear_text_only_to_listed_hosts() {
        kimup_testenv::install_crypto_provider();
        let client = RegistryClient::new(ClientSettings {
            plain_http: vec![
                "r.example:5000".into(),
                "Plain.example".into(),
                "x.example:80".into(),
            ],
            ..ClientSettings::default()
        })
        .expect("client");
        let may = |u: &str| client.may_carry_credentials(&reqwest::Url::parse(u).expect("url"));
        assert!(may("https://anywhere.example/token"), "TLS: any host");
        assert!(may("http://r.example:5000/v2/"));
        assert!(!may("http://r.example:5001/v2/"), "another port");
        assert!(!may("http://r.example/v2/"), "listed with a port only");
        assert!(may("http://plain.example/v2/"));
        assert!(may("http://plain.example:80/v2/"), "default port");
        assert!(!may("http://plain.example:8080/v2/"));
        assert!(may("http://x.example/v2/"), "x.example:80 listed");
        assert!(!may("http://other.example/token"));
        assert!(!may("ftp://r.example:5000/"));
        let anonymous = client.check_credentials(
            "r",
            &reqwest::Url::parse("http://other.example/").expect("url"),
            None,
        );
        assert!(anonymous.is_ok(), "nothing to protect without credentials");
    }

    #[test]
    fn token_and_semaphore_maps_are_bounded() {
        kimup_testenv::install_crypto_provider();
        let client = RegistryClient::new(ClientSettings::default()).expect("client");
        // 1,000 repositories with the largest token a response may hold: 64 MiB offered.
        for i in 0..1000 {
            let token: Arc<str> = Arc::from(format!("{i}").repeat(64 * 1024 / 4));
            client.tokens.insert(
                (
                    "r.example".into(),
                    format!("team/app{i}"),
                    "anonymous".into(),
                ),
                token,
            );
        }
        client.tokens.run_pending_tasks();
        assert!(
            client.tokens.weighted_size() <= TOKEN_CACHE_BYTES,
            "{} bytes of tokens",
            client.tokens.weighted_size()
        );
        assert!(client.tokens.entry_count() > 0, "recent tokens are kept");

        for i in 0..MAX_TRACKED_REGISTRIES + 500 {
            client.semaphore(&format!("r{i}.example"));
        }
        client.limits.run_pending_tasks();
        assert!(client.limits.entry_count() <= MAX_TRACKED_REGISTRIES);
        // A full map still gives a new registry one semaphore that it keeps.
        let first = client.semaphore("new.example");
        client.limits.run_pending_tasks();
        assert!(Arc::ptr_eq(&first, &client.semaphore("new.example")));
    }

    #[test]
    fn listed_tags_are_valid_tags() {
        use crate::registry::reference::is_valid_tag;
        for ok in ["1.0.0", "v1.2.3-alpine", "latest", "_x", &"a".repeat(128)] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a?b",
            ".x",
            "-x",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn redirects_never_downgrade() {
        let u = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(redirect_allowed(&[u("https://r/v2/")], &u("https://cdn/x")).is_ok());
        assert!(redirect_allowed(&[u("http://r/v2/")], &u("http://r/x")).is_ok());
        assert!(redirect_allowed(&[u("https://r/v2/")], &u("http://r/x")).is_err());
        assert!(redirect_allowed(&[u("https://r/"), u("https://s/")], &u("http://t/")).is_err());
        let five: Vec<_> = (0..5).map(|i| u(&format!("https://r/{i}"))).collect();
        assert!(redirect_allowed(&five, &u("https://r/6")).is_err());
    }

    #[test]
    fn reads_retry_after_and_error_envelopes() {
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, "7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(
            registry_error_message(
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#
            ),
            "NAME_UNKNOWN: repository name not known to registry"
        );
        assert_eq!(registry_error_message("oops"), "oops");
        assert_eq!(urlencode("1.2+b/c"), "1.2%2Bb%2Fc");
    }
}
