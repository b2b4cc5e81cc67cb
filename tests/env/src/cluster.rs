//! Clusters: etcd and kube-apiserver processes on loopback, each API server a separate cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::binaries::Binaries;
use crate::certs::{Ca, signing_key};
use crate::process::{Process, free_port, wait_until};

/// One etcd serving every API server of an environment, each under its own key prefix.
pub struct Etcd {
    process: Process,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// How to start it again: program, arguments, log folder.
    launch: (PathBuf, Vec<String>, PathBuf),
}

impl Etcd {
    /// Starts etcd with its data in `dir` and waits until it answers /health.
    pub async fn start(bins: &Binaries, dir: &Path, log_dir: &Path) -> Result<Self> {
        let client = free_port()?;
        let peer = free_port()?;
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // Test data is thrown away, so skip the fsyncs that dominate etcd latency on CI disks.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let mut process = Process::spawn("etcd", &bins.etcd, &args, log_dir)?;
        wait_healthy(&url, &mut process).await?;
        Ok(Self {
            process,
            url,
            launch: (bins.etcd.clone(), args, log_dir.to_path_buf()),
        })
    }

    /// Kills etcd (SIGKILL), as a crash would; every API server over it loses its storage.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts etcd again with the same data and ports, and waits until it is healthy.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let (program, args, log_dir) = &self.launch;
        self.process = Process::spawn("etcd", program, args, log_dir)?;
        wait_healthy(&self.url, &mut self.process).await
    }

    /// The etcd process (for its pid and log).
    pub fn process(&self) -> &Process {
        &self.process
    }
}

async fn wait_healthy(url: &str, process: &mut Process) -> Result<()> {
    {
        let http = reqwest::Client::new();
        let health = format!("{url}/health");
        wait_until("etcd /health", Duration::from_secs(30), || {
            let http = http.clone();
            let health = health.clone();
            let running = process.check_running();
            async move {
                running?;
                let resp = http.get(&health).send().await?;
                Ok(resp.status().is_success())
            }
        })
        .await
    }
}

/// One kube-apiserver: a cluster, with its own CAs and an admin kubeconfig.
pub struct Cluster {
    /// Name used for the kubeconfig file and logs, e.g. `cluster-0`.
    pub name: String,
    /// API server URL, `https://127.0.0.1:PORT`.
    pub url: String,
    /// Kubeconfig file with inline certificates for the `system:masters` admin user.
    pub kubeconfig_path: PathBuf,
    /// Kubeconfig content.
    pub kubeconfig_yaml: String,
    /// The API server's audit log (JSON lines), when the environment asked for one.
    pub audit_log_path: Option<PathBuf>,
    /// Issues client certificates this API server trusts (per-user kubeconfigs).
    client_ca: Ca,
    /// CA of the API server's serving certificate, PEM.
    serving_ca_pem: String,
    process: Process,
    args: Vec<String>,
    program: PathBuf,
    log_dir: PathBuf,
    /// Certificates and keys of this API server (the ServiceAccount signing key among them).
    cert_dir: PathBuf,
    /// Its kube-controller-manager, when the environment asked for one.
    controller_manager: Option<Process>,
}

impl Cluster {
    /// Starts an API server on `etcd` under prefix `/<name>` and waits until /readyz is ok; with
    /// `audit`, it logs every write (metadata only) to `<log_dir>/audit-<name>.log`; `extra`
    /// flags are appended.
    pub async fn start(
        name: &str,
        bins: &Binaries,
        etcd: &Etcd,
        dir: &Path,
        log_dir: &Path,
        audit: Audit,
        extra: &[String],
    ) -> Result<Self> {
        let dir = dir.join(name);
        let cert_dir = dir.join("pki");
        std::fs::create_dir_all(&cert_dir)?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");

        let serving_ca = Ca::new(&format!("{name}-serving-ca"))?;
        let client_ca = Ca::new(&format!("{name}-client-ca"))?;
        let serving = serving_ca.serving("kube-apiserver")?;
        let admin = client_ca.client("admin", "system:masters")?;
        let (sa_key, sa_pub) = signing_key()?;
        let write = |file: &str, data: &str| -> Result<PathBuf> {
            let p = cert_dir.join(file);
            std::fs::write(&p, data)?;
            Ok(p)
        };
        let tls_cert = write("apiserver.crt", &serving.cert)?;
        let tls_key = write("apiserver.key", &serving.key)?;
        let client_ca_file = write("client-ca.crt", &client_ca.pem().cert)?;
        // kube-controller-manager publishes it as the kube-root-ca.crt ConfigMap.
        write("serving-ca.crt", &serving_ca.pem().cert)?;
        let sa_key_file = write("sa-signer.key", &sa_key)?;
        let sa_pub_file = write("sa-signer.pub", &sa_pub)?;

        let mut args = vec![
            "--allow-privileged=true".to_string(),
            "--authorization-mode=RBAC".to_string(),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--tls-cert-file={}", tls_cert.display()),
            format!("--tls-private-key-file={}", tls_key.display()),
            format!("--client-ca-file={}", client_ca_file.display()),
            "--disable-admission-plugins=ServiceAccount".to_string(),
            format!("--etcd-servers={}", etcd.url),
            format!("--etcd-prefix=/{name}"),
            format!("--service-account-issuer={url}/"),
            format!("--service-account-key-file={}", sa_pub_file.display()),
            format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            // Several API servers share one loopback address; the endpoint reconciler would make
            // them fight over the `kubernetes` Service endpoints.
            "--endpoint-reconciler-type=none".to_string(),
            "--v=1".to_string(),
        ];
        args.extend(extra.iter().cloned());
        let audit_log_path = if audit != Audit::Off {
            let policy = write(
                "audit-policy.yaml",
                if audit == Audit::Everything {
                    AUDIT_POLICY_ALL
                } else {
                    AUDIT_POLICY
                },
            )?;
            let path = log_dir.join(format!("audit-{name}.log"));
            args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", path.display()),
                "--audit-log-format=json".to_string(),
                // Blocking: the event is on disk when the request has been answered, so a test
                // that reads the log after its condition holds sees every write before it.
                "--audit-log-mode=blocking".to_string(),
            ]);
            Some(path)
        } else {
            None
        };

        let kubeconfig_yaml =
            kubeconfig(name, &url, &serving_ca.pem().cert, &admin.cert, &admin.key);
        let kubeconfig_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&kubeconfig_path, &kubeconfig_yaml)?;

        let process = Process::spawn(
            &format!("kube-apiserver-{name}"),
            &bins.kube_apiserver,
            &args,
            log_dir,
        )?;
        let mut cluster = Self {
            name: name.to_string(),
            url,
            kubeconfig_path,
            kubeconfig_yaml,
            audit_log_path,
            client_ca,
            serving_ca_pem: serving_ca.pem().cert,
            process,
            args,
            program: bins.kube_apiserver.clone(),
            log_dir: log_dir.to_path_buf(),
            cert_dir,
            controller_manager: None,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// A kubeconfig for user `user` in group `group` (a client certificate with CN = user, O =
    /// group), so the audit log's `user.username` names whoever used it.
    pub fn kubeconfig_for(&self, user: &str, group: &str) -> Result<String> {
        let pem = self.client_ca.client(user, group)?;
        Ok(kubeconfig(
            &self.name,
            &self.url,
            &self.serving_ca_pem,
            &pem.cert,
            &pem.key,
        ))
    }

    /// The audit events logged so far (empty without an audit log or before the first write).
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        let Some(path) = &self.audit_log_path else {
            bail!("{} was started without an audit log", self.name);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // A line being written as we read is cut; skip it, it will be whole on the next read.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<RawAuditEvent>(l).ok())
            .map(AuditEvent::from)
            .collect())
    }

    /// A new client for this cluster, bound to the calling runtime.
    pub async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::from_yaml(&self.kubeconfig_yaml)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Waits until /readyz answers ok (all post-start hooks, RBAC bootstrap included).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let name = self.name.clone();
        let log = self.process.log_path().to_path_buf();
        let process = &mut self.process;
        wait_until(
            &format!("kube-apiserver {name} /readyz"),
            Duration::from_secs(90),
            || {
                let client = client.clone();
                let running = process.check_running();
                async move {
                    running?;
                    let req = http_get("/readyz")?;
                    Ok(client.request_text(req).await.map(|t| t.trim() == "ok")?)
                }
            },
        )
        .await
        .with_context(|| format!("log: {}", log.display()))
    }

    /// Starts a kube-controller-manager for this API server running only the ServiceAccount
    /// token controller (it fills `kubernetes.io/service-account-token` Secrets, signing with
    /// the API server's key) and the root CA publisher (`kube-root-ca.crt` in every namespace).
    /// It authenticates with the admin kubeconfig and serves nothing itself.
    pub fn start_controller_manager(&mut self, bins: &Binaries) -> Result<()> {
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path.display()),
            "--controllers=serviceaccount-token-controller,root-ca-certificate-publisher-controller"
                .to_string(),
            format!(
                "--service-account-private-key-file={}",
                self.cert_dir.join("sa-signer.key").display()
            ),
            format!(
                "--root-ca-file={}",
                self.cert_dir.join("serving-ca.crt").display()
            ),
            "--use-service-account-credentials=false".to_string(),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
            "--v=1".to_string(),
        ];
        self.controller_manager = Some(Process::spawn(
            &format!("kube-controller-manager-{}", self.name),
            &bins.kube_controller_manager,
            &args,
            &self.log_dir,
        )?);
        Ok(())
    }

    /// Kills the API server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the API server again with the same flags, port and certificates.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = Process::spawn(
            &format!("kube-apiserver-{}", self.name),
            &self.program,
            &self.args,
            &self.log_dir,
        )?;
        self.wait_ready().await
    }

    /// The folder of this cluster's keys and certificates (`sa-signer.key`, `serving-ca.crt`, …).
    pub fn pki_dir(&self) -> PathBuf {
        self.cert_dir.clone()
    }

    /// The API server process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Applies CRDs (server-side) and waits until each is Established.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        for crd in crds {
            let name = crd
                .metadata
                .name
                .clone()
                .context("CRD without metadata.name")?;
            api.patch(
                &name,
                &PatchParams::apply("kimup-testenv").force(),
                &Patch::Apply(crd),
            )
            .await
            .with_context(|| format!("applying CRD {name} in {}", self.name))?;
        }
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let established = kube::runtime::wait::await_condition(
                api.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            match tokio::time::timeout(Duration::from_secs(30), established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("waiting for CRD {name} in {}: {e}", self.name),
                Err(_) => bail!("CRD {name} not established in {} after 30 s", self.name),
            }
        }
        Ok(())
    }
}

/// Audit policy of the test API servers: metadata of every write, nothing of reads (cheap, and
/// enough to tell who wrote what when).
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"#;

/// Audit policy that also logs reads (get, list, watch), metadata only, each request once (a
/// watch when it ends): what the benchmark counts API requests per sync from.
const AUDIT_POLICY_ALL: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
"#;

/// What an API server's audit log records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Audit {
    /// No audit log.
    #[default]
    Off,
    /// Writes only.
    Writes,
    /// Every request, reads included.
    Everything,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuditEvent {
    #[serde(default)]
    verb: String,
    #[serde(default)]
    user: RawUser,
    #[serde(default)]
    object_ref: Option<RawObjectRef>,
    #[serde(default)]
    request_received_timestamp: String,
    #[serde(default)]
    response_status: Option<RawStatus>,
}

#[derive(serde::Deserialize, Default)]
struct RawUser {
    #[serde(default)]
    username: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: u16,
}

/// One audited request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The authenticated user (the client certificate's CN).
    pub username: String,
    /// Resource, with its subresource when there is one: `images`, `images/status`, `leases`.
    pub resource: String,
    /// Namespace of the object, empty for cluster-scoped ones.
    pub namespace: String,
    /// Name of the object, empty for a create without a name yet.
    pub name: String,
    /// When the API server received it: RFC 3339 with microseconds in UTC (fixed width, so
    /// strings order as times do).
    pub received: String,
    /// HTTP status of the answer (0 when unknown).
    pub code: u16,
}

impl From<RawAuditEvent> for AuditEvent {
    fn from(r: RawAuditEvent) -> Self {
        let o = r.object_ref.unwrap_or_default();
        let resource = match o.subresource.filter(|s| !s.is_empty()) {
            Some(sub) => format!("{}/{sub}", o.resource),
            None => o.resource,
        };
        Self {
            verb: r.verb,
            username: r.user.username,
            resource,
            namespace: o.namespace.unwrap_or_default(),
            name: o.name.unwrap_or_default(),
            received: r.request_received_timestamp,
            code: r.response_status.map(|s| s.code).unwrap_or(0),
        }
    }
}

fn http_get(path: &str) -> Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

/// A kubeconfig with inline data, one cluster, one admin user, one context, all named `name`.
pub fn kubeconfig(name: &str, url: &str, ca: &str, cert: &str, key: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": url,
            "certificate-authority-data": B64.encode(ca),
        }}],
        "users": [{"name": name, "user": {
            "client-certificate-data": B64.encode(cert),
            "client-key-data": B64.encode(key),
        }}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}
