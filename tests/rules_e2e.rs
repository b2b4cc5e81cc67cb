//! Every rule type end to end: tags pushed to a real registry, an Image created in a real API
//! server, kimup running as a process; status.tag and the Deployment's images must follow.
//! And every rule case of kimup (Go) through `kimup evaluate` (tests/fixtures/upstream-rules.yaml).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde::Deserialize;

const SEMVER_TAGS: &[&str] = &[
    "1.2.3",
    "1.2.4",
    "1.3.0",
    "1.3.1",
    "1.10.0",
    "2.0.0",
    "2.1.0",
    "3.0.0-rc1",
    "1.2.5-alpine",
];
const CALVER_TAGS: &[&str] = &[
    "2023.01.01",
    "2024.02.01",
    "2024.02.10",
    "2024.03.01",
    "2025.01.01",
    "2025.02.01-rc1",
];

async fn rule_case(
    case: &str,
    rule: &str,
    value: Option<&str>,
    base: &str,
    tags: &[&str],
    expected: &str,
) {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, case).await.expect("namespace");
    let repo = format!("rules/{case}");
    let reg = env.plain_registry();
    reg.push_tags(&repo, tags).await.expect("push");
    let image_ref = format!("{}/{repo}", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image_ref}:{base}"), true),
    )
    .await;
    create_deployment(
        &client,
        &ns,
        &deployment("not-opted", &format!("{image_ref}:{base}"), false),
    )
    .await;
    let value_line = value
        .map(|v| format!("\n      value: '{v}'"))
        .unwrap_or_default();
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &format!(
            r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Image
metadata: {{name: app}}
spec:
  image: {image_ref}
  baseTag: "{base}"
  triggers: [{{type: crontab, value: "0 0 */6 * * *"}}]
  rules:
    - name: {case}
      type: {rule}{value_line}
      actions: [{{type: apply}}]
"#
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(
        status.result.map(|r| r.as_str()),
        Some("Success"),
        "{case}: {:?}",
        status.message
    );
    assert_eq!(
        status.tag.as_deref(),
        Some(expected),
        "{case}: {:?}",
        status.message
    );
    let (containers, inits) = deployment_images(&client, &ns, "app").await;
    let want = format!("{image_ref}:{expected}");
    assert_eq!(
        containers,
        vec![want.clone(), "busybox:1.36".to_string()],
        "{case}"
    );
    assert_eq!(inits, vec![want], "{case}: init containers follow too");
    let (untouched, _) = deployment_images(&client, &ns, "not-opted").await;
    assert_eq!(
        untouched[0],
        format!("{image_ref}:{base}"),
        "{case}: no opt-in, no change"
    );
    assert!(
        event_reasons(&client, &ns, "app")
            .await
            .contains(&"NewTag".to_string())
    );
}

#[tokio::test]
async fn semver_major() {
    rule_case(
        "semver-major",
        "semver-major",
        None,
        "1.2.3",
        SEMVER_TAGS,
        "2.1.0",
    )
    .await;
}

#[tokio::test]
async fn semver_minor_orders_numerically() {
    // kimup (Go) chose 1.3.1 here: string order puts 1.10.0 below 1.3.1.
    rule_case(
        "semver-minor",
        "semver-minor",
        None,
        "1.2.3",
        SEMVER_TAGS,
        "1.10.0",
    )
    .await;
}

#[tokio::test]
async fn semver_patch_skips_variants() {
    rule_case(
        "semver-patch",
        "semver-patch",
        None,
        "1.2.3",
        SEMVER_TAGS,
        "1.2.4",
    )
    .await;
}

#[tokio::test]
async fn calver_major() {
    rule_case(
        "calver-major",
        "calver-major",
        None,
        "2024.02.01",
        CALVER_TAGS,
        "2025.01.01",
    )
    .await;
}

#[tokio::test]
async fn calver_minor() {
    rule_case(
        "calver-minor",
        "calver-minor",
        None,
        "2024.02.01",
        CALVER_TAGS,
        "2024.03.01",
    )
    .await;
}

#[tokio::test]
async fn calver_patch() {
    rule_case(
        "calver-patch",
        "calver-patch",
        None,
        "2024.02.01",
        CALVER_TAGS,
        "2024.02.10",
    )
    .await;
}

#[tokio::test]
async fn calver_prerelease() {
    // kimup (Go)'s docs' example: the highest later dev build, never the release.
    rule_case(
        "calver-prerelease",
        "calver-prerelease",
        None,
        "2024.0.0-dev.0",
        &[
            "2024.0.0-dev.0",
            "2024.0.0-dev.1",
            "2024.0.0-dev.2",
            "2024.0.0",
        ],
        "2024.0.0-dev.2",
    )
    .await;
}

#[tokio::test]
async fn regex() {
    rule_case(
        "regex",
        "regex",
        Some(r"^1\.2\.\d+-dev\d+$"),
        "1.2.3",
        &[
            "1.2.3",
            "1.2.4-dev1",
            "1.2.4-dev2",
            "1.2.10-dev1",
            "2.0.0-dev1",
        ],
        "1.2.10-dev1",
    )
    .await;
}

#[tokio::test]
async fn always() {
    rule_case(
        "always",
        "always",
        None,
        "1.0.0",
        &["1.0.0", "1.1.0", "0.9.0"],
        "1.1.0",
    )
    .await;
}

/// `apply` reaches every workload kind: StatefulSets, DaemonSets and CronJobs as Deployments.
#[tokio::test]
async fn apply_updates_every_workload_kind() {
    use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
    use k8s_openapi::api::batch::v1::CronJob;
    use kube::api::{Api, PostParams};

    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "kinds").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("rules/kinds", &["3.0.0", "3.1.0"])
        .await
        .expect("push");
    let image = format!("{}/rules/kinds", reg.host);
    let old = format!("{image}:3.0.0");
    let pod = serde_json::json!({
        "metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": old}], "restartPolicy": "Never"}
    });
    let meta =
        serde_json::json!({"name": "x", "annotations": {"kimup.cloudavenue.io/enabled": "true"}});
    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": meta, "spec": {"serviceName": "x", "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": pod["metadata"], "spec": {"containers": pod["spec"]["containers"]}}}
    }))
    .expect("sts");
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": meta, "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": pod["metadata"], "spec": {"containers": pod["spec"]["containers"]}}}
    }))
    .expect("ds");
    let cj: CronJob = serde_json::from_value(serde_json::json!({
        "metadata": meta, "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": pod}}}
    }))
    .expect("cronjob");
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("sts");
    Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await
        .expect("ds");
    Api::<CronJob>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cj)
        .await
        .expect("cronjob");
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: x}}\nspec:\n  image: {image}\n  baseTag: 3.0.0\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: m, type: semver-minor, actions: [{{type: apply}}]}}]\n"
        ),
    )
    .await;
    wait_status(&client, &ns, "x", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("3.1.0")
    })
    .await;
    let new = format!("{image}:3.1.0");
    let image_of = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
        spec.and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default()
    };
    let s = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("x")
        .await
        .expect("get");
    assert_eq!(
        image_of(s.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
        new
    );
    let d = Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .get("x")
        .await
        .expect("get");
    assert_eq!(
        image_of(d.spec.as_ref().and_then(|s| s.template.spec.as_ref())),
        new
    );
    let c = Api::<CronJob>::namespaced(client.clone(), &ns)
        .get("x")
        .await
        .expect("get");
    assert_eq!(
        image_of(
            c.spec
                .job_template
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
        ),
        new
    );
}

/// tests/fixtures/upstream-rules.yaml: kimup (Go)'s rule cases with its answers and ours.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRules {
    differences: BTreeMap<String, Difference>,
    cases: Vec<UpstreamCase>,
    manifests: Vec<UpstreamManifest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Difference {
    /// Text that README.md's differences table must contain.
    readme: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamCase {
    source: String,
    rule: String,
    value: Option<String>,
    current: String,
    tags: Vec<String>,
    #[serde(flatten)]
    answers: Answers,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamManifest {
    source: String,
    file: String,
    tags: Vec<String>,
    rules: Vec<Answers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answers {
    upstream: String,
    kimup: String,
    difference: Option<String>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn upstream_rules() -> UpstreamRules {
    let text = std::fs::read_to_string(fixtures().join("upstream-rules.yaml")).expect("fixture");
    serde_yaml::from_str(&text).expect("upstream-rules.yaml parses")
}

fn write_tags(tags: &[String]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), tags.join("\n")).expect("write tags");
    f
}

/// `kimup evaluate` on one case, answered as the fixture writes answers.
fn evaluate_case(case: &UpstreamCase) -> String {
    let tags = write_tags(&case.tags);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kimup"));
    // `--flag=value`: the current tag may be empty and a value may start with `-`.
    cmd.arg("evaluate")
        .arg(format!("--rule={}", case.rule))
        .arg(format!("--current={}", case.current))
        .arg("--tags-file")
        .arg(tags.path());
    if let Some(value) = &case.value {
        cmd.arg(format!("--value={value}"));
    }
    let out = cmd.output().expect("run kimup evaluate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) if stdout.trim().is_empty() => "<none>".to_string(),
        Some(0) => stdout.trim().to_string(),
        Some(2) if stdout.is_empty() => "<error>".to_string(),
        _ => panic!(
            "{}: unexpected exit {:?}: {stdout} {}",
            case.source,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `kimup evaluate -f` on one manifest: each rule's answer, in order.
fn evaluate_manifest(manifest: &UpstreamManifest) -> Vec<String> {
    let tags = write_tags(&manifest.tags);
    let out = Command::new(env!("CARGO_BIN_EXE_kimup"))
        .arg("evaluate")
        .arg("-f")
        .arg(fixtures().join(&manifest.file))
        .arg("--tags-file")
        .arg(tags.path())
        .args(["--output", "json"])
        .output()
        .expect("run kimup evaluate -f");
    assert!(
        out.status.success(),
        "{}: {}",
        manifest.source,
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("json reports");
    reports
        .iter()
        .map(|r| {
            if !r["error"].is_null() {
                "<error>".to_string()
            } else {
                r["chosen"].as_str().unwrap_or("<none>").to_string()
            }
        })
        .collect()
}

/// The problems with one answer: ours not what the fixture says, or a disagreement with kimup
/// (Go) that is not a listed difference, or a listed difference where the two agree.
fn check_answer(
    what: &str,
    got: &str,
    answers: &Answers,
    differences: &BTreeMap<String, Difference>,
    used: &mut Vec<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if got != answers.kimup {
        problems.push(format!(
            "{what}: kimup evaluate says {got}, the fixture says {}",
            answers.kimup
        ));
    }
    match (&answers.difference, answers.upstream == answers.kimup) {
        (None, false) => problems.push(format!(
            "{what}: kimup (Go) says {}, we say {}, and no difference is named",
            answers.upstream, answers.kimup
        )),
        (Some(d), true) => problems.push(format!(
            "{what}: names difference {d} but agrees with kimup (Go)"
        )),
        (Some(d), false) if !differences.contains_key(d) => {
            problems.push(format!("{what}: unknown difference {d}"))
        }
        (Some(d), false) => used.push(d.clone()),
        (None, true) => {}
    }
    problems
}

/// kimup (Go)'s own rule tests and rule docs, through the CLI: every answer is kimup (Go)'s
/// unless it is a difference the README lists.
#[test]
fn upstream_rule_cases_through_the_cli() {
    let fixture = upstream_rules();
    let mut problems = Vec::new();
    let mut used = Vec::new();
    for case in &fixture.cases {
        let what = format!("{} ({} from {:?})", case.source, case.rule, case.current);
        let got = evaluate_case(case);
        problems.extend(check_answer(
            &what,
            &got,
            &case.answers,
            &fixture.differences,
            &mut used,
        ));
    }
    for manifest in &fixture.manifests {
        let got = evaluate_manifest(manifest);
        if got.len() != manifest.rules.len() {
            problems.push(format!(
                "{}: {} rules evaluated, {} answers in the fixture",
                manifest.source,
                got.len(),
                manifest.rules.len()
            ));
            continue;
        }
        for (i, (got, answers)) in got.iter().zip(&manifest.rules).enumerate() {
            let what = format!("{} rule {}", manifest.source, i + 1);
            problems.extend(check_answer(
                &what,
                got,
                answers,
                &fixture.differences,
                &mut used,
            ));
        }
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("## Differences from kimup (Go)")
        .expect("README has a differences section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    for (name, difference) in &fixture.differences {
        if !used.contains(name) {
            problems.push(format!("difference {name} is used by no case"));
        }
        if !section.contains(&difference.readme) {
            problems.push(format!(
                "difference {name}: README's differences section lacks {:?}",
                difference.readme
            ));
        }
    }
    assert!(
        fixture.cases.len() >= 60,
        "only {} cases",
        fixture.cases.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
