//! The fleet: every member cluster's Images side by side. A promotion reads the same Image in
//! other clusters from their watch caches through [`Fleet`]; `kimup fleet` and `/fleet` show
//! the Image × cluster matrix ([`view`], [`table`]) of where each tag stands.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store};
use opentelemetry::trace::SpanContext;
use serde::{Deserialize, Serialize};

use crate::api::{Image, ImageStatus};
use crate::promotion::CONDITION_PROMOTION;
use crate::server::Health;

/// An Image's identity across the fleet: the same namespace and name in every cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// An Image's rollout or promotion changed in a cluster.
#[derive(Clone, Debug)]
pub struct Change {
    /// Where.
    pub cluster: String,
    /// Which Image.
    pub key: ImageKey,
}

impl ImageKey {
    /// The watch cache reference of the Image in any cluster.
    pub fn object_ref(&self) -> ObjectRef<Image> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }

    /// The key of an Image.
    pub fn of(image: &Image) -> Self {
        Self {
            namespace: image.metadata.namespace.clone().unwrap_or_default(),
            name: image.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// What one cluster's watch cache says of an Image a promotion waits on.
#[derive(Clone, Debug)]
pub enum Seen {
    /// The cluster's Images are not watched now (down, starting, removed): nothing is known.
    Unwatched(String),
    /// The cluster has no such Image.
    Missing,
    /// The Image there watches another repository (its `spec.image`): its tags say nothing of
    /// this one's.
    OtherRepository(String),
    /// Its status there.
    Found(Box<ImageStatus>),
}

/// The member clusters and their watch caches, shared by every cluster's controller.
#[derive(Clone)]
pub struct Fleet {
    members: Health,
    /// The span of the reconcile that last recorded each Image's rollout in each cluster, which
    /// promotion decisions elsewhere link to. Only filled when traces are exported.
    spans: Arc<Mutex<HashMap<(String, ImageKey), SpanContext>>>,
    /// An Image's rollout (or promotion) changed in a cluster: the same Image elsewhere
    /// re-checks.
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Fleet {
    /// The fleet whose members `members` tracks.
    pub fn new(members: Health) -> Self {
        Self {
            members,
            spans: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Member cluster names, sorted.
    pub fn members(&self) -> Vec<String> {
        self.members.member_names()
    }

    /// The Image `key` as `cluster` shows it now, compared with `image`, the one asking.
    pub fn seen(&self, cluster: &str, key: &ImageKey, image: &Image) -> Seen {
        let Some(store) = self.members.watched_images(cluster) else {
            return Seen::Unwatched(format!("{cluster} is not watched now (down or starting)"));
        };
        match store.get(&key.object_ref()) {
            Some(img) if !same_repository(&img, image) => {
                Seen::OtherRepository(img.spec.image.clone())
            }
            Some(img) => Seen::Found(Box::new(img.status.clone().unwrap_or_default())),
            None => Seen::Missing,
        }
    }

    /// Whether the Image `key` has a `spec.promotion` in some member other than `except`: then
    /// its rollout is recorded everywhere, for that promotion to read.
    pub fn promoted_elsewhere(&self, key: &ImageKey, except: &str) -> bool {
        self.members()
            .iter()
            .filter(|m| m.as_str() != except)
            .any(|m| {
                self.members
                    .watched_images(m)
                    .and_then(|s| s.get(&key.object_ref()))
                    .is_some_and(|img| img.spec.promotion.is_some())
            })
    }

    /// Every member's watch cache (None for one not watched now).
    pub fn stores(&self) -> Vec<(String, Option<Store<Image>>)> {
        self.members()
            .into_iter()
            .map(|m| {
                let s = self.members.watched_images(&m);
                (m, s)
            })
            .collect()
    }

    /// Records the span that last wrote `key`'s rollout in `cluster`.
    pub fn record_span(&self, cluster: &str, key: &ImageKey, span: SpanContext) {
        if let Ok(mut m) = self.spans.lock() {
            m.insert((cluster.to_string(), key.clone()), span);
        }
    }

    /// The span that last wrote `key`'s rollout in `cluster`, if recorded.
    pub fn span(&self, cluster: &str, key: &ImageKey) -> Option<SpanContext> {
        self.spans
            .lock()
            .ok()?
            .get(&(cluster.to_string(), key.clone()))
            .cloned()
    }

    /// Announces that `key`'s rollout or promotion changed in `cluster`.
    pub fn changed(&self, cluster: &str, key: ImageKey) {
        // No receiver (no cluster watched yet) is fine.
        let _ = self.changes.send(Change {
            cluster: cluster.to_string(),
            key,
        });
    }

    /// Announcements of [`Fleet::changed`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Whether two Images watch the same repository (`nginx` is `docker.io/library/nginx`); by their
/// text when one does not parse.
fn same_repository(a: &Image, b: &Image) -> bool {
    match (crate::sync::image_ref(a), crate::sync::image_ref(b)) {
        (Ok(x), Ok(y)) => x.same_repository(&y),
        _ => a.spec.image.trim() == b.spec.image.trim(),
    }
}

/// One Image in one cluster, as `kimup fleet` and `/fleet` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// `status.tag`.
    pub tag: Option<String>,
    /// `status.result`.
    pub result: Option<String>,
    /// Since when the tag has run healthy there.
    pub healthy_since: Option<String>,
    /// Why the tag is not healthy (rolling out, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// What a promotion waits for (the `Promotion` condition when it is not True).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Tags whose rollout failed there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tags: Vec<String>,
}

/// One Image across the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its cell in each cluster that has it, by cluster name.
    pub clusters: BTreeMap<String, Cell>,
}

/// The Image × cluster matrix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Member clusters, sorted.
    pub clusters: Vec<String>,
    /// Clusters whose Images could not be read, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
    /// Images, by namespace and name.
    pub images: Vec<Row>,
}

/// An Image's cell (pure).
pub fn cell(image: &Image) -> Cell {
    let status = image.status.clone().unwrap_or_default();
    let waiting_for = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_PROMOTION && c.status != "True")
        .map(|c| c.message.clone());
    let rollout = status.rollout.unwrap_or_default();
    Cell {
        tag: status.tag,
        result: status.result.map(|r| r.as_str().to_string()),
        healthy_since: rollout.healthy_since,
        rollout: (!rollout.message.is_empty()).then_some(rollout.message),
        waiting_for,
        failed_tags: rollout.failed_tags,
    }
}

/// Builds the matrix from each cluster's Images (or why they could not be read) (pure).
pub fn view<'a>(
    clusters: impl IntoIterator<Item = (String, Result<Vec<&'a Image>, String>)>,
) -> View {
    let mut out = View::default();
    let mut rows: BTreeMap<ImageKey, Row> = BTreeMap::new();
    for (cluster, images) in clusters {
        out.clusters.push(cluster.clone());
        match images {
            Err(e) => {
                out.errors.insert(cluster, e);
            }
            Ok(images) => {
                for img in images {
                    let key = ImageKey::of(img);
                    rows.entry(key.clone())
                        .or_insert_with(|| Row {
                            namespace: key.namespace,
                            name: key.name,
                            clusters: BTreeMap::new(),
                        })
                        .clusters
                        .insert(cluster.clone(), cell(img));
                }
            }
        }
    }
    out.clusters.sort();
    out.images = rows.into_values().collect();
    out
}

/// The matrix as aligned columns, one line per Image and cluster, then the unreadable clusters
/// (pure).
pub fn table(v: &View) -> String {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "CLUSTER".into(),
        "TAG".into(),
        "RESULT".into(),
        "HEALTHY-SINCE".into(),
        "WAITING-FOR".into(),
    ]];
    for img in &v.images {
        let mut first = true;
        for cluster in &v.clusters {
            let Some(c) = img.clusters.get(cluster) else {
                continue;
            };
            let healthy = match (&c.healthy_since, &c.rollout) {
                (Some(t), _) => t.clone(),
                (None, Some(r)) => format!("not healthy: {r}"),
                (None, None) => "-".into(),
            };
            rows.push(vec![
                if first {
                    format!("{}/{}", img.namespace, img.name)
                } else {
                    String::new()
                },
                cluster.clone(),
                dash(&c.tag),
                dash(&c.result),
                healthy,
                dash(&c.waiting_for),
            ]);
            first = false;
        }
    }
    let mut out = crate::table::align(&rows);
    for (cluster, e) in &v.errors {
        out.push_str(&format!("{cluster}: {e}\n"));
    }
    out
}

/// Output format of `kimup fleet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON object, as `/fleet` serves it.
    Json,
}

/// Flags of `kimup fleet`.
#[derive(Clone, Debug, clap::Args)]
pub struct FleetArgs {
    /// Folder of member kubeconfigs (as `kimup run --kubeconfig-dir`); repeatable.
    #[arg(long = "kubeconfig-dir")]
    pub kubeconfig_dirs: Vec<PathBuf>,
    /// A member kubeconfig file; repeatable.
    #[arg(long = "kubeconfig")]
    pub kubeconfigs: Vec<PathBuf>,
    /// Only the Images of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Let kubeconfigs run `exec` credential plugins.
    #[arg(long)]
    pub allow_exec_auth: bool,
}

/// `kimup fleet`: reads every member's Images and prints the matrix. Exit code 1 when a member
/// could not be read (the others are printed), 2 when no member is configured.
pub async fn main(args: &FleetArgs) -> u8 {
    if args.kubeconfig_dirs.is_empty() && args.kubeconfigs.is_empty() {
        eprintln!("error: name the members with --kubeconfig-dir DIR or --kubeconfig FILE");
        return 2;
    }
    let members = crate::clusters::scan(
        &args.kubeconfig_dirs,
        &args.kubeconfigs,
        args.allow_exec_auth,
    );
    if members.is_empty() {
        eprintln!("error: no kubeconfig found there");
        return 2;
    }
    let reads = futures::future::join_all(members.into_values().map(|m| async move {
        let images = read_member(m.source, args.namespace.as_deref()).await;
        (m.name, images)
    }))
    .await;
    let failed = reads.iter().any(|(_, r)| r.is_err());
    let v = view(reads.iter().map(|(name, r)| {
        (
            name.clone(),
            r.as_ref().map(|i| i.iter().collect()).map_err(Clone::clone),
        )
    }));
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Table => print!("{}", table(&v)),
    }
    u8::from(failed)
}

async fn read_member(
    source: Result<(kube::config::Kubeconfig, String), String>,
    namespace: Option<&str>,
) -> Result<Vec<Image>, String> {
    let (kc, context) = source?;
    let config = crate::clusters::client_config(kc, &context).await?;
    let client = crate::clusters::kube_client(config, crate::clusters::KubeTimeouts::default())?;
    let api: Api<Image> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| format!("listing Images: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(yaml: &str) -> Image {
        serde_yaml::from_str(yaml).expect("image")
    }

    #[test]
    fn the_matrix_lines_up_images_by_namespace_and_name() {
        let dev = image(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {name: web, namespace: shop}\nspec: {image: r/web, triggers: [{type: webhook}], rules: [{name: m, type: semver-minor, actions: [{type: apply}]}]}\nstatus:\n  tag: 1.4.0\n  result: Success\n  rollout: {tag: 1.4.0, since: '2026-01-01T00:00:00Z', healthySince: '2026-01-01T00:01:00Z'}\n",
        );
        let prod = image(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {name: web, namespace: shop}\nspec: {image: r/web, triggers: [{type: webhook}], rules: [{name: m, type: semver-minor, actions: [{type: apply}]}], promotion: {after: [dev], soak: 1h}}\nstatus:\n  tag: 1.3.0\n  result: Success\n  rollout: {tag: 1.3.0, since: '2025-12-01T00:00:00Z', message: 'Deployment web: 1 of 2 replicas updated, 1 available'}\n  conditions:\n  - {type: Promotion, status: 'False', reason: Waiting, message: 'waiting for dev: 1.4.0 healthy 12m of 1h', lastTransitionTime: '2026-01-01T00:01:00Z'}\n",
        );
        let v = view([
            ("prod".to_string(), Ok(vec![&prod])),
            ("dev".to_string(), Ok(vec![&dev])),
            (
                "staging".to_string(),
                Err("listing Images: connection refused".to_string()),
            ),
        ]);
        assert_eq!(v.clusters, vec!["dev", "prod", "staging"]);
        assert_eq!(v.images.len(), 1);
        let row = &v.images[0];
        assert_eq!(
            row.clusters["dev"].healthy_since.as_deref(),
            Some("2026-01-01T00:01:00Z")
        );
        assert_eq!(row.clusters["dev"].waiting_for, None);
        assert_eq!(
            row.clusters["prod"].waiting_for.as_deref(),
            Some("waiting for dev: 1.4.0 healthy 12m of 1h")
        );
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("IMAGE     CLUSTER  TAG"), "{t}");
        assert!(
            lines[1].starts_with("shop/web  dev      1.4.0  Success  2026-01-01T00:01:00Z"),
            "{t}"
        );
        assert!(lines[2].contains("prod     1.3.0  Success  not healthy: Deployment web: 1 of 2 replicas updated, 1 available  waiting for dev: 1.4.0 healthy 12m of 1h"), "{t}");
        assert_eq!(lines[3], "staging: listing Images: connection refused");
        let json: View =
            serde_json::from_str(&serde_json::to_string(&v).expect("json")).expect("back");
        assert_eq!(json, v);
    }
}
