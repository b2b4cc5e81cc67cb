//! kimup's test control plane: real kube-apiservers over etcd and real OCI registries on loopback.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let env = kimup_testenv::TestEnv::builder().clusters(3).registries().kimup_crds().start().await?;
//! let client = env.clusters[0].client().await?;
//! env.plain_registry().push_tags("team/app", &["1.0.0", "1.1.0"]).await?;
//! # Ok(()) }
//! ```

pub mod binaries;
pub mod certs;
pub mod cluster;
pub mod httpfault;
pub mod jaeger;
pub mod process;
pub mod registry;
pub mod rollout;
pub mod sinks;
pub mod toxiproxy;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};

pub use binaries::Binaries;
pub use cluster::{Audit, AuditEvent, Cluster, Etcd};
pub use jaeger::{Jaeger, JaegerPorts};
pub use registry::{BasicAuth, Registry};
pub use sinks::{Collector, HttpSink, SmtpServer};
pub use toxiproxy::Toxiproxy;

/// A random marker, fixed for this test process, carried by every Secret the suite creates for
/// kimup (registry passwords, pull secrets, Secret-sourced alert URLs). After a test that drives
/// kimup it must appear nowhere: not in kimup's log, a status, an event or an exported span.
pub fn canary() -> &'static str {
    static CANARY: OnceLock<String> = OnceLock::new();
    CANARY.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        format!("canary{:016x}", h.finish())
    })
}

/// Installs ring as the process-wide rustls provider (idempotent). kube, reqwest and oci-client
/// are all built without a provider of their own choosing, so one must be installed before TLS.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    clusters: usize,
    registries: bool,
    crds: Vec<CustomResourceDefinition>,
    name: Option<String>,
    keep_data: bool,
    audit_log: cluster::Audit,
    toxiproxy: bool,
    jaeger: bool,
    rollouts: bool,
    controller_manager: bool,
    apiserver_flags: Vec<String>,
}

impl Builder {
    /// Number of API servers (clusters).
    pub fn clusters(mut self, n: usize) -> Self {
        self.clusters = n;
        self
    }

    /// Start a plain-HTTP registry and a TLS registry with basic auth.
    pub fn registries(mut self) -> Self {
        self.registries = true;
        self
    }

    /// Start a Toxiproxy server (`TestEnv::toxiproxy`) to put faults between kimup and the
    /// registries or API servers.
    pub fn toxiproxy(mut self) -> Self {
        self.toxiproxy = true;
        self
    }

    /// Start a Jaeger (`TestEnv::jaeger`) on free loopback ports, to export kimup's traces to and
    /// read them back through its HTTP query API.
    pub fn jaeger(mut self) -> Self {
        self.jaeger = true;
        self
    }

    /// Run kube-controller-manager, kube-scheduler and a kwok node next to every API server, so
    /// that workloads really roll out (`rollout.rs`).
    pub fn rollouts(mut self) -> Self {
        self.rollouts = true;
        self
    }

    /// Run a kube-controller-manager per cluster with only the ServiceAccount token controller
    /// (fills `kubernetes.io/service-account-token` Secrets) and the root CA publisher (the
    /// `kube-root-ca.crt` ConfigMap of every namespace).
    pub fn controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// Pass an extra flag to every kube-apiserver, e.g.
    /// `--service-account-max-token-expiration=1h`.
    pub fn apiserver_flag(mut self, flag: &str) -> Self {
        self.apiserver_flags.push(flag.to_string());
        self
    }

    /// Install the CRDs generated into the repository's `crds/` folder in every cluster.
    pub fn kimup_crds(mut self) -> Self {
        match load_crds(&binaries::repo_root().join("crds")) {
            Ok(mut crds) => self.crds.append(&mut crds),
            Err(e) => panic!("loading crds/: {e:#}"),
        }
        self
    }

    /// Install these CRDs in every cluster.
    pub fn crds(mut self, crds: Vec<CustomResourceDefinition>) -> Self {
        self.crds.extend(crds);
        self
    }

    /// Name of the run (log folder prefix).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Give every API server an audit log of writes (`Cluster::audit_events`), in the log folder.
    pub fn audit_log(mut self) -> Self {
        self.audit_log = cluster::Audit::Writes;
        self
    }

    /// Give every API server an audit log of every request, reads included (the benchmark's
    /// count of API requests per sync).
    pub fn audit_log_everything(mut self) -> Self {
        self.audit_log = cluster::Audit::Everything;
        self
    }

    /// Keep data and logs after a successful drop (the local demo uses this).
    pub fn keep_data(mut self) -> Self {
        self.keep_data = true;
        self
    }

    /// Starts everything and waits until it is ready.
    pub async fn start(self) -> Result<TestEnv> {
        TestEnv::start(self).await
    }
}

/// A running environment. Processes stop when it is dropped, or when the test binary exits.
pub struct TestEnv {
    /// The clusters, named `cluster-0`, `cluster-1`, ...
    pub clusters: Vec<Cluster>,
    /// Plain HTTP registry, then TLS registry, when requested.
    pub registries: Vec<Registry>,
    /// Shared etcd.
    pub etcd: Option<Etcd>,
    /// The Toxiproxy server, when requested.
    pub toxiproxy: Option<Toxiproxy>,
    /// Jaeger, when requested.
    pub jaeger: Option<Jaeger>,
    /// Controller manager, scheduler and kwok of each cluster, when requested.
    pub rollouts: Vec<rollout::Rollout>,
    /// Folder with `logs/` and `data/` of this run, under `target/testenv/`.
    pub run_dir: PathBuf,
    keep_data: bool,
}

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestEnv {
    /// A builder with nothing selected.
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn start(b: Builder) -> Result<Self> {
        install_crypto_provider();
        let bins = Binaries::get()?;
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "kimup".into());
        let run_name = format!(
            "{}-{}-{}",
            b.name.clone().unwrap_or(exe),
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        prune_dead_runs(&target_dir().join("testenv"));
        let run_dir = target_dir().join("testenv").join(run_name);
        let _ = std::fs::remove_dir_all(&run_dir);
        let data = run_dir.join("data");
        let logs = run_dir.join("logs");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&logs)?;

        let mut env = TestEnv {
            clusters: Vec::new(),
            registries: Vec::new(),
            etcd: None,
            toxiproxy: None,
            jaeger: None,
            rollouts: Vec::new(),
            run_dir: run_dir.clone(),
            keep_data: b.keep_data,
        };
        let ctx = || format!("test environment logs: {}", logs.display());
        if b.clusters > 0 {
            let etcd = Etcd::start(bins, &data, &logs).await.with_context(ctx)?;
            // Start the API servers concurrently: each takes several seconds of post-start hooks.
            let starts = (0..b.clusters).map(|i| {
                let name = format!("cluster-{i}");
                let (etcd, data, logs, audit) = (&etcd, &data, &logs, b.audit_log);
                let extra = &b.apiserver_flags;
                async move { Cluster::start(&name, bins, etcd, data, logs, audit, extra).await }
            });
            for c in futures::future::join_all(starts).await {
                env.clusters.push(c.with_context(ctx)?);
            }
            // The rollouts' controller manager runs every controller, these two among them.
            if b.controller_manager && !b.rollouts {
                for c in &mut env.clusters {
                    c.start_controller_manager(bins).with_context(ctx)?;
                }
            }
            env.etcd = Some(etcd);
            for c in &env.clusters {
                c.install_crds(&b.crds).await.with_context(ctx)?;
            }
            if b.rollouts {
                let starts = env
                    .clusters
                    .iter()
                    .map(|c| rollout::Rollout::start(bins, c, &data, &logs));
                for r in futures::future::join_all(starts).await {
                    env.rollouts.push(r.with_context(ctx)?);
                }
            }
        }
        if b.registries {
            env.registries.push(
                Registry::start_plain(bins, &data, &logs)
                    .await
                    .with_context(ctx)?,
            );
            let auth = BasicAuth {
                username: "kimup".into(),
                // The canary rides in the one credential kimup really uses for this registry.
                password: format!("s3cret-{}", canary()),
            };
            env.registries.push(
                Registry::start_tls(bins, &data, &logs, auth)
                    .await
                    .with_context(ctx)?,
            );
        }
        if b.toxiproxy {
            env.toxiproxy = Some(Toxiproxy::start(bins, &logs).await.with_context(ctx)?);
        }
        if b.jaeger {
            env.jaeger = Some(Jaeger::start(&data, &logs).await.with_context(ctx)?);
        }
        Ok(env)
    }

    /// The Toxiproxy server; panics when the builder did not ask for one.
    pub fn toxiproxy(&self) -> &Toxiproxy {
        self.toxiproxy
            .as_ref()
            .expect("TestEnv::builder().toxiproxy() was not called")
    }

    /// Jaeger; panics when the builder did not ask for it.
    pub fn jaeger(&self) -> &Jaeger {
        self.jaeger
            .as_ref()
            .expect("TestEnv::builder().jaeger() was not called")
    }

    /// The plain-HTTP registry.
    pub fn plain_registry(&self) -> &Registry {
        &self.registries[0]
    }

    /// The TLS registry with basic auth.
    pub fn tls_registry(&self) -> &Registry {
        &self.registries[1]
    }

    /// Folder holding every process's log.
    pub fn log_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }

    /// Creates a namespace `<prefix>-<n>` in cluster `i`, unique within this test binary, so tests
    /// sharing an environment stay isolated.
    pub async fn namespace(&self, i: usize, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        create_namespace(&self.clusters[i], &name).await?;
        Ok(name)
    }

    /// Creates one namespace `<prefix>-<n>` in every cluster (same name everywhere).
    pub async fn namespace_everywhere(&self, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        for c in &self.clusters {
            create_namespace(c, &name).await?;
        }
        Ok(name)
    }

    /// Writes a kubeconfig of every cluster for `user` (group `system:masters`) into `dir` as
    /// `<cluster name>.yaml`: same cluster names as `write_kubeconfigs`, but the API servers (and
    /// their audit logs) see `user` rather than the shared admin.
    pub fn write_kubeconfigs_as(&self, dir: &Path, user: &str) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut out = Vec::new();
        for c in &self.clusters {
            let p = dir.join(format!("{}.yaml", c.name));
            std::fs::write(&p, c.kubeconfig_for(user, "system:masters")?)?;
            out.push(p);
        }
        Ok(out)
    }

    /// Writes every cluster's kubeconfig into `dir` as `<cluster name>.yaml`.
    pub fn write_kubeconfigs(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut out = Vec::new();
        for c in &self.clusters {
            let p = dir.join(format!("{}.yaml", c.name));
            std::fs::write(&p, &c.kubeconfig_yaml)?;
            out.push(p);
        }
        Ok(out)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep_data {
            eprintln!(
                "kimup-testenv: logs kept in {}",
                self.run_dir.join("logs").display()
            );
            return;
        }
        // Stop processes before removing their data directories.
        self.toxiproxy = None;
        self.jaeger = None;
        self.registries.clear();
        self.clusters.clear();
        self.etcd = None;
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Removes the run folders of test processes that exited more than two hours ago: shared
/// environments keep their data and logs for post-mortems (the whole of a suite run stays
/// readable), and would otherwise pile up run after run.
fn prune_dead_runs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<name>-<pid>-<n>`: the pid is the second field from the end.
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(2 * 3600));
        if let Some(pid) = pid
            && old
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn unique_name(prefix: &str) -> String {
    static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        NS_COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Creates a namespace in `cluster`.
pub async fn create_namespace(cluster: &Cluster, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client().await?);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// One environment for all the tests of a test binary, started on first use. It lives until the
/// binary exits, so its processes are reaped by PR_SET_PDEATHSIG, and its logs are kept under
/// `target/testenv/` for whoever needs to read why a test failed.
pub fn shared(init: fn() -> Builder) -> Result<&'static TestEnv> {
    static ENV: OnceLock<std::result::Result<TestEnv, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        // A runtime of its own: tests each run their own runtime, which die with the test; the
        // shared environment must outlive any single test.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let mut env = rt.block_on(init().start()).map_err(|e| format!("{e:#}"))?;
            env.keep_data = true;
            Ok(env)
        })
        .join()
        .unwrap_or_else(|_| Err("test environment start-up panicked".into()))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The cargo target directory (CARGO_TARGET_DIR or `<repo>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| binaries::repo_root().join("target"))
}

/// Loads every CustomResourceDefinition from the YAML files (multi-document) in `dir`.
pub fn load_crds(dir: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let mut crds = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            crds.push(
                serde_yaml::from_value(value)
                    .with_context(|| format!("parsing {}", f.display()))?,
            );
        }
    }
    Ok(crds)
}

use serde::Deserialize;
