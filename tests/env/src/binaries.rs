//! Locating the control-plane binaries, building them through the project's script when missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Paths of the binaries the environment runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// kube-apiserver built from the pinned k8s.io/kubernetes module.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager, from the same module as kube-apiserver.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler, from the same module as kube-apiserver.
    pub kube_scheduler: PathBuf,
    /// kwok (simulated nodes and pods) built from its Go module.
    pub kwok: PathBuf,
    /// kwok's Stage files (node and pod lifecycles), copied from its module.
    pub kwok_stages: PathBuf,
    /// etcd built from the pinned go.etcd.io/etcd/server/v3 module.
    pub etcd: PathBuf,
    /// Debian's docker-registry (distribution).
    pub registry: PathBuf,
    /// OpenTelemetry Collector (OTLP receiver, file exporter) built from its Go modules.
    pub otelcol: PathBuf,
    /// Helm 3 CLI built from its Go module.
    pub helm: PathBuf,
    /// Toxiproxy server (TCP fault injection) built from its Go module.
    pub toxiproxy: PathBuf,
    /// crane (go-containerregistry), which assembles and pushes the container image.
    pub crane: PathBuf,
    /// Jaeger all-in-one (OTLP receiver, query API) built from its Go module, or the binary
    /// `KIMUP_JAEGER` names (a Jaeger release, whose UI is embedded).
    pub jaeger: PathBuf,
    /// Prometheus's PromQL parser behind tests/env/tools/promql/main.go.
    pub promql_check: PathBuf,
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Variable naming a Jaeger binary to run instead of the one built from the Go module: a release
/// binary (`jaeger-2.x-linux-amd64.tar.gz`) embeds the UI, which the module cannot build.
pub const JAEGER_OVERRIDE: &str = "KIMUP_JAEGER";

/// The Jaeger binary `KIMUP_JAEGER` names, if set.
fn jaeger_override() -> Option<PathBuf> {
    std::env::var_os(JAEGER_OVERRIDE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where built binaries are cached, keyed by version below it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KIMUP_TESTENV_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kimup-testenv")
}

impl Binaries {
    /// Finds the binaries; if any is missing, runs `scripts/testenv-binaries.sh` once to build or
    /// install it, and fails with the script's message if that does not produce them.
    pub fn get() -> Result<&'static Binaries> {
        static BINS: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
        BINS.get_or_init(|| Self::locate_or_build().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn locate() -> Option<Binaries> {
        let cache = cache_dir();
        let bins = Binaries {
            kube_apiserver: cache.join("kube-apiserver"),
            kube_controller_manager: cache.join("kube-controller-manager"),
            kube_scheduler: cache.join("kube-scheduler"),
            kwok: cache.join("kwok"),
            kwok_stages: cache.join("kwok-stages"),
            etcd: cache.join("etcd"),
            registry: which("docker-registry")?,
            otelcol: cache.join("otelcol"),
            helm: cache.join("helm"),
            toxiproxy: cache.join("toxiproxy"),
            crane: cache.join("crane"),
            jaeger: jaeger_override().unwrap_or_else(|| cache.join("jaeger")),
            promql_check: cache.join("promql-check"),
        };
        let built = [
            &bins.kube_apiserver,
            &bins.kube_controller_manager,
            &bins.etcd,
            &bins.otelcol,
            &bins.helm,
            &bins.toxiproxy,
            &bins.crane,
            &bins.jaeger,
            &bins.promql_check,
            &bins.kube_controller_manager,
            &bins.kube_scheduler,
            &bins.kwok,
            &bins.kwok_stages,
        ];
        (built.iter().all(|p| p.exists()) && python().is_ok()).then_some(bins)
    }

    fn locate_or_build() -> Result<Binaries> {
        if let Some(path) = jaeger_override()
            && !path.is_file()
        {
            bail!(
                "{JAEGER_OVERRIDE}={} is not a file: point it at the `jaeger` binary of a Jaeger \
                 release, or unset it to use the one built from the Go module",
                path.display()
            );
        }
        if let Some(bins) = Self::locate() {
            return Ok(bins);
        }
        let script = repo_root().join("scripts/testenv-binaries.sh");
        eprintln!(
            "kimup-testenv: control-plane binaries missing, running {}",
            script.display()
        );
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!(
                "{} failed ({status}); the test control plane needs kube-apiserver and etcd \
                 (built with Go from the module proxy) and Debian's docker-registry",
                script.display()
            );
        }
        Self::locate().with_context(|| {
            format!(
                "{} succeeded but kube-apiserver/kube-controller-manager/kube-scheduler/kwok/etcd/otelcol/helm/toxiproxy/crane/jaeger/promql-check are not in {} or \
                 docker-registry is not on PATH",
                script.display(),
                cache_dir().display()
            )
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A Python interpreter that can import aiosmtpd (the SMTP server of the alert tests).
pub fn python() -> Result<PathBuf> {
    for candidate in ["python3", "python"] {
        if let Some(p) = which(candidate) {
            let ok = Command::new(&p)
                .args(["-c", "import aiosmtpd"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(p);
            }
        }
    }
    bail!(
        "no python3 with aiosmtpd found; run scripts/testenv-binaries.sh (it pip-installs aiosmtpd)"
    )
}
