//! A sync that changes nothing writes nothing: with a crontab firing every second, the Image is
//! written once when it moves, then only by the `status.time` heartbeat (one sync in ten).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use kimup::api::{Image, SyncResult};
use kube::api::Api;
use kube::runtime::watcher;

/// `kimup_image_syncs_total` summed over its labels.
async fn syncs(port: u16) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics body");
    text.lines()
        .filter(|l| l.starts_with("kimup_image_syncs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn unchanged_syncs_write_only_the_heartbeat() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "quiet").await.expect("namespace");
    let reg = env.plain_registry();
    reg.push_tags("quiet/app", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let port = kimup_testenv::process::free_port().expect("port");
    let kimup = start_kimup(
        env,
        cluster,
        &ns,
        &[&format!("--listen-addr=127.0.0.1:{port}")],
    );
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\nspec:\n  image: {}/quiet/app\n  baseTag: 1.0.0\n  triggers: [{{type: crontab, value: \"* * * * * *\"}}]\n  rules: [{{name: minor, type: semver-minor, actions: [{{type: apply}}]}}]\n",
            reg.host
        ),
    )
    .await;
    let first = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.tag.as_deref() == Some("1.1.0")
    })
    .await;
    assert_eq!(
        first.result,
        Some(SyncResult::Success),
        "{:?}",
        first.message
    );

    // Count every write of the Image from here on, from its watch events.
    let api: Api<Image> = Api::namespaced(client.clone(), &ns);
    let mut events = watcher(api, watcher::Config::default().fields("metadata.name=app")).boxed();
    let mut writes = 0u64;
    let mut last_rv: Option<String> = None;
    let mut times = Vec::new();
    let start_syncs = syncs(port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // 25 syncs span two heartbeats (10 s each at one sync a second).
    while syncs(port).await < start_syncs + 25 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kimup did not sync 25 times within 60 s (log {})",
            kimup.log.display()
        );
        match tokio::time::timeout(Duration::from_millis(500), events.next()).await {
            Ok(Some(Ok(watcher::Event::Apply(img) | watcher::Event::InitApply(img)))) => {
                let rv = img.metadata.resource_version.clone();
                if last_rv.is_some() && rv != last_rv {
                    writes += 1;
                    times.push(img.status.and_then(|s| s.time));
                }
                last_rv = rv;
            }
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            _ => {}
        }
    }
    let total = syncs(port).await - start_syncs;
    println!("unchanged syncs: {total}, Image writes: {writes}, times written: {times:?}");
    assert!(
        writes * 10 <= total + 10,
        "{writes} writes for {total} unchanged syncs: more than one in ten plus one"
    );
    assert!(writes >= 1, "no heartbeat in {total} syncs at one a second");
    let now = Api::<Image>::namespaced(client.clone(), &ns)
        .get("app")
        .await
        .expect("Image");
    let status = now.status.expect("status");
    assert_eq!(status.tag.as_deref(), Some("1.1.0"));
    assert_eq!(status.result, Some(SyncResult::Success));
}
