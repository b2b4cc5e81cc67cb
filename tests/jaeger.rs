//! kimup's traces in a real Jaeger, read back through its HTTP query API as the Jaeger UI reads
//! them: a crontab sync is the span tree the README promises, and a webhook push is a span that
//! the syncs it caused link to.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kimup::api::SyncResult;
use kimup_testenv::TestEnv;
use kimup_testenv::jaeger::{Span, Trace};
use kimup_testenv::process::free_port;

const TOKEN: &str = "jaeger-hook-s3cret";

/// One cluster, both registries and a Jaeger, for this binary's test.
fn env() -> &'static TestEnv {
    kimup_testenv::shared(|| {
        TestEnv::builder()
            .name("jaeger")
            .clusters(1)
            .registries()
            .kimup_crds()
            .jaeger()
    })
    .expect("test environment starts")
}

/// The span of `trace` whose parent is `parent` and whose name is `operation`, or a panic
/// naming what the trace holds.
fn child<'a>(trace: &'a Trace, parent: &Span, operation: &str) -> &'a Span {
    trace
        .children(parent)
        .into_iter()
        .find(|s| s.operation == operation)
        .unwrap_or_else(|| {
            panic!(
                "no {operation} span under {} in trace {}: {:?}",
                parent.operation,
                trace.trace_id,
                trace
                    .spans
                    .iter()
                    .map(|s| (&s.operation, s.parent()))
                    .collect::<Vec<_>>()
            )
        })
}

/// The `image.sync` span of the Image `name` in `trace`, if any.
fn sync_of<'a>(trace: &'a Trace, name: &str) -> Option<&'a Span> {
    trace
        .spans_named("image.sync")
        .into_iter()
        .find(|s| s.tag_str("name") == Some(name))
}

/// Whether `trace` is a whole crontab sync of `name` that chose `tag`: every span the README
/// names has arrived (the batch exporter may deliver a trace in parts).
fn whole_cron_sync(trace: &Trace, name: &str, tag: &str) -> bool {
    sync_of(trace, name).is_some_and(|s| s.tag_str("trigger") == Some("crontab"))
        && trace
            .spans_named("rule.evaluate")
            .iter()
            .any(|s| s.tag_str("chosen") == Some(tag))
        && ["reconcile", "registry.list_tags", "action", "status.write"]
            .iter()
            .all(|op| trace.span_named(op).is_some())
}

#[tokio::test]
async fn syncs_and_webhook_pushes_are_traces_in_jaeger() {
    let started = Instant::now();
    let env = env();
    let jaeger = env.jaeger();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "jaeger").await.expect("namespace");
    let other_ns = env.namespace(0, "jaeger").await.expect("namespace");
    let reg = env.plain_registry();
    let cron_repo = format!("{ns}/cron");
    let hooked_repo = format!("{ns}/hooked");
    for repo in [&cron_repo, &hooked_repo] {
        reg.push_tags(repo, &["1.0.0"]).await.expect("push");
    }
    let cron_image = format!("{}/{cron_repo}", reg.host);
    let hooked_image = format!("{}/{hooked_repo}", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("cron", &format!("{cron_image}:1.0.0"), true),
    )
    .await;
    let port = free_port().expect("port");
    // Every namespace of the cluster (this binary's own environment): one push reaches the
    // Images of two namespaces.
    let args: Vec<String> = vec![
        "--log-format=json".into(),
        "run".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path.display()),
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--insecure-registry={}", reg.host),
        "--tag-cache-ttl=0s".into(),
    ];
    let kimup = spawn_kimup_with_env(
        env,
        &format!("kimup-{ns}"),
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), jaeger.otlp_endpoint()),
            // Export every 200 ms rather than every 5 s: the test polls Jaeger for the spans.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
            ("KIMUP_WEBHOOK_TOKEN".into(), TOKEN.into()),
        ],
    );
    let image_yaml = |name: &str, image: &str, triggers: &str| {
        format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  baseTag: 1.0.0\n  triggers: {triggers}\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n"
        )
    };
    create_image(
        &client,
        &ns,
        &image_yaml(
            "cron",
            &cron_image,
            "[{type: crontab, value: '*/2 * * * * *'}]",
        ),
    )
    .await;
    // The pushed repository is followed in two namespaces: one push, two syncs, both linked to
    // it.
    for namespace in [&ns, &other_ns] {
        create_image(
            &client,
            namespace,
            &image_yaml("hooked", &hooked_image, "[{type: webhook}]"),
        )
        .await;
    }
    for (namespace, name) in [(&ns, "cron"), (&ns, "hooked"), (&other_ns, "hooked")] {
        let s = wait_status(
            &client,
            namespace,
            name,
            Duration::from_secs(60),
            &kimup,
            |s| s.result.is_some(),
        )
        .await;
        assert_eq!(
            s.result,
            Some(SyncResult::Success),
            "{name}: {:?}",
            s.message
        );
    }

    // (a) A crontab sync: the tag pushed is picked up at the next tick.
    reg.push_tags(&cron_repo, &["1.1.0"]).await.expect("push");
    wait_status(&client, &ns, "cron", Duration::from_secs(30), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    let traces = jaeger
        .wait_for_traces(
            "the crontab sync of cron that chose 1.1.0, whole",
            "kimup",
            Some("image.sync"),
            Duration::from_secs(30),
            |traces| traces.iter().any(|t| whole_cron_sync(t, "cron", "1.1.0")),
        )
        .await
        .expect("cron trace in Jaeger");
    let listed = traces
        .iter()
        .find(|t| whole_cron_sync(t, "cron", "1.1.0"))
        .expect("found above");
    // Read back by id, as a trace link of the UI does.
    let trace = jaeger
        .trace(&listed.trace_id)
        .await
        .expect("GET /api/traces/{id}")
        .expect("Jaeger has the trace it listed");
    let roots = trace.roots();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    let root = roots[0];
    assert_eq!(root.operation, "reconcile");
    assert_eq!(root.tag_str("cluster"), Some("cluster-0"));
    assert_eq!(root.tag_str("namespace"), Some(ns.as_str()));
    assert_eq!(root.tag_str("name"), Some("cron"));
    assert_eq!(root.links().count(), 0, "a crontab sync links to nothing");
    let sync = child(&trace, root, "image.sync");
    for (key, value) in [
        ("cluster", "cluster-0"),
        ("namespace", ns.as_str()),
        ("name", "cron"),
        ("image", cron_image.as_str()),
        ("trigger", "crontab"),
        ("result", "Success"),
    ] {
        assert_eq!(sync.tag_str(key), Some(value), "image.sync {key}");
    }
    let list = child(&trace, sync, "registry.list_tags");
    assert_eq!(
        list.tag("cache.hit"),
        Some(&serde_json::json!(false)),
        "--tag-cache-ttl=0s: every listing asks the registry"
    );
    let rule = child(&trace, sync, "rule.evaluate");
    assert_eq!(rule.tag_str("rule"), Some("minor"));
    assert_eq!(rule.tag_str("chosen"), Some("1.1.0"));
    let action = child(&trace, sync, "action");
    assert_eq!(action.tag_str("type"), Some("apply"));
    let write = child(&trace, root, "status.write");
    assert_eq!(write.tag_str("result"), Some("Success"));
    println!(
        "crontab sync: trace {} with {} spans: {:?}",
        trace.trace_id,
        trace.spans.len(),
        trace
            .spans
            .iter()
            .map(|s| s.operation.as_str())
            .collect::<Vec<_>>()
    );

    // (b) A webhook push, as a registry would send it.
    reg.push_tags(&hooked_repo, &["1.1.0"]).await.expect("push");
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/generic"))
        .bearer_auth(TOKEN)
        .body(format!(
            r#"{{"repository":"{hooked_image}","tag":"1.1.0"}}"#
        ))
        .send()
        .await
        .expect("POST /webhooks/generic");
    assert_eq!(answer.status().as_u16(), 202);
    for namespace in [&ns, &other_ns] {
        wait_status(
            &client,
            namespace,
            "hooked",
            Duration::from_secs(30),
            &kimup,
            |s| s.tag.as_deref() == Some("1.1.0"),
        )
        .await;
    }
    let pushes = jaeger
        .wait_for_traces(
            "the webhook.push span of the push",
            "kimup",
            Some("webhook.push"),
            Duration::from_secs(30),
            |traces| {
                traces
                    .iter()
                    .flat_map(|t| t.spans_named("webhook.push"))
                    .any(|s| s.tag_str("repository") == Some(hooked_image.as_str()))
            },
        )
        .await
        .expect("webhook trace in Jaeger");
    let push = pushes
        .iter()
        .flat_map(|t| t.spans_named("webhook.push"))
        .find(|s| s.tag_str("repository") == Some(hooked_image.as_str()))
        .expect("found above")
        .clone();
    assert_eq!(push.parent(), None, "a push starts its own trace");
    assert_eq!(push.tag_str("source"), Some("generic"));
    assert_eq!(push.tag_str("tags"), Some("1.1.0"));
    assert_eq!(
        push.tag("images"),
        Some(&serde_json::json!(2)),
        "the Images of both namespaces"
    );
    let links_to_push = |s: &Span| {
        s.links()
            .any(|r| r.trace_id == push.trace_id && r.span_id == push.span_id)
    };
    let caused = jaeger
        .wait_for_traces(
            "two syncs linked to the webhook.push span",
            "kimup",
            Some("reconcile"),
            Duration::from_secs(30),
            |traces| {
                traces
                    .iter()
                    .filter(|t| t.spans.iter().any(links_to_push))
                    .filter(|t| sync_of(t, "hooked").is_some())
                    .count()
                    >= 2
            },
        )
        .await
        .expect("syncs linked to the push");
    let mut synced: Vec<&str> = Vec::new();
    for trace in caused.iter().filter(|t| t.spans.iter().any(links_to_push)) {
        let linking: Vec<&Span> = trace.spans.iter().filter(|s| links_to_push(s)).collect();
        assert_eq!(linking.len(), 1, "one span links: {linking:?}");
        let root = linking[0];
        assert_eq!(
            root.operation, "reconcile",
            "the link is on the sync's root"
        );
        assert_eq!(root.parent(), None);
        assert_ne!(trace.trace_id, push.trace_id, "a link, not a parent");
        let sync = child(trace, root, "image.sync");
        assert_eq!(sync.tag_str("trigger"), Some("webhook"));
        assert_eq!(sync.tag_str("result"), Some("Success"));
        assert_eq!(sync.tag_str("name"), Some("hooked"));
        synced.extend(sync.tag_str("namespace"));
    }
    synced.sort_unstable();
    let mut expected = [ns.as_str(), other_ns.as_str()];
    expected.sort_unstable();
    assert_eq!(synced, expected, "one sync per Image");

    let all = jaeger
        .traces("kimup", None, 1000)
        .await
        .expect("every trace");
    let spans: usize = all.iter().map(|t| t.spans.len()).sum();
    println!(
        "webhook push: span {} of trace {} linked from {} syncs; Jaeger holds {} kimup traces, \
         {spans} spans; test took {:.1} s",
        push.span_id,
        push.trace_id,
        synced.len(),
        all.len(),
        started.elapsed().as_secs_f64()
    );
    for namespace in [&ns, &other_ns] {
        assert_no_canary(&client, namespace).await;
    }
}
