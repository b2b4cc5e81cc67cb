//! Who may call `/webhooks/*`: the secret of each source (flags, variables, a folder re-read
//! while running) and the limiter of failed authentications.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::triggers::webhook::{Secret, Secrets, SecretsError, Source, read_secrets_dir};

/// How often `--webhook-secrets-dir` is re-read (the kubelet refreshes a mounted Secret within
/// about a minute, so rotating a secret needs no restart).
pub const SECRETS_RELOAD: Duration = Duration::from_secs(10);

/// A `--webhook-*` value. Empty (such as a variable filled from a missing Secret key) is no
/// secret, as `KIMUP_WEBHOOK_TOKEN=` always meant.
#[derive(Clone, Debug)]
pub struct SecretFlag(Option<Secret>);

impl SecretFlag {
    fn parse(text: &str) -> Result<Self, std::convert::Infallible> {
        Ok(SecretFlag(Secret::new(text)))
    }
}

/// Flags of the webhook secrets (part of `kimup run`). Prefer the variables: flags show in
/// process listings.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct WebhookArgs {
    /// Shared webhook token: the secret of every source without its own. Webhooks are off
    /// without any secret.
    #[arg(long, env = "KIMUP_WEBHOOK_TOKEN", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_token: Option<SecretFlag>,
    /// Secret of /webhooks/ghcr: the GitHub webhook's secret, checked as X-Hub-Signature-256.
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_GHCR", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_ghcr: Option<SecretFlag>,
    /// Secret of /webhooks/harbor: the policy's Auth Header (`S` or `Bearer S`).
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_HARBOR", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_harbor: Option<SecretFlag>,
    /// Secret of /webhooks/distribution (`Authorization: Bearer S` in the endpoint's headers).
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_DISTRIBUTION", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_distribution: Option<SecretFlag>,
    /// Secret of /webhooks/dockerhub (`?token=S` in the webhook URL).
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_DOCKERHUB", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_dockerhub: Option<SecretFlag>,
    /// Secret of /webhooks/quay (`?token=S` in the webhook URL).
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_QUAY", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_quay: Option<SecretFlag>,
    /// Secret of /webhooks/generic (`Authorization: Bearer S` or X-Kimup-Signature-256).
    #[arg(long, env = "KIMUP_WEBHOOK_SECRET_GENERIC", hide_env_values = true, value_parser = SecretFlag::parse)]
    pub webhook_secret_generic: Option<SecretFlag>,
    /// Folder of secret files named after the sources (ghcr, harbor, distribution, dockerhub,
    /// quay, generic) and `token` (shared), e.g. a mounted Secret; re-read every 10 s. Flags
    /// and variables win over files.
    #[arg(long, env = "KIMUP_WEBHOOK_SECRETS_DIR")]
    pub webhook_secrets_dir: Option<PathBuf>,
}

impl WebhookArgs {
    /// The secrets given as flags or variables.
    pub fn secrets(&self) -> Secrets {
        let get = |f: &Option<SecretFlag>| f.as_ref().and_then(|f| f.0.clone());
        let mut s = Secrets::default();
        s.set_token(get(&self.webhook_token));
        s.set(Source::Ghcr, get(&self.webhook_secret_ghcr));
        s.set(Source::Harbor, get(&self.webhook_secret_harbor));
        s.set(Source::Distribution, get(&self.webhook_secret_distribution));
        s.set(Source::DockerHub, get(&self.webhook_secret_dockerhub));
        s.set(Source::Quay, get(&self.webhook_secret_quay));
        s.set(Source::Generic, get(&self.webhook_secret_generic));
        s
    }
}

/// The secrets in use, and the misnamed files last reported.
struct Loaded {
    secrets: Arc<Secrets>,
    unknown: Vec<String>,
}

/// Webhook secrets (flags and variables over the folder's files) and the failure limiter.
pub struct WebhookAuth {
    fixed: Secrets,
    dir: Option<PathBuf>,
    loaded: RwLock<Loaded>,
    limiter: Mutex<FailureLimiter>,
}

impl WebhookAuth {
    /// Reads the folder now: one that cannot be read fails the start rather than leaving
    /// webhooks off unnoticed.
    pub fn new(args: &WebhookArgs) -> Result<Self, SecretsError> {
        let fixed = args.secrets();
        let dir = args.webhook_secrets_dir.clone();
        let (files, unknown) = match &dir {
            Some(d) => read_secrets_dir(d)?,
            None => (Secrets::default(), Vec::new()),
        };
        report_unknown(&unknown);
        let secrets = fixed.or(&files);
        report(&secrets);
        Ok(Self {
            fixed,
            dir,
            loaded: RwLock::new(Loaded {
                secrets: Arc::new(secrets),
                unknown,
            }),
            limiter: Mutex::new(FailureLimiter::new(
                FailureLimits::default(),
                Instant::now(),
            )),
        })
    }

    /// Whether secrets come from a folder that must be re-read.
    pub fn has_dir(&self) -> bool {
        self.dir.is_some()
    }

    /// The secrets in use.
    pub fn secrets(&self) -> Arc<Secrets> {
        match self.loaded.read() {
            Ok(l) => l.secrets.clone(),
            Err(poisoned) => poisoned.into_inner().secrets.clone(),
        }
    }

    /// Re-reads the folder (blocking I/O). A folder that cannot be read keeps the secrets in
    /// use: a Secret volume being swapped must not turn webhooks off.
    pub fn reload(&self) {
        let Some(dir) = &self.dir else { return };
        let (files, unknown) = match read_secrets_dir(dir) {
            Ok(read) => read,
            Err(e) => {
                warn!(error = %e, kind = e.metric_label(), "webhook secrets not re-read; those in use stay");
                return;
            }
        };
        let secrets = self.fixed.or(&files);
        let mut loaded = match self.loaded.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if unknown != loaded.unknown {
            report_unknown(&unknown);
            loaded.unknown = unknown;
        }
        if *loaded.secrets != secrets {
            info!(dir = %dir.display(), "webhook secrets changed");
            report(&secrets);
            loaded.secrets = Arc::new(secrets);
        }
    }

    /// Counts a failed authentication from `client` and says what to answer.
    pub fn failure(&self, client: IpAddr) -> Verdict {
        let mut limiter = match self.limiter.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        limiter.failure(client, Instant::now())
    }
}

/// Logs which sources are on and how they are checked (never a secret).
fn report(secrets: &Secrets) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut short = Vec::new();
    for source in Source::ALL {
        let Some(secret) = secrets.for_source(source) else {
            off.push(source.name());
            continue;
        };
        let whose = if secrets.has_own(source) {
            "own secret"
        } else {
            "shared token"
        };
        on.push(format!("{} ({}, {whose})", source.name(), source.scheme()));
        if secret.is_short() {
            short.push(source.name());
        }
    }
    info!(on = %on.join("; "), off = %off.join(", "), "webhook sources");
    if !short.is_empty() {
        warn!(sources = %short.join(", "), "webhook secrets shorter than 16 characters can be guessed");
    }
}

fn report_unknown(unknown: &[String]) {
    if !unknown.is_empty() {
        warn!(
            files = %unknown.join(", "),
            "ignored in the webhook secrets folder: name files after a source or `token`"
        );
    }
}

/// Limits of the failed-authentication limiter: token buckets refilled over `window`.
#[derive(Clone, Copy, Debug)]
pub struct FailureLimits {
    /// Failures one client may make in a burst, and per window.
    pub per_client: u32,
    /// Failures all clients together may make in a burst, and per window.
    pub total: u32,
    /// Refill period of both buckets.
    pub window: Duration,
    /// Clients tracked at most; beyond, new clients are held by the total alone.
    pub max_clients: usize,
}

impl Default for FailureLimits {
    fn default() -> Self {
        Self {
            per_client: 10,
            total: 100,
            window: Duration::from_secs(60),
            max_clients: 4096,
        }
    }
}

/// What to answer a request whose authentication failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// 401: within the limits (the failure was counted).
    Unauthorized,
    /// 429 with Retry-After: over the limit of this client, or of all clients when `total`.
    /// `first` marks the first refusal since the limit was last under: the one worth a log line.
    Limited {
        /// When a failure would be counted (and answered 401) again.
        retry_after: Duration,
        /// Whether the limit of all clients (rather than this one's) was reached.
        total: bool,
        /// First refusal of this episode.
        first: bool,
    },
}

impl Verdict {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Verdict::Unauthorized => "unauthorized",
            Verdict::Limited { .. } => "rate_limited",
        }
    }
}

/// A token bucket of failures.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limited: bool,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            at: now,
            limited: false,
        }
    }

    /// Adds what `capacity` per `window` gives since the last update (an earlier `now` adds
    /// nothing: injected clocks may step back).
    fn refill(&mut self, capacity: u32, window: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let rate = f64::from(capacity.max(1)) / window.as_secs_f64().max(f64::EPSILON);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(capacity));
        self.at = self.at.max(now);
    }

    /// Time until the bucket holds one token.
    fn wait(&self, capacity: u32, window: Duration) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing * window.as_secs_f64() / f64::from(capacity.max(1)))
    }
}

/// Counts failed authentications per client and in total; successes never reach it, so a sender
/// with the right secret is never refused, even behind the same address as an attacker (behind
/// an ingress every sender has the ingress's address). Memory is bounded: a client whose bucket
/// has refilled is forgotten, and at most `max_clients` are tracked.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: FailureLimits,
    total: Bucket,
    clients: HashMap<IpAddr, Bucket>,
    swept: Instant,
}

impl FailureLimiter {
    /// An empty limiter.
    pub fn new(limits: FailureLimits, now: Instant) -> Self {
        Self {
            limits,
            total: Bucket::full(limits.total, now),
            clients: HashMap::new(),
            swept: now,
        }
    }

    /// Counts a failure of `client` at `now` (pure: the time is given) and says what to answer.
    pub fn failure(&mut self, client: IpAddr, now: Instant) -> Verdict {
        let l = self.limits;
        self.total.refill(l.total, l.window, now);
        if self.clients.len() >= l.max_clients
            || now.saturating_duration_since(self.swept) >= l.window
        {
            self.sweep(now);
        }
        let key = client_key(client);
        let mut bucket = match self.clients.get(&key) {
            Some(b) => Some(*b),
            None if self.clients.len() < l.max_clients => Some(Bucket::full(l.per_client, now)),
            // Full of clients failing right now: this one is held by the total only.
            None => None,
        };
        if let Some(b) = bucket.as_mut() {
            b.refill(l.per_client, l.window, now);
        }
        let verdict = match bucket.as_mut() {
            Some(b) if b.tokens < 1.0 => {
                let first = !b.limited;
                b.limited = true;
                Verdict::Limited {
                    retry_after: b.wait(l.per_client, l.window),
                    total: false,
                    first,
                }
            }
            _ if self.total.tokens < 1.0 => {
                let first = !self.total.limited;
                self.total.limited = true;
                Verdict::Limited {
                    retry_after: self.total.wait(l.total, l.window),
                    total: true,
                    first,
                }
            }
            _ => {
                self.total.tokens -= 1.0;
                self.total.limited = false;
                if let Some(b) = bucket.as_mut() {
                    b.tokens -= 1.0;
                    b.limited = false;
                }
                Verdict::Unauthorized
            }
        };
        if let Some(b) = bucket {
            self.clients.insert(key, b);
        }
        verdict
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    /// Forgets the clients whose bucket has refilled: they are as good as new.
    fn sweep(&mut self, now: Instant) {
        let l = self.limits;
        self.clients.retain(|_, b| {
            let mut b = *b;
            b.refill(l.per_client, l.window, now);
            b.tokens < f64::from(l.per_client)
        });
        self.swept = now;
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (the block one host
/// usually holds whole).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// Retry-After in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address literal")
    }

    fn limits() -> FailureLimits {
        FailureLimits {
            per_client: 3,
            total: 5,
            window: Duration::from_secs(30),
            max_clients: 4,
        }
    }

    #[test]
    fn a_client_is_limited_after_its_burst_and_refills_over_the_window() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(limits(), t0);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.failure(a, t0), Verdict::Unauthorized);
        }
        // 3 per 30 s: one token every 10 s.
        assert_eq!(
            l.failure(a, t0),
            Verdict::Limited {
                retry_after: Duration::from_secs(10),
                total: false,
                first: true
            }
        );
        let again = l.failure(a, t0 + Duration::from_secs(4));
        assert!(
            matches!(again, Verdict::Limited { first: false, total: false, retry_after }
                if retry_after.abs_diff(Duration::from_secs(6)) < Duration::from_millis(1)),
            "{again:?}"
        );
        assert_eq!(
            l.failure(a, t0 + Duration::from_secs(11)),
            Verdict::Unauthorized,
            "a token back after 10 s"
        );
        assert!(matches!(
            l.failure(a, t0 + Duration::from_secs(11)),
            Verdict::Limited { first: true, .. }
        ));
        // Another client has its own bucket.
        assert_eq!(l.failure(ip("192.0.2.2"), t0), Verdict::Unauthorized);
    }

    #[test]
    fn the_total_holds_many_clients_and_time_may_step_back() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut l = FailureLimiter::new(limits(), t0);
        for i in 1..=5 {
            assert_eq!(
                l.failure(ip(&format!("198.51.100.{i}")), t0),
                Verdict::Unauthorized
            );
        }
        let v = l.failure(ip("198.51.100.9"), t0);
        assert_eq!(
            v,
            Verdict::Limited {
                // 5 per 30 s: one every 6 s.
                retry_after: Duration::from_secs(6),
                total: true,
                first: true
            }
        );
        assert_eq!(v.metric_label(), "rate_limited");
        // A clock read earlier than the last one adds nothing and breaks nothing.
        assert!(matches!(
            l.failure(ip("198.51.100.9"), t0 - Duration::from_secs(50)),
            Verdict::Limited {
                total: true,
                first: false,
                ..
            }
        ));
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_are_forgotten() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(
            FailureLimits {
                total: 1000,
                ..limits()
            },
            t0,
        );
        for i in 0..10 {
            l.failure(ip(&format!("203.0.113.{i}")), t0);
        }
        assert_eq!(l.tracked(), 4, "at most max_clients");
        // Untracked clients still count against the total, and are not refused for being new.
        assert_eq!(l.failure(ip("203.0.113.50"), t0), Verdict::Unauthorized);
        // After a window every bucket has refilled: all are forgotten at the next failure.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(l.failure(ip("203.0.113.60"), later), Verdict::Unauthorized);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(limits(), t0);
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            assert_eq!(l.failure(ip(host), t0), Verdict::Unauthorized);
        }
        assert!(matches!(
            l.failure(ip("2001:db8:1:2::99"), t0),
            Verdict::Limited { total: false, .. }
        ));
        assert_eq!(l.failure(ip("2001:db8:1:3::1"), t0), Verdict::Unauthorized);
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
    }

    #[test]
    fn secret_flags_treat_empty_as_unset() {
        let args = WebhookArgs {
            webhook_token: Some(SecretFlag::parse("").expect("infallible")),
            webhook_secret_ghcr: Some(SecretFlag::parse("gh").expect("infallible")),
            ..WebhookArgs::default()
        };
        let s = args.secrets();
        assert_eq!(s.for_source(Source::Quay), None);
        assert_eq!(s.for_source(Source::Ghcr), Secret::new("gh").as_ref());
        assert!(!format!("{args:?}").contains("\"gh\""));
    }
}
