//! The committed CRDs are what the Rust types generate, and the real API server accepts every
//! example manifest of kimup's documentation with them.

mod common;

use std::path::Path;

use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;

#[test]
fn committed_crds_are_fresh() {
    let generated = kimup::api::crds_yaml().expect("generate CRDs");
    for file in ["crds/kimup.yaml", "charts/kimup/crds/kimup.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} is stale: run scripts/gen-crds.sh and commit the result"
        );
    }
}

#[test]
fn schema_has_the_promised_validation() {
    let yaml = kimup::api::crds_yaml().expect("generate CRDs");
    for needle in [
        "semver-major",
        "calver-prerelease",
        "digest",
        "alert-email",
        "alert-discord",
        "request-approval",
        "crontab",
        "webhook",
        "x-kubernetes-validations",
        "a regex rule needs a regular expression in value",
        "Last-Result",
        "Last-Sync",
        "default: latest",
        "maxLength: 255",
        "maxLength: 16384",
        "maxItems: 32",
    ] {
        assert!(yaml.contains(needle), "CRD YAML lacks {needle:?}");
    }
}

/// Every example of kimup's docs, created unchanged, is accepted by the real API server.
#[tokio::test]
async fn upstream_examples_are_accepted() {
    let env = common::env();
    let client = env.clusters[0].client().await.expect("client");
    let ns = env.namespace(0, "examples").await.expect("namespace");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected kimup's doc examples in {}",
        dir.display()
    );
    let mut accepted = 0;
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).expect("read example");
        let mut obj: DynamicObject = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_else(|| "Image".into());
        let plural = if kind == "AlertConfig" {
            "alertconfigs"
        } else {
            "images"
        };
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", &kind),
            plural,
        );
        // Names repeat across examples: make each unique, leave the spec untouched.
        obj.metadata.name = Some(format!("ex-{i}"));
        obj.metadata.namespace = None;
        obj.types = Some(kube::core::TypeMeta {
            api_version: "kimup.cloudavenue.io/v1alpha1".into(),
            kind: kind.clone(),
        });
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let sent = obj.data["spec"].clone();
        let stored = api
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e}", file.display()));
        // Accepted is not enough: a field the schema does not know is pruned silently.
        if let Some(missing) = first_missing(&sent, &stored.data["spec"], "spec") {
            panic!("{}: the API server dropped {missing}", file.display());
        }
        accepted += 1;
    }
    assert_eq!(accepted, files.len());
}

/// Bad specs are refused by the schema with the messages users need.
#[tokio::test]
async fn schema_rejects_bad_specs() {
    let env = common::env();
    let client = env.clusters[0].client().await.expect("client");
    let ns = env.namespace(0, "schema").await.expect("namespace");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", "Image"),
        "images",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let long_image = format!("registry.example/{}", "a".repeat(300));
    let many_rules =
        vec![r#"{"name":"r","type":"always","actions":[{"type":"apply"}]}"#; 33].join(",");
    let long_regex = "a".repeat(1025);
    let over_limit = [
        (
            "image over 255 characters",
            format!(
                r#"{{"image":"{long_image}","triggers":[{{"type":"crontab","value":"@hourly"}}],"rules":[{{"name":"r","type":"always","actions":[{{"type":"apply"}}]}}]}}"#
            ),
            "spec.image: Too long: may not be more than 255 bytes",
        ),
        (
            "33 rules",
            format!(
                r#"{{"image":"nginx","triggers":[{{"type":"crontab","value":"@hourly"}}],"rules":[{many_rules}]}}"#
            ),
            "spec.rules: Too many: 33: must have at most 32 items",
        ),
        (
            "regex over 1024 characters",
            format!(
                r#"{{"image":"nginx","triggers":[{{"type":"crontab","value":"@hourly"}}],"rules":[{{"name":"r","type":"regex","value":"{long_regex}","actions":[{{"type":"apply"}}]}}]}}"#
            ),
            "spec.rules[0].value: Too long: may not be more than 1024 bytes",
        ),
    ];
    for (i, (what, spec, needle)) in over_limit.iter().enumerate() {
        let mut obj = DynamicObject::new(&format!("over-{i}"), &ar);
        obj.data = serde_json::json!({"spec": serde_json::from_str::<serde_json::Value>(spec).expect("json")});
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(what);
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
    // AlertConfig: a template over 16 KiB.
    let alert_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kimup.cloudavenue.io", "v1alpha1", "AlertConfig"),
        "alertconfigs",
    );
    let alerts: Api<DynamicObject> = Api::namespaced_with(client, &ns, &alert_ar);
    let mut obj = DynamicObject::new("over-template", &alert_ar);
    obj.data = serde_json::json!({"spec": {"slack": {
        "webhookURL": {"value": "http://127.0.0.1:1/hook"},
        "templateBody": "x".repeat(16385),
    }}});
    let err = alerts
        .create(&PostParams::default(), &obj)
        .await
        .expect_err("a 16,385-character template");
    assert!(
        err.to_string()
            .contains("spec.slack.templateBody: Too long: may not be more than 16384 bytes"),
        "{err}"
    );
    let cases = [
        (
            "unknown rule type",
            r#"{"image":"nginx","triggers":[{"type":"crontab","value":"@hourly"}],"rules":[{"name":"r","type":"semver-mega","actions":[{"type":"apply"}]}]}"#,
            "semver-mega",
        ),
        (
            "regex without value",
            r#"{"image":"nginx","triggers":[{"type":"crontab","value":"@hourly"}],"rules":[{"name":"r","type":"regex","actions":[{"type":"apply"}]}]}"#,
            "a regex rule needs a regular expression",
        ),
        (
            "no rules",
            r#"{"image":"nginx","triggers":[{"type":"crontab","value":"@hourly"}],"rules":[]}"#,
            "at least one rule",
        ),
        (
            "no actions",
            r#"{"image":"nginx","triggers":[{"type":"crontab","value":"@hourly"}],"rules":[{"name":"r","type":"always","actions":[]}]}"#,
            "at least one action",
        ),
        (
            "crontab without value",
            r#"{"image":"nginx","triggers":[{"type":"crontab"}],"rules":[{"name":"r","type":"always","actions":[{"type":"apply"}]}]}"#,
            "crontab trigger needs",
        ),
        (
            "unknown action",
            r#"{"image":"nginx","triggers":[{"type":"crontab","value":"@hourly"}],"rules":[{"name":"r","type":"always","actions":[{"type":"deploy"}]}]}"#,
            "deploy",
        ),
        (
            "missing image",
            r#"{"triggers":[{"type":"crontab","value":"@hourly"}],"rules":[{"name":"r","type":"always","actions":[{"type":"apply"}]}]}"#,
            "image",
        ),
    ];
    for (i, (what, spec, needle)) in cases.iter().enumerate() {
        let mut obj = DynamicObject::new(&format!("bad-{i}"), &ar);
        obj.data = serde_json::json!({"spec": serde_json::from_str::<serde_json::Value>(spec).expect("json")});
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(what);
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
}

/// The first path of `sent` that `stored` lacks or holds with another value (defaults may add).
fn first_missing(
    sent: &serde_json::Value,
    stored: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (sent, stored) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None if !v.is_null() => Some(format!("{path}.{k}")),
            None => None,
            Some(w) => first_missing(v, w, &format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_missing(v, w, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path.to_string()),
    }
}

#[test]
fn first_missing_finds_pruned_fields() {
    let sent = serde_json::json!({"a": 1, "b": {"c": [1, {"d": true}]}});
    let pruned = serde_json::json!({"a": 1, "b": {"c": [1, {}]}, "extra": "default"});
    assert_eq!(
        first_missing(&sent, &pruned, "spec").as_deref(),
        Some("spec.b.c[1].d")
    );
    let kept = serde_json::json!({"a": 1, "b": {"c": [1, {"d": true}]}, "extra": 0});
    assert_eq!(first_missing(&sent, &kept, "spec"), None);
}
