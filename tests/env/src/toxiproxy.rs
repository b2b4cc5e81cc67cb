//! Toxiproxy (Shopify's TCP fault injector) on loopback: proxies between kimup and a registry or
//! an API server, with toxics (latency, timeouts, resets, bandwidth, data limits) switched on and
//! off through its HTTP API.
//!
//! ```no_run
//! # async fn demo(env: &kimup_testenv::TestEnv) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use kimup_testenv::toxiproxy::{Toxic, Toxiproxy};
//! let toxiproxy = Toxiproxy::start(kimup_testenv::Binaries::get()?, &env.log_dir()).await?;
//! let proxy = toxiproxy.proxy("registry", &env.plain_registry().host).await?;
//! // Point the client at proxy.listen instead of the registry, then break the link:
//! let reset = proxy.add_toxic(&Toxic::reset_peer(Duration::ZERO)).await?;
//! proxy.remove_toxic(&reset).await?;
//! proxy.add_toxic(&Toxic::latency(Duration::from_millis(500)).upstream()).await?;
//! proxy.set_enabled(false).await?; // connections refused until enabled again
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::binaries::Binaries;
use crate::process::{Process, free_port, wait_until};

/// A running Toxiproxy server; killed on drop (its proxies with it).
pub struct Toxiproxy {
    /// Base URL of its HTTP API, `http://127.0.0.1:PORT`.
    pub api: String,
    process: Process,
}

/// Which direction of a connection a toxic acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (requests).
    Upstream,
    /// Server to client (responses); Toxiproxy's default.
    Downstream,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }
}

/// What a toxic does, with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum ToxicKind {
    /// Delays all data by `latency` ± `jitter`.
    Latency {
        /// Added delay.
        latency: Duration,
        /// Random variation around the delay.
        jitter: Duration,
    },
    /// Lets no data through and closes the connection after `timeout` (never when zero: data is
    /// held until the toxic is removed).
    Timeout {
        /// When to close the connection; zero holds it open.
        timeout: Duration,
    },
    /// Resets the connection (TCP RST) at once or after `timeout`.
    ResetPeer {
        /// Delay before the reset.
        timeout: Duration,
    },
    /// Caps the rate at `rate_kb_per_s` kilobytes per second.
    Bandwidth {
        /// Rate in KB/s.
        rate_kb_per_s: u64,
    },
    /// Closes the connection once `bytes` have gone through.
    LimitData {
        /// Bytes let through before the close.
        bytes: u64,
    },
}

impl ToxicKind {
    fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    fn attributes(&self) -> serde_json::Value {
        let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self {
            ToxicKind::Latency { latency, jitter } => {
                serde_json::json!({"latency": ms(latency), "jitter": ms(jitter)})
            }
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => {
                serde_json::json!({"timeout": ms(timeout)})
            }
            ToxicKind::Bandwidth { rate_kb_per_s } => serde_json::json!({"rate": rate_kb_per_s}),
            ToxicKind::LimitData { bytes } => serde_json::json!({"bytes": bytes}),
        }
    }
}

/// A toxic to add to a proxy: a kind, a direction, a probability and a name.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    /// What it does.
    pub kind: ToxicKind,
    /// Which direction it acts on.
    pub direction: Direction,
    /// Probability (0.0 to 1.0) that a connection gets it.
    pub toxicity: f32,
    /// Its name; Toxiproxy's `<type>_<direction>` when not set.
    pub name: Option<String>,
}

impl Toxic {
    /// A toxic of `kind` on the downstream direction, for every connection.
    pub fn new(kind: ToxicKind) -> Self {
        Self {
            kind,
            direction: Direction::Downstream,
            toxicity: 1.0,
            name: None,
        }
    }

    /// Delays data by `latency`.
    pub fn latency(latency: Duration) -> Self {
        Self::new(ToxicKind::Latency {
            latency,
            jitter: Duration::ZERO,
        })
    }

    /// Holds data, closing the connection after `timeout` (zero: never).
    pub fn timeout(timeout: Duration) -> Self {
        Self::new(ToxicKind::Timeout { timeout })
    }

    /// Resets connections after `timeout` (zero: at once).
    pub fn reset_peer(timeout: Duration) -> Self {
        Self::new(ToxicKind::ResetPeer { timeout })
    }

    /// Caps the rate in KB/s.
    pub fn bandwidth(rate_kb_per_s: u64) -> Self {
        Self::new(ToxicKind::Bandwidth { rate_kb_per_s })
    }

    /// Closes connections after `bytes`.
    pub fn limit_data(bytes: u64) -> Self {
        Self::new(ToxicKind::LimitData { bytes })
    }

    /// Acts on requests (client to server) instead of responses.
    pub fn upstream(mut self) -> Self {
        self.direction = Direction::Upstream;
        self
    }

    /// Applies to a share of connections only.
    pub fn toxicity(mut self, toxicity: f32) -> Self {
        self.toxicity = toxicity;
        self
    }

    /// Names the toxic (two toxics of one type and direction need distinct names).
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The name Toxiproxy knows it by.
    pub fn effective_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}_{}", self.kind.type_name(), self.direction.as_str()))
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.effective_name(),
            "type": self.kind.type_name(),
            "stream": self.direction.as_str(),
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        })
    }
}

/// One proxy: listens on `listen`, forwards to `upstream`. Holds no connection to the server,
/// so it may be used from any runtime.
#[derive(Clone, Debug)]
pub struct Proxy {
    /// Proxy name (unique per server).
    pub name: String,
    /// `127.0.0.1:PORT` clients connect to.
    pub listen: String,
    /// `host:port` it forwards to.
    pub upstream: String,
    api: String,
}

#[derive(Deserialize)]
struct ProxyJson {
    name: String,
    listen: String,
    upstream: String,
    enabled: bool,
}

#[derive(Deserialize)]
struct ToxicJson {
    name: String,
}

/// A client for one request: no pooled connection outlives it, so calls work from whichever
/// runtime the caller is on (tests each run their own, the shared environment another).
fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the Toxiproxy API client")
}

/// Sends `req`, failing with Toxiproxy's own message unless the status is a success.
async fn call(what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("Toxiproxy API: {what}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("Toxiproxy API: {what} answered {status}: {}", body.trim());
    }
    Ok(resp)
}

impl Toxiproxy {
    /// Starts a server on a free loopback port, its log in `log_dir/toxiproxy.log`, and waits
    /// until its API answers.
    pub async fn start(bins: &Binaries, log_dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let args = vec![
            "-host=127.0.0.1".to_string(),
            format!("-port={port}"),
            // Fixed seed: a toxicity below 1.0 then picks the same connections run after run.
            "-seed=1".to_string(),
        ];
        let mut process = Process::spawn("toxiproxy", &bins.toxiproxy, &args, log_dir)?;
        let api = format!("http://127.0.0.1:{port}");
        let version = format!("{api}/version");
        wait_until("toxiproxy /version", Duration::from_secs(30), || {
            let running = process.check_running();
            let version = version.clone();
            async move {
                running?;
                Ok(http()?.get(&version).send().await?.status().is_success())
            }
        })
        .await?;
        Ok(Self { api, process })
    }

    /// The server process (its pid and log).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Creates a proxy named `name` listening on a free loopback port and forwarding to
    /// `upstream` (`host:port`).
    pub async fn proxy(&self, name: &str, upstream: &str) -> Result<Proxy> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let body = serde_json::json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true});
        let created: ProxyJson = call(
            &format!("create proxy {name}"),
            http()?.post(format!("{}/proxies", self.api)).json(&body),
        )
        .await?
        .json()
        .await
        .context("Toxiproxy API: reading the created proxy")?;
        Ok(Proxy {
            name: created.name,
            listen: created.listen,
            upstream: created.upstream,
            api: self.api.clone(),
        })
    }

    /// Enables every proxy and removes every toxic.
    pub async fn reset(&self) -> Result<()> {
        call(
            "reset",
            http()?
                .post(format!("{}/reset", self.api))
                .json(&serde_json::json!({})),
        )
        .await?;
        Ok(())
    }
}

impl Proxy {
    fn url(&self) -> String {
        format!("{}/proxies/{}", self.api, self.name)
    }

    /// Adds `toxic`, returning the name to remove it by.
    pub async fn add_toxic(&self, toxic: &Toxic) -> Result<String> {
        let name = toxic.effective_name();
        let created: ToxicJson = call(
            &format!("add toxic {name} to {}", self.name),
            http()?
                .post(format!("{}/toxics", self.url()))
                .json(&toxic.body()),
        )
        .await?
        .json()
        .await
        .context("Toxiproxy API: reading the created toxic")?;
        Ok(created.name)
    }

    /// Removes the toxic named `name`.
    pub async fn remove_toxic(&self, name: &str) -> Result<()> {
        call(
            &format!("remove toxic {name} from {}", self.name),
            http()?.delete(format!("{}/toxics/{name}", self.url())),
        )
        .await?;
        Ok(())
    }

    /// Names of the active toxics.
    pub async fn toxics(&self) -> Result<Vec<String>> {
        let list: Vec<ToxicJson> = call(
            &format!("list toxics of {}", self.name),
            http()?.get(format!("{}/toxics", self.url())),
        )
        .await?
        .json()
        .await
        .context("Toxiproxy API: reading the toxic list")?;
        Ok(list.into_iter().map(|t| t.name).collect())
    }

    /// Removes every active toxic.
    pub async fn clear_toxics(&self) -> Result<()> {
        for name in self.toxics().await? {
            self.remove_toxic(&name).await?;
        }
        Ok(())
    }

    /// Takes the proxy down (`false`: it closes its connections and refuses new ones) or brings
    /// it back up on the same address.
    pub async fn set_enabled(&self, enabled: bool) -> Result<()> {
        let updated: ProxyJson = call(
            &format!("set {} enabled={enabled}", self.name),
            http()?
                .post(self.url())
                .json(&serde_json::json!({"enabled": enabled})),
        )
        .await?
        .json()
        .await
        .context("Toxiproxy API: reading the updated proxy")?;
        if updated.enabled != enabled {
            bail!(
                "Toxiproxy API: proxy {} still has enabled={}",
                self.name,
                updated.enabled
            );
        }
        Ok(())
    }

    /// Whether the proxy is enabled, as the server reports it.
    pub async fn enabled(&self) -> Result<bool> {
        let p: ProxyJson = call(&format!("show {}", self.name), http()?.get(self.url()))
            .await?
            .json()
            .await
            .context("Toxiproxy API: reading the proxy")?;
        Ok(p.enabled)
    }

    /// Deletes the proxy (its listener closes).
    pub async fn delete(&self) -> Result<()> {
        call(&format!("delete {}", self.name), http()?.delete(self.url())).await?;
        Ok(())
    }

    /// `kubeconfig_yaml` with every cluster's server pointed at this proxy (`https://listen`),
    /// for a kube client whose traffic to an API server goes through the proxy. The serving
    /// certificates of the test API servers name 127.0.0.1, so TLS still verifies.
    pub fn kubeconfig(&self, kubeconfig_yaml: &str) -> Result<String> {
        let mut kc: serde_yaml::Value =
            serde_yaml::from_str(kubeconfig_yaml).context("parsing the kubeconfig")?;
        let clusters = kc
            .get_mut("clusters")
            .and_then(|c| c.as_sequence_mut())
            .context("the kubeconfig has no clusters list")?;
        for c in clusters {
            let cluster = c
                .get_mut("cluster")
                .and_then(|c| c.as_mapping_mut())
                .context("a kubeconfig cluster entry has no cluster field")?;
            cluster.insert("server".into(), format!("https://{}", self.listen).into());
        }
        Ok(serde_yaml::to_string(&kc)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxic_bodies_follow_the_api() {
        let t = Toxic::latency(Duration::from_millis(250)).upstream();
        assert_eq!(
            t.body(),
            serde_json::json!({
                "name": "latency_upstream", "type": "latency", "stream": "upstream",
                "toxicity": 1.0, "attributes": {"latency": 250, "jitter": 0}
            })
        );
        let t = Toxic::reset_peer(Duration::ZERO).named("rst").toxicity(0.5);
        assert_eq!(t.body()["name"], "rst");
        assert_eq!(t.body()["type"], "reset_peer");
        assert_eq!(t.body()["attributes"], serde_json::json!({"timeout": 0}));
        assert_eq!(
            Toxic::limit_data(10).body()["attributes"],
            serde_json::json!({"bytes": 10})
        );
        assert_eq!(
            Toxic::bandwidth(4).body()["attributes"],
            serde_json::json!({"rate": 4})
        );
        assert_eq!(
            Toxic::timeout(Duration::from_secs(2)).effective_name(),
            "timeout_downstream"
        );
    }
}
