//! Alerts reach real HTTP and SMTP listeners on loopback with the rendered default text, once per
//! (Image, rule, tag), even across a restart of kimup. Mutable tags fire the `digest` rule.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kimup::actions::template::{self, AlertContext};
use kimup::api::SyncResult;
use kimup_testenv::{HttpSink, SmtpServer};
use kube::api::{Api, ListParams, PostParams};

async fn create_alert_config(client: &kube::Client, ns: &str, sink: &HttpSink, smtp_port: u16) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "alert-secrets"},
        "stringData": {"discord": format!("{}/discord", sink.url), "smtpPort": smtp_port.to_string()}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "alert-settings"},
        "data": {"slack": format!("{}/slack", sink.url)}
    }))
    .expect("configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("configmap");
    let config = format!(
        r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: AlertConfig
metadata: {{name: team}}
spec:
  discord:
    webhookURL: {{valueFrom: {{secretKeyRef: {{name: alert-secrets, key: discord}}}}}}
  slack:
    webhookURL: {{valueFrom: {{configMapKeyRef: {{name: alert-settings, key: slack}}}}}}
  webhook:
    url: {{value: "{}/webhook"}}
    headers: [{{name: X-Token, value: {{value: t0k3n}}}}]
  email:
    host: {{value: 127.0.0.1}}
    port: {{valueFrom: {{secretKeyRef: {{name: alert-secrets, key: smtpPort}}}}}}
    encryption: None
    fromAddress: kimup@example.test
    toAddress: [ops@example.test]
"#,
        sink.url
    );
    let api: Api<kimup::api::AlertConfig> = Api::namespaced(client.clone(), ns);
    let ac: kimup::api::AlertConfig = serde_yaml::from_str(&config).expect("alertconfig");
    api.create(&PostParams::default(), &ac)
        .await
        .expect("create AlertConfig");
}

const ACTIONS: &str = r#"
      - {type: alert-discord, data: {valueFrom: {alertConfigRef: {name: team}}}}
      - {type: alert-slack, data: {valueFrom: {alertConfigRef: {name: team}}}}
      - {type: alert-webhook, data: {valueFrom: {alertConfigRef: {name: team}}}}
      - {type: alert-email, data: {valueFrom: {alertConfigRef: {name: team}}}}
      - {type: apply}"#;

#[tokio::test]
async fn alerts_are_delivered_once_even_across_restarts() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "alerts").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("alerts/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let image_ref = format!("{}/alerts/app", reg.host);
    let sink = HttpSink::start().await.expect("http sink");
    let smtp = SmtpServer::start(&env.run_dir, &env.log_dir())
        .await
        .expect("smtp");
    create_alert_config(&client, &ns, &sink, smtp.port).await;

    let mut kimup = start_kimup(env, cluster, &ns, &[]);
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
  baseTag: "1.0.0"
  triggers: [{{type: crontab, value: "*/2 * * * * *"}}]
  rules:
    - name: minor
      type: semver-minor
      actions:{ACTIONS}
"#
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    assert_eq!(
        status.result,
        Some(SyncResult::Success),
        "{:?}",
        status.message
    );

    let ctx = AlertContext {
        namespace: ns.clone(),
        name: "app".into(),
        image_name: image_ref.clone(),
        base_tag: "1.0.0".into(),
        new_tag: "1.1.0".into(),
        actual_tag: "1.0.0".into(),
        available_tags: vec!["1.0.0".into(), "1.1.0".into()],
        failure: None,
    };
    let text = template::render(template::DEFAULT_BODY, &ctx).expect("default body renders");
    let subject =
        template::render(template::DEFAULT_SUBJECT, &ctx).expect("default subject renders");
    assert!(
        text.contains("1.1.0") && text.contains(&image_ref),
        "default text names image and tag: {text}"
    );

    let discord = sink.received_on("/discord");
    assert_eq!(discord.len(), 1);
    assert_eq!(discord[0].body["content"], serde_json::json!(text));
    let slack = sink.received_on("/slack");
    assert_eq!(slack.len(), 1);
    assert_eq!(slack[0].body["text"], serde_json::json!(text));
    let hook = sink.received_on("/webhook");
    assert_eq!(hook.len(), 1);
    assert_eq!(hook[0].body["newTag"], "1.1.0");
    assert_eq!(hook[0].body["actualTag"], "1.0.0");
    assert_eq!(hook[0].body["rule"], "minor");
    assert_eq!(
        hook[0].headers.get("x-token").and_then(|v| v.to_str().ok()),
        Some("t0k3n")
    );
    let mails = wait_for(|| smtp.messages(), |m| !m.is_empty()).await;
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains(&format!("Subject: {}", subject.trim())),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("To: ops@example.test"), "{}", mails[0]);
    assert!(mails[0].contains("1.1.0"), "{}", mails[0]);

    // Several cron syncs and a restart later: nothing is sent again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    kimup.process.kill();
    let before = status.time.clone();
    kimup = start_kimup(env, cluster, &ns, &[]);
    wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.time != before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sink.received().len(),
        3,
        "no HTTP alert re-sent after restart"
    );
    assert_eq!(smtp.messages().len(), 1, "no e-mail re-sent after restart");

    // A newer tag alerts once more.
    reg.push_tags("alerts/app", &["1.2.0"]).await.expect("push");
    wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.2.0")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sink.received_on("/discord").len(), 2);
    assert_eq!(sink.received_on("/slack").len(), 2);
    assert_eq!(sink.received_on("/webhook").len(), 2);
    wait_for(|| smtp.messages(), |m| m.len() == 2).await;
}

#[tokio::test]
async fn failed_delivery_is_an_action_error_and_is_retried() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "alert-fail").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("alertfail/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let sink = HttpSink::start().await.expect("http sink");
    let api: Api<kimup::api::AlertConfig> = Api::namespaced(client.clone(), &ns);
    let ac: kimup::api::AlertConfig = serde_yaml::from_str(&format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: broken}}\nspec:\n  webhook:\n    url: {{value: \"{}/fail/hook\"}}\n",
        sink.url
    ))
    .expect("alertconfig");
    api.create(&PostParams::default(), &ac)
        .await
        .expect("create");
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/alertfail/app\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules:\n  - name: r\n    type: semver-minor\n    actions: [{{type: alert-webhook, data: {{valueFrom: {{alertConfigRef: {{name: broken}}}}}}}}]\n",
            reg.host
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(status.result, Some(SyncResult::ActionError));
    assert!(status.message.unwrap_or_default().contains("500"));
    // Not recorded as sent, so the next cron tick tries again.
    wait_for(|| sink.received_on("/fail/hook"), |r| r.len() >= 2).await;
}

#[tokio::test]
async fn moving_a_tag_fires_the_digest_rule() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "digest").await.expect("namespace");
    let reg = env.plain_registry();
    let first = reg
        .push_image("digest/app", "stable", "")
        .await
        .expect("push");
    let image_ref = format!("{}/digest/app", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image_ref}:stable"), true),
    )
    .await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {image_ref}\n  baseTag: stable\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules:\n  - name: rebuilt\n    type: digest\n    actions: [{{type: apply}}]\n"
        ),
    )
    .await;
    let s = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.digest.is_some()
    })
    .await;
    assert_eq!(
        s.digest.as_deref(),
        Some(first.as_str()),
        "first sight records the digest"
    );
    assert_eq!(s.result, Some(SyncResult::Success));
    let (before, _) = deployment_images(&client, &ns, "app").await;
    assert_eq!(
        before[0],
        format!("{image_ref}:stable"),
        "first sight does not fire"
    );

    let moved = reg.move_tag("digest/app", "stable").await.expect("move");
    let s = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.digest.as_deref() == Some(moved.as_str())
    })
    .await;
    assert_eq!(s.tag.as_deref(), Some("stable"));
    let (after, inits) = deployment_images(&client, &ns, "app").await;
    assert_eq!(
        after[0],
        format!("{image_ref}:stable@{moved}"),
        "the rollout pins the new digest"
    );
    assert_eq!(inits[0], format!("{image_ref}:stable@{moved}"));
}

#[tokio::test]
async fn a_refused_alert_is_retried_without_a_new_tag_and_delivered_once() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "alert-retry").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("alertretry/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let sink = HttpSink::start().await.expect("http sink");
    sink.set_failing(true);
    let api: Api<kimup::api::AlertConfig> = Api::namespaced(client.clone(), &ns);
    let ac: kimup::api::AlertConfig = serde_yaml::from_str(&format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: flaky}}\nspec:\n  webhook:\n    url: {{value: \"{}/flaky/hook\"}}\n",
        sink.url
    ))
    .expect("alertconfig");
    api.create(&PostParams::default(), &ac)
        .await
        .expect("create");
    let kimup = start_kimup(env, cluster, &ns, &[]);
    // apply first, then the alert: the tag moves to 1.1.0 in the first sync, so later syncs
    // find no new tag and only the pending alert can explain a retry.
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/alertretry/app\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules:\n  - name: r\n    type: semver-minor\n    actions: [{{type: apply}}, {{type: alert-webhook, data: {{valueFrom: {{alertConfigRef: {{name: flaky}}}}}}}}]\n",
            reg.host
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0") && !s.pending_alerts.is_empty()
    })
    .await;
    assert_eq!(status.result, Some(SyncResult::ActionError));
    assert_eq!(status.pending_alerts[0].new_tag, "1.1.0");
    // Retried at later syncs although no rule chooses a new tag any more.
    wait_for(|| sink.received_on("/flaky/hook"), |r| r.len() >= 3).await;
    sink.set_failing(false);
    let delivered = wait_status(&client, &ns, "app", Duration::from_secs(30), &kimup, |s| {
        s.pending_alerts.is_empty() && !s.alerts.is_empty()
    })
    .await;
    assert_eq!(delivered.alerts[0].tag, "1.1.0");
    assert_eq!(
        delivered.result,
        Some(SyncResult::Success),
        "{:?}",
        delivered.message
    );
    // Two more syncs after the delivery: still exactly one delivery.
    let after = delivered.time.clone();
    wait_status(&client, &ns, "app", Duration::from_secs(30), &kimup, |s| {
        s.time != after
    })
    .await;
    let later = wait_status(&client, &ns, "app", Duration::from_secs(30), &kimup, |s| {
        s.time != after
    })
    .await;
    wait_status(&client, &ns, "app", Duration::from_secs(30), &kimup, |s| {
        s.time != later.time
    })
    .await;
    let deliveries = sink.delivered_on("/flaky/hook");
    assert_eq!(
        deliveries.len(),
        1,
        "delivered once, after {} refused attempts",
        sink.received_on("/flaky/hook").len() - 1
    );
    assert_eq!(
        deliveries[0].body["newTag"], "1.1.0",
        "{:?}",
        deliveries[0].body
    );
}

/// A receiver answering 500 with an error page that quotes the request (path and headers), as
/// many do; returns its URL.
async fn echoing_receiver() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let app = axum::Router::new().fallback(|uri: Uri, headers: HeaderMap| async move {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no hook at {uri} (headers {headers:?})"),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

#[tokio::test]
async fn failed_alerts_never_show_secret_values() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "alert-leak").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("alertleak/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let marker = format!("tok{nanos:x}{:x}", std::process::id());
    let (echo, _echo_task) = echoing_receiver().await;
    // Port 1: nothing listens, so the connection is refused.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "alert-secrets"},
        "stringData": {
            "discord": format!("http://kimup:pw{marker}@127.0.0.1:1/api/webhooks/1/{marker}"),
            "slack": format!("{echo}/services/T0/B0/{marker}"),
            "webhook": format!("http://127.0.0.1:1/hooks/{marker}?token={marker}"),
            "token": format!("Bearer {marker}"),
            "password": format!("pw-{marker}"),
        }
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let from_secret =
        |key: &str| format!("{{valueFrom: {{secretKeyRef: {{name: alert-secrets, key: {key}}}}}}}");
    let config = format!(
        "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: AlertConfig\nmetadata: {{name: leaky}}\nspec:\n  \
         discord:\n    webhookURL: {}\n  slack:\n    webhookURL: {}\n  webhook:\n    url: {}\n    \
         headers: [{{name: Authorization, value: {}}}]\n  email:\n    host: {{value: 127.0.0.1}}\n    \
         port: {{value: \"1\"}}\n    username: {{value: kimup}}\n    password: {}\n    \
         encryption: None\n    fromAddress: kimup@example.test\n    toAddress: [ops@example.test]\n",
        from_secret("discord"),
        from_secret("slack"),
        from_secret("webhook"),
        from_secret("token"),
        from_secret("password"),
    );
    let ac: kimup::api::AlertConfig = serde_yaml::from_str(&config).expect("alertconfig");
    Api::<kimup::api::AlertConfig>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ac)
        .await
        .expect("create AlertConfig");
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/alertleak/app\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"*/2 * * * * *\"}}]\n  rules:\n  - name: r\n    type: semver-minor\n    actions:{}\n",
            reg.host,
            ACTIONS.replace("name: team", "name: leaky")
        ),
    )
    .await;
    // Every alert failed at least twice: refused (discord, webhook, e-mail), 500 (slack).
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.pending_alerts.len() == 4 && s.pending_alerts.iter().all(|p| p.attempts >= 2)
    })
    .await;
    assert_eq!(status.result, Some(SyncResult::ActionError));
    let status_text = serde_json::to_string(&status).expect("status JSON");
    assert!(
        !status_text.contains(&marker),
        "the Image status shows a secret: {status_text}"
    );

    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items;
    // The recorder folds events of one reason into a series that keeps the first note, so the
    // log below is where every failure is checked to have happened.
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("AlertFailed")),
        "no AlertFailed event"
    );
    for e in &events {
        let text = serde_json::to_string(e).expect("event JSON");
        assert!(!text.contains(&marker), "an event shows a secret: {text}");
    }

    let log = kimup.log_text();
    for needle in [
        "alert-discord delivery failed: POST http://127.0.0.1:1/…: error sending request",
        "alert-webhook delivery failed: POST http://127.0.0.1:1/…: error sending request",
        "alert-slack delivery failed: POST http://127.0.0.1:",
        "answered 500 Internal Server Error: no hook at",
        "alert-email delivery failed: SMTP 127.0.0.1:1",
    ] {
        assert!(
            log.contains(needle),
            "log lacks {needle:?}: {}",
            kimup.log.display()
        );
    }
    assert!(
        !log.contains(&marker),
        "kimup's log shows a secret: {}",
        log.lines()
            .filter(|l| l.contains(&marker))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn wait_for<T>(get: impl Fn() -> T, ok: impl Fn(&T) -> bool) -> T {
    for _ in 0..150 {
        let v = get();
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("condition not met within 30 s");
}
