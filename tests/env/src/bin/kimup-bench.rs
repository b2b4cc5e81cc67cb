//! Benchmark of kimup at scale: M clusters, N Images over K repositories, kimup (one replica, or
//! several sharing the work through `--shards`) run as separate processes against real API
//! servers and a real registry. Prints, as JSON:
//!
//! - the registry's own count of tag listings (the shared tag cache: one per repository);
//! - convergence time, syncs per second, CPU per sync;
//! - memory: peak RSS with the Images, peak RSS of the same kimup serving the same clusters with
//!   no Image at all, and bytes per Image = (peak with N Images - peak with none) / N;
//! - with `--audit`, API requests per sync (reads and writes), counted from the API servers'
//!   audit logs of kimup's own user, and writes per unchanged sync over a steady period;
//! - with `--webhook P`: P pushes to a repository that a Deployment follows in every cluster,
//!   announced by the registry's own notifications to kimup's `/webhooks/distribution`, and the
//!   time from each push to the last cluster's Deployment running the tag, as seen by watch
//!   events on the Deployments: p50/p95/p99, while kimup serves the N other Images;
//! - with `--compare`, the same run again with the tag cache off, and the ratios.
//!
//! cargo build --release && cargo run -p kimup-testenv --bin kimup-bench -- --clusters 3 --images 10000 --repos 50

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kimup_testenv::process::{Process, free_port};
use kimup_testenv::{Binaries, Registry, TestEnv, target_dir};
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use serde_json::json;

struct Args {
    clusters: usize,
    images: usize,
    repos: usize,
    tags: usize,
    cache_ttl: u64,
    json: bool,
    kimup: PathBuf,
    compare: bool,
    webhook: usize,
    cron: String,
    audit: bool,
    steady: u64,
    replicas: usize,
    shards: usize,
    vars: Vec<(String, String)>,
    concurrency: u16,
}

fn args() -> Result<Args> {
    let release = target_dir().join("release/kimup");
    let mut a = Args {
        clusters: 3,
        images: 300,
        repos: 10,
        tags: 5,
        cache_ttl: 600,
        json: false,
        kimup: if release.exists() {
            release
        } else {
            target_dir().join("debug/kimup")
        },
        compare: false,
        webhook: 0,
        cron: "@hourly".into(),
        audit: false,
        steady: 0,
        replicas: 1,
        shards: 0,
        vars: Vec::new(),
        concurrency: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--clusters" => a.clusters = value("--clusters")?.parse()?,
            "--images" => a.images = value("--images")?.parse()?,
            "--repos" => a.repos = value("--repos")?.parse()?,
            "--tags" => a.tags = value("--tags")?.parse()?,
            "--cache-ttl" => a.cache_ttl = value("--cache-ttl")?.parse()?,
            "--webhook" => a.webhook = value("--webhook")?.parse()?,
            "--cron" => a.cron = value("--cron")?,
            "--steady" => a.steady = value("--steady")?.parse()?,
            "--replicas" => a.replicas = value("--replicas")?.parse()?,
            "--shards" => a.shards = value("--shards")?.parse()?,
            "--concurrency" => a.concurrency = value("--concurrency")?.parse()?,
            "--kimup" => a.kimup = PathBuf::from(value("--kimup")?),
            "--env" => {
                let kv = value("--env")?;
                let (k, v) = kv.split_once('=').context("--env NAME=VALUE")?;
                a.vars.push((k.to_string(), v.to_string()));
            }
            "--compare" => a.compare = true,
            "--audit" => a.audit = true,
            "--json" => a.json = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.clusters == 0 || a.images == 0 || a.repos == 0 || a.repos > a.images {
        bail!("need clusters >= 1, images >= repos >= 1");
    }
    if a.replicas == 0 || (a.replicas > 1 && a.shards == 0) {
        bail!("--replicas N > 1 needs --shards S (replicas share the work by shard)");
    }
    if !a.kimup.exists() {
        bail!(
            "{} not found: cargo build --release first",
            a.kimup.display()
        );
    }
    Ok(a)
}

/// What one replica cost.
#[derive(Debug, Clone, serde::Serialize)]
struct ReplicaCost {
    cpu_seconds: f64,
    peak_rss_bytes: u64,
    rss_after_bytes: u64,
    rss_anon_after_bytes: u64,
    rss_file_after_bytes: u64,
    syncs: f64,
}

#[derive(Debug, Clone, Default)]
struct Run {
    tag_requests: usize,
    converge_seconds: f64,
    replicas: Vec<ReplicaCost>,
    idle_peak_rss_bytes: u64,
    api: Option<serde_json::Value>,
    steady: Option<serde_json::Value>,
    webhook: Option<serde_json::Value>,
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// A `/proc/<pid>/status` field in bytes (VmHWM: peak RSS, VmRSS: RSS now).
fn proc_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| field.to_string())?;
    let kb: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kb * 1024)
}

/// Sum of a metric family on a kimup's /metrics (0 when absent).
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> Result<f64> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn metric_all(http: &reqwest::Client, ports: &[u16], name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for p in ports {
        sum += metric(http, *p, name).await?;
    }
    Ok(sum)
}

/// A kimup replica of the benchmark.
struct Replica {
    process: Process,
    port: u16,
    user: String,
}

/// Token of `/webhooks/distribution`.
const TOKEN: &str = "bench-webhook-token-0123456789";

fn spawn_replica(
    a: &Args,
    env: &TestEnv,
    registries: &[String],
    i: usize,
    port: u16,
    ttl: &str,
    sharded: bool,
) -> Result<Replica> {
    let user = format!("kimup-bench-{i}");
    let dir = env.run_dir.join(format!("kubeconfigs-{user}"));
    let files = env.write_kubeconfigs_as(&dir, &user)?;
    let mut args = vec![
        "--log-level=warn".into(),
        "run".into(),
        format!("--kubeconfig-dir={}", dir.display()),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--tag-cache-ttl={ttl}"),
        format!("--concurrency={}", a.concurrency),
        "--registry-concurrency=16".into(),
    ];
    args.extend(
        registries
            .iter()
            .map(|h| format!("--insecure-registry={h}")),
    );
    if sharded && a.shards > 0 {
        args.extend([
            "--leader-elect".into(),
            format!("--shards={}", a.shards),
            format!("--lease-kubeconfig={}", files[0].display()),
            "--lease-namespace=default".into(),
            // kimup's defaults (client-go's): under the load of 10,000 first syncs, the API
            // servers answer a lease renewal in seconds, and a shorter lease flaps.
            "--lease-duration=15s".into(),
            "--renew-deadline=10s".into(),
            "--retry-period=2s".into(),
        ]);
    }
    let mut vars = vec![
        ("POD_NAME".into(), user.clone()),
        ("KIMUP_WEBHOOK_SECRET_DISTRIBUTION".into(), TOKEN.into()),
    ];
    vars.extend(a.vars.iter().cloned());
    let process = Process::spawn_with_env(&user, &a.kimup, &args, &vars, &env.log_dir())?;
    Ok(Replica {
        process,
        port,
        user,
    })
}

/// Waits until a kimup reports every member cluster up in `/clusters`.
async fn wait_clusters_up(http: &reqwest::Client, r: &mut Replica, clusters: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        r.process.check_running()?;
        if let Ok(resp) = http
            .get(format!("http://127.0.0.1:{}/clusters", r.port))
            .send()
            .await
            && let Ok(list) = resp.json::<Vec<serde_json::Value>>().await
            && list.len() == clusters
            && list.iter().all(|c| c["up"] == true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{}: not every cluster up in /clusters after 60 s", r.user);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts, from watch events, the Images whose status result is Success, over every cluster.
#[derive(Clone, Default)]
struct Results {
    success: Arc<Mutex<HashSet<(usize, String, String)>>>,
}

impl Results {
    fn watch(&self, cluster: usize, api: Api<DynamicObject>) -> tokio::task::JoinHandle<()> {
        let success = self.success.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(ev)) = events.next().await {
                let obj = match ev {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
                    _ => continue,
                };
                let key = (
                    cluster,
                    obj.metadata.namespace.clone().unwrap_or_default(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                let ok = obj.data["status"]["result"] == "Success";
                if let Ok(mut s) = success.lock() {
                    if ok {
                        s.insert(key);
                    } else {
                        s.remove(&key);
                    }
                }
            }
        })
    }

    fn count(&self) -> usize {
        self.success.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// When each cluster's Deployment of the hooked repository first ran each tag (watch events).
type Seen = Arc<Mutex<HashMap<(usize, String), Instant>>>;

fn watch_deployments(
    cluster: usize,
    api: Api<Deployment>,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(Ok(ev)) = events.next().await {
            let at = Instant::now();
            let d = match ev {
                watcher::Event::Apply(d) | watcher::Event::InitApply(d) => d,
                _ => continue,
            };
            let image = d
                .spec
                .and_then(|s| s.template.spec)
                .and_then(|s| s.containers.into_iter().next())
                .and_then(|c| c.image)
                .unwrap_or_default();
            if let Some((_, tag)) = image.rsplit_once(':')
                && let Ok(mut s) = seen.lock()
            {
                s.entry((cluster, tag.to_string())).or_insert(at);
            }
        }
    })
}

/// API requests by kimup's users in the audit logs: (reads, writes, lease requests).
fn audit_counts(
    env: &TestEnv,
    users: &[String],
) -> Result<(usize, usize, usize, BTreeMap<String, usize>)> {
    let (mut reads, mut writes, mut leases) = (0, 0, 0);
    let mut by = BTreeMap::new();
    for c in &env.clusters {
        for e in c.audit_events()? {
            if !users.contains(&e.username) {
                continue;
            }
            if e.resource == "leases" {
                leases += 1;
                continue;
            }
            *by.entry(format!("{} {}", e.verb, e.resource)).or_default() += 1;
            match e.verb.as_str() {
                "get" | "list" | "watch" => reads += 1,
                _ => writes += 1,
            }
        }
    }
    Ok((reads, writes, leases, by))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn run_once(a: &Args, cache: bool) -> Result<Run> {
    let mut builder = TestEnv::builder()
        .name(if cache {
            "bench-cache"
        } else {
            "bench-nocache"
        })
        .clusters(a.clusters)
        .registries()
        .kimup_crds();
    if a.audit {
        builder = builder.audit_log_everything();
    }
    let env = builder.start().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let ports: Vec<u16> = (0..a.replicas)
        .map(|_| free_port())
        .collect::<Result<_>>()?;
    // The registry notifies every replica of every push (each acts on the shards it holds).
    let hooked_reg = if a.webhook > 0 {
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/webhooks/distribution"))
            .collect();
        Some(
            Registry::start_notifying_all(
                "registry-notify",
                Binaries::get()?,
                &env.run_dir.join("data"),
                &env.log_dir(),
                &urls,
                TOKEN,
            )
            .await?,
        )
    } else {
        None
    };
    let reg = env.plain_registry();
    let mut hosts = vec![reg.host.clone()];
    hosts.extend(hooked_reg.iter().map(|r| r.host.clone()));
    let tags: Vec<String> = (0..a.tags).map(|t| format!("1.{t}.0")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    for r in 0..a.repos {
        reg.push_tags(&format!("bench/repo-{r}"), &tag_refs).await?;
    }
    let ttl = if cache {
        format!("{}s", a.cache_ttl)
    } else {
        "0s".to_string()
    };

    // The same kimup serving the same clusters with no Image: the baseline of bytes per Image.
    let idle_peak_rss_bytes = {
        let mut idle = spawn_replica(a, &env, &hosts, 99, free_port()?, &ttl, false)?;
        wait_clusters_up(&http, &mut idle, a.clusters).await?;
        // Measured, not waited on: the caches' first lists are done once the clusters are up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peak = proc_kb(idle.process.pid(), "VmHWM:")?;
        idle.process.kill();
        peak
    };

    // One namespace holds at most one applying Image per repository (more are a conflict):
    // Images n and m share a cluster and a repository when n = m mod lcm(clusters, repos), so
    // block n / lcm is a namespace.
    let block = lcm(a.clusters.max(1), a.repos.max(1));
    let mut namespaces = Vec::new();
    for _ in 0..a.images.div_ceil(block) {
        namespaces.push(env.namespace_everywhere("bench").await?);
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", "Image"),
        "images",
    );
    let mut clients = Vec::new();
    for c in &env.clusters {
        clients.push(c.client().await?);
    }
    let creates = (0..a.images).map(|n| {
        let api = Api::<DynamicObject>::namespaced_with(
            clients[n % a.clusters].clone(),
            &namespaces[n / block],
            &ar,
        );
        let mut img = DynamicObject::new(&format!("img-{n}"), &ar);
        img.data = json!({"spec": {
            "image": format!("{}/bench/repo-{}", reg.host, n % a.repos),
            "baseTag": "1.0.0",
            "triggers": [{"type": "crontab", "value": a.cron}],
            "rules": [{"name": "minor", "type": "semver-minor", "actions": [{"type": "apply"}]}]
        }});
        async move { api.create(&PostParams::default(), &img).await.map(|_| ()) }
    });
    futures::stream::iter(creates)
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;

    // The hooked repository: one webhook-triggered Image and one opted-in Deployment per cluster.
    let seen: Seen = Arc::default();
    let mut watches = Vec::new();
    if let Some(hreg) = &hooked_reg {
        hreg.push_tags("bench/hooked", &["1.0.0"]).await?;
        let ns = env.namespace_everywhere("bench-hook").await?;
        for (i, client) in clients.iter().enumerate() {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let d: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "annotations": {"kimup.cloudavenue.io/enabled": "true"}},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": format!("{}/bench/hooked:1.0.0", hreg.host)}]}}}
            }))?;
            deployments.create(&PostParams::default(), &d).await?;
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
            let mut img = DynamicObject::new("hooked", &ar);
            img.data = json!({"spec": {
                "image": format!("{}/bench/hooked", hreg.host),
                "baseTag": "1.0.0",
                "triggers": [{"type": "webhook"}],
                "rules": [{"name": "minor", "type": "semver-minor", "actions": [{"type": "apply"}]}]
            }});
            api.create(&PostParams::default(), &img).await?;
            watches.push(watch_deployments(i, deployments, seen.clone()));
        }
    }
    let hooked = usize::from(hooked_reg.is_some()) * a.clusters;
    let results = Results::default();
    for (i, client) in clients.iter().enumerate() {
        watches.push(results.watch(i, Api::<DynamicObject>::all_with(client.clone(), &ar)));
    }

    let dir = env.run_dir.join("kubeconfigs");
    env.write_kubeconfigs(&dir)?;
    let before = reg.tag_list_requests_for("bench/")?;
    let started = Instant::now();
    let mut replicas = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut r = spawn_replica(a, &env, &hosts, i, *port, &ttl, true)?;
        r.process.check_running()?;
        replicas.push(r);
    }
    let total = a.images + hooked;
    loop {
        let done = results.count();
        if done >= total {
            break;
        }
        for r in &mut replicas {
            r.process.check_running()?;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {done}/{total} Images converged in 30 min");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge_seconds = started.elapsed().as_secs_f64();
    let users: Vec<String> = replicas.iter().map(|r| r.user.clone()).collect();
    let syncs_at_convergence = metric_all(&http, &ports, "kimup_image_syncs_total").await?;
    let cpu_at_convergence: f64 = replicas
        .iter()
        .map(|r| cpu_seconds(r.process.pid()).unwrap_or(0.0))
        .sum();
    let mut run = Run {
        tag_requests: reg.tag_list_requests_for("bench/")? - before,
        converge_seconds,
        idle_peak_rss_bytes,
        ..Default::default()
    };
    if a.audit {
        let (reads, writes, leases, by) = audit_counts(&env, &users)?;
        run.api = Some(json!({
            "syncs": syncs_at_convergence,
            "reads": reads,
            "writes": writes,
            "lease_requests": leases,
            "reads_per_sync": round(reads as f64 / syncs_at_convergence.max(1.0), 3),
            "writes_per_sync": round(writes as f64 / syncs_at_convergence.max(1.0), 3),
            "by_verb_and_resource": by,
        }));
    }

    // Steady state: every Image synced once; the crontab goes on, changing nothing.
    if a.steady > 0 {
        let (_, writes_before, _, _) = if a.audit {
            audit_counts(&env, &users)?
        } else {
            (0, 0, 0, BTreeMap::new())
        };
        let syncs_before = metric_all(&http, &ports, "kimup_image_syncs_total").await?;
        let cpu_before: f64 = replicas
            .iter()
            .map(|r| cpu_seconds(r.process.pid()).unwrap_or(0.0))
            .sum();
        tokio::time::sleep(Duration::from_secs(a.steady)).await;
        let syncs = metric_all(&http, &ports, "kimup_image_syncs_total").await? - syncs_before;
        let cpu: f64 = replicas
            .iter()
            .map(|r| cpu_seconds(r.process.pid()).unwrap_or(0.0))
            .sum::<f64>()
            - cpu_before;
        let mut steady = json!({
            "seconds": a.steady,
            "cron": a.cron,
            "syncs": syncs,
            "syncs_per_second": round(syncs / a.steady as f64, 1),
            "cpu_seconds": round(cpu, 2),
            "cpu_ms_per_sync": round(cpu * 1000.0 / syncs.max(1.0), 3),
        });
        if a.audit {
            let (_, writes_after, _, by) = audit_counts(&env, &users)?;
            let writes = writes_after - writes_before;
            steady["writes"] = json!(writes);
            steady["writes_per_unchanged_sync"] = json!(round(writes as f64 / syncs.max(1.0), 3));
            steady["all_requests_by_verb_and_resource"] = json!(by);
        }
        run.steady = Some(steady);
    }

    // Push to rollout, one push at a time, under the load of every other Image.
    if let Some(hreg) = &hooked_reg {
        let syncs_before = metric_all(&http, &ports, "kimup_image_syncs_total").await?;
        let mut latencies = Vec::new();
        for i in 1..=a.webhook {
            let tag = format!("1.{i}.0");
            hreg.push_only("bench/hooked", &tag).await?;
            let pushed = Instant::now();
            let deadline = pushed + Duration::from_secs(30);
            loop {
                let times: Vec<Option<Instant>> = {
                    let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    (0..a.clusters)
                        .map(|c| s.get(&(c, tag.clone())).copied())
                        .collect()
                };
                if times.iter().all(Option::is_some) {
                    let last = times.into_iter().flatten().max().unwrap_or(pushed);
                    latencies.push(last.saturating_duration_since(pushed).as_secs_f64() * 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    let missing: Vec<usize> = times
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.is_none())
                        .map(|(c, _)| c)
                        .collect();
                    bail!("push {i} ({tag}): clusters {missing:?} never ran it within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let syncs = metric_all(&http, &ports, "kimup_image_syncs_total").await? - syncs_before;
        let mut sorted = latencies.clone();
        sorted.sort_by(|x, y| x.total_cmp(y));
        let pushed_syncs = (a.webhook * a.clusters) as f64;
        run.webhook = Some(json!({
            "pushes": a.webhook,
            "push_to_last_cluster_rollout_ms": {
                "p50": round(percentile(&sorted, 50.0), 1),
                "p95": round(percentile(&sorted, 95.0), 1),
                "p99": round(percentile(&sorted, 99.0), 1),
                "max": round(sorted.last().copied().unwrap_or(0.0), 1),
                "mean": round(sorted.iter().sum::<f64>() / sorted.len().max(1) as f64, 1),
            },
            "syncs_during_pushes": syncs,
            "syncs_of_pushed_images_expected": pushed_syncs,
            "other_syncs": (syncs - pushed_syncs).max(0.0),
        }));
    }

    for r in &replicas {
        let pid = r.process.pid();
        run.replicas.push(ReplicaCost {
            cpu_seconds: cpu_seconds(pid)?,
            peak_rss_bytes: proc_kb(pid, "VmHWM:")?,
            rss_after_bytes: proc_kb(pid, "VmRSS:")?,
            rss_anon_after_bytes: proc_kb(pid, "RssAnon:")?,
            rss_file_after_bytes: proc_kb(pid, "RssFile:")?,
            syncs: metric(&http, r.port, "kimup_image_syncs_total").await?,
        });
    }
    run.api = run.api.map(|mut v| {
        v["cpu_seconds_at_convergence"] = json!(round(cpu_at_convergence, 2));
        v
    });
    for w in watches {
        w.abort();
    }
    drop(replicas);
    Ok(run)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { round(a / b, 2) }
}

fn summary(a: &Args, r: &Run) -> serde_json::Value {
    let peak = r
        .replicas
        .iter()
        .map(|c| c.peak_rss_bytes)
        .max()
        .unwrap_or(0);
    let cpu: f64 = r.replicas.iter().map(|c| c.cpu_seconds).sum();
    let syncs: f64 = r.replicas.iter().map(|c| c.syncs).sum();
    let per_image = peak.saturating_sub(r.idle_peak_rss_bytes) as f64 / a.images as f64;
    json!({
        "registry_tag_requests": r.tag_requests,
        "converge_seconds": round(r.converge_seconds, 2),
        "syncs_per_second_to_convergence": round(a.images as f64 / r.converge_seconds, 1),
        "kimup_cpu_seconds": round(cpu, 2),
        "cpu_ms_per_sync": round(cpu * 1000.0 / syncs.max(1.0), 3),
        "kimup_peak_rss_bytes": peak,
        "kimup_peak_rss_mib": round(peak as f64 / 1048576.0, 1),
        "idle_peak_rss_mib": round(r.idle_peak_rss_bytes as f64 / 1048576.0, 1),
        "bytes_per_image": per_image.round(),
        "bytes_per_image_how": "(peak RSS with the Images - peak RSS of the same kimup on the same clusters with none) / Images",
        "replicas": r.replicas,
        "api_requests": r.api,
        "steady": r.steady,
        "webhook": r.webhook,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    kimup_testenv::install_crypto_provider();
    let with = run_once(&a, true).await?;
    let mut out = json!({
        "clusters": a.clusters,
        "images": a.images,
        "unique_repositories": a.repos,
        "tags_per_repository": a.tags,
        "cache_ttl_seconds": a.cache_ttl,
        "cron": a.cron,
        "concurrency_per_cluster": a.concurrency,
        "replicas": a.replicas,
        "shards": a.shards,
        "machine": format!("{} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), mem_total()),
        "result": summary(&a, &with),
    });
    if a.compare {
        let without = run_once(&a, false).await?;
        let cpu = |r: &Run| r.replicas.iter().map(|c| c.cpu_seconds).sum::<f64>();
        let rss = |r: &Run| {
            r.replicas
                .iter()
                .map(|c| c.peak_rss_bytes)
                .max()
                .unwrap_or(0) as f64
        };
        out["no_cache"] = summary(&a, &without);
        out["ratios_no_cache_over_cache"] = json!({
            "registry_tag_requests": ratio(without.tag_requests as f64, with.tag_requests as f64),
            "converge_seconds": ratio(without.converge_seconds, with.converge_seconds),
            "kimup_cpu_seconds": ratio(cpu(&without), cpu(&with)),
            "kimup_peak_rss_bytes": ratio(rss(&without), rss(&with)),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// Least common multiple.
fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}
