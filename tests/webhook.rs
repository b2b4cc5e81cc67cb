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

/// A GitHub `package` event for a container published to GHCR, as GitHub delivers it (fields as
/// in GitHub's webhook documentation; identifiers made up).
fn ghcr_package_event(owner: &str, name: &str, tag: &str) -> String {
    serde_json::json!({
        "action": "published",
        "package": {
            "id": 4815162,
            "name": name,
            "namespace": owner,
            "description": "",
            "ecosystem": "CONTAINER",
            "package_type": "CONTAINER",
            "html_url": format!("https://github.com/orgs/{owner}/packages/container/package/{name}"),
            "created_at": "2026-11-02T09:14:03Z",
            "updated_at": "2026-11-29T07:58:41Z",
            "owner": {
                "login": owner,
                "id": 90210,
                "node_id": "O_kgDOAAFgQg",
                "type": "Organization",
                "site_admin": false,
                "url": format!("https://api.github.com/users/{owner}"),
                "html_url": format!("https://github.com/{owner}")
            },
            "package_version": {
                "id": 271828182,
                "version": "sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e",
                "name": "sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e",
                "description": "",
                "summary": "",
                "body": "",
                "manifest": "",
                "html_url": format!("https://github.com/orgs/{owner}/packages/container/{name}/271828182"),
                "target_commitish": "main",
                "target_oid": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                "created_at": "2026-11-29T07:58:40Z",
                "updated_at": "2026-11-29T07:58:40Z",
                "metadata": [],
                "container_metadata": {
                    "tag": {
                        "name": tag,
                        "digest": "sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e"
                    },
                    "labels": {
                        "description": "",
                        "source": format!("https://github.com/{owner}/{name}"),
                        "revision": "9fceb02d0ae598e95dc970b74767f19372d61af8",
                        "image_url": format!("https://github.com/{owner}/{name}"),
                        "licenses": "Apache-2.0",
                        "all_labels": {
                            "org.opencontainers.image.source": format!("https://github.com/{owner}/{name}"),
                            "org.opencontainers.image.revision": "9fceb02d0ae598e95dc970b74767f19372d61af8"
                        }
                    },
                    "manifest": {
                        "digest": "sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e",
                        "media_type": "application/vnd.oci.image.index.v1+json",
                        "uri": format!("repositories/{owner}/{name}/manifests/sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e"),
                        "size": 1609
                    }
                },
                "package_files": [],
                "installation_command": format!("docker pull ghcr.io/{owner}/{name}:{tag}"),
                "package_url": format!("ghcr.io/{owner}/{name}:{tag}")
            },
            "registry": {
                "about_url": "https://docs.github.com/packages/learn-github-packages/introduction-to-github-packages",
                "name": "GitHub CONTAINER registry",
                "type": "CONTAINER",
                "url": format!("https://ghcr.io/{owner}"),
                "vendor": "GitHub Inc"
            }
        },
        "repository": {
            "id": 700100200,
            "name": name,
            "full_name": format!("{owner}/{name}"),
            "private": false,
            "owner": {"login": owner, "id": 90210, "type": "Organization"},
            "html_url": format!("https://github.com/{owner}/{name}"),
            "default_branch": "main"
        },
        "organization": {"login": owner, "id": 90210, "url": format!("https://api.github.com/orgs/{owner}")},
        "sender": {"login": "release-bot", "id": 31337, "type": "User", "site_admin": false}
    })
    .to_string()
}

/// `sha256=<hex HMAC-SHA256 of body under key>`, computed here independently of kimup.
fn github_signature(key: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The syncs of `image` that a webhook triggered, from kimup's JSON log. ghcr.io cannot list
/// the test's repositories, so every sync logs its failed step inside its `image.sync` span,
/// which carries the trigger. (A sync that ends as the previous one did writes no status, and so
/// logs no `synced` line.)
fn webhook_syncs(kimup: &Kimup, image: &str) -> usize {
    kimup
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            let span = &v["span"];
            v["fields"]["message"] == "sync step failed"
                && span["image"] == image
                && span["trigger"] == "webhook"
        })
        .count()
}

/// Waits until `what` holds, polling; panics naming `failure` after `timeout`.
async fn wait_until(timeout: Duration, failure: &str, kimup: &Kimup, what: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !what() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failure} within {timeout:?}; kimup log: {}",
            kimup.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Status code and body of a POST.
async fn post(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.expect("send");
    let code = r.status().as_u16();
    (code, r.text().await.unwrap_or_default())
}

const GHCR_KEY: &str = "ghcr-signing-key-3f9a1c0d5e7b";
const HARBOR_SECRET: &str = "harbor-auth-header-8d2e4f6a";
const QUAY_TOKEN: &str = "quay-token-c71b9e2d0a4f";
const HUB_TOKEN: &str = "hub-token-5e8a2c4b6d0f";
const GENERIC_TOKEN: &str = "generic-token-a0b1c2d3e4f5";

#[tokio::test]
async fn each_source_proves_itself_with_its_own_secret() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "webhook-auth").await.expect("namespace");
    let port = free_port().expect("port");
    // ghcr's and harbor's secrets come from a folder (as a mounted Secret), the others from
    // variables; no shared token, so distribution is off.
    let dir = env.run_dir.join(format!("webhook-secrets-{ns}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("ghcr"), format!("{GHCR_KEY}\n")).expect("write");
    std::fs::write(dir.join("harbor"), HARBOR_SECRET).expect("write");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--webhook-secrets-dir={}", dir.display()),
        "--tag-cache-ttl=1h".into(),
    ];
    let vars = [
        ("KIMUP_WEBHOOK_SECRET_QUAY", QUAY_TOKEN),
        ("KIMUP_WEBHOOK_SECRET_DOCKERHUB", HUB_TOKEN),
        ("KIMUP_WEBHOOK_SECRET_GENERIC", GENERIC_TOKEN),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let kimup = spawn_kimup_with_env(env, &format!("kimup-{ns}"), &args, &vars);
    // Two GHCR Images with a webhook trigger. ghcr.io cannot answer here (no such repository,
    // or no network): each sync ends in a registry error, but it happens, and the log says
    // what triggered it.
    for name in ["web", "barrier"] {
        create_image(
            &client,
            &ns,
            &format!(
                "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: {name}}}\nspec:\n  image: ghcr.io/kimup-e2e/{name}\n  baseTag: 1.0.0\n  triggers: [{{type: webhook}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
            ),
        )
        .await;
        wait_status(&client, &ns, name, Duration::from_secs(60), &kimup, |s| {
            s.result.is_some()
        })
        .await;
    }
    let http = reqwest::Client::new();
    let url = |source: &str| format!("http://127.0.0.1:{port}/webhooks/{source}");

    // GHCR: GitHub's signature over the raw body.
    let body = ghcr_package_event("kimup-e2e", "web", "1.1.0");
    let signature = github_signature(GHCR_KEY, body.as_bytes());
    let ghcr = |body: Vec<u8>, signature: Option<&str>| {
        let mut req = http
            .post(url("ghcr"))
            .header("content-type", "application/json")
            .header("x-github-event", "package")
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        post(req)
    };
    let (code, text) = ghcr(body.clone().into_bytes(), Some(&signature)).await;
    assert_eq!((code, text.as_str()), (202, "1 push(es) accepted\n"));
    wait_until(
        Duration::from_secs(30),
        "no webhook sync of Image web after a signed GHCR push",
        &kimup,
        || webhook_syncs(&kimup, "ghcr.io/kimup-e2e/web") == 1,
    )
    .await;
    // One byte flipped (the tag 1.1.0 becomes 1.1.1): the signature no longer matches.
    let mut tampered = body.clone().into_bytes();
    let at = body.find("\"name\":\"1.1.0\"").expect("tag in body") + "\"name\":\"1.1.".len();
    tampered[at] ^= 0x01;
    assert_eq!(&tampered[at - 4..at + 1], b"1.1.1");
    let (code, text) = ghcr(tampered, Some(&signature)).await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("signature does not match"), "{text}");
    let (code, text) = ghcr(body.clone().into_bytes(), None).await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("X-Hub-Signature-256"), "{text}");
    // GitHub's ping when the webhook is created: signed, accepted, announces nothing.
    let ping = r#"{"zen":"Keep it logically awesome.","hook_id":123456,"hook":{"type":"Organization","id":123456,"events":["package"],"active":true}}"#;
    let (code, text) = ghcr(
        ping.into(),
        Some(&github_signature(GHCR_KEY, ping.as_bytes())),
    )
    .await;
    assert_eq!((code, text.as_str()), (202, "0 push(es) accepted\n"));
    // The tampered push synced nothing: a signed push of another package, sent after it, is
    // synced while `web` still has its one webhook sync.
    let barrier = ghcr_package_event("kimup-e2e", "barrier", "1.1.0");
    let (code, _) = ghcr(
        barrier.clone().into_bytes(),
        Some(&github_signature(GHCR_KEY, barrier.as_bytes())),
    )
    .await;
    assert_eq!(code, 202);
    wait_until(
        Duration::from_secs(30),
        "no webhook sync of Image barrier",
        &kimup,
        || webhook_syncs(&kimup, "ghcr.io/kimup-e2e/barrier") == 1,
    )
    .await;
    assert_eq!(
        webhook_syncs(&kimup, "ghcr.io/kimup-e2e/web"),
        1,
        "the tampered push synced"
    );

    // Harbor: the policy's Auth Header, verbatim or as a bearer token.
    let harbor = r#"{"type":"PUSH_ARTIFACT","occur_at":1764403121,"operator":"robot$ci","event_data":{"resources":[{"digest":"sha256:5b0a81a4c3f2e6f5a8c1d4e3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e","tag":"1.1.0","resource_url":"harbor.example.com/acme/web:1.1.0"}],"repository":{"date_created":1762075243,"name":"web","namespace":"acme","repo_full_name":"acme/web","repo_type":"private"}}}"#;
    let send_harbor = |auth: &str| {
        post(
            http.post(url("harbor"))
                .header("authorization", auth)
                .body(harbor),
        )
    };
    assert_eq!(send_harbor(HARBOR_SECRET).await.0, 202);
    assert_eq!(send_harbor(&format!("Bearer {HARBOR_SECRET}")).await.0, 202);
    assert_eq!(
        send_harbor("Bearer harbor-auth-header-8d2e4f6b").await.0,
        401
    );

    // Quay and Docker Hub cannot sign or set headers: a token in the URL.
    let quay = r#"{"repository":"acme/web","namespace":"acme","name":"web","docker_url":"quay.io/acme/web","homepage":"https://quay.io/repository/acme/web","updated_tags":["1.1.0"]}"#;
    let hub = r#"{"callback_url":"https://registry.hub.docker.com/u/acme/web/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/","push_data":{"pushed_at":1764403121,"pusher":"acme","tag":"1.1.0"},"repository":{"comment_count":0,"date_created":1762075243,"description":"","is_official":false,"is_private":false,"is_trusted":false,"name":"web","namespace":"acme","owner":"acme","repo_name":"acme/web","repo_url":"https://registry.hub.docker.com/u/acme/web/","star_count":0,"status":"Active"}}"#;
    for (source, payload, token, pushes) in [
        ("quay", quay, QUAY_TOKEN, 1),
        ("dockerhub", hub, HUB_TOKEN, 1),
    ] {
        let (code, text) = post(
            http.post(format!("{}?token={token}", url(source)))
                .body(payload),
        )
        .await;
        assert_eq!(
            (code, text),
            (202, format!("{pushes} push(es) accepted\n")),
            "{source}"
        );
        let (code, _) = post(
            http.post(format!("{}?token={GENERIC_TOKEN}", url(source)))
                .body(payload),
        )
        .await;
        assert_eq!(code, 401, "{source} with another source's token");
    }

    // Generic: a bearer token, or a signature in GitHub's scheme.
    let generic = r#"{"repository":"registry.example.com/acme/web","tag":"1.1.0"}"#;
    let send_generic = |req: reqwest::RequestBuilder| post(req.body(generic));
    assert_eq!(
        send_generic(http.post(url("generic")).bearer_auth(GENERIC_TOKEN))
            .await
            .0,
        202
    );
    let generic_signature = github_signature(GENERIC_TOKEN, generic.as_bytes());
    assert_eq!(
        send_generic(
            http.post(url("generic"))
                .header("x-kimup-signature-256", &generic_signature)
        )
        .await
        .0,
        202
    );
    assert_eq!(
        send_generic(http.post(url("generic")).bearer_auth(QUAY_TOKEN))
            .await
            .0,
        401
    );
    let (code, _) = post(
        http.post(url("generic"))
            .header("x-kimup-signature-256", &generic_signature)
            .body(generic.replace("1.1.0", "1.1.1")),
    )
    .await;
    assert_eq!(code, 401, "a tampered generic body");

    // Distribution has no secret here: off.
    let (code, text) = post(
        http.post(url("distribution"))
            .bearer_auth(GENERIC_TOKEN)
            .body("{}"),
    )
    .await;
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("KIMUP_WEBHOOK_SECRET_DISTRIBUTION"), "{text}");

    // Rotating a secret in the folder needs no restart.
    let rotated = "harbor-auth-header-rotated-19c7";
    std::fs::write(dir.join("harbor.tmp"), rotated).expect("write");
    std::fs::rename(dir.join("harbor.tmp"), dir.join("harbor")).expect("rename");
    wait_until(
        Duration::from_secs(30),
        "kimup did not re-read the secrets folder",
        &kimup,
        || kimup.log_text().contains("webhook secrets changed"),
    )
    .await;
    assert_eq!(send_harbor(rotated).await.0, 202);
    assert_eq!(send_harbor(HARBOR_SECRET).await.0, 401, "the old secret");

    let log = kimup.log_text();
    for secret in [
        GHCR_KEY,
        HARBOR_SECRET,
        rotated,
        QUAY_TOKEN,
        HUB_TOKEN,
        GENERIC_TOKEN,
    ] {
        assert!(!log.contains(secret), "a secret was logged");
    }
    for signature in [&signature, &generic_signature] {
        let hex = signature.trim_start_matches("sha256=");
        assert!(!log.contains(hex), "a signature was logged");
    }
}

#[tokio::test]
async fn failed_authentications_are_limited_and_good_requests_still_pass() {
    let env = env();
    let cluster = &env.clusters[0];
    let ns = env.namespace(0, "webhook-limit").await.expect("namespace");
    let port = free_port().expect("port");
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path.display()),
        format!("--watch-namespace={ns}"),
        format!("--listen-addr=127.0.0.1:{port}"),
    ];
    let kimup = spawn_kimup_with_env(
        env,
        &format!("kimup-{ns}"),
        &args,
        &[("KIMUP_WEBHOOK_TOKEN".into(), TOKEN.into())],
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kimup did not serve /healthz within 30 s; log: {}",
            kimup.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("{base}/webhooks/generic");
    let body = r#"{"repository":"registry.example.com/acme/web","tag":"2.0.0"}"#;
    // 10 failures a minute per client (on loopback every request comes from 127.0.0.1): the
    // 11th is answered 429 (12th at worst, if a token came back while sending).
    let mut refused = 0;
    let limited = loop {
        let r = http
            .post(&url)
            .bearer_auth("wrong-7c1d0e")
            .body(body)
            .send()
            .await
            .expect("send");
        match r.status().as_u16() {
            401 => refused += 1,
            429 => break r,
            other => panic!("unexpected {other} after {refused} refusals"),
        }
        assert!(
            refused <= 11,
            "no 429 after {refused} failed authentications"
        );
    };
    assert!(refused >= 10, "429 after only {refused} failures");
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    // The limit holds the failures only: the right token still gets through, and is not
    // counted against the client.
    let (code, text) = post(http.post(&url).bearer_auth(TOKEN).body(body)).await;
    assert_eq!((code, text.as_str()), (202, "1 push(es) accepted\n"));
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for line in [
        "kimup_webhooks_total{source=\"generic\",outcome=\"wrong_token\"} ",
        "kimup_webhooks_total{source=\"generic\",outcome=\"rate_limited\"} ",
        "kimup_webhooks_total{source=\"generic\",outcome=\"accepted\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        kimup
            .log_text()
            .contains("too many failed webhook authentications"),
        "the limit is logged"
    );
    assert!(
        !kimup.log_text().contains("wrong-7c1d0e"),
        "what was sent is not logged"
    );
}

#[test]
fn an_unreadable_secrets_folder_stops_the_start() {
    let missing = std::env::temp_dir().join("kimup-no-such-webhook-secrets");
    // A real (empty) kubeconfig folder: a missing kubeconfig would stop the start first.
    let clusters = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kimup"))
        .args([
            "run",
            &format!("--kubeconfig-dir={}", clusters.path().display()),
            "--listen-addr=127.0.0.1:0",
            &format!("--webhook-secrets-dir={}", missing.display()),
        ])
        .env_remove("KIMUP_WEBHOOK_SECRETS_DIR")
        .output()
        .expect("run kimup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("listing webhook secrets folder")
            && stderr.contains(&*missing.to_string_lossy()),
        "{stderr}"
    );
}
