//! `kimup run`: wires the registry client, the tag cache, the clusters and the HTTP endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::Image;
use crate::clusters::{self, KubeTimeouts, Verdict};
use crate::controller::{self, ClusterContext};
use crate::credential;
use crate::leader::{self, Elector, LeaderConfig, Leadership};
use crate::registry::{ClientSettings, RegistryClient, TagCache};
use crate::server::{self, Health, Readiness};
use crate::shards::{Ownership, ShardElector};
use crate::sync::Shared;

/// Flags of `kimup run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file of a member cluster (repeatable; every context is a member).
    #[arg(long = "kubeconfig")]
    pub kubeconfigs: Vec<PathBuf>,
    /// kimup (Go)'s health and metrics flags, recognised for migration (hidden).
    #[command(flatten)]
    pub upstream: crate::migrate::UpstreamFlags,
    /// Folder of kubeconfig files, one or more clusters each; watched for changes (repeatable).
    #[arg(long = "kubeconfig-dir")]
    pub kubeconfig_dirs: Vec<PathBuf>,
    /// Use only this context of each kubeconfig (all contexts when omitted).
    #[arg(long)]
    pub context: Option<String>,
    /// Also serve the cluster kimup runs in (always when no kubeconfig is given).
    #[arg(long, env = "KIMUP_SERVE_IN_CLUSTER")]
    pub serve_in_cluster: bool,
    /// Allow kubeconfigs whose users run code (exec or auth-provider plugins).
    #[arg(long)]
    pub allow_exec_auth: bool,
    /// How often the kubeconfig folders are re-read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub cluster_poll_interval: Duration,
    /// Serve only the Images of this namespace (all namespaces when omitted).
    #[arg(long, env = "KIMUP_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Elect a leader among replicas through a Lease; only the leader acts.
    #[arg(long)]
    pub leader_elect: bool,
    /// Kubeconfig of the home cluster holding the Lease (in-cluster, else the first member).
    #[arg(long)]
    pub lease_kubeconfig: Option<PathBuf>,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "kimup-leader")]
    pub lease_name: String,
    /// Lease duration.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader retries renewing before it steps down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// Interval between lease attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Split the work into this many shards, one Lease each (`<lease-name>-shard-<i>`); every
    /// replica holds its fair share and syncs the Images whose repository hashes to them.
    /// Needs --leader-elect; 1 is a single leader.
    #[arg(long, env = "KIMUP_SHARDS", default_value_t = 1)]
    pub shards: u32,
    /// Address of /metrics, /healthz, /readyz, /clusters and /webhooks.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,
    /// How long a registry tag list is reused (e.g. 60s, 5m); 0 disables the cache.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub tag_cache_ttl: Duration,
    /// Registry reached over plain HTTP, as host[:port] (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificate (PEM file) trusted for registries (repeatable).
    #[arg(long = "registry-ca-file")]
    pub registry_ca_files: Vec<PathBuf>,
    /// Concurrent requests per registry host.
    #[arg(long, default_value_t = 8)]
    pub registry_concurrency: usize,
    /// Timeout of one registry request (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub registry_timeout: Duration,
    /// Secrets of `/webhooks/{generic,dockerhub,harbor,distribution,ghcr,quay}`.
    #[command(flatten)]
    pub webhooks: server::WebhookArgs,
    /// Images synced concurrently per cluster.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Connect timeout (TCP and TLS) of requests to API servers, watches included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kube_connect_timeout: Duration,
    /// Read and write timeout of requests to API servers other than watches (kube's watcher ends
    /// a silent watch on its own).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub kube_request_timeout: Duration,
}

impl RunArgs {
    fn kube_timeouts(&self) -> KubeTimeouts {
        KubeTimeouts {
            connect: self.kube_connect_timeout,
            request: self.kube_request_timeout,
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 500ms"))?;
    let too_long = || format!("invalid duration {s:?}: too long");
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        _ => Err(format!(
            "invalid duration {s:?}: unit must be ms, s, m or h"
        )),
    }
}

/// Most shards: each is a Lease read every retry period by every replica.
pub const MAX_SHARDS: u32 = 64;

/// Checks the flags that clap cannot check alone (pure).
pub fn validate(args: &RunArgs) -> Result<(), String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    if args.leader_elect {
        leader::check_durations(args.lease_duration, args.renew_deadline, args.retry_period)?;
    }
    if args.shards == 0 || args.shards > MAX_SHARDS {
        return Err(format!("--shards must be between 1 and {MAX_SHARDS}"));
    }
    if args.shards > 1 && !args.leader_elect {
        return Err(
            "--shards above 1 needs --leader-elect: replicas share shards through Leases".into(),
        );
    }
    if args.tag_cache_ttl > DAY {
        return Err("--tag-cache-ttl must be at most 24h".into());
    }
    if args.cluster_poll_interval < Duration::from_millis(100) || args.cluster_poll_interval > DAY {
        return Err("--cluster-poll-interval must be between 100ms and 24h".into());
    }
    if args.registry_timeout.is_zero() || args.registry_timeout > Duration::from_secs(3600) {
        return Err("--registry-timeout must be between 1ms and 1h".into());
    }
    for (flag, d) in [
        ("--kube-connect-timeout", args.kube_connect_timeout),
        ("--kube-request-timeout", args.kube_request_timeout),
    ] {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(format!("{flag} must be between 100ms and 1h"));
        }
    }
    if args.registry_concurrency == 0 || args.concurrency == 0 {
        return Err("--registry-concurrency and --concurrency must be at least 1".into());
    }
    Ok(())
}

/// Checks that the files and folders named on the command line exist: a typo there is a
/// mistake to stop on (exit 2), not a member that never comes. Files added to a folder later are
/// picked up at the next poll; a folder may start empty.
pub fn check_paths(args: &RunArgs) -> Result<(), String> {
    for f in &args.kubeconfigs {
        if !f.is_file() {
            return Err(format!(
                "--kubeconfig {}: no such file (or not a regular file)",
                f.display()
            ));
        }
    }
    for d in &args.kubeconfig_dirs {
        if !d.is_dir() {
            return Err(format!("--kubeconfig-dir {}: no such folder", d.display()));
        }
    }
    if let Some(f) = &args.lease_kubeconfig
        && !f.is_file()
    {
        return Err(format!("--lease-kubeconfig {}: no such file", f.display()));
    }
    Ok(())
}

/// Builds the process-wide services from the flags; `members` is the member clusters' state,
/// which promotions read.
pub fn shared(args: &RunArgs, members: Health) -> Result<Arc<Shared>> {
    let mut extra_ca_pem = Vec::new();
    for f in &args.registry_ca_files {
        extra_ca_pem.push(
            std::fs::read(f)
                .with_context(|| format!("reading --registry-ca-file {}", f.display()))?,
        );
    }
    let settings = ClientSettings {
        request_timeout: args.registry_timeout,
        per_registry_concurrency: args.registry_concurrency,
        plain_http: args.insecure_registries.clone(),
        extra_ca_pem,
        ..ClientSettings::default()
    };
    let client = Arc::new(RegistryClient::new(settings)?);
    let http = reqwest::Client::builder()
        .user_agent(concat!("kimup/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        // A receiver must not bounce kimup's POST (with its headers) to another address.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the alert HTTP client")?;
    let owner = if args.leader_elect && args.shards > 1 {
        Ownership::sharded(args.shards, args.renew_deadline)
    } else if args.leader_elect {
        Ownership::single(Leadership::elected(args.renew_deadline))
    } else {
        Ownership::single(Leadership::always())
    };
    Ok(Arc::new(Shared {
        tags: TagCache::new(client, args.tag_cache_ttl),
        owner,
        http,
        pushes: tokio::sync::broadcast::channel(1024).0,
        fleet: crate::fleet::Fleet::new(members),
    }))
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> Result<()> {
    validate(&args).map_err(|e| anyhow::anyhow!(e))?;
    let health = Health::default();
    let shared = shared(&args, health.clone())?;
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let owner = shared.owner.clone();

    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding --listen-addr {}", args.listen_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz /clusters");
    let webhooks = Arc::new(server::WebhookAuth::new(&args.webhooks)?);
    let server = tokio::spawn(server::serve(
        listener,
        server::ServerState {
            health: health.clone(),
            readiness: readiness.clone(),
            shared: shared.clone(),
            leader: owner.clone(),
            webhooks,
        },
    ));

    let election = if args.leader_elect {
        let client = home_client(&args).await?;
        let config = LeaderConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: leader::identity(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        info!(identity = %config.identity, lease = %format!("{}/{}", config.namespace, config.name), shards = args.shards, "leader election on");
        let token = shutdown.clone();
        // Dropped when the loop ends, returns or panics: /readyz then fails.
        let alive = readiness.election_running();
        Some(if args.shards > 1 {
            let mut e = ShardElector::new(client, config, owner.clone());
            tokio::spawn(async move {
                e.run(token).await;
                drop(alive);
                Election::Shards(Box::new(e))
            })
        } else {
            let mut e = Elector::new(client, config);
            let leadership = owner.shard(0).clone();
            tokio::spawn(async move {
                e.run(leadership, token).await;
                drop(alive);
                Election::Single(Box::new(e))
            })
        })
    } else {
        crate::metrics::leader(true);
        None
    };

    let supervisor = tokio::spawn(supervise(
        args.clone(),
        shared.clone(),
        owner.clone(),
        health.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    wait_for_signal().await;
    info!("shutting down: stopping all actions");
    // Stop acting at once, then stop the controllers, then hand the lease over.
    owner.relinquish();
    shutdown.cancel();
    let _ = supervisor.await;
    // Bounded (leader::RELEASE_TIMEOUT): an unreachable home cluster must not hang SIGTERM.
    if let Some(handle) = election {
        match handle.await {
            Ok(Election::Single(mut e)) => {
                if let Err(err) = e.release().await {
                    warn!(error = %err, "releasing the lease failed; a standby takes over when it expires");
                }
            }
            Ok(Election::Shards(mut e)) => e.release().await,
            Err(_) => {}
        }
    }
    server.abort();
    Ok(())
}

/// The election loop that ran, handed back at shutdown to release its Leases.
enum Election {
    Single(Box<Elector>),
    Shards(Box<ShardElector>),
}

/// Client of the home cluster (where the Lease lives).
async fn home_client(args: &RunArgs) -> Result<Client> {
    let path = args.lease_kubeconfig.clone().or_else(|| {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            None
        } else {
            args.kubeconfigs.first().cloned()
        }
    });
    let config = match path {
        Some(p) => {
            let kc =
                Kubeconfig::read_from(&p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading {}", p.display()))?
        }
        None => Config::incluster()
            .context("leader election needs --lease-kubeconfig or an in-cluster configuration")?,
    };
    clusters::kube_client(config, args.kube_timeouts())
        .map_err(|e| anyhow::anyhow!("building the home cluster client: {e}"))
}

/// Which member serves each cluster identity, shared by the cluster tasks of one process.
#[derive(Clone)]
struct Identities {
    members: Arc<Mutex<BTreeMap<String, IdentityEntry>>>,
    changed: Arc<watch::Sender<u64>>,
}

#[derive(Clone, Debug, Default)]
struct IdentityEntry {
    /// UID of the member's `kube-system` namespace, once probed; kept while it is unreachable,
    /// so that a blip does not hand its cluster to a duplicate and back.
    identity: Option<String>,
    /// Its Image controller is running.
    active: bool,
    /// It has been probed once (or cannot be): until then it may still claim a cluster that
    /// members after it in name order reach.
    probed: bool,
    /// Where its configuration comes from, for messages.
    source: String,
}

impl Identities {
    fn new() -> Self {
        Self {
            members: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut IdentityEntry)) {
        if let Ok(mut m) = self.members.lock() {
            f(m.entry(name.to_string()).or_default());
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_source(&self, name: &str, source: &str) {
        self.edit(name, |e| e.source = source.to_string());
    }

    fn record(&self, name: &str, identity: &str) {
        self.edit(name, |e| {
            e.identity = Some(identity.to_string());
            e.probed = true;
        });
    }

    fn probed(&self, name: &str) {
        self.edit(name, |e| e.probed = true);
    }

    /// A member before `name` in name order not probed yet: its identity may turn out to be
    /// `name`'s, and serving first would only hand the cluster over a moment later.
    fn unprobed_before(&self, name: &str) -> Option<String> {
        self.snapshot()
            .into_iter()
            .find_map(|(n, e)| (n.as_str() < name && !e.probed).then_some(n))
    }

    fn set_active(&self, name: &str, active: bool) {
        self.edit(name, |e| e.active = active);
    }

    /// Forgets a member that was removed: a duplicate of it may now serve.
    fn forget(&self, name: &str) {
        if let Ok(mut m) = self.members.lock() {
            m.remove(name);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn snapshot(&self) -> BTreeMap<String, IdentityEntry> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The verdict of `clusters::who_serves` for `name` (None before its identity is known).
    fn verdict(&self, name: &str) -> Option<Verdict> {
        let m = self.snapshot();
        clusters::who_serves(m.iter().map(|(n, e)| (n.as_str(), e.identity.as_deref())))
            .remove(name)
    }

    /// Another member with the same identity still runs its controller (a handover under way).
    fn other_active(&self, name: &str, identity: &str) -> Option<String> {
        self.snapshot().into_iter().find_map(|(n, e)| {
            (n != name && e.active && e.identity.as_deref() == Some(identity)).then_some(n)
        })
    }

    fn source_of(&self, name: &str) -> String {
        self.snapshot()
            .get(name)
            .map(|e| e.source.clone())
            .unwrap_or_default()
    }
}

/// How long a stopping Image controller may take to finish the syncs under way.
const CONTROLLER_STOP_GRACE: Duration = Duration::from_secs(30);

/// What every cluster task of one process shares.
#[derive(Clone)]
struct ClusterRuntime {
    shared: Arc<Shared>,
    leader: Ownership,
    health: Health,
    identities: Identities,
    concurrency: u16,
    namespace: Option<String>,
    timeouts: KubeTimeouts,
    /// How often a duplicate re-checks whether it should serve.
    recheck: Duration,
}

/// Keeps the running clusters equal to the members the kubeconfigs define.
async fn supervise(
    args: RunArgs,
    shared: Arc<Shared>,
    leader: Ownership,
    health: Health,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    struct Running {
        hash: u64,
        token: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    }
    let rt = ClusterRuntime {
        shared,
        leader,
        health: health.clone(),
        identities: Identities::new(),
        concurrency: args.concurrency,
        namespace: args.watch_namespace.clone(),
        timeouts: args.kube_timeouts(),
        recheck: args.cluster_poll_interval,
    };
    let mut running: HashMap<String, Running> = HashMap::new();
    const IN_CLUSTER: &str = "in-cluster";
    let only_in_cluster = args.kubeconfigs.is_empty() && args.kubeconfig_dirs.is_empty();
    let in_cluster = args.serve_in_cluster || only_in_cluster;
    let mut last_empty_warning: Option<tokio::time::Instant> = None;
    // Members whose kubeconfig says when its credential expires, and when each was last warned
    // about.
    let mut credentials: HashMap<String, credential::Expiry> = HashMap::new();
    let mut warned: HashMap<String, (bool, tokio::time::Instant)> = HashMap::new();
    loop {
        let mut desired = if only_in_cluster {
            BTreeMap::new()
        } else {
            // File reads block: off the async workers, which serve every cluster's syncs.
            let (dirs, files, allow_exec) = (
                args.kubeconfig_dirs.clone(),
                args.kubeconfigs.clone(),
                args.allow_exec_auth,
            );
            match tokio::task::spawn_blocking(move || clusters::scan(&dirs, &files, allow_exec))
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    // A panic in the scan must not stop the supervisor: keep what runs.
                    error!(error = %e, "reading the kubeconfig folders failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(args.cluster_poll_interval) => {}
                    }
                    continue;
                }
            }
        };
        if let Some(ctx) = &args.context {
            desired.retain(|_, m| m.source.as_ref().map(|(_, c)| c == ctx).unwrap_or(true));
        }
        // No member is a configuration error an operator must hear about, not a reason to stop
        // being ready: say it now and again every minute while it lasts.
        if desired.is_empty() && !in_cluster {
            if last_empty_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                warn!(
                    dirs = ?args.kubeconfig_dirs,
                    files = ?args.kubeconfigs,
                    "no member cluster: no kubeconfig found; add kubeconfig files or use --serve-in-cluster"
                );
                last_empty_warning = Some(tokio::time::Instant::now());
            }
        } else {
            last_empty_warning = None;
        }
        let hashes: HashMap<String, u64> = running
            .iter()
            .filter(|(k, _)| k.as_str() != IN_CLUSTER)
            .map(|(k, r)| (k.clone(), r.hash))
            .collect();
        let mut plan = clusters::diff(&hashes, &desired);
        if in_cluster && !running.contains_key(IN_CLUSTER) {
            plan.start.push(IN_CLUSTER.into());
        }
        for name in plan.stop.iter().chain(plan.restart.iter()) {
            if let Some(r) = running.remove(name) {
                info!(cluster = %name, "stopping cluster");
                r.token.cancel();
                let _ = r.handle.await;
            }
            if plan.stop.contains(name) {
                health.remove(name);
                credentials.remove(name);
                warned.remove(name);
                // Only a removal frees the identity: a restarted member keeps its claim until
                // its new configuration has been probed.
                rt.identities.forget(name);
            }
        }
        for name in plan.start.iter().chain(plan.restart.iter()) {
            let (hash, source, config) = if name == IN_CLUSTER {
                (
                    0,
                    IN_CLUSTER.to_string(),
                    Config::incluster().map_err(|e| format!("in-cluster configuration: {e}")),
                )
            } else {
                let Some(member) = desired.get(name) else {
                    continue;
                };
                let expiry = member.source.as_ref().ok().and_then(|(kc, context)| {
                    credential::of_kubeconfig(kc, context).expiry().copied()
                });
                health.set_credential(name, expiry);
                match expiry {
                    Some(e) => {
                        credentials.insert(name.clone(), e);
                    }
                    None => {
                        credentials.remove(name);
                    }
                }
                warned.remove(name);
                let config = match member.source.clone() {
                    Ok((kc, context)) => clusters::client_config(kc, &context).await,
                    Err(e) => Err(e),
                };
                (member.hash, member.file.display().to_string(), config)
            };
            health.set_source(name, &source);
            rt.identities.set_source(name, &source);
            let token = shutdown.child_token();
            let handle = match config {
                Ok(config) => {
                    info!(cluster = %name, source = %source, "starting cluster");
                    health.set(name, Err("connecting".into()));
                    tokio::spawn(serve_cluster(
                        name.clone(),
                        config,
                        rt.clone(),
                        token.clone(),
                    ))
                }
                Err(e) => {
                    error!(cluster = %name, source = %source, error = %e, "cluster configuration refused");
                    // A member that cannot be used holds no claim on the cluster it reached.
                    rt.identities.forget(name);
                    rt.identities.set_source(name, &source);
                    rt.identities.probed(name);
                    health.set(name, Err(e));
                    tokio::spawn(async {})
                }
            };
            running.insert(
                name.clone(),
                Running {
                    hash,
                    token,
                    handle,
                },
            );
        }
        warn_expiring_credentials(&credentials, &mut warned, chrono::Utc::now());
        // Zero members leaves no kimup_cluster_up series to alert on; this count has one.
        crate::metrics::member_clusters(running.len());
        readiness.scanned();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(args.cluster_poll_interval) => {}
        }
    }
    for (_, r) in running.drain() {
        r.token.cancel();
        let _ = r.handle.await;
    }
}

/// How often a credential that is about to expire (or has) is announced again in the log.
const CREDENTIAL_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// Logs a warning for each member credential inside its warning window (see
/// `credential::freshness`): when it enters the window, when it expires, then hourly. `warned`
/// holds, per member, whether the last warning was for an expired credential and when it was
/// given. The token itself is never logged.
fn warn_expiring_credentials(
    credentials: &HashMap<String, credential::Expiry>,
    warned: &mut HashMap<String, (bool, tokio::time::Instant)>,
    now: chrono::DateTime<chrono::Utc>,
) {
    for (name, expiry) in credentials {
        let Some(text) = credential::warning(expiry, now) else {
            warned.remove(name);
            continue;
        };
        let expired = matches!(
            credential::freshness(expiry, now),
            credential::Freshness::Expired
        );
        let due = warned.get(name).is_none_or(|(was_expired, at)| {
            *was_expired != expired || at.elapsed() >= CREDENTIAL_WARNING_EVERY
        });
        if due {
            let expires = expiry
                .expires
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            warn!(cluster = %name, credential_expiry = %expires, "{text}");
            warned.insert(name.clone(), (expired, tokio::time::Instant::now()));
        }
    }
}

/// Serves one cluster: checks it answers, has the CRD and is not served through another member,
/// then runs its controller; on failure marks it down and retries with backoff, until `shutdown`.
async fn serve_cluster(
    name: String,
    config: Config,
    rt: ClusterRuntime,
    shutdown: CancellationToken,
) {
    let health = &rt.health;
    let mut backoff = Duration::from_secs(1);
    let mut reported_duplicate_of: Option<String> = None;
    let mut changes = rt.identities.changed.subscribe();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let probed = probe(&config, rt.namespace.as_deref(), rt.timeouts).await;
        let (client, identity) = match probed {
            Ok(ok) => ok,
            Err(e) => {
                error!(cluster = %name, error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "cluster down");
                health.set(&name, Err(format!("{e:#}")));
                rt.identities.probed(&name);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        health.set_identity(&name, Some(identity.clone()));
        rt.identities.record(&name, &identity);
        changes.borrow_and_update();
        // Members start together: let those first in name order tell who they are, so that the
        // first start already serves each cluster through the member that will keep it.
        while let Some(first) = rt.identities.unprobed_before(&name) {
            health.set(
                &name,
                Err(format!("waiting for cluster {first} to be probed")),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
            }
        }
        if let Some(Verdict::DuplicateOf(first)) = rt.identities.verdict(&name) {
            let reason = format!(
                "duplicate of cluster {first}: {} and {} reach the same cluster (kube-system UID \
                 {identity}); it is served once, through {first}; remove one of the two files",
                rt.identities.source_of(&name),
                rt.identities.source_of(&first),
            );
            if reported_duplicate_of.as_deref() != Some(first.as_str()) {
                error!(cluster = %name, serving = %first, identity = %identity, "{reason}");
                reported_duplicate_of = Some(first);
            }
            health.set(&name, Err(reason));
            // Re-checked every poll, at once when a member comes or goes.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(rt.recheck) => {}
            }
            continue;
        }
        if reported_duplicate_of.take().is_some() {
            info!(cluster = %name, identity = %identity, "the member that served this cluster is gone; serving it");
        }
        // A member first in name order that just appeared takes a cluster over: wait until the
        // one that served it has stopped its controller, so no Image is synced by both.
        while let Some(other) = rt.identities.other_active(&name, &identity) {
            health.set(&name, Err(format!("taking over from cluster {other}")));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
            }
        }
        health.set(&name, Ok(()));
        info!(cluster = %name, identity = %identity, "cluster up, starting Image controller");
        let ctx = Arc::new(ClusterContext::new(
            &name,
            client,
            rt.shared.clone(),
            rt.leader.clone(),
            // Events carry the cluster name, so a central operator can tell whose they are.
            Some(format!("{}/{name}", leader::identity())),
        ));
        // Stops on shutdown, or when a member first in name order claims the same cluster.
        let (token, identities, me) = (shutdown.clone(), rt.identities.clone(), name.clone());
        let mut stepped_down = rt.identities.changed.subscribe();
        let stop = async move {
            loop {
                if matches!(identities.verdict(&me), Some(Verdict::DuplicateOf(_))) {
                    return;
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = stepped_down.changed() => if changed.is_err() { return },
                }
            }
        };
        let stopping = CancellationToken::new();
        rt.identities.set_active(&name, true);
        let run = controller::run(
            ctx,
            health.clone(),
            rt.namespace.as_deref(),
            stopping.clone().cancelled_owned(),
            rt.concurrency,
        );
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {}
            _ = stop => {
                stopping.cancel();
                // kube's graceful shutdown lets running reconciles finish, but waits for ever for
                // a watch cache that has not done its first list (the runner is held until the
                // store is ready, and the stopped watch never makes it so): only a ready
                // controller gets the grace.
                let grace = if health.cache_ready(&name) {
                    CONTROLLER_STOP_GRACE
                } else {
                    Duration::ZERO
                };
                if tokio::time::timeout(grace, &mut run).await.is_err() && !grace.is_zero() {
                    warn!(cluster = %name, grace_s = grace.as_secs(), "Image controller did not stop in time; dropped");
                }
            }
        }
        health.set_images(&name, None);
        rt.identities.set_active(&name, false);
        if shutdown.is_cancelled() {
            return;
        }
        if matches!(rt.identities.verdict(&name), Some(Verdict::DuplicateOf(_))) {
            continue;
        }
        warn!(cluster = %name, "Image controller stopped; restarting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// Connects, checks that the Image CRD is served, and reads the cluster's identity: the UID of
/// its `kube-system` namespace (as SIG-Multicluster's ClusterProperty `cluster.clusterset.k8s.io`
/// suggests), which two kubeconfigs reaching one cluster share.
async fn probe(
    config: &Config,
    namespace: Option<&str>,
    timeouts: KubeTimeouts,
) -> Result<(Client, String)> {
    let client = clusters::kube_client(config.clone(), timeouts).map_err(|e| anyhow::anyhow!(e))?;
    let images: Api<Image> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = images.list_metadata(&ListParams::default().limit(1)).await {
        return Err(anyhow::anyhow!(probe_error(&e)));
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = match namespaces.get_metadata("kube-system").await {
        Ok(ns) => ns.metadata.uid,
        Err(e) => return Err(anyhow::anyhow!(identity_error(&e))),
    };
    match uid {
        Some(uid) if !uid.is_empty() => Ok((client, uid)),
        _ => Err(anyhow::anyhow!(
            "cannot tell this cluster's identity: namespace kube-system has no UID"
        )),
    }
}

/// Why a cluster's identity could not be read, in the words an operator needs (pure).
pub fn identity_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => format!(
            "cannot read this cluster's identity (namespace kube-system): credentials refused ({}); \
             kimup needs get on namespaces: {}",
            s.code, s.message
        ),
        other => format!(
            "cannot read this cluster's identity (namespace kube-system): {}",
            probe_error(other)
        ),
    }
}

/// A cluster's down reason, in the words an operator needs (pure).
pub fn probe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            "the Image CRD (images.kimup.cloudavenue.io) is not installed".to_string()
        }
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
            format!("credentials refused ({}): {}", s.code, s.message)
        }
        kube::Error::Api(s) => format!("API server answered {}: {}", s.code, s.message),
        other => format!("unreachable: {}", with_causes(other)),
    }
}

/// An error and its causes on one line, each cause once: hyper's own message ("client error
/// (Connect)") says nothing of a refused connection or a timeout, its sources do (pure).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(
            parse_duration("9999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn run_args(flags: &[&str]) -> RunArgs {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("kimup").chain(flags.iter().copied()))
            .expect("flags parse")
            .run
    }

    #[test]
    fn shards_need_the_election_and_stay_within_bounds() {
        assert_eq!(validate(&run_args(&[])), Ok(()));
        assert!(
            validate(&run_args(&["--shards=3"]))
                .unwrap_err()
                .contains("--leader-elect")
        );
        assert_eq!(
            validate(&run_args(&["--shards=3", "--leader-elect"])),
            Ok(())
        );
        assert_eq!(
            validate(&run_args(&["--shards=1", "--leader-elect"])),
            Ok(())
        );
        assert!(validate(&run_args(&["--shards=0", "--leader-elect"])).is_err());
        assert!(validate(&run_args(&["--shards=65", "--leader-elect"])).is_err());
    }

    #[test]
    fn probe_errors_say_what_to_fix() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(probe_error(&api(404)).contains("Image CRD"));
        assert!(probe_error(&api(403)).contains("credentials refused (403)"));
        assert!(probe_error(&api(500)).contains("answered 500"));
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let e = kube::Error::Service(Box::new(timed_out));
        assert_eq!(probe_error(&e), "unreachable: ServiceError: timed out");
    }
}
