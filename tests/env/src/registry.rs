//! OCI registries on loopback (Debian's docker-registry) and a helper that pushes real images.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::binaries::Binaries;
use crate::certs::Ca;
use crate::process::{Process, free_port, wait_until};

/// Username/password of the TLS registry's htpasswd.
#[derive(Clone, Debug)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`, the host part of image references.
    pub host: String,
    /// Credentials when htpasswd auth is on.
    pub auth: Option<BasicAuth>,
    /// A second htpasswd user, for tests where two credential sets reach one repository.
    pub second_auth: Option<BasicAuth>,
    /// PEM of the CA that signed the serving certificate when TLS is on.
    pub ca_pem: Option<String>,
    process: Process,
    /// How to start it again: process name, program, arguments, log folder.
    launch: (String, PathBuf, Vec<String>, PathBuf),
}

impl Registry {
    /// Starts a registry over plain HTTP, without auth.
    pub async fn start_plain(bins: &Binaries, dir: &Path, log_dir: &Path) -> Result<Self> {
        Self::start("registry-plain", bins, dir, log_dir, None, None).await
    }

    /// Starts a plain-HTTP registry that sends distribution notifications of every push to `url`
    /// with `Authorization: Bearer <token>`.
    pub async fn start_notifying(
        name: &str,
        bins: &Binaries,
        dir: &Path,
        log_dir: &Path,
        url: &str,
        token: &str,
    ) -> Result<Self> {
        Self::start_notifying_all(name, bins, dir, log_dir, &[url.to_string()], token).await
    }

    /// As [`Registry::start_notifying`], with one notification endpoint per URL (every replica
    /// of a sharded kimup hears every push and acts on the Images of the shards it holds).
    pub async fn start_notifying_all(
        name: &str,
        bins: &Binaries,
        dir: &Path,
        log_dir: &Path,
        urls: &[String],
        token: &str,
    ) -> Result<Self> {
        let endpoints: Vec<serde_json::Value> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                serde_json::json!({
                    "name": format!("kimup-{i}"),
                    "url": url,
                    "headers": {"Authorization": [format!("Bearer {token}")]},
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "1s",
                })
            })
            .collect();
        let notifications = serde_json::json!({ "endpoints": endpoints });
        Self::start(name, bins, dir, log_dir, None, Some(notifications)).await
    }

    /// Starts a registry over TLS (certificate from a fresh CA) with htpasswd basic auth.
    pub async fn start_tls(
        bins: &Binaries,
        dir: &Path,
        log_dir: &Path,
        auth: BasicAuth,
    ) -> Result<Self> {
        Self::start("registry-tls", bins, dir, log_dir, Some(auth), None).await
    }

    async fn start(
        name: &str,
        bins: &Binaries,
        dir: &Path,
        log_dir: &Path,
        auth: Option<BasicAuth>,
        notifications: Option<serde_json::Value>,
    ) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = serde_json::json!({
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": false}},
            "storage": {
                "filesystem": {"rootdirectory": dir.join("storage")},
                "delete": {"enabled": true},
                "maintenance": {"uploadpurging": {"enabled": false}},
            },
            "http": {"addr": host, "secret": "kimup-testenv-secret"},
        });
        if let Some(n) = notifications {
            config["notifications"] = n;
        }
        let mut ca_pem = None;
        if let Some(auth) = &auth {
            let ca = Ca::new(&format!("{name}-ca"))?;
            let serving = ca.serving("registry")?;
            let cert = dir.join("registry.crt");
            let key = dir.join("registry.key");
            std::fs::write(&cert, &serving.cert)?;
            std::fs::write(&key, &serving.key)?;
            let htpasswd = dir.join("htpasswd");
            let hash = bcrypt::hash(&auth.password, 5)?;
            let second = second_user(auth);
            let hash2 = bcrypt::hash(&second.password, 5)?;
            std::fs::write(
                &htpasswd,
                format!("{}:{hash}\n{}:{hash2}\n", auth.username, second.username),
            )?;
            config["http"]["tls"] = serde_json::json!({"certificate": cert, "key": key});
            config["auth"] =
                serde_json::json!({"htpasswd": {"realm": "kimup-test", "path": htpasswd}});
            ca_pem = Some(ca.pem().cert);
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
        let launch = (
            name.to_string(),
            bins.registry.clone(),
            vec!["serve".to_string(), config_path.display().to_string()],
            log_dir.to_path_buf(),
        );
        let mut process = Process::spawn(&launch.0, &launch.1, &launch.2, &launch.3)?;
        wait_serving(name, &host, ca_pem.as_deref(), &mut process).await?;
        let second_auth = auth.as_ref().map(second_user);
        Ok(Self {
            host,
            auth,
            second_auth,
            ca_pem,
            process,
            launch,
        })
    }

    /// Kills the registry (SIGKILL), as a crash would: its port refuses connections.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the registry again on the same port, with the same storage and configuration.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let (name, program, args, log_dir) = &self.launch;
        self.process = Process::spawn(name, program, args, log_dir)?;
        wait_serving(name, &self.host, self.ca_pem.as_deref(), &mut self.process).await
    }
}

/// Waits until the registry at `host` answers /v2/ (401 counts: up with auth on).
async fn wait_serving(
    name: &str,
    host: &str,
    ca_pem: Option<&str>,
    process: &mut Process,
) -> Result<()> {
    {
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let http = http_client(ca_pem)?;
        let url = format!("{scheme}://{host}/v2/");
        wait_until(&format!("{name} /v2/"), Duration::from_secs(30), || {
            let http = http.clone();
            let url = url.clone();
            let running = process.check_running();
            async move {
                running?;
                let status = http.get(&url).send().await?.status();
                // 401 means up with auth on.
                Ok(status.is_success() || status.as_u16() == 401)
            }
        })
        .await
    }
}

impl Registry {
    /// Whether this registry serves TLS.
    pub fn is_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// `http://host` or `https://host`.
    pub fn base_url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// The registry process (its log is the access log).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Path of the registry log, which includes one access-log line per request.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// An oci-client configured for this registry (TLS trust, protocol).
    pub fn oci_client(&self) -> Result<Client> {
        let mut config = ClientConfig {
            protocol: if self.is_tls() {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            ..Default::default()
        };
        if let Some(pem) = &self.ca_pem {
            config
                .extra_root_certificates
                .push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.as_bytes().to_vec(),
                });
        }
        Ok(Client::try_from(config)?)
    }

    /// The registry's own credentials for oci-client.
    pub fn registry_auth(&self) -> RegistryAuth {
        match &self.auth {
            Some(a) => RegistryAuth::Basic(a.username.clone(), a.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Pushes a small real image (gzip tar layer + config + manifest) under each tag. Every tag
    /// gets its own config (the tag is recorded in it), hence its own digest, so that deleting or
    /// moving one tag never touches the others.
    pub async fn push_tags(&self, repository: &str, tags: &[&str]) -> Result<()> {
        for tag in tags {
            self.push_image(repository, tag, "").await?;
        }
        Ok(())
    }

    /// Pushes an image under `tag`; a different `salt` gives a different digest for the same tag.
    /// Returns the manifest digest.
    pub async fn push_image(&self, repository: &str, tag: &str, salt: &str) -> Result<String> {
        let client = self.oci_client()?;
        let auth = self.registry_auth();
        let reference: Reference = format!("{}/{repository}:{tag}", self.host)
            .parse()
            .with_context(|| format!("reference {repository}:{tag}"))?;
        let (layer_gz, diff_id) = layer(&format!("{repository}:{tag}{salt}"))?;
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"kimup.test/tag": tag, "kimup.test/salt": salt}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        let layers = vec![ImageLayer::oci_v1_gzip(layer_gz, None)];
        let config = Config::oci_v1(serde_json::to_vec(&config)?, None);
        client
            .push(&reference, &layers, config, &auth, None)
            .await
            .with_context(|| format!("pushing {reference}"))?;
        self.digest(repository, tag).await
    }

    /// Pushes an image under `tag` and returns as soon as the registry accepted its manifest
    /// (the moment a push notification is due), without reading the digest back.
    pub async fn push_only(&self, repository: &str, tag: &str) -> Result<()> {
        let client = self.oci_client()?;
        let reference: Reference = format!("{}/{repository}:{tag}", self.host)
            .parse()
            .with_context(|| format!("reference {repository}:{tag}"))?;
        let (layer_gz, diff_id) = layer(&format!("{repository}:{tag}"))?;
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"kimup.test/tag": tag}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        let layers = vec![ImageLayer::oci_v1_gzip(layer_gz, None)];
        let config = Config::oci_v1(serde_json::to_vec(&config)?, None);
        client
            .push(&reference, &layers, config, &self.registry_auth(), None)
            .await
            .with_context(|| format!("pushing {reference}"))?;
        Ok(())
    }

    /// Moves `tag` to a new digest (as a rebuilt mutable tag would), returning the new digest.
    pub async fn move_tag(&self, repository: &str, tag: &str) -> Result<String> {
        let salt = format!(
            "-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        self.push_image(repository, tag, &salt).await
    }

    /// The manifest digest `tag` points to.
    pub async fn digest(&self, repository: &str, tag: &str) -> Result<String> {
        let client = self.oci_client()?;
        let reference: Reference = format!("{}/{repository}:{tag}", self.host).parse()?;
        Ok(client
            .fetch_manifest_digest(&reference, &self.registry_auth())
            .await?)
    }

    /// Deletes `tag` by deleting the manifest it points to (distribution 2.x cannot untag).
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        let digest = self.digest(repository, tag).await?;
        let http = http_client(self.ca_pem.as_deref())?;
        let mut req = http.delete(format!(
            "{}/v2/{repository}/manifests/{digest}",
            self.base_url()
        ));
        if let Some(a) = &self.auth {
            req = req.basic_auth(&a.username, Some(&a.password));
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("deleting {repository}:{tag} ({digest}): {}", resp.status());
        }
        Ok(())
    }

    /// Number of tag-list requests (`GET /v2/<repo>/tags/list`) in the access log so far.
    pub fn tag_list_requests(&self) -> Result<usize> {
        self.tag_list_requests_for("")
    }

    /// Number of successful tag-list requests for repositories starting with `prefix`, read from
    /// the registry's access log (one line per request, written by the registry itself).
    pub fn tag_list_requests_for(&self, prefix: &str) -> Result<usize> {
        let log = std::fs::read_to_string(self.log_path())?;
        let needle = format!("\"GET /v2/{prefix}");
        Ok(log
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("/tags/list") && l.contains("\" 200 "))
            .count())
    }
}

fn second_user(primary: &BasicAuth) -> BasicAuth {
    BasicAuth {
        username: format!("{}-reader", primary.username),
        password: format!("{}-2", primary.password),
    }
}

/// A reqwest client trusting `ca_pem` in addition to the platform roots.
pub fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        b = b.tls_certs_merge(vec![reqwest::Certificate::from_pem(pem.as_bytes())?]);
    }
    Ok(b.build()?)
}

/// A gzip tar with one small file; returns the gzip bytes and the diff id of the tar.
fn layer(content: &str) -> Result<(Vec<u8>, String)> {
    let mut tar = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar);
        let data = format!("kimup test image {content}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, "kimup.txt", data.as_bytes())?;
        builder.finish()?;
    }
    let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    Ok((gz.finish()?, diff_id))
}
