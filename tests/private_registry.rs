//! A private registry over TLS with basic auth, through imagePullSecrets: the right password
//! syncs; a wrong password and an untrusted self-signed certificate give RegistryError with a
//! clear message; insecureSkipTLSVerify reaches it without the CA.

mod common;

use std::time::Duration;

use common::*;
use kimup::api::SyncResult;

fn image(name: &str, host: &str, repo: &str, secret: &str, insecure: bool, action: &str) -> String {
    format!(
        r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Image
metadata: {{name: {name}}}
spec:
  image: {host}/{repo}
  baseTag: "1.0.0"
  insecureSkipTLSVerify: {insecure}
  imagePullSecrets: [{{name: {secret}}}]
  triggers: [{{type: crontab, value: "@hourly"}}]
  rules: [{{name: minor, type: semver-minor, actions: [{{type: {action}}}]}}]
"#
    )
}

#[tokio::test]
async fn basic_auth_through_pull_secrets_over_tls() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "private").await.expect("namespace");
    let reg = env.tls_registry();
    reg.push_tags("private/app", &["1.0.0", "1.0.1", "1.4.0"])
        .await
        .expect("push");
    let auth = reg.auth.as_ref().expect("auth");
    create_secret(
        &client,
        &ns,
        &pull_secret("good-creds", &reg.host, &auth.username, &auth.password),
    )
    .await;
    create_secret(
        &client,
        &ns,
        &pull_secret("bad-creds", &reg.host, &auth.username, "wrong"),
    )
    .await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &image(
            "good",
            &reg.host,
            "private/app",
            "good-creds",
            false,
            "apply",
        ),
    )
    .await;
    create_image(
        &client,
        &ns,
        &image(
            "wrong-password",
            &reg.host,
            "private/app",
            "bad-creds",
            false,
            // It never gets past the registry; an alert action keeps it from conflicting with
            // `good` over the repository (two Images applying one repository in a namespace).
            "alert-webhook",
        ),
    )
    .await;

    let good = wait_status(&client, &ns, "good", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(good.result, Some(SyncResult::Success), "{:?}", good.message);
    assert_eq!(good.tag.as_deref(), Some("1.4.0"));

    let bad = wait_status(
        &client,
        &ns,
        "wrong-password",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(bad.result, Some(SyncResult::RegistryError));
    let msg = bad.message.unwrap_or_default();
    assert!(msg.contains("refused the credentials (401)"), "{msg}");
    assert!(
        !msg.contains("wrong"),
        "the password never appears in status: {msg}"
    );
}

#[tokio::test]
async fn self_signed_certificate_needs_trust_or_insecure_skip() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "selfsigned").await.expect("namespace");
    let reg = env.tls_registry();
    reg.push_tags("private/selfsigned", &["1.0.0", "1.2.0"])
        .await
        .expect("push");
    let auth = reg.auth.as_ref().expect("auth");
    create_secret(
        &client,
        &ns,
        &pull_secret("creds", &reg.host, &auth.username, &auth.password),
    )
    .await;
    // This kimup does not trust the registry's CA.
    let kimup = start_kimup_with(env, cluster, &ns, false, &[], &[]);
    create_image(
        &client,
        &ns,
        &image(
            "verified",
            &reg.host,
            "private/selfsigned",
            "creds",
            false,
            "alert-webhook",
        ),
    )
    .await;
    create_image(
        &client,
        &ns,
        &image(
            "skip-verify",
            &reg.host,
            "private/selfsigned",
            "creds",
            true,
            "apply",
        ),
    )
    .await;

    let verified = wait_status(
        &client,
        &ns,
        "verified",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(verified.result, Some(SyncResult::RegistryError));
    let msg = verified.message.unwrap_or_default();
    assert!(msg.contains("TLS"), "{msg}");
    assert!(
        msg.contains("insecureSkipTLSVerify"),
        "the message says how to fix it: {msg}"
    );

    let skip = wait_status(
        &client,
        &ns,
        "skip-verify",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(skip.result, Some(SyncResult::Success), "{:?}", skip.message);
    assert_eq!(skip.tag.as_deref(), Some("1.2.0"));
}

/// insecureSkipTLSVerify on a registry that answers HTTPS with plain HTTP: kimup (Go) retried
/// over HTTP, sending the pull secret's password in clear text. The retry stays for anonymous
/// listings; with credentials it is refused unless the operator lists the registry with
/// `--insecure-registry`.
#[tokio::test]
async fn plain_http_fallback_never_carries_credentials() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "fallback").await.expect("namespace");
    let reg = env.plain_registry();
    for repo in ["fallback/creds", "fallback/anon", "fallback/digest"] {
        reg.push_tags(repo, &["1.0.0", "1.3.0"])
            .await
            .expect("push");
    }
    // A plain-HTTP registry host kimup does not list (start_kimup lists the registry itself).
    let proxy = kimup_testenv::httpfault::HttpFaultProxy::start(&reg.base_url())
        .await
        .expect("proxy");
    create_secret(
        &client,
        &ns,
        &pull_secret("creds", &proxy.host, "user", "cleartext-password"),
    )
    .await;
    create_secret(
        &client,
        &ns,
        &pull_secret("elsewhere", "elsewhere.example", "user", "pw"),
    )
    .await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &image(
            "creds",
            &proxy.host,
            "fallback/creds",
            "creds",
            true,
            "apply",
        ),
    )
    .await;
    create_image(
        &client,
        &ns,
        &image(
            "anonymous",
            &proxy.host,
            "fallback/anon",
            "elsewhere",
            true,
            "apply",
        ),
    )
    .await;

    let anonymous = wait_status(
        &client,
        &ns,
        "anonymous",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(
        anonymous.result,
        Some(SyncResult::Success),
        "{:?}",
        anonymous.message
    );
    assert_eq!(anonymous.tag.as_deref(), Some("1.3.0"));

    // The digest rule's manifest request takes the same fallback as the listing.
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: digest}}\nspec:\n  image: {}/fallback/digest\n  baseTag: 1.3.0\n  insecureSkipTLSVerify: true\n  triggers: [{{type: crontab, value: \"@hourly\"}}]\n  rules: [{{name: rebuilt, type: digest, actions: [{{type: apply}}]}}]\n",
            proxy.host
        ),
    )
    .await;
    let digest = wait_status(
        &client,
        &ns,
        "digest",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(
        digest.result,
        Some(SyncResult::Success),
        "{:?}",
        digest.message
    );
    assert!(
        digest
            .digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:")),
        "no digest recorded over the fallback: {digest:?}"
    );

    let creds = wait_status(
        &client,
        &ns,
        "creds",
        Duration::from_secs(60),
        &kimup,
        |s| s.result.is_some(),
    )
    .await;
    assert_eq!(
        proxy.stats().authorized,
        0,
        "credentials went over plain HTTP; status: {creds:?}"
    );
    assert_eq!(creds.result, Some(SyncResult::RegistryError));
    let msg = creds.message.unwrap_or_default();
    assert!(msg.contains("--insecure-registry"), "{msg}");
    assert!(!msg.contains("cleartext-password"), "{msg}");
}
