//! The `kimup` command line, run as a process: version, crd, evaluate (dry run), flag errors.

mod common;

use std::process::{Command, Output};

fn kimup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args(args)
        .output()
        .expect("run kimup")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tags_file(tags: &[&str]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), tags.join("\n")).expect("write tags");
    f
}

const TAGS: &[&str] = &[
    "1.25.3",
    "1.25.4",
    "1.26.0",
    "1.26.1-alpine",
    "1.27.0-rc1",
    "2.0.0",
    "latest",
    "# a comment",
    "",
];

#[test]
fn version_and_crd() {
    let out = kimup(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("kimup {}", env!("CARGO_PKG_VERSION"))
    );
    let out = kimup(&["crd"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), kimup::api::crds_yaml().expect("crds"));
    // What scripts/gen-rbac.sh writes into the chart.
    let out = kimup(&["rbac"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), kimup::rbac::chart_rules_yaml());
}

/// `kimup cluster` usage errors exit 2 before touching anything; a missing store is named.
#[test]
fn cluster_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path");
    let missing = dir.path().join("missing");
    for (args, says) in [
        (vec!["cluster"], "Usage"),
        (vec!["cluster", "add"], "CONTEXT"),
        (
            vec![
                "cluster",
                "add",
                "a",
                "--context",
                "b",
                "--kubeconfig-dir",
                d,
            ],
            "cannot be used with",
        ),
        (
            vec![
                "cluster",
                "add",
                "c",
                "--kubeconfig-dir",
                d,
                "--secret",
                "a/b",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "cluster",
                "add",
                "c",
                "--long-lived",
                "--token-ttl",
                "1h",
                "--kubeconfig-dir",
                d,
            ],
            "cannot be used with",
        ),
        (
            vec![
                "cluster",
                "add",
                "c",
                "--token-ttl",
                "soon",
                "--kubeconfig-dir",
                d,
            ],
            "invalid duration",
        ),
        (
            vec![
                "cluster",
                "list",
                "--kubeconfig-dir",
                missing.to_str().expect("path"),
            ],
            "no such folder",
        ),
        (
            vec!["cluster", "list", "--secret", "no-slash"],
            "expected NAMESPACE/NAME",
        ),
        (
            vec!["cluster", "remove", "x", "--kubeconfig-dir", d],
            "no member named x",
        ),
        (
            vec!["cluster", "remove", "x", "--purge", "--kubeconfig-dir", d],
            "--context",
        ),
        (
            vec!["cluster", "list", "--kubeconfig-dir", d, "-o", "yaml"],
            "invalid value",
        ),
    ] {
        let out = kimup(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // An empty folder lists nothing.
    let out = kimup(&["cluster", "list", "--kubeconfig-dir", d, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
    assert!(!missing.exists(), "list never creates the folder");
}

#[test]
fn fleet_reports_unreadable_members_and_usage_errors() {
    let out = kimup(&["fleet"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--kubeconfig-dir DIR or --kubeconfig FILE"),
        "{}",
        text(&out.stderr)
    );
    let empty = tempfile::tempdir().expect("dir");
    let dir = empty.path().to_str().expect("utf-8 path");
    let out = kimup(&["fleet", "--kubeconfig-dir", dir]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // One member that cannot be read, one that is no kubeconfig: each named, exit 1, the
    // matrix still printed.
    std::fs::write(
        empty.path().join("gone.yaml"),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: gone, context: {cluster: c, user: u}}]\ncurrent-context: gone\n",
    )
    .expect("write");
    std::fs::write(empty.path().join("junk.yaml"), "not: [a kubeconfig").expect("write");
    let out = kimup(&["fleet", "--kubeconfig-dir", dir, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(view["clusters"], serde_json::json!(["gone", "junk"]));
    assert!(
        view["errors"]["gone"]
            .as_str()
            .is_some_and(|e| e.contains("listing Images")),
        "{view}"
    );
    assert!(view["errors"]["junk"].is_string(), "{view}");
    assert_eq!(view["images"], serde_json::json!([]));
}

#[test]
fn evaluate_prints_the_chosen_tag_or_nothing() {
    let f = tags_file(TAGS);
    let path = f.path().to_str().expect("path");
    let out = kimup(&[
        "evaluate",
        "--rule",
        "semver-minor",
        "--current",
        "1.25.3",
        "--tags-file",
        path,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1.26.0\n");
    let out = kimup(&[
        "evaluate",
        "--rule",
        "regex",
        "--value",
        r"^1\.2[56]\.\d+$",
        "--current",
        "1.25.3",
        "--tags-file",
        path,
    ]);
    assert_eq!(text(&out.stdout), "1.26.0\n");
    // Nothing qualifies: empty output, success.
    let out = kimup(&[
        "evaluate",
        "--rule",
        "semver-major",
        "--current",
        "2.0.0",
        "--tags-file",
        path,
    ]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn evaluate_rejects_bad_input_with_exit_2() {
    let f = tags_file(TAGS);
    let path = f.path().to_str().expect("path");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "evaluate",
                "--rule",
                "semver-mega",
                "--current",
                "1.0.0",
                "--tags-file",
                path,
            ],
            "unknown rule \"semver-mega\"",
        ),
        (
            &[
                "evaluate",
                "--rule",
                "semver-minor",
                "--current",
                "latest",
                "--tags-file",
                path,
            ],
            "\"latest\" is not a semantic version",
        ),
        (
            &[
                "evaluate",
                "--rule",
                "regex",
                "--value",
                "(",
                "--current",
                "1.0",
                "--tags-file",
                path,
            ],
            "invalid regex",
        ),
        (
            &[
                "evaluate",
                "--rule",
                "regex",
                "--current",
                "1.0",
                "--tags-file",
                path,
            ],
            "value",
        ),
        (
            &[
                "evaluate",
                "--rule",
                "semver-minor",
                "--current",
                "1.0.0",
                "--tags-file",
                "/nonexistent/tags",
            ],
            "cannot read tags file",
        ),
        (
            &["evaluate", "--rule", "semver-minor", "--tags-file", path],
            "--current is required",
        ),
        (
            &["evaluate", "-f", "/nonexistent/image.yaml"],
            "cannot read",
        ),
        (&["evaluate", "--bogus-flag"], "--bogus-flag"),
        (&["run", "--tag-cache-ttl", "soon"], "invalid duration"),
        (
            &["run", "--tag-cache-ttl", "400h"],
            "--tag-cache-ttl must be at most 24h",
        ),
        (
            &["run", "--leader-elect", "--renew-deadline", "20s"],
            "--renew-deadline must be shorter",
        ),
        (&["run", "--concurrency", "0"], "at least 1"),
        (
            &["run", "--kubeconfig", "/nonexistent/kubeconfig.yaml"],
            "--kubeconfig /nonexistent/kubeconfig.yaml: no such file",
        ),
        (
            &["run", "--kubeconfig-dir", "/nonexistent/clusters"],
            "--kubeconfig-dir /nonexistent/clusters: no such folder",
        ),
    ];
    for (args, needle) in cases {
        let out = kimup(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let err = text(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: stderr {err:?} lacks {needle:?}"
        );
    }
}

#[test]
fn evaluate_a_manifest_explains_each_rule() {
    let f = tags_file(TAGS);
    let manifest = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        manifest.path(),
        r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Image
metadata: {name: web, namespace: team}
spec:
  image: nginx
  baseTag: 1.25.3
  triggers: [{type: crontab, value: "0 */15 * * * *"}]
  rules:
    - name: patches
      type: semver-patch
      actions: [{type: apply}]
    - name: minors
      type: semver-minor
      actions: [{type: alert-email, data: {valueFrom: {alertConfigRef: {name: team}}}}]
"#,
    )
    .expect("write");
    let m = manifest.path().to_str().expect("path");
    let t = f.path().to_str().expect("path");
    let out = kimup(&["evaluate", "-f", m, "--tags-file", t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("rule \"patches\" (semver-patch) from 1.25.3: chose 1.25.4"),
        "{s}"
    );
    // The apply of the first rule moves the tag the second starts from, as in a real sync.
    assert!(
        s.contains("rule \"minors\" (semver-minor) from 1.25.4: chose 1.26.0"),
        "{s}"
    );
    assert!(
        s.contains("1.26.1-alpine") && s.contains("variant alpine"),
        "{s}"
    );

    let out = kimup(&["evaluate", "-f", m, "--tags-file", t, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(v[0]["chosen"], "1.25.4");
    assert_eq!(v[1]["current"], "1.25.4");
    assert_eq!(v[1]["chosen"], "1.26.0");
    let rejected = v[1]["considered"]
        .as_array()
        .expect("considered")
        .iter()
        .find(|c| c["tag"] == "2.0.0")
        .expect("2.0.0 considered");
    assert_eq!(rejected["outcome"], "rejected");
    assert_eq!(rejected["reason"], "different major");
}

/// Without a tags file, the live registry is asked.
#[tokio::test]
async fn evaluate_a_manifest_against_the_live_registry() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("cli/live", &["0.9.0", "1.0.0", "1.0.7", "1.1.0"])
        .await
        .expect("push");
    let manifest = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(
        manifest.path(),
        format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: live}}\nspec:\n  image: {}/cli/live\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: p, type: semver-patch, actions: [{{type: apply}}]}}]\n",
            reg.host
        ),
    )
    .expect("write");
    let m = manifest.path().to_str().expect("path").to_string();
    let insecure = format!("--insecure-registry={}", reg.host);
    let out = tokio::task::spawn_blocking(move || {
        kimup(&["evaluate", "-f", &m, &insecure, "--output", "json"])
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["chosen"], "1.0.7");
}

#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    // An empty kubeconfig folder: kimup runs, and warns that it has no member cluster.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("kimup.log");
    let clusters = dir.path().join("clusters");
    std::fs::create_dir(&clusters).expect("mkdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args([
            "--log-format",
            "text",
            "run",
            "--listen-addr",
            "127.0.0.1:0",
        ])
        .arg(format!("--kubeconfig-dir={}", clusters.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start kimup");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("no member cluster") {
            break text;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no \"no member cluster\" warning within 30 s: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("WARN"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
