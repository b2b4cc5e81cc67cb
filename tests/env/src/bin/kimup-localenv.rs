//! Local demo: starts three clusters, the registries and Jaeger on loopback, writes the first
//! cluster's kubeconfig to `kubeconfigs/local/` and adds the others with `kimup cluster add`
//! (administrators' kubeconfigs in `kubeconfigs/local/admin/`), creates a demo app in each
//! cluster, promoted from one cluster to the next after a soak of seconds, and runs kimup
//! against them with its traces in Jaeger, printing what kimup does as new tags are pushed.
//! Stops on Ctrl-C, or after `--seconds N`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kimup_testenv::binaries::JAEGER_OVERRIDE;
use kimup_testenv::jaeger::{self, Jaeger, JaegerPorts};
use kimup_testenv::process::{Process, free_port};
use kimup_testenv::{TestEnv, binaries::repo_root, target_dir};
use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;

struct Args {
    clusters: usize,
    seconds: Option<u64>,
    kimup: PathBuf,
    otlp_port: u16,
    jaeger_port: u16,
}

/// How long a tag must run healthy in a cluster before the next one takes it.
const SOAK: &str = "10s";

/// The demo's webhook token (loopback only).
const WEBHOOK_TOKEN: &str = "localenv-webhook-token";

fn args() -> Result<Args> {
    let mut out = Args {
        clusters: 3,
        seconds: None,
        kimup: target_dir().join("debug/kimup"),
        otlp_port: jaeger::OTLP_PORT,
        jaeger_port: jaeger::QUERY_PORT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--clusters" => out.clusters = it.next().context("--clusters N")?.parse()?,
            "--seconds" => out.seconds = Some(it.next().context("--seconds N")?.parse()?),
            "--kimup" => out.kimup = PathBuf::from(it.next().context("--kimup PATH")?),
            "--otlp-port" => out.otlp_port = it.next().context("--otlp-port N")?.parse()?,
            "--jaeger-port" => out.jaeger_port = it.next().context("--jaeger-port N")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "kimup-localenv [--clusters N] [--seconds N] [--kimup PATH] [--otlp-port N] [--jaeger-port N]\n\
                     Jaeger listens on 127.0.0.1: OTLP/HTTP on --otlp-port (4318), UI and API on\n\
                     --jaeger-port (16686). {JAEGER_OVERRIDE}=/path/to/jaeger runs a Jaeger release binary (with its UI)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !out.kimup.exists() {
        bail!("{} not found: run `cargo build` first", out.kimup.display());
    }
    port_free(out.otlp_port, "Jaeger's OTLP/HTTP receiver", "--otlp-port")?;
    port_free(out.jaeger_port, "Jaeger's UI and API", "--jaeger-port")?;
    Ok(out)
}

/// Fails, naming the port and the flag that moves it, when `port` is taken on 127.0.0.1 (by
/// another Jaeger or collector, most likely): checked before anything starts.
fn port_free(port: u16, what: &str, flag: &str) -> Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| {
            format!(
                "port {port} on 127.0.0.1, for {what}, is taken (another Jaeger or collector?): \
                 stop what listens there, or choose another port with {flag} N"
            )
        })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    kimup_testenv::install_crypto_provider();
    println!(
        "starting {} clusters, etcd and two registries on loopback ...",
        args.clusters
    );
    let env = TestEnv::builder()
        .name("localenv")
        .clusters(args.clusters)
        .registries()
        // Controller manager, scheduler and a kwok node: the demo's Deployments really roll out,
        // so `kubectl get deploy,pods` shows each new tag's Pods become Ready.
        .rollouts()
        .start()
        .await?;
    let kc_dir = repo_root().join("kubeconfigs/local");
    let _ = std::fs::remove_dir_all(&kc_dir);
    // Administrators' kubeconfigs (system:masters) in a subfolder, which kimup's folder scan
    // skips; kimup's own folder gets the first cluster's directly and the others through
    // `kimup cluster add`, as an operator would add them.
    let files = env.write_kubeconfigs(&kc_dir.join("admin"))?;
    std::fs::copy(
        &files[0],
        kc_dir.join(format!("{}.yaml", env.clusters[0].name)),
    )?;
    env.clusters[0]
        .install_crds(&kimup_testenv::load_crds(&repo_root().join("crds"))?)
        .await?;
    for (c, f) in env.clusters.iter().zip(&files) {
        let v = c.client().await?.apiserver_version().await?;
        println!(
            "  {} {} at {} (kubeconfig {})",
            c.name,
            v.git_version,
            c.url,
            f.display()
        );
    }
    for (c, f) in env.clusters.iter().zip(&files).skip(1) {
        cluster_add(&args.kimup, &c.name, f, &kc_dir)?;
    }
    let reg = env.plain_registry();
    reg.push_tags("demo/web", &["1.0.0", "1.0.1", "1.1.0", "2.0.0"])
        .await?;
    let image = format!("{}/demo/web", reg.host);
    println!(
        "  registry {} with demo/web tags 1.0.0 1.0.1 1.1.0 2.0.0",
        reg.base_url()
    );
    let ports = JaegerPorts {
        otlp: args.otlp_port,
        query: args.jaeger_port,
        grpc: free_port()?,
    };
    let jaeger = Jaeger::start_on(&env.run_dir.join("data"), &env.log_dir(), ports).await?;
    let ui = format!("http://localhost:{}", ports.query);
    println!(
        "  Jaeger: OTLP/HTTP on 127.0.0.1:{}, the demo's traces at {ui}/search?service=kimup",
        ports.otlp
    );
    println!("    same traces as JSON: {ui}/api/traces?service=kimup");
    match std::env::var_os(JAEGER_OVERRIDE) {
        Some(path) => println!(
            "    ({JAEGER_OVERRIDE}={}: a release binary serves the UI)",
            PathBuf::from(path).display()
        ),
        None => println!(
            "    this Jaeger is built from its Go module, without the UI: {ui} shows Jaeger's \
             placeholder page, the API works; for the UI run {JAEGER_OVERRIDE}=/path/to/jaeger \
             (from a Jaeger release, jaeger-2.13.0-linux-amd64.tar.gz)"
        ),
    }

    for (i, c) in env.clusters.iter().enumerate() {
        let client = c.client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "demo", "annotations": {"kimup.cloudavenue.io/enabled": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let deploy: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": format!("{image}:1.0.0")}]}
            }}
        }))?;
        Api::<Deployment>::namespaced(client.clone(), "demo")
            .create(&PostParams::default(), &deploy)
            .await?;
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", "Image"),
            "images",
        );
        let mut img = DynamicObject::new("web", &ar);
        img.data = serde_json::json!({"spec": {
            "image": image, "baseTag": "1.0.0",
            "triggers": [{"type": "crontab", "value": "*/5 * * * * *"}, {"type": "webhook"}],
            "rules": [{"name": "minor-updates", "type": "semver-minor", "actions": [{"type": "apply"}]}]
        }});
        // Each cluster after the first takes a tag once it ran healthy in the one before.
        if i > 0 {
            img.data["spec"]["promotion"] =
                serde_json::json!({"after": [env.clusters[i - 1].name], "soak": SOAK});
        }
        Api::<DynamicObject>::namespaced_with(client, "demo", &ar)
            .create(&PostParams::default(), &img)
            .await?;
    }
    println!(
        "  created namespace demo, Deployment web ({image}:1.0.0) and Image web (semver-minor, every 5 s and on webhook pushes) in each cluster"
    );
    for pair in env.clusters.windows(2) {
        println!(
            "  {} takes a tag once it ran healthy for {SOAK} in {} (spec.promotion)",
            pair[1].name, pair[0].name
        );
    }
    println!();

    // One kimup for every cluster: it serves each kubeconfig of the folder as a member cluster.
    // A short tag cache TTL so the demo's push shows within seconds (production default: 60 s).
    let kimup_port = free_port()?;
    let kimup_args = vec![
        "run".to_string(),
        format!("--kubeconfig-dir={}", kc_dir.display()),
        format!("--listen-addr=127.0.0.1:{kimup_port}"),
        format!("--insecure-registry={}", reg.host),
        "--tag-cache-ttl=4s".to_string(),
    ];
    let kimup_env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            jaeger.otlp_endpoint(),
        ),
        ("KIMUP_WEBHOOK_TOKEN".to_string(), WEBHOOK_TOKEN.to_string()),
    ];
    let kimup = Process::spawn_with_env(
        "kimup",
        &args.kimup,
        &kimup_args,
        &kimup_env,
        &env.log_dir(),
    )?;
    println!(
        "$ OTEL_EXPORTER_OTLP_ENDPOINT={} KIMUP_WEBHOOK_TOKEN=... kimup {}",
        jaeger.otlp_endpoint(),
        kimup_args.join(" ")
    );
    println!(
        "kimup running (logs in {}); Ctrl-C to stop\n",
        env.log_dir().display()
    );

    let started = Instant::now();
    let mut pushed = false;
    let mut push_trace_shown = false;
    let mut last_fleet = String::new();
    loop {
        for c in &env.clusters {
            // A frozen or restarting API server is part of what the demo shows: report it and
            // go on, never take the environment down with it.
            let line = match tokio::time::timeout(Duration::from_secs(2), cluster_line(c)).await {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => format!("unreachable ({e:#})"),
                Err(_) => "no answer within 2 s".to_string(),
            };
            println!("[{:>3}s] {}: {line}", started.elapsed().as_secs(), c.name);
        }
        if env.clusters.len() > 1 {
            // The Image × cluster matrix, as an operator would ask for it: shown when it changed.
            let out = std::process::Command::new(&args.kimup)
                .args(["fleet", "-n", "demo", "--kubeconfig-dir"])
                .arg(&kc_dir)
                .output();
            if let Ok(out) = out {
                let table = String::from_utf8_lossy(&out.stdout).to_string();
                if table != last_fleet {
                    println!(
                        "      $ kimup fleet -n demo --kubeconfig-dir {}",
                        kc_dir.display()
                    );
                    for l in table.lines() {
                        println!("        {l}");
                    }
                    last_fleet = table;
                }
            }
        }
        if pushed && !push_trace_shown {
            // The push's span, once Jaeger has it (kimup exports every 5 s).
            if let Ok(traces) = jaeger.traces("kimup", Some("webhook.push"), 1).await
                && let Some(t) = traces.first()
            {
                println!(
                    "--- the push in Jaeger: {ui}/api/traces/{} (the syncs it caused link to it: FOLLOWS_FROM) ---",
                    t.trace_id
                );
                push_trace_shown = true;
            }
        }
        if !pushed && started.elapsed() > Duration::from_secs(12) {
            match reg.push_tags("demo/web", &["1.2.0"]).await {
                Ok(()) => {
                    let told = notify(kimup_port, &format!("{image}:1.2.0")).await;
                    println!(
                        "--- pushed demo/web:1.2.0 and {} ---",
                        match told {
                            Ok(()) => "told kimup (POST /webhooks/generic): it syncs now".into(),
                            Err(e) => format!(
                                "could not tell kimup ({e:#}): it picks the tag up at the next crontab tick"
                            ),
                        }
                    );
                    pushed = true;
                }
                Err(e) => println!("--- pushing demo/web:1.2.0 failed ({e:#}); retrying ---"),
            }
        }
        if args
            .seconds
            .is_some_and(|s| started.elapsed() > Duration::from_secs(s))
        {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
    drop(kimup);
    drop(jaeger);
    println!(
        "stopped (Jaeger kept its traces in memory: they are gone); kubeconfigs stay in {} until the next run",
        kc_dir.display()
    );
    Ok(())
}

/// Runs `kimup cluster add` for a cluster with its administrator's kubeconfig: its CRDs, a
/// ServiceAccount with kimup's rules and a kubeconfig of that identity in `dir`.
fn cluster_add(
    kimup: &std::path::Path,
    context: &str,
    admin: &std::path::Path,
    dir: &std::path::Path,
) -> Result<()> {
    let args = [
        "cluster".to_string(),
        "add".into(),
        context.into(),
        format!("--kubeconfig={}", admin.display()),
        format!("--kubeconfig-dir={}", dir.display()),
    ];
    println!("$ kimup {}", args.join(" "));
    let out = std::process::Command::new(kimup).args(&args).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "kimup cluster add {context} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Announces a push to kimup as a registry's webhook would.
async fn notify(port: u16, reference: &str) -> Result<()> {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/generic"))
        .bearer_auth(WEBHOOK_TOKEN)
        .body(serde_json::json!({ "image": reference }).to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("kimup answered {}", r.status());
    }
    Ok(())
}

/// One status line of a cluster: the Image's tag, result and workloads, and the image of every
/// Deployment of the demo namespace (created later or reverted ones included).
async fn cluster_line(c: &kimup_testenv::Cluster) -> Result<String> {
    let client = c.client().await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", "Image"),
        "images",
    );
    let img = Api::<DynamicObject>::namespaced_with(client.clone(), "demo", &ar)
        .get("web")
        .await?;
    let status = &img.data["status"];
    let workloads = &status["workloads"];
    let mut line = format!(
        "Image web tag={} result={} workloads={}/{}",
        status["tag"].as_str().unwrap_or("-"),
        status["result"].as_str().unwrap_or("-"),
        workloads["upToDate"].as_u64().unwrap_or(0),
        workloads["total"].as_u64().unwrap_or(0),
    );
    let promotion = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Promotion");
    if let Some(p) = promotion {
        line.push_str(&format!(
            " promotion={}",
            p["message"].as_str().unwrap_or_default()
        ));
    }
    let deployments = Api::<Deployment>::namespaced(client, "demo")
        .list(&Default::default())
        .await?;
    for d in deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        let running = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
            .unwrap_or_default();
        line.push_str(&format!(" | Deployment {name} image={running}"));
    }
    Ok(line)
}
