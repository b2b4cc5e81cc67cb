//! Leader election on a coordination.k8s.io Lease, with client-go's semantics: expiry judged by
//! locally observed time, conditional updates on resourceVersion, step-down when a renewal cannot
//! be made within the renew deadline, release on shutdown.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Election timing and identity.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (POD_NAME or host name).
    pub identity: String,
    /// How long a lease is valid without renewal (client-go default 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (default 10 s).
    pub renew_deadline: Duration,
    /// Interval between attempts (default 2 s).
    pub retry_period: Duration,
}

/// The lease fields an observer compares to notice that the holder is alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew: spec.renew_time.clone(),
            transitions: spec.lease_transitions,
        }
    }
}

/// What one attempt decided, given what was observed (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Someone else holds a lease that has not expired by our clock.
    HeldByOther(String),
    /// We may write the lease (acquire or renew); `transition` when the holder changes.
    Write { transition: bool },
}

/// Decides whether to write the lease: a lease is expired when its record has not changed for
/// `duration` of *our* time since we first saw it, so clock skew between replicas is harmless.
pub fn decide(
    holder: Option<&str>,
    me: &str,
    observed_for: Duration,
    duration: Duration,
) -> Attempt {
    match holder {
        Some(h) if h != me && observed_for < duration => Attempt::HeldByOther(h.to_string()),
        Some(h) if h == me => Attempt::Write { transition: false },
        _ => Attempt::Write { transition: true },
    }
}

/// The elector.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Option<(Record, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// An elector on `client`'s cluster.
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// One acquire-or-renew attempt; true when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let secs = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record::of(&spec);
        let observed_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record.clone(), at));
                at
            }
        };
        // Honour the holder's own duration: it is the promise the holder made.
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.config.lease_duration);
        let transition = match decide(
            record.holder.as_deref(),
            &self.config.identity,
            observed_at.elapsed(),
            duration,
        ) {
            Attempt::HeldByOther(_) => return Ok(false),
            Attempt::Write { transition } => transition,
        };
        let mut new = lease.clone();
        let mut s = spec.clone();
        if transition {
            s.acquire_time = Some(now());
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        s.holder_identity = Some(self.config.identity.clone());
        s.lease_duration_seconds = Some(secs);
        s.renew_time = Some(now());
        new.spec = Some(s);
        // replace() carries metadata.resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &new)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some((Record::of(&spec), Instant::now()));
    }

    /// Campaigns until `shutdown`, publishing leadership on `tx`. Steps down at once when the
    /// lease cannot be renewed within the renew deadline.
    pub async fn run_shared(
        &mut self,
        tx: std::sync::Arc<watch::Sender<bool>>,
        shutdown: CancellationToken,
    ) {
        let mut leading = false;
        let mut last_renew = Instant::now();
        loop {
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await;
            let ok = match attempt {
                Ok(Ok(held)) => held,
                Ok(Err(e)) => {
                    warn!(error = %e, lease = %self.config.name, "lease attempt failed");
                    false
                }
                Err(_) => {
                    warn!(lease = %self.config.name, "lease attempt timed out");
                    false
                }
            };
            if ok {
                last_renew = Instant::now();
                if !leading {
                    leading = true;
                    info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                    crate::metrics::leader(true);
                    tx.send_replace(true);
                }
            } else if leading && last_renew.elapsed() >= self.config.renew_deadline {
                leading = false;
                warn!(identity = %self.config.identity, "lost the lease; stopping all actions");
                crate::metrics::leader(false);
                tx.send_replace(false);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Gives the lease up (holder emptied, 1 s duration) if we hold it, so a standby takes over
    /// without waiting for expiry. Call once work has stopped.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        let mut new = lease.clone();
        new.spec = Some(spec);
        self.api
            .replace(&lease.name_any(), &PostParams::default(), &new)
            .await?;
        info!(identity = %self.config.identity, "lease released");
        Ok(())
    }
}

/// This replica's identity: POD_NAME, else the host name, else a random-ish fallback.
pub fn identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            return format!("{h}-{}", std::process::id());
        }
    }
    format!("kimup-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_live_lease_of_another_is_respected() {
        assert_eq!(
            decide(Some("b"), "a", Duration::from_secs(3), D),
            Attempt::HeldByOther("b".into())
        );
    }

    #[test]
    fn an_expired_lease_is_taken_with_a_transition() {
        assert_eq!(
            decide(Some("b"), "a", D, D),
            Attempt::Write { transition: true }
        );
    }

    #[test]
    fn our_lease_is_renewed_without_transition() {
        assert_eq!(
            decide(Some("a"), "a", Duration::ZERO, D),
            Attempt::Write { transition: false }
        );
    }

    #[test]
    fn a_released_lease_is_free() {
        assert_eq!(
            decide(None, "a", Duration::ZERO, D),
            Attempt::Write { transition: true }
        );
    }
}
