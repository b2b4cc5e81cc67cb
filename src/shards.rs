//! Sharding the work across replicas: an Image belongs to the shard that rendezvous hashing
//! gives its (registry, repository), so every Image of a repository, in every cluster, is synced
//! by one replica and the shared tag cache still makes one listing per repository fleet-wide.
//! Each shard is a Lease; [`fair_share`] says how many a replica may hold.
//!
//! The decisions ([`shard_of`], [`fair_share`], [`preference`], [`rebalance`]) are pure; the
//! [`ShardElector`] runs them against the Leases with [`crate::leader::Elector`]'s client-go
//! semantics, one elector per shard, and records each shard's renewals in its own
//! [`Leadership`], which every write asks (monotonic clock, as with a single leader).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::leader::{Elector, LeaderConfig, Leadership, Outcome, call_budget};

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser to spread the bits): replicas of
/// different builds must agree on it, which `std`'s hasher does not promise.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard of a repository among `shards` (rendezvous, highest random weight): each shard
/// scores the key, the highest score wins. Adding a shard moves only the keys the new shard now
/// wins, about 1/N of them; `shards` of 0 or 1 is shard 0.
pub fn shard_of(registry: &str, repository: &str, shards: u32) -> u32 {
    (0..shards.max(1))
        .max_by_key(|i| {
            (
                hash(&[registry.as_bytes(), repository.as_bytes(), &i.to_le_bytes()]),
                *i,
            )
        })
        .unwrap_or(0)
}

/// How many shards one of `replicas` live replicas may hold: ceil(shards / replicas), so that
/// together they cover every shard and none holds more than its part.
pub fn fair_share(shards: u32, replicas: u32) -> u32 {
    shards.div_ceil(replicas.max(1))
}

/// The order in which `replica` prefers shards (rendezvous on (shard, replica)), so that
/// replicas starting together reach for different shards first rather than all for shard 0.
pub fn preference(replica: &str, shards: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..shards).collect();
    order.sort_by_key(|i| {
        std::cmp::Reverse(hash(&[b"preference", replica.as_bytes(), &i.to_le_bytes()]))
    });
    order
}

/// Name of shard `i`'s Lease: the leader Lease's name when there is a single shard (so one
/// replica set upgrading to `--shards 1` keeps its election), `<name>-shard-<i>` otherwise.
pub fn lease_name(base: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 {
        base.to_string()
    } else {
        format!("{base}-shard-{shard}")
    }
}

/// Name of a replica's membership Lease, renewed while it runs: how replicas count each other.
pub fn member_lease_name(base: &str, identity: &str) -> String {
    // Lease names are DNS subdomains: keep what fits, lower case.
    let id: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{base}-member-{id}");
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// What a replica should do with its shards this round (pure): which to release (it holds more
/// than its share) and which free ones to try to take (it holds fewer), given its preference,
/// the shards it holds and those free (no holder, or expired by its own observation).
pub fn rebalance(
    preferred: &[u32],
    held: &[u32],
    free: &[u32],
    share: u32,
) -> (Vec<u32>, Vec<u32>) {
    let share = share as usize;
    if held.len() > share {
        // Give up the least preferred first.
        let mut release: Vec<u32> = preferred
            .iter()
            .rev()
            .filter(|s| held.contains(s))
            .copied()
            .collect();
        release.truncate(held.len() - share);
        return (release, Vec::new());
    }
    let take: Vec<u32> = preferred
        .iter()
        .filter(|s| free.contains(s) && !held.contains(s))
        .take(share - held.len())
        .copied()
        .collect();
    (Vec::new(), take)
}

/// Which shards this replica may act for: one [`Leadership`] per shard (a single one without
/// sharding, which is the leader election itself). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ownership {
    shards: Arc<Vec<Leadership>>,
}

impl Ownership {
    /// One shard: the whole work, held by `leadership`.
    pub fn single(leadership: Leadership) -> Self {
        Self {
            shards: Arc::new(vec![leadership]),
        }
    }

    /// `shards` shards, each held after its Lease's renewals for `renew_deadline`.
    pub fn sharded(shards: u32, renew_deadline: Duration) -> Self {
        Self {
            shards: Arc::new(
                (0..shards.max(1))
                    .map(|_| Leadership::elected(renew_deadline))
                    .collect(),
            ),
        }
    }

    /// Number of shards.
    pub fn count(&self) -> u32 {
        u32::try_from(self.shards.len()).unwrap_or(u32::MAX)
    }

    /// The leadership of shard `i` (shard 0 when out of range).
    pub fn shard(&self, i: u32) -> &Leadership {
        self.shards
            .get(i as usize)
            .unwrap_or_else(|| &self.shards[0])
    }

    /// The leadership of the shard that a repository belongs to.
    pub fn of(&self, registry: &str, repository: &str) -> &Leadership {
        self.shard(shard_of(registry, repository, self.count()))
    }

    /// Every shard's leadership.
    pub fn all(&self) -> &[Leadership] {
        &self.shards
    }

    /// Whether this replica holds at least one shard now.
    pub fn any_held(&self) -> bool {
        self.shards.iter().any(Leadership::is_held)
    }

    /// Stops acting for every shard, for good (shutdown).
    pub fn relinquish(&self) {
        for s in self.shards.iter() {
            s.relinquish();
        }
    }
}

/// Runs the shard Leases of one replica: renews its membership Lease, counts the live replicas
/// from theirs, and holds its fair share of shard Leases, releasing extras when replicas join
/// and taking free or expired shards when they leave.
pub struct ShardElector {
    electors: Vec<Elector>,
    member: Elector,
    api: Api<Lease>,
    base: LeaderConfig,
    owner: Ownership,
    /// Membership Leases as last seen: name -> (holder and renew time, when first seen so).
    members: HashMap<String, (String, Instant)>,
    /// Shards being handed over: acting stopped, the Lease released once the grace has passed.
    releasing: HashMap<u32, Instant>,
    preferred: Vec<u32>,
    held: Vec<bool>,
    /// Until then a replica takes no free shard: replicas started together first see each
    /// other's membership, so none takes shards it must hand over (each handover re-lists the
    /// shard's repositories, each replica having its own tag cache).
    settle_until: Instant,
}

/// Rounds a new replica waits, counting the others, before it takes free shards.
const SETTLE_ROUNDS: u32 = 2;

/// Membership Leases unchanged this many lease durations belong to gone replicas: deleted.
const MEMBER_GC_DURATIONS: u32 = 10;

impl ShardElector {
    /// Electors for `owner`'s shards, with Leases `<name>-shard-<i>` in `config`'s namespace.
    pub fn new(client: Client, config: LeaderConfig, owner: Ownership) -> Self {
        let shards = owner.count();
        let electors = (0..shards)
            .map(|i| {
                Elector::new(
                    client.clone(),
                    LeaderConfig {
                        name: lease_name(&config.name, i, shards),
                        ..config.clone()
                    },
                )
            })
            .collect();
        let member = Elector::new(
            client.clone(),
            LeaderConfig {
                name: member_lease_name(&config.name, &config.identity),
                ..config.clone()
            },
        );
        Self {
            electors,
            member,
            api: Api::namespaced(client, &config.namespace),
            preferred: preference(&config.identity, shards),
            settle_until: Instant::now() + config.retry_period * SETTLE_ROUNDS,
            base: config,
            held: vec![false; shards as usize],
            owner,
            members: HashMap::new(),
            releasing: HashMap::new(),
        }
    }

    /// Live replicas by their membership Leases (this one included), by our own clock.
    async fn live_members(&mut self) -> u32 {
        let prefix = format!("{}-member-", self.base.name);
        let leases = match self.api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                warn!(error = %e, "listing the membership Leases failed; counting the last seen");
                return self.count_live().max(1);
            }
        };
        let now = Instant::now();
        let mut seen = HashMap::new();
        for lease in leases {
            let name = lease.name_any();
            if !name.starts_with(&prefix) {
                continue;
            }
            let spec = lease.spec.unwrap_or_default();
            let record = format!(
                "{}|{:?}",
                spec.holder_identity.unwrap_or_default(),
                spec.renew_time.map(|t| t.0)
            );
            let since = match self.members.get(&name) {
                Some((r, at)) if *r == record => *at,
                _ => now,
            };
            seen.insert(name, (record, since));
        }
        self.members = seen;
        // A long-gone replica's Lease is removed, so that the namespace does not fill up with
        // one Lease per pod ever started.
        let gone = self.base.lease_duration * MEMBER_GC_DURATIONS;
        let stale: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (_, since))| since.elapsed() > gone)
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            let _ = self.api.delete(&name, &DeleteParams::default()).await;
            self.members.remove(&name);
        }
        self.count_live().max(1)
    }

    fn count_live(&self) -> u32 {
        let live = self
            .members
            .values()
            .filter(|(_, since)| since.elapsed() < self.base.lease_duration)
            .count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// One round: renew what is held, watch the rest, rebalance.
    async fn round(&mut self) {
        let deadline = self.base.renew_deadline;
        let shards = self.owner.count();
        // Our own membership first: the others count us from it.
        match tokio::time::timeout(deadline, self.member.try_acquire_or_renew()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "renewing the membership Lease failed"),
            Err(_) => warn!("renewing the membership Lease timed out"),
        }
        let members = self.live_members().await;
        let share = fair_share(shards, members);
        let mut free = Vec::new();
        for i in 0..shards {
            let leadership = self.owner.shard(i).clone();
            if self.releasing.contains_key(&i) {
                continue;
            }
            let elector = &mut self.electors[i as usize];
            if self.held[i as usize] {
                let budget = call_budget(leadership.last_renewal(), Instant::now(), deadline);
                match tokio::time::timeout(budget, elector.try_acquire_or_renew()).await {
                    Ok(Ok(Outcome::Held { sent_at })) => leadership.record_renewal(sent_at),
                    Ok(Ok(Outcome::HeldByOther(holder))) => {
                        warn!(
                            shard = i,
                            holder = holder.as_deref().unwrap_or("?"),
                            "the shard's lease is in other hands"
                        );
                        leadership.forget();
                    }
                    Ok(Err(e)) => warn!(shard = i, error = %e, "renewing the shard's lease failed"),
                    Err(_) => warn!(shard = i, "renewing the shard's lease timed out"),
                }
            } else {
                match tokio::time::timeout(deadline, elector.peek()).await {
                    Ok(Ok(None)) => free.push(i),
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(e)) => warn!(shard = i, error = %e, "reading the shard's lease failed"),
                    Err(_) => warn!(shard = i, "reading the shard's lease timed out"),
                }
            }
            self.held[i as usize] = leadership.is_held();
        }
        let held: Vec<u32> = (0..shards).filter(|i| self.held[*i as usize]).collect();
        let (release, mut take) = rebalance(&self.preferred, &held, &free, share);
        if Instant::now() < self.settle_until {
            take.clear();
        }
        for i in release {
            // Stop acting now; the Lease goes once a write that passed the check just before
            // has had the grace that expiry would give it.
            let leadership = self.owner.shard(i);
            leadership.forget();
            self.held[i as usize] = false;
            let grace = self.base.lease_duration - self.base.renew_deadline;
            self.releasing.insert(i, Instant::now() + grace);
            info!(
                shard = i,
                members, share, "handing the shard over to a new replica"
            );
        }
        for i in take {
            let leadership = self.owner.shard(i).clone();
            let elector = &mut self.electors[i as usize];
            match tokio::time::timeout(deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(Outcome::Held { sent_at })) => {
                    leadership.record_renewal(sent_at);
                    self.held[i as usize] = true;
                }
                Ok(Ok(Outcome::HeldByOther(_))) => {}
                Ok(Err(e)) => warn!(shard = i, error = %e, "taking the shard's lease failed"),
                Err(_) => warn!(shard = i, "taking the shard's lease timed out"),
            }
        }
        let due: Vec<u32> = self
            .releasing
            .iter()
            .filter(|(_, at)| **at <= Instant::now())
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            self.releasing.remove(&i);
            if let Err(e) = self.electors[i as usize].release().await {
                warn!(shard = i, error = %e, "releasing the shard's lease failed; it expires");
            }
        }
        self.publish();
    }

    /// Announces gains and losses per shard, and the metrics.
    fn publish(&self) {
        let mut count = 0;
        for (i, leadership) in self.owner.all().iter().enumerate() {
            let held = leadership.is_held();
            count += usize::from(held);
            if leadership.announce(held) {
                if held {
                    info!(shard = i, identity = %self.base.identity, "holding shard");
                } else {
                    warn!(shard = i, identity = %self.base.identity, "lost the shard; stopping its actions");
                }
            }
        }
        crate::metrics::leader(count > 0);
        crate::metrics::shards_held(count);
    }

    /// Runs rounds every retry period until `shutdown`.
    pub async fn run(&mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.round() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.base.retry_period) => {}
            }
            self.publish();
        }
    }

    /// Releases every shard held and the membership Lease (shutdown, once work has stopped),
    /// each bounded as [`Elector::release`] is.
    pub async fn release(&mut self) {
        let releases = self
            .electors
            .iter_mut()
            .chain(std::iter::once(&mut self.member))
            .map(|e| e.release());
        let results: Vec<_> = futures::stream::iter(releases)
            .buffer_unordered(8)
            .collect()
            .await;
        for r in results {
            if let Err(e) = r {
                warn!(error = %e, "releasing a lease failed; it expires");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    "registry.example:5000".to_string(),
                    format!("team-{}/app-{i}", i % 7),
                )
            })
            .collect()
    }

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(shard_of("r", "a", 0), 0);
        assert_eq!(shard_of("r", "a", 1), 0);
    }

    #[test]
    fn a_key_always_lands_on_the_same_shard() {
        // Pinned: replicas of any build must agree, so these values never change.
        let pinned: Vec<u32> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|r| shard_of("docker.io", r, 4))
            .collect();
        assert_eq!(pinned, vec![2, 0, 3, 3, 2]);
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        // The FNV-1a offset basis and prime, SplitMix64's constants: a change here moves every
        // repository to another shard during a rolling upgrade.
        assert_eq!(hash(&[]), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        });
    }

    #[test]
    fn keys_spread_evenly() {
        let n = 30_000;
        for shards in [2u32, 3, 5, 8] {
            let mut counts = vec![0usize; shards as usize];
            for (r, p) in keys(n) {
                counts[shard_of(&r, &p, shards) as usize] += 1;
            }
            let even = n / shards as usize;
            for c in &counts {
                assert!(
                    c.abs_diff(even) < even / 10,
                    "{shards} shards: {counts:?} is not within 10% of {even} each"
                );
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_only_its_share() {
        let n = 30_000;
        for shards in [1u32, 2, 3, 7] {
            let moved: Vec<u32> = keys(n)
                .iter()
                .filter(|(r, p)| shard_of(r, p, shards) != shard_of(r, p, shards + 1))
                .map(|(r, p)| shard_of(r, p, shards + 1))
                .collect();
            // Only to the new shard, about 1/(N+1) of the keys.
            assert!(
                moved.iter().all(|s| *s == shards),
                "{shards}: moved between old shards"
            );
            let expected = n / (shards as usize + 1);
            assert!(
                moved.len().abs_diff(expected) < expected / 10,
                "{shards} -> {}: {} moved, expected about {expected}",
                shards + 1,
                moved.len()
            );
        }
    }

    #[test]
    fn fair_shares_cover_every_shard() {
        assert_eq!(fair_share(3, 3), 1);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(3, 1), 3);
        assert_eq!(
            fair_share(3, 0),
            3,
            "alone when nobody is seen, not even itself"
        );
        assert_eq!(fair_share(4, 3), 2);
        assert_eq!(fair_share(2, 5), 1);
        for shards in 1..20u32 {
            for replicas in 1..20u32 {
                assert!(fair_share(shards, replicas) * replicas >= shards);
            }
        }
    }

    #[test]
    fn replicas_prefer_different_shards() {
        let a = preference("kimup-a", 8);
        let b = preference("kimup-b", 8);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>(), "every shard once");
        assert_ne!(a, b);
        assert_eq!(a, preference("kimup-a", 8), "stable");
    }

    #[test]
    fn rebalancing_releases_the_excess_and_takes_up_to_the_share() {
        let pref = [2, 0, 1];
        // Alone with every shard, then a second replica appears: share 2, release the least
        // preferred held one.
        assert_eq!(rebalance(&pref, &[0, 1, 2], &[], 2), (vec![1], vec![]));
        assert_eq!(rebalance(&pref, &[0, 1, 2], &[], 1), (vec![1, 0], vec![]));
        // Fewer than the share: take free ones in order of preference.
        assert_eq!(rebalance(&pref, &[], &[0, 1, 2], 1), (vec![], vec![2]));
        assert_eq!(rebalance(&pref, &[0], &[1, 2], 2), (vec![], vec![2]));
        assert_eq!(rebalance(&pref, &[0], &[1], 3), (vec![], vec![1]));
        // At the share: nothing to do.
        assert_eq!(rebalance(&pref, &[2], &[0, 1], 1), (vec![], vec![]));
    }

    #[test]
    fn lease_names() {
        assert_eq!(lease_name("kimup-leader", 0, 1), "kimup-leader");
        assert_eq!(lease_name("kimup-leader", 2, 3), "kimup-leader-shard-2");
        assert_eq!(
            member_lease_name("kimup-leader", "Pod_A-1"),
            "kimup-leader-member-pod-a-1"
        );
        assert!(member_lease_name("l", &"x".repeat(400)).len() <= 253);
    }
}
