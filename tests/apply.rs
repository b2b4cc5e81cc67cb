//! Level-based apply against a real API server and registry: every opted-in workload of the
//! repository converges to `status.tag` — created later, reverted, opted in later — without a
//! registry request; newer workloads are held and reported; conflicts and failed first syncs
//! touch nothing; one failing rule does not stop the others.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kimup::api::{Image, ImageStatus, SyncResult};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

fn image_yaml(name: &str, image_ref: &str, base: &str, cron: &str, rules: &str) -> String {
    format!(
        r#"
apiVersion: kimup.cloudavenue.io/v1alpha1
kind: Image
metadata: {{name: {name}}}
spec:
  image: {image_ref}
  baseTag: "{base}"
  triggers: [{{type: crontab, value: "{cron}"}}]
  rules:
{rules}
"#
    )
}

const MINOR_APPLY: &str = "    - {name: minor, type: semver-minor, actions: [{type: apply}]}";
/// A crontab that does not fire during a test: only start-up and watch events act.
const RARELY: &str = "0 0 */6 * * *";

async fn annotate_namespace(client: &Client, ns: &str, value: &str) {
    let patch =
        serde_json::json!({"metadata": {"annotations": {"kimup.cloudavenue.io/enabled": value}}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate namespace");
}

/// Sets a container image the way `kubectl set image` does (a patch by another field manager).
async fn set_image(client: &Client, ns: &str, deploy: &str, container: &str, image: &str) {
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}});
    let params = PatchParams {
        field_manager: Some("kubectl-set".into()),
        ..Default::default()
    };
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(deploy, &params, &Patch::Strategic(&patch))
        .await
        .expect("set image");
}

/// Waits until the Deployment's first container runs `want`; returns how long it took.
async fn wait_image(client: &Client, ns: &str, deploy: &str, want: &str, what: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let (containers, _) = deployment_images(client, ns, deploy).await;
        if containers.first().map(String::as_str) == Some(want) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: Deployment {deploy} still runs {containers:?} after 30 s, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn condition<'a>(
    s: &'a ImageStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test]
async fn late_reverted_and_opted_in_workloads_converge_without_registry_requests() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "apply-level").await.expect("namespace");
    annotate_namespace(&client, &ns, "true").await;
    let reg = env.plain_registry();
    let repo = "apply/level";
    reg.push_tags(repo, &["1.0.0", "1.1.0", "2.0.0"])
        .await
        .expect("push");
    let image_ref = format!("{}/{repo}", reg.host);
    let old = format!("{image_ref}:1.0.0");
    let want = format!("{image_ref}:1.1.0");
    // Opted in by the namespace; and one that opts out in an opted-in namespace.
    create_deployment(&client, &ns, &deployment("web", &old, false)).await;
    let mut optout = deployment("optout", &old, false);
    optout.metadata.annotations = Some(
        [(
            "kimup.cloudavenue.io/enabled".to_string(),
            "false".to_string(),
        )]
        .into(),
    );
    create_deployment(&client, &ns, &optout).await;

    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &image_yaml("web", &image_ref, "1.0.0", RARELY, MINOR_APPLY),
    )
    .await;
    let status = wait_status(&client, &ns, "web", Duration::from_secs(60), &kimup, |s| {
        s.workloads.as_ref().is_some_and(|w| w.up_to_date == 1)
    })
    .await;
    assert_eq!(status.tag.as_deref(), Some("1.1.0"));
    assert_eq!(
        status.result,
        Some(SyncResult::Success),
        "{:?}",
        status.message
    );
    let (containers, inits) = deployment_images(&client, &ns, "web").await;
    assert_eq!(containers, vec![want.clone(), "busybox:1.36".to_string()]);
    assert_eq!(inits, vec![want.clone()], "init containers converge too");
    let listings = reg.tag_list_requests_for(repo).expect("registry log");

    // Created later: converges from the workload watch alone.
    create_deployment(&client, &ns, &deployment("late", &old, false)).await;
    let late = wait_image(&client, &ns, "late", &want, "created later").await;
    // Reverted by another manager (GitOps, helm upgrade, kubectl set image).
    set_image(&client, &ns, "web", "app", &old).await;
    let reverted = wait_image(&client, &ns, "web", &want, "reverted").await;
    // Opted in later, in a namespace that is not: its own annotation decides. With the
    // namespace opted out, no workload without its own annotation is kimup's any more.
    annotate_namespace(&client, &ns, "false").await;
    create_deployment(&client, &ns, &deployment("later", &old, false)).await;
    wait_status(&client, &ns, "web", Duration::from_secs(30), &kimup, |s| {
        s.workloads.as_ref().is_some_and(|w| w.total == 0)
    })
    .await;
    let patch =
        serde_json::json!({"metadata": {"annotations": {"kimup.cloudavenue.io/enabled": "true"}}});
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("later", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("opt in");
    let opted = wait_image(&client, &ns, "later", &want, "opted in later").await;
    println!(
        "level-based apply: created later {:.3} s, reverted {:.3} s, opted in later {:.3} s",
        late.as_secs_f64(),
        reverted.as_secs_f64(),
        opted.as_secs_f64()
    );
    assert_eq!(
        reg.tag_list_requests_for(repo).expect("registry log"),
        listings,
        "convergence made no registry request"
    );
    let (untouched, _) = deployment_images(&client, &ns, "optout").await;
    assert_eq!(untouched[0], old, "annotated \"false\": never touched");

    // kimup owns only the image fields it set, under field manager `kimup`, by server-side apply.
    let web = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .expect("get web");
    let managed = web.metadata.managed_fields.unwrap_or_default();
    let kimup_entry = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some("kimup"))
        .expect("a kimup managedFields entry");
    assert_eq!(kimup_entry.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_string(&kimup_entry.fields_v1).expect("fields");
    assert!(fields.contains("f:image"), "kimup owns the image: {fields}");
    for other in ["f:replicas", "f:selector", "f:labels", "f:busybox"] {
        assert!(!fields.contains(other), "kimup owns no {other}: {fields}");
    }
    assert!(
        !managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("kubectl-set")
                && serde_json::to_string(&m.fields_v1)
                    .unwrap_or_default()
                    .contains("f:image")),
        "the reverting manager no longer owns the image"
    );
}

#[tokio::test]
async fn newer_workloads_are_held_and_reported_not_rolled_back() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "apply-newer").await.expect("namespace");
    let reg = env.plain_registry();
    let repo = "apply/newer";
    reg.push_tags(repo, &["1.0.0", "1.1.0", "1.5.0"])
        .await
        .expect("push");
    let image_ref = format!("{}/{repo}", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("behind", &format!("{image_ref}:1.0.0"), true),
    )
    .await;
    create_deployment(
        &client,
        &ns,
        &deployment("ahead", &format!("{image_ref}:1.5.0"), true),
    )
    .await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    // semver-patch from 1.0.0: the bucket is 1.0.x, so the tag stays 1.0.0 while `ahead` runs
    // 1.5.0, newer by the rule's ordering.
    create_image(
        &client,
        &ns,
        &image_yaml(
            "app",
            &image_ref,
            "1.0.0",
            RARELY,
            "    - {name: patch, type: semver-patch, actions: [{type: apply}]}",
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.workloads.as_ref().is_some_and(|w| w.total == 2)
    })
    .await;
    assert_eq!(status.tag.as_deref(), Some("1.0.0"));
    let (ahead, _) = deployment_images(&client, &ns, "ahead").await;
    assert_eq!(ahead[0], format!("{image_ref}:1.5.0"), "never rolled back");
    let w = status.workloads.clone().expect("workloads");
    assert_eq!((w.total, w.up_to_date), (2, 1));
    assert_eq!(w.not_up_to_date.len(), 1);
    assert_eq!(w.not_up_to_date[0].name, "ahead");
    assert_eq!(w.not_up_to_date[0].reason, "NewerVersion");
    let cond = condition(&status, "WorkloadsUpToDate").expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "NewerVersion")
    );
    assert_eq!(
        status.result,
        Some(SyncResult::ActionError),
        "Success means every opted-in workload runs status.tag"
    );
    wait_event(&client, &ns, "app", "NewerVersionRunning").await;
}

#[tokio::test]
async fn a_failed_first_sync_never_pushes_the_base_tag() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "apply-nobase").await.expect("namespace");
    let reg = env.plain_registry();
    let repo = "apply/nobase";
    let image_ref = format!("{}/{repo}", reg.host);
    let running = format!("{image_ref}:0.9.0");
    create_deployment(&client, &ns, &deployment("app", &running, true)).await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    // The repository does not exist yet: the registry answers NAME_UNKNOWN.
    create_image(
        &client,
        &ns,
        &image_yaml("app", &image_ref, "1.0.0", "*/2 * * * * *", MINOR_APPLY),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(
        status.result,
        Some(SyncResult::RegistryError),
        "{status:#?}"
    );
    assert_eq!(status.tag, None, "no tag chosen, none desired");
    let (containers, _) = deployment_images(&client, &ns, "app").await;
    assert_eq!(containers[0], running, "baseTag not pushed");
    // Once the registry answers, the rules run and the workload converges.
    reg.push_tags(repo, &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    wait_image(
        &client,
        &ns,
        "app",
        &format!("{image_ref}:1.1.0"),
        "after the registry answers",
    )
    .await;
}

#[tokio::test]
async fn two_images_on_one_repository_are_refused_until_one_goes() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "apply-dup").await.expect("namespace");
    let reg = env.plain_registry();
    let repo = "apply/dup";
    reg.push_tags(repo, &["1.0.0", "1.1.0", "2.0.0"])
        .await
        .expect("push");
    let image_ref = format!("{}/{repo}", reg.host);
    let old = format!("{image_ref}:1.0.0");
    create_deployment(&client, &ns, &deployment("app", &old, true)).await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    create_image(
        &client,
        &ns,
        &image_yaml("one", &image_ref, "1.0.0", RARELY, MINOR_APPLY),
    )
    .await;
    create_image(
        &client,
        &ns,
        &image_yaml(
            "two",
            &image_ref,
            "1.0.0",
            RARELY,
            "    - {name: major, type: semver-major, actions: [{type: apply}]}",
        ),
    )
    .await;
    for name in ["one", "two"] {
        let s = wait_status(&client, &ns, name, Duration::from_secs(60), &kimup, |s| {
            condition(s, "Ready").is_some_and(|c| c.reason == "DuplicateRepository")
        })
        .await;
        assert_eq!(s.result, Some(SyncResult::Error));
        let message = s.message.unwrap_or_default();
        assert!(
            message.contains("one") && message.contains("two"),
            "names both: {message}"
        );
    }
    // Neither fights over the workload: after both handled a refresh (kimup removes the
    // annotation once it synced), the Deployment was not written.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let generation = deployments
        .get("app")
        .await
        .expect("get")
        .metadata
        .generation;
    let images = Api::<Image>::namespaced(client.clone(), &ns);
    let refresh = serde_json::json!({"metadata": {"annotations": {"kimup.cloudavenue.io/action": "refresh"}}});
    for name in ["one", "two"] {
        images
            .patch(name, &PatchParams::default(), &Patch::Merge(&refresh))
            .await
            .expect("refresh");
    }
    for name in ["one", "two"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let img = images.get(name).await.expect("get image");
            let handled = !img
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("kimup.cloudavenue.io/action");
            if handled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kimup did not handle the refresh of {name} in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (containers, _) = deployment_images(&client, &ns, "app").await;
    assert!(
        containers[0] == old || containers[0] == format!("{image_ref}:1.1.0"),
        "at most the first Image's own tag, from before the second existed: {containers:?}"
    );
    assert_eq!(
        deployments
            .get("app")
            .await
            .expect("get")
            .metadata
            .generation,
        generation,
        "no write to the workload while both Images exist"
    );
    Api::<Image>::namespaced(client.clone(), &ns)
        .delete("two", &DeleteParams::default())
        .await
        .expect("delete two");
    wait_image(
        &client,
        &ns,
        "app",
        &format!("{image_ref}:1.1.0"),
        "after the conflict ends",
    )
    .await;
    let s = wait_status(&client, &ns, "one", Duration::from_secs(30), &kimup, |s| {
        s.result == Some(SyncResult::Success)
    })
    .await;
    assert_eq!(s.tag.as_deref(), Some("1.1.0"));
}

#[tokio::test]
async fn a_failing_rule_or_action_does_not_stop_the_others() {
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let ns = env.namespace(0, "apply-cascade").await.expect("namespace");
    let reg = env.plain_registry();
    let repo = "apply/cascade";
    reg.push_tags(repo, &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    let image_ref = format!("{}/{repo}", reg.host);
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image_ref}:1.0.0"), true),
    )
    .await;
    let kimup = start_kimup(env, cluster, &ns, &[]);
    // Rule 1: an invalid regex; its actions include an unsupported one. Rule 2 must still apply.
    create_image(
        &client,
        &ns,
        &image_yaml(
            "app",
            &image_ref,
            "1.0.0",
            RARELY,
            "    - {name: broken, type: regex, value: '(', actions: [{type: apply}]}\n    - {name: always-on, type: always, actions: [{type: request-approval}]}\n    - {name: minor, type: semver-minor, actions: [{type: apply}]}",
        ),
    )
    .await;
    let status = wait_status(&client, &ns, "app", Duration::from_secs(60), &kimup, |s| {
        s.result.is_some()
    })
    .await;
    assert_eq!(
        status.result,
        Some(SyncResult::GetRuleError),
        "the first failure decides"
    );
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("broken"),
        "names the rule failure: {message}"
    );
    assert!(
        message.contains("request-approval"),
        "names the action failure too: {message}"
    );
    assert_eq!(
        status.tag.as_deref(),
        Some("1.1.0"),
        "the later rule applied"
    );
    wait_image(
        &client,
        &ns,
        "app",
        &format!("{image_ref}:1.1.0"),
        "later rule",
    )
    .await;
}
