//! Registry webhooks: a real registry's push notification makes kimup sync the Images that
//! have a webhook trigger, through a cache that would otherwise still hold the old tag list;
//! bad requests are refused.

mod common;

use std::time::Duration;

use common::*;
use kimup::api::SyncResult;
use kimup_testenv::process::free_port;
use kimup_testenv::{Binaries, Registry};

const TOKEN: &str = "hook-s3cret";

#[tokio::test]
async fn a_registry_push_notification_syncs_webhook_images() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "webhook").await.expect("namespace");
    let port = free_port().expect("port");
    let reg = Registry::start_notifying(
        &format!("registry-notify-{ns}"),
        Binaries::get().expect("binaries"),
        &env.run_dir.join("data"),
        &env.log_dir(),
        &format!("http://127.0.0.1:{port}/webhooks/distribution"),
        TOKEN,
    )
    .await
    .expect("registry");
    reg.push_tags("hooked/app", &["1.0.0"]).await.expect("push");
    let image = format!("{}/hooked/app", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image}:1.0.0"), true),
    )
    .await;
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        // A long TTL: only the webhook's invalidation can make the new tag visible in time.
        "--tag-cache-ttl=1h".into(),
    ];
    let kimup = spawn_kimup_with_env(
        env,
        &format!("kimup-{ns}"),
        &args,
        &[("KIMUP_WEBHOOK_TOKEN".into(), TOKEN.into())],
    );
    // Only a webhook trigger: no crontab will ever look again. The crontab-only Image watches
    // a repository of its own (two Images applying one repository in a namespace conflict).
    reg.push_tags("hooked/other", &["1.0.0"])
        .await
        .expect("push");
    let other = format!("{}/hooked/other", reg.host);
    for (name, trigger, image) in [("app", "webhook", &image), ("cron-only", "crontab", &other)] {
        let value = if trigger == "crontab" {
            ", value: '@yearly'"
        } else {
            ""
        };
        create_image(
            &client,
            &ns,
            &format!(
                "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: [{{type: {trigger}{value}}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
            ),
        )
        .await;
    }
    for name in ["app", "cron-only"] {
        let s = wait_status(&client, &ns, name, Duration::from_secs(60), &kimup, |s| {
            s.result.is_some()
        })
        .await;
        assert_eq!(s.result, Some(SyncResult::Success), "{:?}", s.message);
        assert_eq!(s.tag.as_deref(), Some("1.0.0"));
    }

    // The pushes: the registry notifies kimup, in push order. Only the Image with a webhook
    // trigger syncs, lists again and rolls out.
    reg.push_tags("hooked/other", &["1.1.0"])
        .await
        .expect("push");
    reg.push_tags("hooked/app", &["1.1.0"]).await.expect("push");
    wait_status(&client, &ns, "app", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    let (containers, _) = deployment_images(&client, &ns, "app").await;
    assert_eq!(containers[0], format!("{image}:1.1.0"));
    assert!(
        kimup.log_text().contains("\"trigger\":\"webhook\""),
        "synced for the webhook"
    );
    // The Image without a webhook trigger is left to its schedule: the notification of its own
    // repository's push came first and was handled before the one that moved `app`.
    let api: kube::Api<kimup::api::Image> = kube::Api::namespaced(client.clone(), &ns);
    let cron = api.get("cron-only").await.expect("get");
    assert_eq!(cron.status.and_then(|s| s.tag).as_deref(), Some("1.0.0"));

    // Bad requests. The shared token is distribution's secret here, and generic's: generic takes
    // it as a bearer token only (a token in a URL ends up in access logs).
    let http = reqwest::Client::new();
    let url = |source: &str| format!("http://127.0.0.1:{port}/webhooks/{source}");
    let body = r#"{"repository":"127.0.0.1:1/x/y","tag":"1"}"#;
    let status = |r: reqwest::Response| r.status().as_u16();
    let no_token = http
        .post(url("generic"))
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(status(no_token), 401);
    let wrong = http
        .post(url("distribution"))
        .bearer_auth("nope")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(status(wrong), 401);
    let query = http
        .post(format!("{}?token={TOKEN}", url("generic")))
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(status(query), 401, "generic takes no token in the URL");
    let bearer = http
        .post(url("generic"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(status(bearer), 202);
    let unknown = http
        .post(url("gitlab"))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(status(unknown), 404);
    let garbage = http
        .post(url("generic"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(status(garbage), 400);
    let huge = http
        .post(url("generic"))
        .bearer_auth(TOKEN)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(status(huge), 413);
    assert!(
        !kimup.log_text().contains(TOKEN),
        "the token is never logged"
    );
}
