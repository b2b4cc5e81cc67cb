//! Fleet promotion (pure): how a cluster's rollout of an Image's tag is judged and recorded
//! ([`judge`], [`next_rollout`]), and which tags a later cluster may take ([`gate`]): those that
//! ran healthy for the soak in every cluster its `promotion.after` names, and that failed to roll
//! out nowhere.
//!
//! Everything is derived from the Images' statuses in the clusters (`status.rollout`), never
//! from kimup's memory: a restart neither resets nor skips a soak, and any replica decides the
//! same.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::actions::apply::WorkloadOutcome;
use crate::api::image::{HealthyPeriod, Promotion, RolloutStatus};
use crate::api::{Image, ImageStatus};
use crate::fleet::Seen;
use crate::workloads::{Kind, Rollout};

/// Healthy periods of earlier tags kept in `status.rollout.earlier`.
pub const EARLIER_KEPT: usize = 5;
/// Failed tags kept in `status.rollout.failedTags`.
pub const FAILED_KEPT: usize = 20;
/// How long a StatefulSet or DaemonSet may take to roll out before its rollout counts as failed:
/// Kubernetes gives them no progress deadline, so kimup applies the Deployment default.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);

/// Condition type of the promotion gate.
pub const CONDITION_PROMOTION: &str = "Promotion";

/// What is wrong with a `spec.promotion`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromotionError {
    /// `soak` is not a duration.
    #[error("promotion.soak: {0}")]
    Soak(String),
    /// `after` names no member cluster other than this one.
    #[error(
        "promotion.after {after:?} matches no member cluster other than {own} (members: {members})"
    )]
    NoMember {
        after: Vec<String>,
        own: String,
        members: String,
    },
}

impl PromotionError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PromotionError::Soak(_) => "promotion_soak",
            PromotionError::NoMember { .. } => "promotion_no_member",
        }
    }
}

/// The soak of a promotion.
pub fn soak(p: &Promotion) -> Result<Duration, PromotionError> {
    crate::run::parse_duration(&p.soak).map_err(PromotionError::Soak)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters and `?` for one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point: linear in practice, no recursion to exhaust.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // A star first: a `*` in the pattern is a wildcard even where the name has a `*`.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The member clusters `after` names, this one (`own`) excepted, sorted; an error when none.
pub fn gate_clusters(
    p: &Promotion,
    own: &str,
    members: &[String],
) -> Result<Vec<String>, PromotionError> {
    let matched: Vec<String> = members
        .iter()
        .filter(|m| m.as_str() != own)
        .filter(|m| p.after.iter().any(|a| glob_match(&a.0, m)))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if matched.is_empty() {
        return Err(PromotionError::NoMember {
            after: p.after.iter().map(|a| a.0.clone()).collect(),
            own: own.to_string(),
            members: if members.is_empty() {
                "none".to_string()
            } else {
                members.join(", ")
            },
        });
    }
    Ok(matched)
}

/// A cluster's verdict on the rollout of the Image's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Every opted-in workload is rolled out and available at the tag.
    Healthy,
    /// Not yet, and why.
    Progressing(String),
    /// The rollout failed, and how.
    Failed(String),
}

/// Judges the rollout of the Image's tag from apply's outcomes (None: apply did not run, e.g. no
/// tag yet or a conflict). An Image without an apply action has no workloads to judge: its tag
/// counts as running once chosen. `since` is when the tag became the Image's tag: a StatefulSet
/// or DaemonSet still rolling out [`ROLLOUT_DEADLINE`] later has failed.
pub fn judge(
    has_apply: bool,
    outcomes: Option<&[WorkloadOutcome]>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Judged {
    if !has_apply {
        return Judged::Healthy;
    }
    let Some(outcomes) = outcomes else {
        return Judged::Progressing("the workloads are not converged".into());
    };
    if outcomes.is_empty() {
        return Judged::Progressing("no opted-in workload runs the repository".into());
    }
    let overdue = (now - since)
        .to_std()
        .is_ok_and(|age| age > ROLLOUT_DEADLINE);
    let mut waiting = Vec::new();
    for w in outcomes {
        let what = format!("{} {}", w.kind.as_str(), w.name);
        if let Some(e) = &w.error {
            waiting.push(format!("{what}: not written ({e})"));
        } else if w.holds_newer() {
            waiting.push(format!("{what}: runs a newer version"));
        } else if w.patched || !w.up_to_date() {
            waiting.push(format!("{what}: being updated"));
        } else {
            match &w.rollout {
                Rollout::Complete => {}
                Rollout::Failed(m) => return Judged::Failed(format!("{what}: {m}")),
                Rollout::Progressing(m)
                    if overdue && matches!(w.kind, Kind::StatefulSet | Kind::DaemonSet) =>
                {
                    return Judged::Failed(format!(
                        "{what}: not rolled out after {} ({m})",
                        human(ROLLOUT_DEADLINE)
                    ));
                }
                Rollout::Progressing(m) => waiting.push(format!("{what}: {m}")),
            }
        }
    }
    if waiting.is_empty() {
        Judged::Healthy
    } else {
        Judged::Progressing(waiting.join(", "))
    }
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// When `tag` became the Image's tag, by its recorded rollout (now for a new tag).
pub fn rollout_since(
    previous: Option<&RolloutStatus>,
    tag: &str,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    previous
        .filter(|r| r.tag == tag)
        .and_then(|r| parse_time(&r.since))
        .unwrap_or(now)
}

/// The rollout record after judging `tag` at `now`: a new tag starts a new rollout (the healthy
/// period of the one before moves to `earlier`); health must be unbroken, so a tag that stops
/// being healthy starts its healthy period again; a failure is remembered in `failedTags`.
pub fn next_rollout(
    previous: Option<&RolloutStatus>,
    tag: &str,
    judged: &Judged,
    now: DateTime<Utc>,
) -> RolloutStatus {
    let mut next = match previous {
        Some(p) if p.tag == tag => p.clone(),
        Some(p) => {
            let mut earlier = p.earlier.clone();
            if let Some(since) = &p.healthy_since {
                earlier.insert(
                    0,
                    HealthyPeriod {
                        tag: p.tag.clone(),
                        since: since.clone(),
                        until: stamp(now),
                    },
                );
            }
            // Back to a tag of before: its old period says nothing of this rollout.
            earlier.retain(|e| e.tag != tag);
            earlier.truncate(EARLIER_KEPT);
            RolloutStatus {
                tag: tag.to_string(),
                since: stamp(now),
                healthy_since: None,
                message: String::new(),
                earlier,
                failed_tags: p.failed_tags.clone(),
            }
        }
        None => RolloutStatus {
            tag: tag.to_string(),
            since: stamp(now),
            ..Default::default()
        },
    };
    match judged {
        Judged::Healthy => {
            if next.healthy_since.is_none() {
                next.healthy_since = Some(stamp(now));
            }
            next.message.clear();
        }
        Judged::Progressing(m) => {
            next.healthy_since = None;
            next.message = m.clone();
        }
        Judged::Failed(m) => {
            next.healthy_since = None;
            next.message = format!("rollout failed: {m}");
            if !next.failed_tags.iter().any(|t| t == tag) {
                next.failed_tags.push(tag.to_string());
                let extra = next.failed_tags.len().saturating_sub(FAILED_KEPT);
                next.failed_tags.drain(..extra);
            }
        }
    }
    next
}

/// Whether this rollout record newly marks `tag` failed compared with `previous`.
pub fn newly_failed(previous: Option<&RolloutStatus>, next: &RolloutStatus) -> bool {
    next.failed_tags.contains(&next.tag)
        && !previous.is_some_and(|p| p.failed_tags.contains(&next.tag))
}

/// One cluster a promotion waits on, as its watch cache shows the same Image there.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// Member cluster name.
    pub cluster: &'a str,
    /// The Image there.
    pub seen: &'a Seen,
}

/// What the gate lets through, and what the Image's `Promotion` condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Tags that ran healthy for the soak in every gate cluster and failed nowhere.
    pub eligible: BTreeSet<String>,
    /// Reason of the condition: `Promoted` (nothing to wait for), `Waiting` or `Halted`.
    pub reason: &'static str,
    /// One clause per gate cluster, e.g. `waiting for staging-a: 1.4.0 healthy 12m of 1h`.
    pub message: String,
    /// When the next soak completes, if one is under way: the Image re-checks then.
    pub due: Option<DateTime<Utc>>,
}

impl Gate {
    /// Whether the condition is True.
    pub fn open(&self) -> bool {
        self.reason == "Promoted"
    }
}

/// Tags failed anywhere in the fleet, from the same Image's statuses in every member cluster.
pub fn failed_anywhere<'a>(
    statuses: impl IntoIterator<Item = &'a ImageStatus>,
) -> BTreeSet<String> {
    statuses
        .into_iter()
        .filter_map(|s| s.rollout.as_ref())
        .flat_map(|r| r.failed_tags.iter().cloned())
        .collect()
}

/// Judges the gate clusters (pure): a tag is eligible when, in every one of them, its latest
/// healthy period (the current one, or one of `earlier`) lasted at least `soak`, and no cluster
/// of the fleet failed to roll it out (`bad`).
pub fn gate(
    peers: &[Peer<'_>],
    bad: &BTreeSet<String>,
    soak: Duration,
    now: DateTime<Utc>,
) -> Gate {
    let mut eligible: Option<BTreeSet<String>> = None;
    let mut clauses = Vec::new();
    let (mut waiting, mut halted) = (false, false);
    let mut due: Option<DateTime<Utc>> = None;
    for peer in peers {
        let c = peer.cluster;
        let status = match peer.seen {
            Seen::Found(s) => s,
            Seen::Missing => {
                waiting = true;
                clauses.push(format!("waiting for {c}: no such Image there"));
                eligible = Some(BTreeSet::new());
                continue;
            }
            Seen::Unwatched(why) => {
                waiting = true;
                clauses.push(format!("waiting for {c}: {why}"));
                eligible = Some(BTreeSet::new());
                continue;
            }
            Seen::OtherRepository(image) => {
                waiting = true;
                clauses.push(format!(
                    "waiting for {c}: the Image there watches {image}, another repository"
                ));
                eligible = Some(BTreeSet::new());
                continue;
            }
        };
        let Some(r) = status.rollout.as_ref() else {
            waiting = true;
            clauses.push(format!("waiting for {c}: no tag rolled out yet"));
            eligible = Some(BTreeSet::new());
            continue;
        };
        let mut soaked = BTreeSet::new();
        let current_healthy = r.healthy_since.as_deref().and_then(parse_time);
        match current_healthy {
            Some(since) => {
                let age = (now - since).to_std().unwrap_or(Duration::ZERO);
                if age >= soak {
                    soaked.insert(r.tag.clone());
                    // No running age: a soaked gate's message stays the same, so the status is
                    // not rewritten at every sync.
                    clauses.push(format!(
                        "{c}: {} healthy since {} (soak {})",
                        r.tag,
                        stamp(since),
                        human(soak)
                    ));
                } else {
                    waiting = true;
                    let at = since + chrono::Duration::from_std(soak).unwrap_or_default();
                    due = Some(due.map_or(at, |d| d.min(at)));
                    clauses.push(format!(
                        "waiting for {c}: {} healthy {} of {}",
                        r.tag,
                        human_for(age, soak),
                        human(soak)
                    ));
                }
            }
            None if r.failed_tags.contains(&r.tag) => {
                halted = true;
                clauses.push(format!(
                    "halted: {} failed to roll out in {c} ({})",
                    r.tag, r.message
                ));
            }
            None => {
                waiting = true;
                let detail = if r.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.message)
                };
                clauses.push(format!("waiting for {c}: {} rolling out{detail}", r.tag));
            }
        }
        // Earlier tags: the latest period of each (newest first) counts; the current tag's own
        // state overrides any earlier period of it.
        let mut seen: BTreeSet<&str> = BTreeSet::from([r.tag.as_str()]);
        for e in &r.earlier {
            if !seen.insert(e.tag.as_str()) {
                continue;
            }
            let lasted = match (parse_time(&e.since), parse_time(&e.until)) {
                (Some(s), Some(u)) => (u - s).to_std().unwrap_or(Duration::ZERO),
                _ => Duration::ZERO,
            };
            if lasted >= soak {
                soaked.insert(e.tag.clone());
            }
        }
        eligible = Some(match eligible {
            None => soaked,
            Some(e) => e.intersection(&soaked).cloned().collect(),
        });
    }
    let eligible: BTreeSet<String> = eligible
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !bad.contains(t))
        .collect();
    let reason = if halted {
        "Halted"
    } else if waiting {
        "Waiting"
    } else {
        "Promoted"
    };
    Gate {
        eligible,
        reason,
        message: clauses.join("; "),
        due,
    }
}

/// `age` printed to the precision that matters against `soak`: seconds for soaks under two
/// minutes, whole minutes above (so that a waiting message changes once a minute, not at every
/// reconcile).
fn human_for(age: Duration, soak: Duration) -> String {
    if soak < Duration::from_secs(120) {
        human(Duration::from_secs(age.as_secs()))
    } else {
        human(Duration::from_secs(age.as_secs() / 60 * 60))
    }
}

/// A duration as `1h5m`, `12m`, `45s`, `0s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        if d.subsec_millis() > 0 && h == 0 && m == 0 {
            out.push_str(&format!("{}s", d.as_secs_f64()));
        } else {
            out.push_str(&format!("{sec}s"));
        }
    }
    out
}

/// The gate clusters of `image` given the members, or None when it has no promotion.
pub fn gate_of(
    image: &Image,
    own: &str,
    members: &[String],
) -> Option<Result<(Vec<String>, Duration), PromotionError>> {
    let p = image.spec.promotion.as_ref()?;
    Some(soak(p).and_then(|s| Ok((gate_clusters(p, own, members)?, s))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::apply::{ContainerPlan, Verdict};
    use crate::api::image::ClusterPattern;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn promo(after: &[&str], soak: &str) -> Promotion {
        Promotion {
            after: after
                .iter()
                .map(|a| ClusterPattern(a.to_string()))
                .collect(),
            soak: soak.into(),
        }
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_match("staging-*", "staging-a"));
        assert!(glob_match("staging-*", "staging-"));
        assert!(!glob_match("staging-*", "prod"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("dev", "dev"));
        assert!(!glob_match("dev", "dev2"));
        assert!(glob_match("st?ging-*-eu", "staging-a-eu"));
        assert!(!glob_match("st?ging-*-eu", "staging-a-us"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("ctx/*", "ctx/one"));
        // Found by the fuzzer: a star facing a literal star in the name.
        assert!(glob_match("*?", "*a"));
        assert!(glob_match("*a*a*a*a*", "*a*a*a*a*a*A*b"));
    }

    #[test]
    fn after_must_match_another_member() {
        let members: Vec<String> = ["dev", "staging-a", "staging-b", "prod"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            gate_clusters(&promo(&["staging-*"], "1h"), "prod", &members).expect("gate"),
            vec!["staging-a", "staging-b"]
        );
        // A pattern matching this cluster too skips it.
        assert_eq!(
            gate_clusters(&promo(&["*"], "1h"), "prod", &members).expect("gate"),
            vec!["dev", "staging-a", "staging-b"]
        );
        let err =
            gate_clusters(&promo(&["stagin-*"], "1h"), "prod", &members).expect_err("no member");
        assert!(
            err.to_string()
                .contains("matches no member cluster other than prod (members: dev, staging-a, staging-b, prod)"),
            "{err}"
        );
        assert!(gate_clusters(&promo(&["prod"], "1h"), "prod", &members).is_err());
        assert!(gate_clusters(&promo(&["dev"], "1h"), "prod", &[]).is_err());
        assert_eq!(soak(&promo(&["dev"], "90m")), Ok(Duration::from_secs(5400)));
        assert!(matches!(
            soak(&promo(&["dev"], "soon")),
            Err(PromotionError::Soak(_))
        ));
    }

    fn outcome(kind: Kind, rollout: Rollout, verdict: Verdict, patched: bool) -> WorkloadOutcome {
        WorkloadOutcome {
            kind,
            name: "web".into(),
            containers: vec![ContainerPlan {
                container: "app".into(),
                init: false,
                image: "r/app:1.4.0".into(),
                verdict,
            }],
            patched,
            error: None,
            rollout,
        }
    }

    #[test]
    fn rollouts_are_judged_from_the_workloads() {
        let t0 = at("2026-01-01T00:00:00Z");
        let soon = at("2026-01-01T00:01:00Z");
        let late = at("2026-01-01T00:11:00Z");
        let ok = outcome(
            Kind::Deployment,
            Rollout::Complete,
            Verdict::UpToDate,
            false,
        );
        assert_eq!(
            judge(true, Some(std::slice::from_ref(&ok)), t0, soon),
            Judged::Healthy
        );
        assert_eq!(judge(false, None, t0, soon), Judged::Healthy);
        assert!(matches!(
            judge(true, None, t0, soon),
            Judged::Progressing(_)
        ));
        assert_eq!(
            judge(true, Some(&[]), t0, soon),
            Judged::Progressing("no opted-in workload runs the repository".into())
        );
        // Written in this pass: its cached rollout is the old template's.
        let patched = outcome(
            Kind::Deployment,
            Rollout::Complete,
            Verdict::Update("r/app:1.4.0".into()),
            true,
        );
        assert_eq!(
            judge(true, Some(&[ok.clone(), patched]), t0, soon),
            Judged::Progressing("Deployment web: being updated".into())
        );
        let progressing = outcome(
            Kind::Deployment,
            Rollout::Progressing("1 of 2 replicas updated, 1 available".into()),
            Verdict::UpToDate,
            false,
        );
        assert!(matches!(
            judge(true, Some(std::slice::from_ref(&progressing)), t0, late),
            Judged::Progressing(_)
        ));
        let failed = outcome(
            Kind::Deployment,
            Rollout::Failed("ProgressDeadlineExceeded: too slow".into()),
            Verdict::UpToDate,
            false,
        );
        assert_eq!(
            judge(true, Some(&[ok.clone(), failed]), t0, soon),
            Judged::Failed("Deployment web: ProgressDeadlineExceeded: too slow".into())
        );
        // StatefulSets and DaemonSets fail at kimup's deadline.
        let sts = outcome(
            Kind::StatefulSet,
            Rollout::Progressing("0 of 1 replicas updated, 0 ready".into()),
            Verdict::UpToDate,
            false,
        );
        assert!(matches!(
            judge(true, Some(std::slice::from_ref(&sts)), t0, soon),
            Judged::Progressing(_)
        ));
        assert!(
            matches!(judge(true, Some(&[sts]), t0, late), Judged::Failed(m) if m.contains("not rolled out after 10m"))
        );
        let newer = outcome(Kind::Deployment, Rollout::Complete, Verdict::Newer, false);
        assert!(
            matches!(judge(true, Some(&[newer]), t0, soon), Judged::Progressing(m) if m.contains("newer"))
        );
    }

    #[test]
    fn health_is_unbroken_and_survives_in_the_record() {
        let t = |s: &str| at(&format!("2026-01-01T{s}Z"));
        let r1 = next_rollout(
            None,
            "1.4.0",
            &Judged::Progressing("rolling".into()),
            t("00:00:00"),
        );
        assert_eq!(r1.since, "2026-01-01T00:00:00Z");
        assert_eq!(r1.healthy_since, None);
        let r2 = next_rollout(Some(&r1), "1.4.0", &Judged::Healthy, t("00:01:00"));
        assert_eq!(r2.healthy_since.as_deref(), Some("2026-01-01T00:01:00Z"));
        assert_eq!(r2.since, r1.since);
        // Judged again (a restart reads the record): the healthy period goes on.
        let r3 = next_rollout(Some(&r2), "1.4.0", &Judged::Healthy, t("00:30:00"));
        assert_eq!(r3, r2);
        // A break starts it again.
        let r4 = next_rollout(
            Some(&r3),
            "1.4.0",
            &Judged::Progressing("0 of 1 available".into()),
            t("00:31:00"),
        );
        assert_eq!(r4.healthy_since, None);
        let r5 = next_rollout(Some(&r4), "1.4.0", &Judged::Healthy, t("00:32:00"));
        assert_eq!(r5.healthy_since.as_deref(), Some("2026-01-01T00:32:00Z"));
        // A new tag: the period of the one before is kept.
        let r6 = next_rollout(
            Some(&r5),
            "1.5.0",
            &Judged::Failed("Deployment web: x".into()),
            t("01:00:00"),
        );
        assert_eq!(r6.tag, "1.5.0");
        assert_eq!(
            r6.earlier,
            vec![HealthyPeriod {
                tag: "1.4.0".into(),
                since: "2026-01-01T00:32:00Z".into(),
                until: "2026-01-01T01:00:00Z".into(),
            }]
        );
        assert_eq!(r6.failed_tags, vec!["1.5.0"]);
        assert!(newly_failed(Some(&r5), &r6));
        let r7 = next_rollout(
            Some(&r6),
            "1.5.0",
            &Judged::Failed("Deployment web: x".into()),
            t("01:01:00"),
        );
        assert!(!newly_failed(Some(&r6), &r7));
        assert_eq!(r7.failed_tags, vec!["1.5.0"]);
        // Back to 1.4.0: its old period is dropped, the failure remembered.
        let r8 = next_rollout(Some(&r7), "1.4.0", &Judged::Healthy, t("02:00:00"));
        assert!(r8.earlier.is_empty());
        assert_eq!(r8.failed_tags, vec!["1.5.0"]);
        assert_eq!(r8.healthy_since.as_deref(), Some("2026-01-01T02:00:00Z"));
    }

    fn status(r: RolloutStatus) -> Seen {
        Seen::Found(Box::new(ImageStatus {
            rollout: Some(Box::new(r)),
            ..Default::default()
        }))
    }

    fn inner(s: &Seen) -> &ImageStatus {
        match s {
            Seen::Found(s) => s,
            _ => unreachable!("built Found"),
        }
    }

    #[test]
    fn the_gate_opens_after_the_soak_in_every_cluster() {
        let now = at("2026-01-01T01:00:00Z");
        let hour = Duration::from_secs(3600);
        let a = status(RolloutStatus {
            tag: "1.4.0".into(),
            since: "2025-12-31T23:00:00Z".into(),
            healthy_since: Some("2025-12-31T23:50:00Z".into()),
            ..Default::default()
        });
        let b = status(RolloutStatus {
            tag: "1.4.0".into(),
            since: "2026-01-01T00:40:00Z".into(),
            healthy_since: Some("2026-01-01T00:48:00Z".into()),
            ..Default::default()
        });
        let none = BTreeSet::new();
        let g = gate(
            &[
                Peer {
                    cluster: "staging-a",
                    seen: &a,
                },
                Peer {
                    cluster: "staging-b",
                    seen: &b,
                },
            ],
            &none,
            hour,
            now,
        );
        assert!(g.eligible.is_empty(), "{g:?}");
        assert_eq!(g.reason, "Waiting");
        assert_eq!(
            g.message,
            "staging-a: 1.4.0 healthy since 2025-12-31T23:50:00Z (soak 1h); waiting for staging-b: 1.4.0 healthy 12m of 1h"
        );
        assert_eq!(g.due, Some(at("2026-01-01T01:48:00Z")));
        let later = gate(
            &[
                Peer {
                    cluster: "staging-a",
                    seen: &a,
                },
                Peer {
                    cluster: "staging-b",
                    seen: &b,
                },
            ],
            &none,
            hour,
            at("2026-01-01T01:48:00Z"),
        );
        assert_eq!(later.eligible, BTreeSet::from(["1.4.0".to_string()]));
        assert!(later.open());
        // The fleet marked it bad: never eligible.
        let bad = BTreeSet::from(["1.4.0".to_string()]);
        let g = gate(
            &[Peer {
                cluster: "staging-a",
                seen: &a,
            }],
            &bad,
            hour,
            now,
        );
        assert!(g.eligible.is_empty());
    }

    #[test]
    fn earlier_periods_count_and_failures_halt() {
        let now = at("2026-01-01T03:00:00Z");
        let hour = Duration::from_secs(3600);
        // staging moved on to 1.5.0, which failed; 1.4.0 soaked before.
        let s = status(RolloutStatus {
            tag: "1.5.0".into(),
            since: "2026-01-01T02:00:00Z".into(),
            healthy_since: None,
            message: "rollout failed: Deployment web: ProgressDeadlineExceeded".into(),
            earlier: vec![
                HealthyPeriod {
                    tag: "1.4.0".into(),
                    since: "2026-01-01T00:30:00Z".into(),
                    until: "2026-01-01T02:00:00Z".into(),
                },
                HealthyPeriod {
                    tag: "1.3.0".into(),
                    since: "2026-01-01T00:00:00Z".into(),
                    until: "2026-01-01T00:10:00Z".into(),
                },
            ],
            failed_tags: vec!["1.5.0".into()],
        });
        let bad = failed_anywhere([inner(&s)]);
        let g = gate(
            &[Peer {
                cluster: "staging-a",
                seen: &s,
            }],
            &bad,
            hour,
            now,
        );
        assert_eq!(g.reason, "Halted");
        assert!(
            g.message
                .starts_with("halted: 1.5.0 failed to roll out in staging-a"),
            "{}",
            g.message
        );
        assert_eq!(
            g.eligible,
            BTreeSet::from(["1.4.0".to_string()]),
            "1.3.0 ran 10m only"
        );
        // A missing Image or one without a rollout waits, and lets nothing through.
        let empty = Seen::Found(Box::default());
        let missing = Seen::Missing;
        let down = Seen::Unwatched("staging-d is not watched now (down or starting)".into());
        let other = Seen::OtherRepository("r/other".into());
        let g = gate(
            &[
                Peer {
                    cluster: "staging-a",
                    seen: &s,
                },
                Peer {
                    cluster: "staging-b",
                    seen: &missing,
                },
                Peer {
                    cluster: "staging-c",
                    seen: &empty,
                },
                Peer {
                    cluster: "staging-d",
                    seen: &down,
                },
                Peer {
                    cluster: "staging-e",
                    seen: &other,
                },
            ],
            &bad,
            hour,
            now,
        );
        assert!(g.eligible.is_empty());
        assert!(
            g.message.contains(
                "waiting for staging-e: the Image there watches r/other, another repository"
            ),
            "{}",
            g.message
        );
        assert!(
            g.message
                .contains("waiting for staging-b: no such Image there"),
            "{}",
            g.message
        );
        assert!(
            g.message
                .contains("waiting for staging-c: no tag rolled out yet"),
            "{}",
            g.message
        );
        assert!(
            g.message
                .contains("waiting for staging-d: staging-d is not watched now"),
            "{}",
            g.message
        );
    }

    #[test]
    fn durations_read_like_the_soak() {
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(3900)), "1h5m");
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(
            human_for(Duration::from_secs(754), Duration::from_secs(3600)),
            "12m"
        );
        assert_eq!(
            human_for(Duration::from_secs(7), Duration::from_secs(20)),
            "7s"
        );
    }
}
