//! Benchmark of the shared tag cache: M clusters, N Images over K repositories, kimup run as a
//! separate process with the cache on and then off, each on a fresh environment. Prints the
//! registry's own count of tag listings, convergence time, kimup's CPU time and peak RSS, and
//! the ratios between the two runs.
//!
//! cargo run --release -p kimup-testenv --bin kimup-bench -- --clusters 3 --images 300 --repos 10 --json

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kimup_testenv::process::Process;
use kimup_testenv::{TestEnv, target_dir};
use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

struct Args {
    clusters: usize,
    images: usize,
    repos: usize,
    tags: usize,
    cache_ttl: u64,
    json: bool,
    kimup: PathBuf,
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
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            Ok(it
                .next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--clusters" => a.clusters = num("--clusters")? as usize,
            "--images" => a.images = num("--images")? as usize,
            "--repos" => a.repos = num("--repos")? as usize,
            "--tags" => a.tags = num("--tags")? as usize,
            "--cache-ttl" => a.cache_ttl = num("--cache-ttl")?,
            "--json" => a.json = true,
            "--kimup" => a.kimup = PathBuf::from(it.next().context("--kimup PATH")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.clusters == 0 || a.images == 0 || a.repos == 0 || a.repos > a.images {
        bail!("need clusters >= 1, images >= repos >= 1");
    }
    if !a.kimup.exists() {
        bail!(
            "{} not found: cargo build --release first",
            a.kimup.display()
        );
    }
    Ok(a)
}

#[derive(Debug, Clone)]
struct Run {
    tag_requests: usize,
    converge_seconds: f64,
    cpu_seconds: f64,
    peak_rss_bytes: u64,
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

fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kb * 1024)
}

async fn run_once(a: &Args, cache: bool) -> Result<Run> {
    let env = TestEnv::builder()
        .name(if cache {
            "bench-cache"
        } else {
            "bench-nocache"
        })
        .clusters(a.clusters)
        .registries()
        .kimup_crds()
        .start()
        .await?;
    let reg = env.plain_registry();
    let tags: Vec<String> = (0..a.tags).map(|t| format!("1.{t}.0")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    for r in 0..a.repos {
        reg.push_tags(&format!("bench/repo-{r}"), &tag_refs).await?;
    }
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
    let mut apis = Vec::new();
    let mut all = Vec::new();
    for c in &env.clusters {
        let client = c.client().await?;
        apis.push(
            namespaces
                .iter()
                .map(|ns| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar))
                .collect::<Vec<_>>(),
        );
        all.push(Api::<DynamicObject>::all_with(client, &ar));
    }
    for n in 0..a.images {
        let mut img = DynamicObject::new(&format!("img-{n}"), &ar);
        img.data = json!({"spec": {
            "image": format!("{}/bench/repo-{}", reg.host, n % a.repos),
            "baseTag": "1.0.0",
            "triggers": [{"type": "crontab", "value": "@hourly"}],
            "rules": [{"name": "minor", "type": "semver-minor", "actions": [{"type": "apply"}]}]
        }});
        apis[n % a.clusters][n / block]
            .create(&PostParams::default(), &img)
            .await?;
    }
    let dir = env.run_dir.join("kubeconfigs");
    env.write_kubeconfigs(&dir)?;
    let before = reg.tag_list_requests_for("bench/")?;
    let ttl = if cache {
        format!("{}s", a.cache_ttl)
    } else {
        "0s".to_string()
    };
    let started = Instant::now();
    let kimup = Process::spawn(
        "kimup",
        &a.kimup,
        &[
            "--log-level=warn".into(),
            "run".into(),
            format!("--kubeconfig-dir={}", dir.display()),
            "--listen-addr=127.0.0.1:0".into(),
            format!("--insecure-registry={}", reg.host),
            format!("--tag-cache-ttl={ttl}"),
            "--concurrency=32".into(),
            "--registry-concurrency=16".into(),
        ],
        &env.log_dir(),
    )?;
    loop {
        let mut done = 0;
        for api in &all {
            done += api
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|o| o.data["status"]["result"] == "Success")
                .count();
        }
        if done == a.images {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {done}/{} Images converged in 30 min", a.images);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge_seconds = started.elapsed().as_secs_f64();
    let run = Run {
        tag_requests: reg.tag_list_requests_for("bench/")? - before,
        converge_seconds,
        cpu_seconds: cpu_seconds(kimup.pid())?,
        peak_rss_bytes: peak_rss(kimup.pid())?,
    };
    drop(kimup);
    Ok(run)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        (a / b * 100.0).round() / 100.0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    kimup_testenv::install_crypto_provider();
    let with = run_once(&a, true).await?;
    let without = run_once(&a, false).await?;
    let out = json!({
        "clusters": a.clusters,
        "images": a.images,
        "unique_repositories": a.repos,
        "tags_per_repository": a.tags,
        "cache_ttl_seconds": a.cache_ttl,
        "registry_tag_requests": with.tag_requests,
        "converge_seconds": (with.converge_seconds * 100.0).round() / 100.0,
        "kimup_cpu_seconds": with.cpu_seconds,
        "kimup_peak_rss_bytes": with.peak_rss_bytes,
        "no_cache": {
            "registry_tag_requests": without.tag_requests,
            "converge_seconds": (without.converge_seconds * 100.0).round() / 100.0,
            "kimup_cpu_seconds": without.cpu_seconds,
            "kimup_peak_rss_bytes": without.peak_rss_bytes,
        },
        "ratios_no_cache_over_cache": {
            "registry_tag_requests": ratio(without.tag_requests as f64, with.tag_requests as f64),
            "converge_seconds": ratio(without.converge_seconds, with.converge_seconds),
            "kimup_cpu_seconds": ratio(without.cpu_seconds, with.cpu_seconds),
            "kimup_peak_rss_bytes": ratio(without.peak_rss_bytes as f64, with.peak_rss_bytes as f64),
        },
        "machine": format!("{} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), mem_total()),
    });
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
