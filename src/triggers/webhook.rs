//! Registry webhook payloads: which repositories were pushed (pure parsers, one per source), and
//! whether a request comes from its source (pure checks of tokens and signatures).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A push a registry told us about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoEvent {
    /// Registry host[:port], normalised like image references; None when the payload omits it.
    pub registry: Option<String>,
    /// Repository path, e.g. `team/app` or `library/nginx`.
    pub repository: String,
    /// Tag pushed, when the payload names one.
    pub tag: Option<String>,
}

/// A push on its way from the webhook endpoint to every cluster's controller.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// What the registry announced.
    pub event: RepoEvent,
    /// The `webhook.push` span that announced it, when traces are exported: the syncs it causes
    /// link back to it.
    pub cause: Option<opentelemetry::trace::SpanContext>,
}

/// Repositories and tags named in a span field at most: a payload may announce many pushes.
const SUMMARY_ITEMS: usize = 10;

/// The distinct repositories (`registry/repository` when the registry is known) and tags of
/// `events`, each joined with `, ` in payload order and cut after ten with `(+N more)` (pure).
pub fn summary(events: &[RepoEvent]) -> (String, String) {
    let repositories = distinct(events.iter().map(|e| match &e.registry {
        Some(r) => format!("{r}/{}", e.repository),
        None => e.repository.clone(),
    }));
    let tags = distinct(events.iter().filter_map(|e| e.tag.clone()));
    (repositories, tags)
}

fn distinct(items: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    let more = seen.len().saturating_sub(SUMMARY_ITEMS);
    seen.truncate(SUMMARY_ITEMS);
    let mut out = seen.join(", ");
    if more > 0 {
        out.push_str(&format!(" (+{more} more)"));
    }
    out
}

/// Payload sources, as in `/webhooks/{source}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `{"repository": "host/repo", "tag": "..."}` or `{"image": "host/repo:tag"}`.
    Generic,
    /// Docker Hub repository webhooks.
    DockerHub,
    /// Harbor webhook policies (`PUSH_ARTIFACT`).
    Harbor,
    /// CNCF distribution notifications (Debian's docker-registry, Zot, ...).
    Distribution,
    /// GitHub `package` events for container packages (ghcr.io).
    Ghcr,
    /// Quay repository notifications.
    Quay,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 6] = [
        Source::Generic,
        Source::DockerHub,
        Source::Harbor,
        Source::Distribution,
        Source::Ghcr,
        Source::Quay,
    ];

    /// Name in `/webhooks/{name}`, in secret file names and in `KIMUP_WEBHOOK_SECRET_<NAME>`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Generic => "generic",
            Source::DockerHub => "dockerhub",
            Source::Harbor => "harbor",
            Source::Distribution => "distribution",
            Source::Ghcr => "ghcr",
            Source::Quay => "quay",
        }
    }

    /// How this source's requests prove who sent them (for the start-up log).
    pub fn scheme(self) -> &'static str {
        match self {
            Source::Generic => "Authorization: Bearer or X-Kimup-Signature-256",
            Source::DockerHub | Source::Quay => "?token= or Authorization: Bearer",
            Source::Harbor => "Authorization header",
            Source::Distribution => "Authorization: Bearer",
            Source::Ghcr => "X-Hub-Signature-256",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = WebhookError;

    fn from_str(s: &str) -> Result<Self, WebhookError> {
        Source::ALL
            .into_iter()
            .find(|source| source.name() == s)
            .ok_or_else(|| WebhookError::UnknownSource(s.to_string()))
    }
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Not one of the supported sources.
    #[error(
        "unknown webhook source {0:?}; use generic, dockerhub, harbor, distribution, ghcr or quay"
    )]
    UnknownSource(String),
    /// The body is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// JSON without the fields this source sends.
    #[error("payload lacks {0}")]
    Missing(&'static str),
    /// A repository that is not a valid reference.
    #[error("invalid repository {0:?}")]
    InvalidRepository(String),
}

impl WebhookError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::UnknownSource(_) => "unknown_source",
            WebhookError::NotJson(_) => "not_json",
            WebhookError::Missing(_) => "missing_field",
            WebhookError::InvalidRepository(_) => "invalid_repository",
        }
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// A full reference (`host/repo[:tag]`) as an event, normalised like image references.
fn from_reference(reference: &str, tag: Option<&str>) -> Result<RepoEvent, WebhookError> {
    let r = crate::registry::reference::parse(reference)
        .map_err(|_| WebhookError::InvalidRepository(reference.to_string()))?;
    Ok(RepoEvent {
        registry: Some(r.registry),
        repository: r.repository,
        tag: tag.map(str::to_string).or(r.tag),
    })
}

/// The pushes a payload reports (pure). Events that are not pushes yield nothing.
pub fn parse(source: Source, body: &[u8]) -> Result<Vec<RepoEvent>, WebhookError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::NotJson(e.to_string()))?;
    match source {
        Source::Generic => {
            let reference = str_at(&v, &["repository"])
                .or_else(|| str_at(&v, &["image"]))
                .ok_or(WebhookError::Missing("repository"))?;
            Ok(vec![from_reference(reference, str_at(&v, &["tag"]))?])
        }
        Source::DockerHub => {
            let repo = str_at(&v, &["repository", "repo_name"])
                .ok_or(WebhookError::Missing("repository.repo_name"))?;
            Ok(vec![from_reference(
                repo,
                str_at(&v, &["push_data", "tag"]),
            )?])
        }
        Source::Harbor => {
            if str_at(&v, &["type"]).is_some_and(|t| t != "PUSH_ARTIFACT" && t != "pushImage") {
                return Ok(Vec::new());
            }
            let resources = v["event_data"]["resources"]
                .as_array()
                .ok_or(WebhookError::Missing("event_data.resources"))?;
            resources
                .iter()
                .filter_map(|r| str_at(r, &["resource_url"]))
                .map(|url| from_reference(url, None))
                .collect()
        }
        Source::Distribution => {
            let events = v["events"]
                .as_array()
                .ok_or(WebhookError::Missing("events"))?;
            let mut out = Vec::new();
            for e in events {
                if str_at(e, &["action"]) != Some("push") {
                    continue;
                }
                // A push sends one event per blob before the manifest's; only a manifest (or a
                // tag) changes the tag list.
                let media_type = str_at(e, &["target", "mediaType"]).unwrap_or("");
                let is_manifest =
                    media_type.contains("manifest") || media_type.contains("image.index");
                if !is_manifest && str_at(e, &["target", "tag"]).is_none() {
                    continue;
                }
                let Some(repo) = str_at(e, &["target", "repository"]) else {
                    continue;
                };
                let host = str_at(e, &["request", "host"]);
                let reference = match host {
                    Some(h) => format!("{h}/{repo}"),
                    None => repo.to_string(),
                };
                let mut ev = from_reference(&reference, str_at(e, &["target", "tag"]))?;
                if host.is_none() {
                    ev.registry = None;
                }
                out.push(ev);
            }
            Ok(out)
        }
        Source::Ghcr => {
            // GitHub's `ping`, sent (signed) when the webhook is created: the way to check the
            // secret from GitHub's side. It announces nothing.
            if v.get("zen").is_some() && v.get("package").is_none() {
                return Ok(Vec::new());
            }
            let pkg = &v["package"];
            if str_at(pkg, &["package_type"]).is_some_and(|t| !t.eq_ignore_ascii_case("container"))
            {
                return Ok(Vec::new());
            }
            let owner = str_at(pkg, &["namespace"])
                .or_else(|| str_at(pkg, &["owner", "login"]))
                .ok_or(WebhookError::Missing("package.namespace"))?;
            let name = str_at(pkg, &["name"]).ok_or(WebhookError::Missing("package.name"))?;
            let tag = str_at(
                pkg,
                &["package_version", "container_metadata", "tag", "name"],
            );
            // GHCR repositories are lower-case even when the GitHub owner is not.
            let reference = format!("ghcr.io/{}/{}", owner.to_lowercase(), name.to_lowercase());
            Ok(vec![from_reference(&reference, tag)?])
        }
        Source::Quay => {
            let url = str_at(&v, &["docker_url"]).ok_or(WebhookError::Missing("docker_url"))?;
            let tags: Vec<&str> = v["updated_tags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if tags.is_empty() {
                return Ok(vec![from_reference(url, None)?]);
            }
            tags.into_iter()
                .map(|t| from_reference(url, Some(t)))
                .collect()
        }
    }
}

/// Whether an Image's repository is the one an event names (the registry must agree when the
/// event names one).
pub fn matches(event: &RepoEvent, image: &crate::registry::ImageRef) -> bool {
    event.repository == image.repository
        && event
            .registry
            .as_deref()
            .is_none_or(|r| r == image.registry)
}

/// Header GitHub signs its deliveries with (GHCR `package` events among them).
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// Header a generic sender may sign with, in GitHub's scheme.
pub const KIMUP_SIGNATURE: &str = "x-kimup-signature-256";
/// File of a secrets folder holding the shared token (what `KIMUP_WEBHOOK_TOKEN` holds).
pub const TOKEN_FILE: &str = "token";
/// Secrets shorter than this are reported as guessable at start-up.
const MIN_SECRET_LEN: usize = 16;

/// A webhook secret (token or signing key). Debug never shows it, so that it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// A secret from text without its surrounding whitespace (the newline `echo` leaves in a
    /// file; no header carries it anyway); None when nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Secret(Arc::from(text)))
    }

    /// Whether the secret is short enough to be guessed.
    pub fn is_short(&self) -> bool {
        self.0.len() < MIN_SECRET_LEN
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secret of each source, and the shared token that serves sources without their own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    own: HashMap<Source, Secret>,
    token: Option<Secret>,
}

impl Secrets {
    /// Sets (or, with None, clears) `source`'s own secret.
    pub fn set(&mut self, source: Source, secret: Option<Secret>) {
        match secret {
            Some(secret) => self.own.insert(source, secret),
            None => self.own.remove(&source),
        };
    }

    /// Sets (or clears) the shared token.
    pub fn set_token(&mut self, token: Option<Secret>) {
        self.token = token;
    }

    /// The secret `source`'s requests are checked against: its own, else the shared token. None
    /// turns the source off.
    pub fn for_source(&self, source: Source) -> Option<&Secret> {
        self.own.get(&source).or(self.token.as_ref())
    }

    /// Whether `source` has a secret of its own (rather than the shared token).
    pub fn has_own(&self, source: Source) -> bool {
        self.own.contains_key(&source)
    }

    /// These secrets, completed by `fallback`'s where they have none (flags over files).
    pub fn or(&self, fallback: &Secrets) -> Secrets {
        let mut out = self.clone();
        for (source, secret) in &fallback.own {
            out.own.entry(*source).or_insert_with(|| secret.clone());
        }
        if out.token.is_none() {
            out.token.clone_from(&fallback.token);
        }
        out
    }
}

/// Why a secrets folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The folder cannot be listed.
    #[error("listing webhook secrets folder {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file named after a source cannot be read (or is not UTF-8).
    #[error("reading webhook secret file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SecretsError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SecretsError::Dir { .. } => "dir_unreadable",
            SecretsError::File { .. } => "file_unreadable",
        }
    }
}

/// Reads a secrets folder (such as a mounted Kubernetes Secret): the file named after a source
/// holds its secret, `token` the shared token; a missing or empty file is no secret. Also
/// returns the names of other files, likely misnamed secrets, sorted.
pub fn read_secrets_dir(dir: &Path) -> Result<(Secrets, Vec<String>), SecretsError> {
    let listing = |source| SecretsError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut unknown = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let name = entry.map_err(listing)?.file_name();
        let name = name.to_string_lossy();
        // A Secret volume also holds `..data` and `..<timestamp>`, the targets of its links.
        if name.starts_with('.') {
            continue;
        }
        if name != TOKEN_FILE && name.parse::<Source>().is_err() {
            unknown.push(name.into_owned());
        }
    }
    unknown.sort();
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Secret::new(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretsError::File { path, source }),
        }
    };
    let mut secrets = Secrets::default();
    for source in Source::ALL {
        secrets.set(source, read(source.name())?);
    }
    secrets.set_token(read(TOKEN_FILE)?);
    Ok((secrets, unknown))
}

/// Why a webhook request was not let in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No secret is configured for the source: its endpoint is off.
    #[error("webhooks from {0} are off: kimup has no secret for them")]
    Disabled(&'static str),
    /// The request carries none of the credentials its source uses.
    #[error("missing credentials: expected {0}")]
    Missing(&'static str),
    /// A token that is not the secret.
    #[error("wrong webhook token")]
    WrongToken,
    /// A signature that is not the body's under the secret, or not `sha256=<hex>`.
    #[error("the signature does not match the body")]
    BadSignature,
}

impl AuthError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Disabled(_) => "disabled",
            AuthError::Missing(_) => "missing_credentials",
            AuthError::WrongToken => "wrong_token",
            AuthError::BadSignature => "bad_signature",
        }
    }
}

/// Checks that a request comes from `source`'s sender, who knows `secret` (pure). Tokens and
/// signatures are compared in constant time. What each source presents:
/// - ghcr: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub signs; a token
///   would travel in the URL, so none is accepted);
/// - harbor: `Authorization` equal to the secret or to `Bearer <secret>` (Harbor sends its
///   policy's "Auth Header" verbatim);
/// - distribution: `Authorization: Bearer <secret>` (set in the endpoint's `headers`);
/// - dockerhub, quay: `?token=<secret>` (they can set no header) or `Authorization: Bearer`;
/// - generic: `X-Kimup-Signature-256` (GitHub's scheme) when present, else `Authorization:
///   Bearer <secret>`.
pub fn authenticate(
    source: Source,
    secret: &Secret,
    headers: &http::HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<(), AuthError> {
    // A value that is not visible ASCII is present but cannot match.
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    let authorization = header("authorization");
    let bearer = authorization.and_then(bearer_token);
    match source {
        Source::Ghcr => match header(GITHUB_SIGNATURE) {
            Some(signature) => check_signature(secret, body, signature),
            None => Err(AuthError::Missing("an X-Hub-Signature-256 header")),
        },
        Source::Generic => match header(KIMUP_SIGNATURE) {
            Some(signature) => check_signature(secret, body, signature),
            None => check_tokens(
                secret,
                &[bearer],
                "Authorization: Bearer or X-Kimup-Signature-256",
            ),
        },
        Source::Harbor => {
            let verbatim = authorization.map(str::trim);
            check_tokens(secret, &[verbatim, bearer], "an Authorization header")
        }
        Source::Distribution => check_tokens(secret, &[bearer], "Authorization: Bearer"),
        Source::DockerHub | Source::Quay => {
            let query = query.and_then(query_token);
            check_tokens(
                secret,
                &[bearer, query.as_deref()],
                "?token= or Authorization: Bearer",
            )
        }
    }
}

/// Ok when one of the presented tokens is the secret; `expected` names them when none is there.
fn check_tokens(
    secret: &Secret,
    presented: &[Option<&str>],
    expected: &'static str,
) -> Result<(), AuthError> {
    if presented.iter().all(Option::is_none) {
        return Err(AuthError::Missing(expected));
    }
    // Every candidate is compared (no early exit) so that timing does not tell which one matched.
    let matched = presented
        .iter()
        .flatten()
        .fold(false, |acc, t| same_secret(t.as_bytes(), secret) | acc);
    if matched {
        Ok(())
    } else {
        Err(AuthError::WrongToken)
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The first `token` query parameter, percent-decoded (a token with `+`, `/` or `=` must match).
fn query_token(query: &str) -> Option<String> {
    reqwest::Url::parse(&format!("http://query.invalid/?{query}"))
        .ok()?
        .query_pairs()
        .find_map(|(k, v)| (k == "token").then(|| v.into_owned()))
}

/// Constant-time equality that hides the secret's length too: both sides are hashed, and the
/// fixed-size digests compared without an early exit.
fn same_secret(candidate: &[u8], secret: &Secret) -> bool {
    let (a, b) = (Sha256::digest(candidate), Sha256::digest(secret.bytes()));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks a `sha256=<hex>` signature of `body` under `secret` (HMAC-SHA256, GitHub's scheme).
fn check_signature(secret: &Secret, body: &[u8], signature: &str) -> Result<(), AuthError> {
    let given = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .ok_or(AuthError::BadSignature)?;
    // HMAC takes keys of any length: this cannot fail, but stays an error rather than a panic.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.bytes()).map_err(|_| AuthError::BadSignature)?;
    mac.update(body);
    // verify_slice compares in constant time and refuses a truncated signature.
    mac.verify_slice(&given)
        .map_err(|_| AuthError::BadSignature)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(registry: Option<&str>, repository: &str, tag: Option<&str>) -> RepoEvent {
        RepoEvent {
            registry: registry.map(str::to_string),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn distribution_pushes() {
        let body = br#"{"events":[
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"1.2.0","url":"http://127.0.0.1:5000/v2/team/app/manifests/sha256:ab"},"request":{"host":"127.0.0.1:5000","method":"PUT"}},
          {"action":"pull","target":{"repository":"team/app"},"request":{"host":"127.0.0.1:5000"}},
          {"action":"push","target":{"mediaType":"application/octet-stream","repository":"team/app","digest":"sha256:ef"},"request":{"host":"127.0.0.1:5000"}},
          {"action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"team/app","digest":"sha256:cd"},"request":{"host":"127.0.0.1:5000"}}
        ]}"#;
        assert_eq!(
            parse(Source::Distribution, body).expect("parse"),
            vec![
                ev(Some("127.0.0.1:5000"), "team/app", Some("1.2.0")),
                ev(Some("127.0.0.1:5000"), "team/app", None)
            ]
        );
    }

    #[test]
    fn docker_hub_harbor_ghcr_quay_generic() {
        let hub = br#"{"push_data":{"tag":"1.27","pusher":"x"},"repository":{"repo_name":"nginx","namespace":"library"}}"#;
        assert_eq!(
            parse(Source::DockerHub, hub).expect("hub"),
            vec![ev(Some("docker.io"), "library/nginx", Some("1.27"))]
        );
        let harbor = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v1","resource_url":"harbor.example.com/proj/app:v1"}],"repository":{"repo_full_name":"proj/app"}}}"#;
        assert_eq!(
            parse(Source::Harbor, harbor).expect("harbor"),
            vec![ev(Some("harbor.example.com"), "proj/app", Some("v1"))]
        );
        let harbor_delete = br#"{"type":"DELETE_ARTIFACT","event_data":{"resources":[]}}"#;
        assert_eq!(
            parse(Source::Harbor, harbor_delete).expect("harbor"),
            vec![]
        );
        let ghcr = br#"{"action":"published","package":{"name":"Web","namespace":"Acme","package_type":"CONTAINER","package_version":{"container_metadata":{"tag":{"name":"v2.0.0"}}}}}"#;
        assert_eq!(
            parse(Source::Ghcr, ghcr).expect("ghcr"),
            vec![ev(Some("ghcr.io"), "acme/web", Some("v2.0.0"))]
        );
        let npm = br#"{"package":{"name":"x","namespace":"y","package_type":"npm"}}"#;
        assert_eq!(parse(Source::Ghcr, npm).expect("npm"), vec![]);
        let quay = br#"{"repository":"org/app","docker_url":"quay.io/org/app","updated_tags":["1.0","latest"]}"#;
        assert_eq!(
            parse(Source::Quay, quay).expect("quay"),
            vec![
                ev(Some("quay.io"), "org/app", Some("1.0")),
                ev(Some("quay.io"), "org/app", Some("latest"))
            ]
        );
        let generic = br#"{"repository":"registry.local:5000/team/app","tag":"3"}"#;
        assert_eq!(
            parse(Source::Generic, generic).expect("generic"),
            vec![ev(Some("registry.local:5000"), "team/app", Some("3"))]
        );
        assert_eq!(
            parse(Source::Generic, br#"{"image":"alpine:3.20"}"#).expect("image"),
            vec![ev(Some("docker.io"), "library/alpine", Some("3.20"))]
        );
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert!(matches!(
            parse(Source::Generic, b"not json"),
            Err(WebhookError::NotJson(_))
        ));
        assert_eq!(
            parse(Source::Generic, b"{}"),
            Err(WebhookError::Missing("repository"))
        );
        assert_eq!(
            parse(Source::Distribution, b"{}"),
            Err(WebhookError::Missing("events"))
        );
        assert_eq!(
            parse(Source::Generic, br#"{"repository":"UPPER/case"}"#),
            Err(WebhookError::InvalidRepository("UPPER/case".into()))
        );
        assert!("gitlab".parse::<Source>().is_err());
        assert_eq!("quay".parse::<Source>(), Ok(Source::Quay));
    }

    #[test]
    fn matching_needs_the_same_repository_and_registry() {
        let image = crate::registry::reference::parse("127.0.0.1:5000/team/app").expect("ref");
        assert!(matches(
            &ev(Some("127.0.0.1:5000"), "team/app", None),
            &image
        ));
        assert!(matches(&ev(None, "team/app", None), &image));
        assert!(!matches(&ev(Some("other:5000"), "team/app", None), &image));
        assert!(!matches(
            &ev(Some("127.0.0.1:5000"), "team/other", None),
            &image
        ));
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s).expect("non-empty secret")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    fn sign(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256={hex}")
    }

    #[test]
    fn github_signatures() {
        // The example of GitHub's "Validating webhook deliveries".
        let key = secret("It's a Secret to Everybody");
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", body), good);
        let auth = |h: &[(&'static str, &str)], body: &[u8]| {
            authenticate(Source::Ghcr, &key, &headers(h), None, body)
        };
        assert_eq!(auth(&[(GITHUB_SIGNATURE, good)], body), Ok(()));
        assert_eq!(
            auth(
                &[(
                    GITHUB_SIGNATURE,
                    &good.to_uppercase().replace("SHA256", "sha256")
                )],
                body
            ),
            Ok(()),
            "hex digits in either case"
        );
        assert_eq!(
            auth(&[(GITHUB_SIGNATURE, good)], b"Hello, World?"),
            Err(AuthError::BadSignature),
            "a tampered body"
        );
        for bad in [
            &good[..good.len() - 2],
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=zz",
            "sha256=",
            "",
        ] {
            assert_eq!(
                auth(&[(GITHUB_SIGNATURE, bad)], body),
                Err(AuthError::BadSignature),
                "{bad:?}"
            );
        }
        assert_eq!(
            auth(
                &[("authorization", "Bearer It's a Secret to Everybody")],
                body
            ),
            Err(AuthError::Missing("an X-Hub-Signature-256 header")),
            "no token stands in for the signature"
        );
        let other = secret("another secret of some length");
        assert_eq!(
            authenticate(
                Source::Ghcr,
                &other,
                &headers(&[(GITHUB_SIGNATURE, good)]),
                None,
                body
            ),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn each_source_takes_its_own_credentials() {
        let key = secret("s3cret+/=");
        let body = br#"{"repository":"127.0.0.1:5000/a/b"}"#;
        let signed = sign("s3cret+/=", body);
        let check = |source, h: &[(&'static str, &str)], query: Option<&str>| {
            authenticate(source, &key, &headers(h), query, body)
        };
        let bearer = [("authorization", "Bearer s3cret+/=")];
        let query = Some("a=1&token=s3cret%2B%2F%3D");
        // Distribution: bearer only.
        assert_eq!(check(Source::Distribution, &bearer, None), Ok(()));
        assert_eq!(
            check(
                Source::Distribution,
                &[("authorization", "bearer s3cret+/=")],
                None
            ),
            Ok(()),
            "the scheme is case-insensitive"
        );
        assert_eq!(
            check(Source::Distribution, &[], query),
            Err(AuthError::Missing("Authorization: Bearer"))
        );
        assert_eq!(
            check(
                Source::Distribution,
                &[("authorization", "Bearer s3cret")],
                None
            ),
            Err(AuthError::WrongToken)
        );
        assert_eq!(
            check(
                Source::Distribution,
                &[("authorization", "Basic s3cret+/=")],
                None
            ),
            Err(AuthError::Missing("Authorization: Bearer"))
        );
        // Docker Hub and Quay: query or bearer; only the first `token` parameter counts.
        for source in [Source::DockerHub, Source::Quay] {
            assert_eq!(check(source, &[], query), Ok(()));
            assert_eq!(check(source, &bearer, None), Ok(()));
            assert_eq!(
                check(source, &[], Some("token=nope&token=s3cret%2B%2F%3D")),
                Err(AuthError::WrongToken)
            );
            assert_eq!(
                check(source, &[], Some("tok=1")),
                Err(AuthError::Missing("?token= or Authorization: Bearer"))
            );
        }
        // Harbor: the header verbatim, or as a bearer token.
        assert_eq!(
            check(Source::Harbor, &[("authorization", "s3cret+/=")], None),
            Ok(())
        );
        assert_eq!(check(Source::Harbor, &bearer, None), Ok(()));
        assert_eq!(
            check(
                Source::Harbor,
                &[("authorization", "Basic s3cret+/=")],
                None
            ),
            Err(AuthError::WrongToken)
        );
        assert_eq!(
            check(Source::Harbor, &[], query),
            Err(AuthError::Missing("an Authorization header")),
            "Harbor sets headers: no token in URLs"
        );
        // Generic: a signature when there is one, else bearer.
        assert_eq!(check(Source::Generic, &bearer, None), Ok(()));
        assert_eq!(
            check(Source::Generic, &[(KIMUP_SIGNATURE, &signed)], None),
            Ok(())
        );
        assert_eq!(
            check(
                Source::Generic,
                &[(KIMUP_SIGNATURE, &sign("other", body)), bearer[0]],
                None
            ),
            Err(AuthError::BadSignature),
            "a signature present decides"
        );
        assert_eq!(
            check(Source::Generic, &[], query),
            Err(AuthError::Missing(
                "Authorization: Bearer or X-Kimup-Signature-256"
            ))
        );
        assert_eq!(
            check(Source::Ghcr, &[(GITHUB_SIGNATURE, &signed)], None),
            Ok(())
        );
    }

    #[test]
    fn secrets_own_over_shared_and_flags_over_files() {
        let mut flags = Secrets::default();
        flags.set(Source::Ghcr, Secret::new("flag-ghcr"));
        let mut files = Secrets::default();
        files.set(Source::Ghcr, Secret::new("file-ghcr"));
        files.set(Source::Harbor, Secret::new("file-harbor"));
        files.set_token(Secret::new("file-token"));
        let merged = flags.or(&files);
        assert_eq!(
            merged.for_source(Source::Ghcr),
            Secret::new("flag-ghcr").as_ref()
        );
        assert_eq!(
            merged.for_source(Source::Harbor),
            Secret::new("file-harbor").as_ref()
        );
        assert_eq!(
            merged.for_source(Source::Quay),
            Secret::new("file-token").as_ref()
        );
        assert!(merged.has_own(Source::Harbor) && !merged.has_own(Source::Quay));
        flags.set_token(Secret::new("flag-token"));
        assert_eq!(
            flags.or(&files).for_source(Source::Quay),
            Secret::new("flag-token").as_ref(),
            "a flag's shared token beats the token file"
        );
        assert_eq!(
            flags.or(&files).for_source(Source::Harbor),
            Secret::new("file-harbor").as_ref(),
            "a source's own file beats the shared token"
        );
        assert_eq!(Secrets::default().for_source(Source::Generic), None);
        assert_eq!(Secret::new(" \n"), None);
        let shown = format!("{merged:?}");
        assert!(
            !shown.contains("flag-") && !shown.contains("file-"),
            "Debug shows no secret: {shown}"
        );
    }

    #[test]
    fn secrets_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write("ghcr", "gh-key\n");
        write("token", "shared\n");
        write("quay", "\n");
        write("github", "typo");
        write("..data", "kubelet's");
        let (secrets, unknown) = read_secrets_dir(dir.path()).expect("read");
        assert_eq!(
            secrets.for_source(Source::Ghcr),
            Secret::new("gh-key").as_ref()
        );
        assert_eq!(
            secrets.for_source(Source::Quay),
            Secret::new("shared").as_ref(),
            "an empty file is no secret"
        );
        assert_eq!(unknown, vec!["github".to_string()]);
        assert!(matches!(
            read_secrets_dir(&dir.path().join("absent")),
            Err(SecretsError::Dir { .. })
        ));
        std::fs::create_dir(dir.path().join("harbor")).expect("mkdir");
        let err = read_secrets_dir(dir.path()).expect_err("a folder is no secret");
        assert_eq!(err.metric_label(), "file_unreadable");
        assert!(!err.to_string().contains("gh-key"), "{err}");
    }

    #[test]
    fn source_names_round_trip() {
        // `/webhooks/{name}`, the secret files and the variables all use name(); FromStr must
        // find every source by it.
        for source in Source::ALL {
            assert_eq!(source.name().parse::<Source>(), Ok(source));
        }
    }

    #[test]
    fn summaries_are_distinct_and_bounded() {
        let events = vec![
            ev(Some("127.0.0.1:5000"), "team/app", Some("1.0")),
            ev(Some("127.0.0.1:5000"), "team/app", Some("latest")),
            ev(None, "team/app", Some("1.0")),
            ev(Some("quay.io"), "org/x", None),
        ];
        assert_eq!(
            summary(&events),
            (
                "127.0.0.1:5000/team/app, team/app, quay.io/org/x".to_string(),
                "1.0, latest".to_string()
            )
        );
        assert_eq!(summary(&[]), (String::new(), String::new()));
        let many: Vec<RepoEvent> = (0..25)
            .map(|i| ev(None, &format!("r/{i}"), Some(&i.to_string())))
            .collect();
        let (repos, tags) = summary(&many);
        assert!(repos.starts_with("r/0, r/1, "), "{repos}");
        assert!(repos.ends_with("r/9 (+15 more)"), "{repos}");
        assert!(tags.ends_with("9 (+15 more)"), "{tags}");
    }

    #[test]
    fn github_ping_announces_nothing() {
        let ping = br#"{"zen":"Design for failure.","hook_id":1,"hook":{"type":"Organization","events":["package"]}}"#;
        assert_eq!(parse(Source::Ghcr, ping), Ok(vec![]));
        assert_eq!(
            parse(Source::Ghcr, b"{}"),
            Err(WebhookError::Missing("package.namespace"))
        );
    }
}
