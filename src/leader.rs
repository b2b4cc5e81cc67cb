//! Leader election on a coordination.k8s.io Lease, with client-go's semantics: expiry judged by
//! locally observed time, conditional updates on resourceVersion, step-down when a renewal cannot
//! be made within the renew deadline, release on shutdown.
//!
//! Whether this replica may act is answered by [`Leadership::is_held`] from the local monotonic
//! clock alone, not by the elector loop: a process that was paused (SIGSTOP, a frozen VM, a long
//! GC-like stall) must stop acting the instant it resumes, before its elector has run again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Whether this replica may act, cheap to clone and to ask.
///
/// Held only while the local monotonic clock can vouch for the lease: now is before the instant at
/// which the last successful acquire or renew request was *sent*, plus the renew deadline.
/// Standbys count the (longer) lease duration from when they *observed* that renewal, which is
/// after we sent it, so the leader's window closes before any standby may take over, without
/// any clock synchronisation; `lease_duration - renew_deadline` is the grace left for a write
/// that passed the check just before the window closed (see [`check_durations`]).
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// How long a renewal vouches for us; None without election (always held).
    validity: Option<Duration>,
    /// Origin of `renewed`, so the stamp fits an atomic and checks never take a lock.
    base: Instant,
    /// Nanoseconds from `base` to the send instant of the last successful renewal, plus one;
    /// 0 when there is none (never acquired, or the lease was seen in other hands).
    renewed: AtomicU64,
    /// Set at shutdown: never held again, whatever the elector records afterwards.
    relinquished: AtomicBool,
    /// Gains and losses as the elector announced them (notifications only, not the truth).
    announced: watch::Sender<bool>,
}

impl Leadership {
    /// Leadership without election: held until [`Leadership::relinquish`].
    pub fn always() -> Self {
        Self::new(None, true)
    }

    /// Leadership won through a Lease: not held until the elector records a renewal, and held
    /// for `renew_deadline` after each renewal was sent.
    pub fn elected(renew_deadline: Duration) -> Self {
        Self::new(Some(renew_deadline), false)
    }

    fn new(validity: Option<Duration>, announced: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                validity,
                base: Instant::now(),
                renewed: AtomicU64::new(0),
                relinquished: AtomicBool::new(false),
                announced: watch::channel(announced).0,
            }),
        }
    }

    /// True while this replica may act (checked before every sync and every write).
    pub fn is_held(&self) -> bool {
        self.is_held_at(Instant::now())
    }

    /// [`Leadership::is_held`] at a given instant (the clock is injectable for tests).
    pub fn is_held_at(&self, now: Instant) -> bool {
        if self.inner.relinquished.load(Ordering::Acquire) {
            return false;
        }
        match self.inner.validity {
            None => true,
            Some(deadline) => self
                .last_renewal()
                .is_some_and(|sent| vouches(sent, now, deadline)),
        }
    }

    /// Announced gains (true) and losses (false), to re-sync everything on gaining leadership.
    /// A notification may lag the truth; act only on [`Leadership::is_held`].
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.inner.announced.subscribe()
    }

    /// Stops acting for good (shutdown): no later renewal makes this replica act again.
    pub fn relinquish(&self) {
        self.inner.relinquished.store(true, Ordering::Release);
        self.announce(false);
    }

    /// Send instant of the last successful renewal, if any.
    pub(crate) fn last_renewal(&self) -> Option<Instant> {
        match self.inner.renewed.load(Ordering::Acquire) {
            0 => None,
            n => self.inner.base.checked_add(Duration::from_nanos(n - 1)),
        }
    }

    /// Records a renewal that succeeded, by the instant its request was sent.
    pub(crate) fn record_renewal(&self, sent_at: Instant) {
        // An instant before `base` cannot be stored; not recording it only shortens leadership.
        let Some(since) = sent_at.checked_duration_since(self.inner.base) else {
            return;
        };
        if let Ok(n) = u64::try_from(since.as_nanos()) {
            self.inner
                .renewed
                .store(n.saturating_add(1), Ordering::Release);
        }
    }

    /// Drops the stamp: the lease was seen in other hands, stop acting now.
    pub(crate) fn forget(&self) {
        self.inner.renewed.store(0, Ordering::Release);
    }

    /// Publishes a gain or a loss; true when it changed what was announced.
    pub(crate) fn announce(&self, held: bool) -> bool {
        self.inner.announced.send_if_modified(|v| {
            let changed = *v != held;
            *v = held;
            changed
        })
    }
}

/// Whether a renewal sent at `sent_at` still vouches for us at `now` (pure). An instant before
/// `sent_at` (a clock read on another thread just before the stamp was stored) is vouched for.
pub fn vouches(sent_at: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(sent_at) < renew_deadline
}

/// How long the next lease call may take (pure), as in client-go: while this replica holds the
/// lease, what is left of the renew deadline counted from the last successful renewal's send
/// instant (zero once it has passed); while campaigning, one whole renew deadline (a slower
/// answer would leave no time to act anyway).
pub fn call_budget(last_sent: Option<Instant>, now: Instant, renew_deadline: Duration) -> Duration {
    match last_sent.and_then(|sent| sent.checked_add(renew_deadline)) {
        Some(end) => end.saturating_duration_since(now),
        None => renew_deadline,
    }
}

/// Longest wait for the Lease release at shutdown: SIGTERM must never hang on an unreachable
/// home cluster (the lease then expires on its own).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks election timing (pure). The rules, each needed for `is_held` to be safe or useful:
/// - the lease duration is whole seconds between 1 s and 1 h: the Lease stores whole seconds,
///   and a cut fraction would make standbys count a shorter lease than the leader assumes;
/// - 0 < retry period < renew deadline: at least one renewal is tried before stepping down;
/// - renew deadline < lease duration, by at least one retry period: the leader stops trusting
///   its lease `lease_duration - renew_deadline` before any standby may take over, and that margin
///   is all the time a write that passed `is_held()` just before the deadline has to reach its
///   API server. The elector already assumes a Lease call completes within a retry period, so
///   the margin must cover at least one such call (client-go defaults: 15 s, 10 s, 2 s: 5 s).
pub fn check_durations(
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
) -> Result<(), String> {
    if lease_duration < Duration::from_secs(1) || lease_duration > Duration::from_secs(3600) {
        return Err("--lease-duration must be between 1s and 1h".into());
    }
    if lease_duration.subsec_nanos() != 0 {
        return Err("--lease-duration must be whole seconds (the Lease stores seconds)".into());
    }
    if retry_period.is_zero() || retry_period >= renew_deadline {
        return Err("--retry-period must be above 0 and shorter than --renew-deadline".into());
    }
    if renew_deadline >= lease_duration {
        return Err("--renew-deadline must be shorter than --lease-duration".into());
    }
    if lease_duration - renew_deadline < retry_period {
        return Err(format!(
            "--lease-duration minus --renew-deadline ({:?}) must be at least --retry-period ({:?}): \
             it is the grace a write started just before the deadline has before a standby takes over",
            lease_duration - renew_deadline,
            retry_period
        ));
    }
    Ok(())
}

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

/// What one acquire-or-renew attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// We hold the lease; the write that made it so was sent at `sent_at`.
    Held {
        /// When the successful create or update was sent (the start of its validity).
        sent_at: Instant,
    },
    /// Someone else holds it (None: a concurrent writer won the conditional update).
    HeldByOther(Option<String>),
}

/// Why the lease release at shutdown did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The API server refused or failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
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

    /// Reads the lease and records what it shows, writing nothing: `Some(holder)` while another
    /// replica holds it and it has not expired by our clock, None when it is free (absent,
    /// released, expired, or ours). Sharded replicas watch the shards they do not hold with it,
    /// so that a dead holder's shard is seen expired one lease duration after its last renewal.
    pub async fn peek(&mut self) -> Result<Option<String>, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(None);
        };
        let spec = lease.spec.unwrap_or_default();
        Ok(match self.judge(&spec) {
            Attempt::HeldByOther(h) => Some(h),
            Attempt::Write { .. } => None,
        })
    }

    /// Records what the lease shows (its record, and since when by our clock) and decides.
    fn judge(&mut self, spec: &LeaseSpec) -> Attempt {
        let record = Record::of(spec);
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
        decide(
            record.holder.as_deref(),
            &self.config.identity,
            observed_at.elapsed(),
            duration,
        )
    }

    /// The election settings (name, identity, timing).
    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// One acquire-or-renew attempt (unbounded: the caller bounds it).
    pub async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
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
            let sent_at = Instant::now();
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(Outcome::Held { sent_at })
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::HeldByOther(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let transition = match self.judge(&spec) {
            Attempt::HeldByOther(h) => return Ok(Outcome::HeldByOther(Some(h))),
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
        // Validity starts when the update leaves, not when it is answered: standbys count from
        // when they see it, which is later still.
        let sent_at = Instant::now();
        // replace() carries metadata.resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &new)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(Outcome::Held { sent_at })
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::HeldByOther(None)),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some((Record::of(&spec), Instant::now()));
    }

    /// Campaigns until `shutdown`, recording renewals in `leadership` and announcing gains and
    /// losses. Every call is bounded by what is left of the renew deadline, and the step-down
    /// happens the moment the deadline passes, even while a call hangs.
    pub async fn run(&mut self, leadership: Leadership, shutdown: CancellationToken) {
        let deadline = self.config.renew_deadline;
        let mut leading = false;
        loop {
            let last = leadership.last_renewal().filter(|_| leading);
            let budget = call_budget(last, Instant::now(), deadline);
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(budget, self.try_acquire_or_renew()) => r,
            };
            match attempt {
                Ok(Ok(Outcome::Held { sent_at })) => leadership.record_renewal(sent_at),
                Ok(Ok(Outcome::HeldByOther(holder))) => {
                    if leading {
                        warn!(lease = %self.config.name, holder = holder.as_deref().unwrap_or("?"), "the lease is in other hands");
                    }
                    leadership.forget();
                }
                Ok(Err(e)) => {
                    warn!(error = %e, lease = %self.config.name, "lease attempt failed")
                }
                Err(_) => {
                    warn!(lease = %self.config.name, budget_ms = budget.as_millis() as u64, "lease attempt timed out")
                }
            }
            leading = self.publish(&leadership, leading);
            // Sleep a retry period, but wake at the deadline to step down on time.
            let step_down = leadership
                .last_renewal()
                .filter(|_| leading)
                .and_then(|sent| sent.checked_add(deadline));
            let at_deadline = async {
                match step_down {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = at_deadline => {}
            }
            leading = self.publish(&leadership, leading);
        }
    }

    /// Announces a change of `leadership` against what was `leading`; returns the new state.
    fn publish(&self, leadership: &Leadership, leading: bool) -> bool {
        let held = leadership.is_held();
        if held && !leading {
            info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
            crate::metrics::leader(true);
            leadership.announce(true);
        } else if !held && leading {
            warn!(identity = %self.config.identity, lease = %self.config.name, "lost the lease; stopping all actions");
            crate::metrics::leader(false);
            leadership.announce(false);
        }
        held
    }

    /// Gives the lease up (holder emptied, 1 s duration) if we hold it, so a standby takes over
    /// without waiting for expiry. Call once work has stopped. Bounded by the renew deadline and
    /// [`RELEASE_TIMEOUT`], whichever is shorter: past it the lease expires by itself.
    pub async fn release(&mut self) -> Result<(), ReleaseError> {
        let limit = self.config.renew_deadline.min(RELEASE_TIMEOUT);
        tokio::time::timeout(limit, self.release_unbounded())
            .await
            .map_err(|_| ReleaseError::TimedOut(limit))?
    }

    async fn release_unbounded(&mut self) -> Result<(), ReleaseError> {
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

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn an_elected_leadership_is_held_only_within_the_deadline_of_the_renewal_send() {
        let l = Leadership::elected(S(3));
        let t0 = Instant::now();
        assert!(!l.is_held_at(t0), "nothing renewed yet");
        l.record_renewal(t0);
        assert!(l.is_held_at(t0));
        assert!(l.is_held_at(t0 + MS(2999)));
        assert!(
            !l.is_held_at(t0 + S(3)),
            "the deadline itself is no longer vouched for"
        );
        assert!(
            !l.is_held_at(t0 + S(20)),
            "a paused process resumes as a standby"
        );
        // A later renewal extends from its own send instant.
        l.record_renewal(t0 + S(2));
        assert!(l.is_held_at(t0 + MS(4999)));
        assert!(!l.is_held_at(t0 + S(5)));
    }

    #[test]
    fn a_clock_read_just_before_the_stamp_is_vouched_for() {
        let l = Leadership::elected(S(3));
        let t0 = Instant::now() + S(1);
        l.record_renewal(t0);
        assert!(l.is_held_at(t0 - MS(500)));
    }

    #[test]
    fn a_renewal_sent_before_the_handle_existed_is_not_recorded() {
        let before = Instant::now();
        std::thread::sleep(MS(2));
        let l = Leadership::elected(S(3));
        l.record_renewal(before);
        assert!(!l.is_held_at(before + MS(3)));
    }

    #[test]
    fn seeing_the_lease_in_other_hands_drops_it_at_once() {
        let l = Leadership::elected(S(3));
        let t0 = Instant::now();
        l.record_renewal(t0);
        l.forget();
        assert!(!l.is_held_at(t0));
    }

    #[test]
    fn relinquished_is_never_held_again() {
        let l = Leadership::elected(S(3));
        let t0 = Instant::now();
        l.record_renewal(t0);
        l.relinquish();
        assert!(!l.is_held_at(t0));
        l.record_renewal(t0 + MS(1));
        assert!(
            !l.is_held_at(t0 + MS(1)),
            "a renewal racing shutdown does not revive it"
        );
        let a = Leadership::always();
        assert!(a.is_held());
        assert!(a.clone().is_held(), "clones share the state");
        a.relinquish();
        assert!(!a.is_held());
    }

    #[test]
    fn changes_are_announced_once_each() {
        let l = Leadership::elected(S(3));
        let mut rx = l.changes();
        assert!(!*rx.borrow_and_update());
        assert!(l.announce(true));
        assert!(!l.announce(true), "no repeat");
        assert!(rx.has_changed().unwrap_or(false));
        assert!(*rx.borrow_and_update());
        l.relinquish();
        assert!(!*rx.borrow_and_update());
        assert!(*Leadership::always().changes().borrow());
    }

    #[test]
    fn calls_get_what_is_left_of_the_renew_deadline() {
        let t0 = Instant::now();
        assert_eq!(
            call_budget(None, t0, S(3)),
            S(3),
            "campaigning: a whole deadline"
        );
        assert_eq!(call_budget(Some(t0), t0 + S(1), S(3)), S(2));
        assert_eq!(call_budget(Some(t0), t0 + MS(2900), S(3)), MS(100));
        assert_eq!(call_budget(Some(t0), t0 + S(3), S(3)), Duration::ZERO);
        assert_eq!(call_budget(Some(t0), t0 + S(60), S(3)), Duration::ZERO);
    }

    #[test]
    fn inconsistent_durations_are_refused() {
        assert_eq!(
            check_durations(S(15), S(10), S(2)),
            Ok(()),
            "client-go defaults"
        );
        assert_eq!(check_durations(S(4), S(3), S(1)), Ok(()));
        assert_eq!(check_durations(S(6), S(4), S(2)), Ok(()));
        assert!(check_durations(MS(500), MS(300), MS(100)).is_err());
        assert!(
            check_durations(MS(4500), S(3), S(1))
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(
            check_durations(S(4), S(4), S(1))
                .unwrap_err()
                .contains("shorter than --lease")
        );
        assert!(check_durations(S(4), S(5), S(1)).is_err());
        assert!(
            check_durations(S(15), S(2), S(2))
                .unwrap_err()
                .contains("--retry-period")
        );
        assert!(check_durations(S(15), S(10), Duration::ZERO).is_err());
        let e = check_durations(S(10), S(9), S(2)).unwrap_err();
        assert!(e.contains("at least --retry-period"), "{e}");
        assert!(check_durations(S(7200), S(10), S(2)).is_err());
    }

    /// A Lease API that grants the first create, then never answers again.
    async fn hanging_lease_api() -> Client {
        use axum::Router;
        use axum::http::StatusCode;
        use axum::routing::{get, post};
        const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l";
        let gets = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                LEASE,
                get(move || {
                    let gets = gets.clone();
                    async move {
                        if gets.fetch_add(1, Ordering::SeqCst) > 0 {
                            std::future::pending::<()>().await;
                        }
                        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
                        (StatusCode::NOT_FOUND, axum::Json(status))
                    }
                }),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
                post(|axum::Json(mut lease): axum::Json<serde_json::Value>| async move {
                    lease["metadata"]["resourceVersion"] = "1".into();
                    (StatusCode::CREATED, axum::Json(lease))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client")
    }

    #[tokio::test]
    async fn the_leader_steps_down_at_the_deadline_while_a_renewal_hangs() {
        let renew_deadline = MS(300);
        let config = LeaderConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: S(1),
            renew_deadline,
            // Long enough that stepping down only after the next attempt's own timeout (at
            // retry + deadline) would miss the bound below.
            retry_period: MS(250),
        };
        let mut elector = Elector::new(hanging_lease_api().await, config);
        let leadership = Leadership::elected(renew_deadline);
        let mut changes = leadership.changes();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (leadership, shutdown) = (leadership.clone(), shutdown.clone());
            async move {
                elector.run(leadership, shutdown).await;
                elector
            }
        });
        tokio::time::timeout(S(5), changes.wait_for(|held| *held))
            .await
            .expect("leadership gained within 5 s")
            .expect("elector alive");
        let gained = Instant::now();
        assert!(leadership.is_held());
        // Every later call hangs: the step-down must come at the deadline, not after the call.
        tokio::time::timeout(S(5), changes.wait_for(|held| !*held))
            .await
            .expect("leadership lost within 5 s")
            .expect("elector alive");
        let held_for = gained.elapsed();
        assert!(!leadership.is_held());
        assert!(
            held_for <= renew_deadline + MS(120),
            "stepped down {held_for:?} after gaining, deadline {renew_deadline:?}"
        );
        shutdown.cancel();
        let mut elector = tokio::time::timeout(S(5), task)
            .await
            .expect("elector stops on shutdown")
            .expect("elector task");
        // The release at shutdown is bounded too: min(renew deadline, RELEASE_TIMEOUT).
        let started = Instant::now();
        let released = elector.release().await;
        assert!(
            matches!(released, Err(ReleaseError::TimedOut(d)) if d == renew_deadline),
            "{released:?}"
        );
        assert!(started.elapsed() < renew_deadline + MS(200));
    }
}
