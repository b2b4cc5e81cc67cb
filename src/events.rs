//! Kubernetes Events on Images (events.k8s.io/v1), with client-go's series aggregation for
//! warnings: a warning repeated within [`SERIES_WINDOW`] patches the first one's `series` instead
//! of creating another.
//!
//! kube's own `Recorder` does the same but keeps every event it published, whole, for six
//! minutes, and walks them all on every publish: at start-up with 10,000 Images that is one
//! full Event object per Image in memory (about 2 KB each) and a quadratic amount of work. This
//! recorder keeps a hash of each event's identity, the created Event's name and its count.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// How long a published event can be continued as a series (kube's and client-go's figure).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// An event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub note: String,
    /// What was being done (`Sync`).
    pub action: String,
}

/// What is kept of a published event: the Event's name and how many times it happened.
#[derive(Clone, Debug)]
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

/// Publishes events as one controller instance.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    published: Mutex<Remembered>,
}

/// The series that can still be continued, and when they were last swept.
struct Remembered {
    series: HashMap<u64, Published>,
    swept: Instant,
}

/// The identity of an event for aggregation (pure): the same object (by uid, else namespace and
/// name), type, reason, action and note.
pub fn identity(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        regarding.uid.as_deref(),
        regarding.namespace.as_deref(),
        regarding.name.as_deref(),
        ev.warning,
        &ev.reason,
        &ev.action,
        &ev.note,
    )
        .hash(&mut h);
    h.finish()
}

/// Whether an event published at `at` can still be continued as a series at `now` (pure).
pub fn continues(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) < SERIES_WINDOW
}

impl Recorder {
    /// A recorder reporting as `controller` (`instance`: this replica and cluster).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            published: Mutex::new(Remembered {
                series: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Events remembered for aggregation now (diagnostics and tests).
    pub fn remembered(&self) -> usize {
        self.published.lock().map(|p| p.series.len()).unwrap_or(0)
    }

    /// The series this event continues, if any, after dropping those past the window (at most
    /// once a minute: walking every entry on each publish would be quadratic).
    fn continued(&self, key: u64, now: Instant) -> Option<Published> {
        let mut r = self.published.lock().ok()?;
        if now.saturating_duration_since(r.swept) > Duration::from_secs(60) {
            r.series.retain(|_, p| continues(p.at, now));
            r.series.shrink_to_fit();
            r.swept = now;
        }
        r.series.get(&key).filter(|p| continues(p.at, now)).cloned()
    }

    fn remember(&self, key: u64, published: Published) {
        if let Ok(mut guard) = self.published.lock() {
            guard.series.insert(key, published);
        }
    }

    /// Publishes `ev` about `regarding` in its namespace: a new Event, or the next count of the
    /// series it continues.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let key = identity(ev, regarding);
        let now = Instant::now();
        let time = MicroTime(k8s_openapi::jiff::Timestamp::now());
        if let Some(mut series) = self.continued(key, now) {
            series.count = series.count.saturating_add(1);
            let patch = json!({"series": {"count": series.count, "lastObservedTime": time}});
            api.patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            series.at = now;
            self.remember(key, series);
            return Ok(());
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            time.0.as_nanosecond()
        );
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: Some(ev.note.clone()),
            event_time: Some(time),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        // Warnings repeat (a failing registry, every sync); a Normal event says what changed
        // (a new tag, a workload updated) and does not, so remembering each would keep an entry
        // per Image for six minutes after every start-up for nothing.
        if !ev.warning {
            return Ok(());
        }
        self.remember(
            key,
            Published {
                name,
                count: 1,
                at: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            warning: true,
            reason: reason.into(),
            note: note.into(),
            action: "Sync".into(),
        }
    }

    fn image(uid: &str, rv: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Image".into()),
            namespace: Some("ns".into()),
            name: Some("web".into()),
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_event_about_the_same_object_is_one_series() {
        let a = identity(&ev("RegistryError", "down"), &image("u1", "1"));
        // A status write between two syncs changes the resourceVersion, not the series.
        assert_eq!(a, identity(&ev("RegistryError", "down"), &image("u1", "2")));
        assert_ne!(
            a,
            identity(&ev("RegistryError", "other"), &image("u1", "1"))
        );
        assert_ne!(a, identity(&ev("RuleError", "down"), &image("u1", "1")));
        assert_ne!(a, identity(&ev("RegistryError", "down"), &image("u2", "1")));
    }

    #[test]
    fn a_series_lasts_six_minutes() {
        let t0 = Instant::now();
        assert!(continues(t0, t0));
        assert!(continues(t0, t0 + Duration::from_secs(359)));
        assert!(!continues(t0, t0 + SERIES_WINDOW));
    }
}
