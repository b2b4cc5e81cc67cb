//! `kimup run`: wires the registry client, the tag cache, the clusters and the HTTP endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::Image;
use crate::clusters;
use crate::controller::{self, ClusterContext};
use crate::leader::{self, Elector, LeaderConfig, Leadership};
use crate::registry::{ClientSettings, RegistryClient, TagCache};
use crate::server::{self, Health};
use crate::sync::Shared;

/// Flags of `kimup run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file of a member cluster (repeatable; every context is a member).
    #[arg(long = "kubeconfig")]
    pub kubeconfigs: Vec<PathBuf>,
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
    /// Address of /metrics, /healthz and /readyz.
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
    /// Token that registry webhooks must present (`Authorization: Bearer T` or `?token=T`) on
    /// `/webhooks/{generic,dockerhub,harbor,distribution,ghcr,quay}`; webhooks are off without one.
    /// Prefer the KIMUP_WEBHOOK_TOKEN variable: flags show in process listings.
    #[arg(long)]
    pub webhook_token: Option<String>,
    /// Images synced concurrently per cluster.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
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

/// Checks the flags that clap cannot check alone (pure).
pub fn validate(args: &RunArgs) -> Result<(), String> {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    if args.leader_elect {
        leader::check_durations(args.lease_duration, args.renew_deadline, args.retry_period)?;
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
    if args.registry_concurrency == 0 || args.concurrency == 0 {
        return Err("--registry-concurrency and --concurrency must be at least 1".into());
    }
    Ok(())
}

/// Builds the process-wide services from the flags.
pub fn shared(args: &RunArgs) -> Result<Arc<Shared>> {
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
        .build()
        .context("building the alert HTTP client")?;
    let leadership = if args.leader_elect {
        Leadership::elected(args.renew_deadline)
    } else {
        Leadership::always()
    };
    Ok(Arc::new(Shared {
        tags: TagCache::new(client, args.tag_cache_ttl),
        leadership,
        http,
        pushes: tokio::sync::broadcast::channel(1024).0,
    }))
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> Result<()> {
    validate(&args).map_err(|e| anyhow::anyhow!(e))?;
    let shared = shared(&args)?;
    let health = Health::default();
    let shutdown = CancellationToken::new();
    let leadership = shared.leadership.clone();

    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding --listen-addr {}", args.listen_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz");
    let webhook_token = args
        .webhook_token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::env::var("KIMUP_WEBHOOK_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
    let server = tokio::spawn(server::serve(
        listener,
        server::ServerState {
            health: health.clone(),
            shared: shared.clone(),
            leader: leadership.clone(),
            webhook_token: webhook_token.map(Arc::from),
        },
    ));

    let mut elector = if args.leader_elect {
        let client = home_client(&args).await?;
        let config = LeaderConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: leader::identity(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        };
        info!(identity = %config.identity, lease = %format!("{}/{}", config.namespace, config.name), "leader election on");
        Some(Elector::new(client, config))
    } else {
        crate::metrics::leader(true);
        None
    };
    let election = elector.take().map(|mut e| {
        let (leadership, token) = (leadership.clone(), shutdown.clone());
        tokio::spawn(async move {
            e.run(leadership, token).await;
            e
        })
    });

    let supervisor = tokio::spawn(supervise(
        args.clone(),
        shared.clone(),
        leadership.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    wait_for_signal().await;
    info!("shutting down: stopping all actions");
    // Stop acting at once, then stop the controllers, then hand the lease over.
    leadership.relinquish();
    shutdown.cancel();
    let _ = supervisor.await;
    // Bounded (leader::RELEASE_TIMEOUT): an unreachable home cluster must not hang SIGTERM.
    if let Some(handle) = election
        && let Ok(mut e) = handle.await
        && let Err(err) = e.release().await
    {
        warn!(error = %err, "releasing the lease failed; a standby takes over when it expires");
    }
    server.abort();
    Ok(())
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
    Client::try_from(config).context("building the home cluster client")
}

/// Keeps the running clusters equal to the members the kubeconfigs define.
async fn supervise(
    args: RunArgs,
    shared: Arc<Shared>,
    leader: Leadership,
    health: Health,
    shutdown: CancellationToken,
) {
    struct Running {
        hash: u64,
        token: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    }
    let mut running: HashMap<String, Running> = HashMap::new();
    const IN_CLUSTER: &str = "in-cluster";
    let only_in_cluster = args.kubeconfigs.is_empty() && args.kubeconfig_dirs.is_empty();
    let in_cluster = args.serve_in_cluster || only_in_cluster;
    loop {
        let mut desired = if only_in_cluster {
            BTreeMap::new()
        } else {
            clusters::scan(
                &args.kubeconfig_dirs,
                &args.kubeconfigs,
                args.allow_exec_auth,
            )
        };
        if let Some(ctx) = &args.context {
            desired.retain(|_, m| m.source.as_ref().map(|(_, c)| c == ctx).unwrap_or(true));
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
            }
        }
        for name in plan.start.iter().chain(plan.restart.iter()) {
            let (hash, config) = if name == IN_CLUSTER {
                (
                    0,
                    Config::incluster().map_err(|e| format!("in-cluster configuration: {e}")),
                )
            } else {
                let Some(member) = desired.get(name) else {
                    continue;
                };
                let config = match member.source.clone() {
                    Ok((kc, context)) => clusters::client_config(kc, &context).await,
                    Err(e) => Err(e),
                };
                (member.hash, config)
            };
            let token = shutdown.child_token();
            let handle = match config {
                Ok(config) => {
                    info!(cluster = %name, "starting cluster");
                    tokio::spawn(serve_cluster(
                        name.clone(),
                        config,
                        shared.clone(),
                        leader.clone(),
                        health.clone(),
                        token.clone(),
                        args.concurrency,
                        args.watch_namespace.clone(),
                    ))
                }
                Err(e) => {
                    error!(cluster = %name, error = %e, "cluster configuration refused");
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

/// Serves one cluster: checks it answers and has the CRD, then runs its controller; on failure
/// marks it down and retries with backoff, until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_cluster(
    name: String,
    config: Config,
    shared: Arc<Shared>,
    leader: Leadership,
    health: Health,
    shutdown: CancellationToken,
    concurrency: u16,
    namespace: Option<String>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match probe(&config, namespace.as_deref()).await {
            Ok(client) => {
                health.set(&name, Ok(()));
                info!(cluster = %name, "cluster up, starting Image controller");
                backoff = Duration::from_secs(1);
                let ctx = Arc::new(ClusterContext::new(
                    &name,
                    client,
                    shared.clone(),
                    leader.clone(),
                    // Events carry the cluster name, so a central operator can tell whose they are.
                    Some(format!("{}/{name}", leader::identity())),
                ));
                let token = shutdown.clone();
                controller::run(
                    ctx,
                    health.clone(),
                    namespace.as_deref(),
                    async move { token.cancelled().await },
                    concurrency,
                )
                .await;
                if shutdown.is_cancelled() {
                    return;
                }
                warn!(cluster = %name, "Image controller stopped; restarting");
            }
            Err(e) => {
                error!(cluster = %name, error = %format!("{e:#}"), retry_in_s = backoff.as_secs(), "cluster down");
                health.set(&name, Err(format!("{e:#}")));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Connects and checks that the Image CRD is served.
async fn probe(config: &Config, namespace: Option<&str>) -> Result<Client> {
    let client = Client::try_from(config.clone()).context("building client")?;
    let images: Api<Image> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match images.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(client),
        Err(e) => Err(anyhow::anyhow!(probe_error(&e))),
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
        other => format!("unreachable: {other}"),
    }
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
    }
}
