//! Bad input is normal input: each broken Image gets its documented result, a message and a
//! Warning event, while a healthy Image in the same namespace keeps syncing.

mod common;

use std::time::Duration;

use common::*;
use kimup::api::SyncResult;

struct Case {
    name: &'static str,
    spec: String,
    result: SyncResult,
    message: &'static str,
    reason: &'static str,
}

fn image_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn every_bad_input_is_reported_and_the_rest_keeps_syncing() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "bad").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("bad/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let good_ref = format!("{}/bad/app", reg.host);
    let trig = "  triggers: [{type: crontab, value: \"*/2 * * * * *\"}]\n";
    let apply = "    actions: [{type: apply}]\n";
    let cases = vec![
        Case {
            name: "invalid-cron",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"0 61 * * * *\"}}]\n  rules:\n  - name: r\n    type: semver-minor\n{apply}"
            ),
            result: SyncResult::Error,
            message: "61",
            reason: "InvalidTrigger",
        },
        Case {
            name: "invalid-regex",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: regex\n    value: '^(1\\.'\n{apply}"
            ),
            result: SyncResult::GetRuleError,
            message: "regex",
            reason: "RuleError",
        },
        Case {
            name: "unparsable-basetag",
            spec: format!(
                "  image: {good_ref}\n  baseTag: latest\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}"
            ),
            result: SyncResult::GetRuleError,
            message: "latest",
            reason: "RuleError",
        },
        Case {
            name: "missing-secret",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n  imagePullSecrets: [{{name: nope}}]\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}"
            ),
            result: SyncResult::PullSecretsError,
            message: "nope",
            reason: "PullSecretError",
        },
        Case {
            name: "missing-alertconfig",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: semver-minor\n    actions:\n    - type: alert-discord\n      data: {{valueFrom: {{alertConfigRef: {{name: ghost}}}}}}\n"
            ),
            result: SyncResult::ActionError,
            message: "ghost",
            reason: "AlertFailed",
        },
        Case {
            // Three nested ranges over the repository's 61 tags: 226,981 iterations, past the
            // cap of 100,000 (over 1,000 tags it would be 10^9, rendered on a runtime worker).
            name: "template-bomb",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: semver-minor\n    actions:\n    - type: alert-webhook\n      data: {{valueFrom: {{alertConfigRef: {{name: bomb}}}}}}\n"
            ),
            result: SyncResult::ActionError,
            message: "rendering needs more than 100000 range iterations",
            reason: "AlertFailed",
        },
        Case {
            // A short regex that compiles to ~5 MiB.
            name: "huge-regex",
            spec: format!(
                "  image: {good_ref}\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: regex\n    value: '\\w{{100}}'\n{apply}"
            ),
            result: SyncResult::GetRuleError,
            message: "compiles to more than 1 MiB",
            reason: "RuleError",
        },
        Case {
            name: "registry-down",
            spec: format!(
                "  image: 127.0.0.1:1/bad/app\n  baseTag: 1.0.0\n  insecureSkipTLSVerify: true\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}"
            ),
            result: SyncResult::RegistryError,
            message: "127.0.0.1:1",
            reason: "RegistryError",
        },
        Case {
            name: "unknown-repository",
            spec: format!(
                "  image: {}/bad/does-not-exist\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}",
                reg.host
            ),
            result: SyncResult::RegistryError,
            message: "not found",
            reason: "RegistryError",
        },
        Case {
            name: "image-with-tag",
            spec: format!(
                "  image: {good_ref}:1.0.0\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}"
            ),
            result: SyncResult::GetImageError,
            message: "baseTag",
            reason: "InvalidImage",
        },
    ];
    // One repository per Image: two Images applying one repository in one namespace are a
    // conflict of their own (tests/apply.rs), which would hide the error each case is about.
    for c in &cases {
        reg.push_tags(&format!("bad/app-{}", c.name), &["1.0.0", "1.1.0"])
            .await
            .expect("push");
    }
    let patches: Vec<String> = (1..60).map(|p| format!("1.0.{p}")).collect();
    let patches: Vec<&str> = patches.iter().map(String::as_str).collect();
    reg.push_tags("bad/app-template-bomb", &patches)
        .await
        .expect("push");
    // Silent, so that the iteration cap is reached before the 64 KiB output cap.
    let bomb = "{{ range .AvailableTags }}{{ range $.AvailableTags }}{{ range $.AvailableTags }}\
                {{ end }}{{ end }}{{ end }}";
    let config: kimup::api::AlertConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "kimup.cloudavenue.io/v1alpha1",
        "kind": "AlertConfig",
        "metadata": {"name": "bomb"},
        // Nothing listens there: the template must fail before any delivery is tried.
        "spec": {"webhook": {"url": {"value": "http://127.0.0.1:1/never"}, "templateBody": bomb}}
    }))
    .expect("alertconfig");
    kube::Api::<kimup::api::AlertConfig>::namespaced(client.clone(), &ns)
        .create(&kube::api::PostParams::default(), &config)
        .await
        .expect("create AlertConfig");
    let kimup = start_kimup(env, cluster, &ns, &[]);
    for c in &cases {
        let spec = c.spec.replace(&good_ref, &format!("{good_ref}-{}", c.name));
        create_image(&client, &ns, &image_yaml(c.name, &spec)).await;
    }
    create_image(
        &client,
        &ns,
        &image_yaml(
            "good",
            &format!("  image: {good_ref}\n  baseTag: 1.0.0\n{trig}  rules:\n  - name: r\n    type: semver-minor\n{apply}"),
        ),
    )
    .await;

    for c in &cases {
        let status = wait_status(&client, &ns, c.name, Duration::from_secs(60), &kimup, |s| {
            s.result.is_some()
        })
        .await;
        assert_eq!(
            status.result,
            Some(c.result),
            "{}: {:?}",
            c.name,
            status.message
        );
        let message = status.message.clone().unwrap_or_default();
        assert!(
            message.contains(c.message),
            "{}: message {message:?} lacks {:?}",
            c.name,
            c.message
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(ready.status, "False", "{}", c.name);
        wait_event(&client, &ns, c.name, c.reason).await;
    }
    let good = wait_status(&client, &ns, "good", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    assert_eq!(good.result, Some(SyncResult::Success));

    // The controller is still alive and syncing on schedule: a new tag reaches the good Image.
    reg.push_tags("bad/app", &["1.2.0"]).await.expect("push");
    wait_status(&client, &ns, "good", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.2.0")
    })
    .await;
    let log = kimup.log_text();
    assert!(
        !log.contains("panicked"),
        "kimup panicked: {}",
        kimup.log.display()
    );
}
