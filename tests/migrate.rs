//! Migration from kimup (Go): a `Kimup` resource converted by `kimup migrate kimup-cr` installs
//! with the real chart (helm lint and template) into the Deployment it described, and kimup
//! (Go)'s flags get the way over or run.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kimup_testenv::Binaries;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kimup-cr.yaml")
}

fn kimup_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kimup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kimup output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn helm(args: &[&str]) -> Output {
    let bins = Binaries::get().expect("binaries");
    Command::new(&bins.helm)
        .args(args)
        .output()
        .expect("run helm")
}

#[test]
fn a_kimup_resource_becomes_values_the_chart_installs() {
    let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["migrate", "kimup-cr"])
        .arg(fixture())
        .output()
        .expect("run kimup migrate");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "kimup migrate: {stdout}{stderr}");
    // Every note reaches the operator twice: on stderr and as a comment in the values.
    for needle in ["spec.image", "spec.name \"demo\"", "spec.healthz.port 9081"] {
        assert!(stderr.contains(needle), "no {needle:?} on stderr: {stderr}");
        assert!(
            stdout.contains(needle),
            "no {needle:?} in the values: {stdout}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, &stdout).expect("write values");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kimup");
    let chart = chart.to_str().expect("path");
    let values = values.to_str().expect("path");
    // values.schema.json refuses unknown keys and wrong types: the output must pass it.
    let lint = helm(&["lint", "--strict", chart, "-f", values]);
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        text(&lint.stdout),
        text(&lint.stderr)
    );
    let rendered = helm(&[
        "template",
        "demo",
        chart,
        "--namespace",
        "kimup-system",
        "-f",
        values,
    ]);
    assert!(
        rendered.status.success(),
        "helm template: {}",
        text(&rendered.stderr)
    );
    let deployment = serde_yaml::Deserializer::from_str(&text(&rendered.stdout))
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment is rendered");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    let env = container["env"].as_sequence().expect("env list");
    for (name, value) in [
        ("HTTPS_PROXY", "http://proxy.internal:3128"),
        ("NO_PROXY", ".cluster.local"),
    ] {
        assert!(
            env.iter().any(|e| e["name"] == name && e["value"] == value),
            "no {name}={value} in {env:?}"
        );
    }
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "node-role.kubernetes.io/infra"
    );
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(spec["serviceAccountName"], "kimup-controller");
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--log-level=debug"), "{args:?}");
    assert!(args.contains(&"--listen-addr=0.0.0.0:9080"), "{args:?}");
    assert_eq!(container["ports"][0]["containerPort"], 9080);
    // The Go controller's image is not carried over: the chart's own image runs.
    let image = container["image"].as_str().expect("image");
    assert!(image.starts_with("ghcr.io/kimup/kimup:"), "{image}");
}

#[test]
fn kubectl_lists_convert_from_stdin_and_bad_input_is_exit_2() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        std::fs::read_to_string(fixture())
            .expect("fixture")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .enumerate()
            .map(|(i, l)| if i == 0 {
                format!("- {l}\n")
            } else {
                format!("  {l}\n")
            })
            .collect::<String>()
    );
    let out = kimup_stdin(&["migrate", "kimup-cr", "-"], &list);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("HTTPS_PROXY"),
        "{}",
        text(&out.stdout)
    );

    for (input, needle) in [
        ("kind: Image\nmetadata: {name: x}\n", "no Kimup resource"),
        (
            "kind: Kimup\nmetadata: {name: k}\nspec: {env: oops}\n",
            "spec.env must be a list",
        ),
        ("{{{", "not YAML"),
    ] {
        let out = kimup_stdin(&["migrate", "kimup-cr", "-"], input);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{input:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{input:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{input:?}: values printed on error");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(["migrate", "kimup-cr", "/nonexistent/kimup.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/kimup.yaml"));
}

#[test]
fn upstream_port_flags_name_the_replacement() {
    for (flag, needle) in [
        ("--metrics-port=:9080", "--listen-addr 0.0.0.0:9080"),
        ("--healthz-port=9081", "--listen-addr 0.0.0.0:9081"),
        ("--metrics-path=/m", "fixed path"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
            .args(["run", flag, "--listen-addr=127.0.0.1:0"])
            .output()
            .expect("run kimup");
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn upstream_switches_and_loglevel_run() {
    // kimup (Go)'s command line, as its operator wrote it: the level is honoured, the switches
    // are accepted with a warning each.
    let dir = tempfile::tempdir().expect("tempdir");
    let clusters = dir.path().join("clusters");
    std::fs::create_dir(&clusters).expect("mkdir");
    let log = dir.path().join("kimup.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args([
            "--loglevel=debug",
            "run",
            "--metrics",
            "--healthz",
            "--healthz-path=/healthz",
            "--listen-addr=127.0.0.1:0",
        ])
        .arg(format!("--kubeconfig-dir={}", clusters.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start kimup");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("no member cluster") && text.contains("DEBUG") {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kimup exited ({status}) before warning of no member cluster: {text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("within 30 s, no debug line and \"no member cluster\" warning: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    for flag in ["--metrics", "--healthz", "--healthz-path"] {
        assert!(
            text.contains(&format!("{flag} is kimup (Go)'s flag and has no effect")),
            "no warning for {flag}: {text}"
        );
    }
}
