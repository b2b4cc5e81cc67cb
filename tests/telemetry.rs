//! Every sync is a trace exported over OTLP to a real OpenTelemetry Collector, and /metrics and
//! the health endpoints answer.

mod common;

use std::time::Duration;

use common::*;
use kimup_testenv::Collector;
use kimup_testenv::process::free_port;

#[tokio::test]
async fn syncs_are_exported_as_traces_and_metrics_are_served() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "otel").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("otel/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let collector = Collector::start(&env.run_dir, &env.log_dir())
        .await
        .expect("collector");
    let port = free_port().expect("port");
    let mut kimup = start_kimup_with(
        env,
        cluster,
        &ns,
        true,
        &[&format!("--listen-addr=127.0.0.1:{port}")],
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            collector.endpoint.clone(),
        )],
    );
    // The sync uses a pull secret whose credential is the canary: it must not reach a span.
    let canary = kimup_testenv::canary();
    create_secret(
        &client,
        &ns,
        &pull_secret("regcred", &reg.host, canary, canary),
    )
    .await;
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/otel/app\n  baseTag: 1.0.0\n  imagePullSecrets: [{{name: regcred}}]\n  triggers: [{{type: crontab, value: '@hourly'}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n",
            reg.host
        ),
    )
    .await;
    wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("kimup_image_syncs_total{cluster=\"cluster-0\",result=\"Success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kimup_registry_request_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kimup_cluster_up{cluster=\"cluster-0\"} 1"),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    // SIGTERM flushes the batch exporter.
    kimup.process.stop(Duration::from_secs(10));
    let spans = collector
        .wait_for_spans(
            |s| s.iter().any(|s| s["name"] == "status.write"),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        !serde_json::to_string(&spans)
            .unwrap_or_default()
            .contains(canary),
        "a Secret's value reached an exported span"
    );
    assert_no_canary(&client, &ns).await;
    let sync = spans
        .iter()
        .find(|s| s["name"] == "image.sync" && attr(s, "name") == Some("app"))
        .unwrap_or_else(|| panic!("no image.sync span among {} spans", spans.len()));
    assert_eq!(attr(sync, "cluster"), Some("cluster-0"));
    assert_eq!(attr(sync, "namespace"), Some(ns.as_str()));
    assert_eq!(attr(sync, "trigger"), Some("startup"));
    assert_eq!(attr(sync, "result"), Some("Success"));
    let trace = sync["traceId"].as_str().expect("trace id");
    let in_trace: Vec<&str> = spans
        .iter()
        .filter(|s| s["traceId"] == trace)
        .filter_map(|s| s["name"].as_str())
        .collect();
    for name in [
        "reconcile",
        "image.sync",
        "registry.list_tags",
        "rule.evaluate",
        "action",
        "status.write",
    ] {
        assert!(in_trace.contains(&name), "trace lacks {name}: {in_trace:?}");
    }
}
