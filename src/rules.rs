//! Rule evaluation: which registry tag a rule moves an Image to, and why (pure).
//!
//! Every rule ranks all tags with a total order and picks the best eligible one, so the result
//! never depends on the order the registry listed the tags in. The Go original picked the first
//! match in descending string order (so `v1.9.5` won over `v1.10.0`), let pre-releases and
//! `-alpine` variants through, and could downgrade through regex rules; none of that is kept.
//!
//! What is kept is its buckets: semver-major, -minor and -patch (and calver's on year, minor and
//! patch) cover disjoint ranges of versions, so that a manifest can pair "semver-major -> alert"
//! with "semver-minor -> apply" and have the minor rule ignore a new major and the major rule
//! ignore a new minor.

use std::cmp::{Ordering, Reverse};
use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::registry::reference::TAG_MAX_LEN;
use crate::version::{CalverTag, OrderedTag, SemverTag};

/// Kinds of rule: how the next tag is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RuleType {
    /// Highest calendar-version release of a later year (>= next year).
    CalverMajor,
    /// Highest calendar-version release of this year with a higher minor (< next year).
    CalverMinor,
    /// Highest calendar-version release of this year.minor with a higher patch (< next minor).
    CalverPatch,
    /// Highest calendar-version pre-release above the current pre-release.
    CalverPrerelease,
    /// Highest semantic version with a higher major (>= next major).
    SemverMajor,
    /// Highest semantic version of this major with a higher minor (>= next minor, < next major).
    SemverMinor,
    /// Highest semantic version of this major.minor with a higher patch (< next minor).
    SemverPatch,
    /// Highest newer tag matching the regular expression in `value`.
    Regex,
    /// Highest tag other than the current one (for testing).
    Always,
    /// The current tag again whenever its manifest digest changes.
    Digest,
}

impl RuleType {
    /// Every rule type, in declaration order.
    pub const ALL: [RuleType; 10] = [
        RuleType::CalverMajor,
        RuleType::CalverMinor,
        RuleType::CalverPatch,
        RuleType::CalverPrerelease,
        RuleType::SemverMajor,
        RuleType::SemverMinor,
        RuleType::SemverPatch,
        RuleType::Regex,
        RuleType::Always,
        RuleType::Digest,
    ];

    /// The name used in manifests and on the command line, e.g. `semver-minor`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::CalverMajor => "calver-major",
            RuleType::CalverMinor => "calver-minor",
            RuleType::CalverPatch => "calver-patch",
            RuleType::CalverPrerelease => "calver-prerelease",
            RuleType::SemverMajor => "semver-major",
            RuleType::SemverMinor => "semver-minor",
            RuleType::SemverPatch => "semver-patch",
            RuleType::Regex => "regex",
            RuleType::Always => "always",
            RuleType::Digest => "digest",
        }
    }

    /// What the current tag must be for this rule, with an example, for error messages.
    fn needed_kind(self) -> &'static str {
        match self {
            RuleType::CalverMajor
            | RuleType::CalverMinor
            | RuleType::CalverPatch
            | RuleType::CalverPrerelease => {
                "a calendar version (such as 2024.0.0, 2024.11.05 or 24.04)"
            }
            _ => "a semantic version (such as 1.2.3 or v1.2)",
        }
    }
}

impl fmt::Display for RuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule name that is not one of [`RuleType::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule type {0:?}")]
pub struct UnknownRuleType(pub String);

impl FromStr for RuleType {
    type Err = UnknownRuleType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleType::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRuleType(s.to_string()))
    }
}

/// What a rule made of a tag list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The tag to move to, if any tag qualifies.
    pub chosen: Option<String>,
    /// Every distinct input tag with its verdict: chosen, eligible (best first), then rejected.
    pub considered: Vec<Candidate>,
    /// One sentence on what the rule looked for and what it found.
    pub explanation: String,
}

/// One tag and the rule's verdict on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The tag as the registry lists it.
    pub tag: String,
    /// The verdict.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The verdict on one tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    /// Qualifies but a better tag was chosen.
    Eligible,
    /// The tag the rule picked.
    Chosen,
    /// Does not qualify, for the given reason.
    Rejected(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Eligible => f.write_str("eligible"),
            Outcome::Chosen => f.write_str("chosen"),
            Outcome::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// Why a rule cannot be evaluated at all (a configuration problem, shown in an Image's status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The current tag is not the kind of version the rule compares.
    #[error("the current tag {tag:?} is not {}; {rule} needs one", .rule.needed_kind())]
    UnparsableCurrentTag {
        /// The current tag.
        tag: String,
        /// The rule that needed it parsed.
        rule: RuleType,
    },
    /// The regex rule's value does not compile.
    #[error("invalid regex `{value}` in the rule's value: {reason}")]
    InvalidRegex {
        /// The regular expression as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The regex rule's value is longer than [`MAX_REGEX_LEN`].
    #[error(
        "the regex in the rule's value is {len} bytes long, more than the {MAX_REGEX_LEN} allowed"
    )]
    RegexTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The regex rule's value compiles to more than [`MAX_REGEX_SIZE`].
    #[error(
        "the regex `{value}` in the rule's value compiles to more than {} MiB ({MAX_REGEX_SIZE} \
         bytes): use fewer or smaller repetitions, or ASCII classes such as [0-9a-z] instead of \\w",
        MAX_REGEX_SIZE >> 20
    )]
    RegexTooBig {
        /// The regular expression as given.
        value: String,
    },
    /// The rule needs a value and has none.
    #[error("{rule} needs a value: the regular expression that tags must match")]
    MissingValue {
        /// The rule lacking a value.
        rule: RuleType,
    },
    /// The semver rule's value is not a version constraint.
    #[error(
        "invalid version constraint {value:?} in the rule's value: {reason}; expected something like \">=1.2, <2\""
    )]
    InvalidConstraint {
        /// The constraint as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Digest rules compare manifest digests, which a tag list does not have.
    #[error(
        "digest rules compare the registry's manifest digest of the current tag and cannot be evaluated on a tag list"
    )]
    DigestNeedsRegistry,
}

/// Evaluates `rule` (with its optional `value`) from the `current` tag over the registry's `tags`.
pub fn evaluate(
    rule: RuleType,
    value: Option<&str>,
    current: &str,
    tags: &[String],
) -> Result<Decision, RuleError> {
    let mut unique: Vec<&str> = tags.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    // No registry stores a tag beyond the OCI limit and no image reference can name one, so
    // such tags are rejected without being ranked: 55 tags of 15 KB from a broken registry
    // took 13 ms to rank (found by kimup-fuzz).
    let (fitting, oversized): (Vec<&str>, Vec<&str>) =
        unique.iter().partition(|t| t.len() <= TAG_MAX_LEN);
    let ranking = match rule {
        RuleType::SemverMajor | RuleType::SemverMinor | RuleType::SemverPatch => {
            rank_semver(rule, value, current, &fitting)?
        }
        RuleType::CalverMajor
        | RuleType::CalverMinor
        | RuleType::CalverPatch
        | RuleType::CalverPrerelease => rank_calver(rule, current, &fitting)?,
        RuleType::Regex => rank_regex(rule, value, current, &fitting)?,
        RuleType::Always => rank_always(current, &fitting),
        RuleType::Digest => return Err(RuleError::DigestNeedsRegistry),
    };
    Ok(ranking.into_decision(rule, current, unique.len(), &oversized))
}

/// Whether a digest rule fires: only on a change after a first recorded observation.
pub fn digest_changed(previous: Option<&str>, current: &str) -> bool {
    previous.is_some_and(|p| p != current)
}

/// A rule's verdicts before they become a [`Decision`].
struct Ranking {
    /// Eligible tags, best first.
    eligible: Vec<String>,
    /// Rejected tags with their reasons, in any order.
    rejected: Vec<(String, String)>,
    /// What the rule looked for, for the explanation.
    scope: String,
}

impl Ranking {
    /// The decision, with the `oversized` tags (never ranked) rejected last.
    fn into_decision(
        mut self,
        rule: RuleType,
        current: &str,
        total: usize,
        oversized: &[&str],
    ) -> Decision {
        // Rejected tags are listed newest first, like the eligible ones, so a reader sees the
        // tags that came closest at the top.
        self.rejected
            .sort_by_cached_key(|(tag, _)| Reverse(OrderedTag::new(tag)));
        let chosen = self.eligible.first().cloned();
        let eligible_count = self.eligible.len();
        let mut considered: Vec<Candidate> = self
            .eligible
            .into_iter()
            .enumerate()
            .map(|(i, tag)| Candidate {
                tag,
                outcome: if i == 0 {
                    Outcome::Chosen
                } else {
                    Outcome::Eligible
                },
            })
            .collect();
        considered.extend(self.rejected.into_iter().map(|(tag, reason)| Candidate {
            tag,
            outcome: Outcome::Rejected(reason),
        }));
        considered.extend(oversized.iter().map(|tag| Candidate {
            tag: (*tag).to_string(),
            outcome: Outcome::Rejected(format!(
                "longer than {TAG_MAX_LEN} characters, the OCI limit for tags"
            )),
        }));
        let explanation = match &chosen {
            _ if total == 0 => format!("{rule} from {current}: the registry listed no tags"),
            Some(tag) => format!(
                "{rule} from {current}: chose {tag}, the best of {eligible_count} eligible {} ({})",
                plural(eligible_count, "tag"),
                self.scope
            ),
            None => format!(
                "{rule} from {current}: none of {total} {} qualifies ({})",
                plural(total, "tag"),
                self.scope
            ),
        };
        Decision {
            chosen,
            considered,
            explanation,
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn describe_variant(variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("variant {v}"),
        None => "no variant".to_string(),
    }
}

fn variant_mismatch(candidate: Option<&str>, current: Option<&str>) -> String {
    format!(
        "variant {} != current variant {}",
        candidate.unwrap_or("(none)"),
        current.unwrap_or("(none)")
    )
}

/// How many style traits a tag shares with the current one; the tie-break between spellings
/// of one version, so `1.2.0` follows `1.2.3` and `v1.2` follows `v1.1`.
fn semver_style(tag: &SemverTag, current: &SemverTag) -> (bool, bool, bool) {
    (
        tag.precision == current.precision,
        tag.v_prefix == current.v_prefix,
        tag.build.is_some() == current.build.is_some(),
    )
}

fn rank_semver(
    rule: RuleType,
    value: Option<&str>,
    current: &str,
    tags: &[&str],
) -> Result<Ranking, RuleError> {
    let constraint = match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Some((
            v,
            semver::VersionReq::parse(v).map_err(|e| RuleError::InvalidConstraint {
                value: v.to_string(),
                reason: e.to_string(),
            })?,
        )),
        None => None,
    };
    let cur = SemverTag::parse(current).ok_or_else(|| RuleError::UnparsableCurrentTag {
        tag: current.to_string(),
        rule,
    })?;
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for &tag in tags {
        match semver_verdict(rule, &cur, constraint.as_ref(), tag) {
            Ok(parsed) => eligible.push(parsed),
            Err(reason) => rejected.push((tag.to_string(), reason)),
        }
    }
    eligible.sort_by(|a, b| {
        b.version_cmp(a)
            .then_with(|| semver_style(b, &cur).cmp(&semver_style(a, &cur)))
            .then_with(|| a.raw.cmp(&b.raw))
    });
    let mut scope = semver_bucket(rule, &cur);
    scope.push_str(&format!(", {}", describe_variant(cur.variant.as_deref())));
    scope.push_str(if cur.is_prerelease() {
        ", pre-releases allowed"
    } else {
        ", releases only"
    });
    if let Some((text, _)) = constraint {
        scope.push_str(&format!(", satisfying {text}"));
    }
    Ok(Ranking {
        eligible: eligible.into_iter().map(|t| t.raw).collect(),
        rejected,
        scope,
    })
}

/// The range a semver rule covers from `cur`, written as kimup (Go) builds its constraint.
///
/// Membership is decided on the numbers (see [`semver_verdict`]); from a pre-release the patch
/// bucket starts just above the current tag, so that `1.0.0-rc2` follows `1.0.0-rc1`.
fn semver_bucket(rule: RuleType, cur: &SemverTag) -> String {
    // u128: a u64 major of u64::MAX still has a next one.
    let (major, minor, patch) = (
        u128::from(cur.major),
        u128::from(cur.minor),
        u128::from(cur.patch),
    );
    match rule {
        RuleType::SemverMajor => format!(">= {}.0.0", major + 1),
        RuleType::SemverMinor => format!(">= {major}.{}.0, < {}.0.0", minor + 1, major + 1),
        _ => match &cur.pre {
            Some(pre) => format!("> {major}.{minor}.{patch}-{pre}, < {major}.{}.0", minor + 1),
            None => format!(
                ">= {major}.{minor}.{}, < {major}.{}.0",
                patch + 1,
                minor + 1
            ),
        },
    }
}

fn semver_verdict(
    rule: RuleType,
    cur: &SemverTag,
    constraint: Option<&(&str, semver::VersionReq)>,
    tag: &str,
) -> Result<SemverTag, String> {
    if tag == cur.raw {
        return Err("current tag".into());
    }
    let cand = SemverTag::parse(tag).ok_or("unparsable")?;
    if cand.variant != cur.variant {
        return Err(variant_mismatch(
            cand.variant.as_deref(),
            cur.variant.as_deref(),
        ));
    }
    if cand.is_prerelease() && !cur.is_prerelease() {
        return Err("pre-release while current is a release".into());
    }
    if cand.version_cmp(cur) != Ordering::Greater {
        return Err("not newer than current".into());
    }
    // Candidates are newer than the current tag here, so a differing major or minor is higher.
    let outside = match rule {
        RuleType::SemverMajor if cand.major == cur.major => Some("same major"),
        RuleType::SemverMinor | RuleType::SemverPatch if cand.major != cur.major => {
            Some("different major")
        }
        RuleType::SemverMinor if cand.minor == cur.minor => Some("same minor"),
        RuleType::SemverPatch if cand.minor != cur.minor => Some("different minor"),
        _ => None,
    };
    if let Some(reason) = outside {
        return Err(reason.into());
    }
    if let Some((text, req)) = constraint {
        // Only the numbers: VersionReq refuses pre-releases unless a comparator names one,
        // and pre-release eligibility is already decided above.
        let numeric = semver::Version::new(cand.major, cand.minor, cand.patch);
        if !req.matches(&numeric) {
            return Err(format!("does not satisfy constraint {text}"));
        }
    }
    Ok(cand)
}

fn rank_calver(rule: RuleType, current: &str, tags: &[&str]) -> Result<Ranking, RuleError> {
    let cur = CalverTag::parse(current).ok_or_else(|| RuleError::UnparsableCurrentTag {
        tag: current.to_string(),
        rule,
    })?;
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for &tag in tags {
        match calver_verdict(rule, &cur, tag) {
            Ok(parsed) => eligible.push(parsed),
            Err(reason) => rejected.push((tag.to_string(), reason)),
        }
    }
    let style = |t: &CalverTag| (t.precision == cur.precision, t.v_prefix == cur.v_prefix);
    eligible.sort_by(|a, b| {
        b.version_cmp(a)
            .then_with(|| style(b).cmp(&style(a)))
            .then_with(|| a.raw.cmp(&b.raw))
    });
    let kinds = match rule {
        RuleType::CalverPrerelease if !cur.is_prerelease() => {
            "pre-releases only, and the current tag is a release"
        }
        RuleType::CalverPrerelease => "pre-releases only",
        _ => "releases only",
    };
    let scope = format!(
        "{}, {} years, {}, {kinds}",
        calver_bucket(rule, &cur),
        cur.year_format(),
        describe_variant(cur.variant.as_deref())
    );
    Ok(Ranking {
        eligible: eligible.into_iter().map(|t| t.raw).collect(),
        rejected,
        scope,
    })
}

/// The range a calver rule covers from `cur`, written as kimup (Go) builds its constraint.
fn calver_bucket(rule: RuleType, cur: &CalverTag) -> String {
    let (year, minor, patch) = (cur.year, cur.minor, cur.patch);
    let numbers = format!("{year}.{minor}.{patch}");
    match (rule, &cur.pre) {
        (RuleType::CalverMajor, _) => format!(">= {}.0.0", year + 1),
        (RuleType::CalverMinor, _) => format!(">= {year}.{}.0, < {}.0.0", minor + 1, year + 1),
        (RuleType::CalverPatch, Some(pre)) => {
            format!("> {numbers}-{pre}, < {year}.{}.0", minor + 1)
        }
        (RuleType::CalverPatch, None) => {
            format!(">= {year}.{minor}.{}, < {year}.{}.0", patch + 1, minor + 1)
        }
        (_, Some(pre)) => format!("> {numbers}-{pre}"),
        (_, None) => format!("> {numbers}"),
    }
}

fn calver_verdict(rule: RuleType, cur: &CalverTag, tag: &str) -> Result<CalverTag, String> {
    if tag == cur.raw {
        return Err("current tag".into());
    }
    let cand = CalverTag::parse(tag).ok_or("unparsable")?;
    // 24 and 2024 would otherwise compare as numbers, and 2023 would be "newer" than 24.04.
    if cand.year_digits != cur.year_digits {
        return Err(format!(
            "{} year while current has {}",
            cand.year_format(),
            cur.year_format()
        ));
    }
    if cand.variant != cur.variant {
        return Err(variant_mismatch(
            cand.variant.as_deref(),
            cur.variant.as_deref(),
        ));
    }
    if rule == RuleType::CalverPrerelease {
        if !cand.is_prerelease() {
            return Err("release (calver-prerelease takes pre-releases only)".into());
        }
        if !cur.is_prerelease() {
            return Err(
                "current is a release (calver-prerelease starts from a pre-release)".into(),
            );
        }
    } else if cand.is_prerelease() {
        return Err(format!("pre-release ({rule} takes releases only)"));
    }
    if cand.version_cmp(cur) != Ordering::Greater {
        return Err("not newer than current".into());
    }
    // Candidates are newer than the current tag here, so a differing year or minor is higher.
    let outside = match rule {
        RuleType::CalverMajor if cand.year == cur.year => Some("same year"),
        RuleType::CalverMinor | RuleType::CalverPatch if cand.year != cur.year => {
            Some("different year")
        }
        RuleType::CalverMinor if cand.minor == cur.minor => Some("same minor"),
        RuleType::CalverPatch if cand.minor != cur.minor => Some("different minor"),
        _ => None,
    };
    if let Some(reason) = outside {
        return Err(reason.into());
    }
    Ok(cand)
}

/// Longest regex a rule may hold, in bytes: the CRD's limit on a rule's value, checked again
/// for objects stored before it (tags are at most 128 characters; a longer pattern describes
/// nothing a shorter one cannot).
pub const MAX_REGEX_LEN: usize = crate::api::limits::RULE_VALUE;

/// Largest compiled regex, in bytes. The regex crate's default is 10 MiB, and it builds a
/// program up to the limit before refusing it: at 2 MiB kimup-fuzz still found a pattern costing
/// 17 ms per compile, at 1 MiB none over 7 ms. A rule's regex is compiled at every sync of its
/// Image, on a worker shared by every tenant. Counted Unicode classes weigh: `\w{30}` is over the
/// limit, `[0-9a-z]{40}` or `(?-u:\w){40}` (ASCII, as tags are) are a few KiB.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

/// Largest lazy-DFA cache of a rule's regex, in bytes; past it the regex crate falls back to a
/// slower engine rather than failing.
pub const MAX_REGEX_DFA_SIZE: usize = 1 << 20;

/// Compiles a rule's regex within [`MAX_REGEX_LEN`] and [`MAX_REGEX_SIZE`].
fn compile_regex(pattern: &str) -> Result<Regex, RuleError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(RuleError::RegexTooLong { len: pattern.len() });
    }
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .dfa_size_limit(MAX_REGEX_DFA_SIZE)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => RuleError::RegexTooBig {
                value: pattern.to_string(),
            },
            e => RuleError::InvalidRegex {
                value: pattern.to_string(),
                reason: regex_reason(&e),
            },
        })
}

fn rank_regex(
    rule: RuleType,
    value: Option<&str>,
    current: &str,
    tags: &[&str],
) -> Result<Ranking, RuleError> {
    let pattern = value
        .filter(|v| !v.is_empty())
        .ok_or(RuleError::MissingValue { rule })?;
    let regex = compile_regex(pattern)?;
    // Every tag is comparable to the current one in the version-aware order, so the no-downgrade
    // guard always applies: a `latest` current only lets semver-ish or naturally later tags in.
    let cur = OrderedTag::new(current);
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for &tag in tags {
        if tag == current {
            rejected.push((tag.to_string(), "current tag".to_string()));
        } else if !regex.is_match(tag) {
            rejected.push((tag.to_string(), "does not match regex".to_string()));
        } else {
            let ordered = OrderedTag::new(tag);
            if ordered > cur {
                eligible.push(ordered);
            } else {
                rejected.push((tag.to_string(), "not newer than current".to_string()));
            }
        }
    }
    eligible.sort_by(|a, b| b.cmp(a));
    Ok(Ranking {
        eligible: eligible.into_iter().map(|t| t.raw).collect(),
        rejected,
        scope: format!("matching `{pattern}`, newer than {current} in version-aware order"),
    })
}

/// The last line of a regex error: the rest repeats the pattern with a caret, which reads badly
/// on one status line.
fn regex_reason(error: &regex::Error) -> String {
    if let regex::Error::CompiledTooBig(limit) = error {
        return format!(
            "the compiled pattern exceeds the size limit of {limit} bytes; counted Unicode \
             classes such as \\w{{20}} or \\pL{{10}} weigh the most, ASCII ones such as \
             [0-9]{{20}} or (?-u:\\w){{20}} little"
        );
    }
    let text = error.to_string();
    let last = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text.as_str());
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

fn rank_always(current: &str, tags: &[&str]) -> Ranking {
    // Only the highest tag qualifies: "the highest tag other than the current one" would flap
    // between the two highest tags on every sync.
    let mut all: Vec<OrderedTag> = tags.iter().map(|t| OrderedTag::new(t)).collect();
    all.sort_by(|a, b| b.cmp(a));
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for (i, tag) in all.into_iter().enumerate() {
        if tag.raw == current {
            rejected.push((tag.raw, "current tag".to_string()));
        } else if i == 0 {
            eligible.push(tag.raw);
        } else {
            rejected.push((tag.raw, "not the highest tag".to_string()));
        }
    }
    Ranking {
        eligible,
        rejected,
        scope: "the highest tag in version-aware order, when it is not the current one".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &[&str] = &[
        "1.25.3",
        "1.25.3-alpine",
        "1.25.3-alpine3.18",
        "1.25.3-alpine3.19",
        "1.25.3-bookworm",
        "1.25.4",
        "1.25.4-alpine",
        "1.25.4-alpine3.19",
        "1.25",
        "1.25-alpine",
        "1.26.0",
        "1.26.0-alpine",
        "1.26.1",
        "1.26",
        "1.27.0",
        "1.27.0-bookworm",
        "1.27.0-alpine",
        "1.27",
        "1",
        "1-alpine",
        "mainline",
        "mainline-alpine",
        "stable",
        "stable-alpine",
        "latest",
        "alpine",
        "perl",
    ];

    const POSTGRES: &[&str] = &[
        "15.5",
        "15.5-alpine",
        "15",
        "16.0",
        "16.1",
        "16.1-bookworm",
        "16.1-alpine",
        "16.2",
        "16.2-bookworm",
        "16",
        "16-alpine",
        "17beta1",
        "17beta2",
        "17rc1",
        "17.0",
        "17",
        "latest",
        "alpine",
    ];

    const TRAEFIK: &[&str] = &[
        "v2.10.6",
        "v2.10.7",
        "v2.11.0",
        "v2.11",
        "v3.0.0-beta5",
        "v3.0.0-rc1",
        "v3.0.0-rc2",
        "v3.0.0",
        "v3.0",
        "v3.1.0-rc1",
        "v3.1",
        "v3.1.2",
        "v3",
        "latest",
        "mimolette",
    ];

    const REDIS: &[&str] = &[
        "7.2.3",
        "7.2.4",
        "7.2.4-alpine",
        "7.2.4-alpine3.19",
        "7.2.4-bookworm",
        "7.2",
        "7.2-alpine",
        "7.4-rc1",
        "7.4-rc2",
        "7.4.0",
        "7",
        "6.2.14",
        "6.2.14-alpine",
        "alpine",
        "latest",
    ];

    const GOLANG: &[&str] = &[
        "1.21.6",
        "1.21.6-alpine3.19",
        "1.22.0",
        "1.22.0-alpine3.19",
        "1.22.0-alpine3.18",
        "1.22.1-alpine3.19",
        "1.22.1-bookworm",
        "1.22rc2-alpine3.19",
        "1.23rc1",
        "1.22-alpine",
        "alpine",
        "bookworm",
    ];

    const UBUNTU: &[&str] = &[
        "18.04",
        "20.04",
        "22.04",
        "22.10",
        "23.04",
        "23.10",
        "24.04",
        "24.10",
        "jammy",
        "noble",
        "noble-20240530",
        "latest",
        "rolling",
    ];

    const CALVER: &[&str] = &[
        "2023.1",
        "2023.12",
        "2024.1",
        "2024.3",
        "v2024.3",
        "2024.03",
        "2024.11.05",
        "2024.11.04",
        "2024.11.20",
        "2024.11.05-rc1",
        "2024.11.05-rc2",
        "2024.11.06-rc1",
        "2024.12.01",
        "2024.12.01-alpine",
        "2025.01.15",
        "2025.02.01-rc1",
        "2025",
        "nightly",
    ];

    const BUILDS: &[&str] = &[
        "build-1", "build-2", "build-9", "build-10", "build-11", "main-3", "main-12", "pr-7",
    ];

    fn owned(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn run(rule: RuleType, value: Option<&str>, current: &str, list: &[&str]) -> Decision {
        evaluate(rule, value, current, &owned(list))
            .unwrap_or_else(|e| panic!("{rule} from {current}: {e}"))
    }

    fn pick(rule: RuleType, current: &str, list: &[&str]) -> Option<String> {
        run(rule, None, current, list).chosen
    }

    fn outcome(decision: &Decision, tag: &str) -> Outcome {
        decision
            .considered
            .iter()
            .find(|c| c.tag == tag)
            .map(|c| c.outcome.clone())
            .unwrap_or_else(|| panic!("{tag} not considered"))
    }

    fn rejected(reason: &str) -> Outcome {
        Outcome::Rejected(reason.to_string())
    }

    #[test]
    fn rule_type_names_round_trip() {
        let names = [
            "calver-major",
            "calver-minor",
            "calver-patch",
            "calver-prerelease",
            "semver-major",
            "semver-minor",
            "semver-patch",
            "regex",
            "always",
            "digest",
        ];
        for (rule, name) in RuleType::ALL.into_iter().zip(names) {
            assert_eq!(rule.to_string(), name);
            assert_eq!(name.parse::<RuleType>(), Ok(rule));
            let json = serde_json::to_string(&rule).unwrap_or_default();
            assert_eq!(json, format!("\"{name}\""));
            let back: RuleType = serde_json::from_str(&json).unwrap_or(RuleType::Digest);
            assert_eq!(back, rule);
        }
        assert!("semver_minor".parse::<RuleType>().is_err());
        assert!("Semver-Minor".parse::<RuleType>().is_err());
    }

    #[test]
    fn rule_type_schema_lists_the_names() {
        let schema = schemars::schema_for!(RuleType);
        let text = serde_json::to_string(&schema).unwrap_or_default();
        for rule in RuleType::ALL {
            assert!(
                text.contains(&format!("\"{rule}\"")),
                "{rule} missing in {text}"
            );
        }
    }

    #[test]
    fn decision_serializes_flat_outcomes() {
        let d = run(
            RuleType::SemverPatch,
            None,
            "1.2.3",
            &["1.2.4", "1.2.5", "x"],
        );
        let json = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(json["chosen"], "1.2.5");
        assert_eq!(
            json["considered"],
            serde_json::json!([
                {"tag": "1.2.5", "outcome": "chosen"},
                {"tag": "1.2.4", "outcome": "eligible"},
                {"tag": "x", "outcome": "rejected", "reason": "unparsable"},
            ])
        );
        assert_eq!(Outcome::Rejected("r".into()).to_string(), "rejected: r");
        assert_eq!(Outcome::Chosen.to_string(), "chosen");
    }

    #[test]
    fn regression_v1_10_beats_v1_9() {
        let list = ["v1.9.5", "v1.10.0", "v1.9.4", "v1.2.0", "v2.9.5", "v2.10.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "v1.2.0", &list).as_deref(),
            Some("v1.10.0")
        );
        assert_eq!(
            pick(RuleType::SemverMajor, "v1.2.0", &list).as_deref(),
            Some("v2.10.0")
        );
        let list = ["v1.9.5", "v1.10.0", "v1.9.4", "v1.2.0"];
        assert_eq!(
            run(RuleType::Regex, Some(r"^v1\."), "v1.2.0", &list)
                .chosen
                .as_deref(),
            Some("v1.10.0")
        );
        assert_eq!(
            pick(RuleType::Always, "v1.2.0", &list).as_deref(),
            Some("v1.10.0")
        );
    }

    #[test]
    fn nginx_semver_rules() {
        assert_eq!(
            pick(RuleType::SemverPatch, "1.25.3", NGINX).as_deref(),
            Some("1.25.4")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.25.3", NGINX).as_deref(),
            Some("1.27.0")
        );
        // No 2.x: the major bucket is empty, the minor bucket's tags are not in it.
        assert_eq!(pick(RuleType::SemverMajor, "1.25.3", NGINX), None);
        let d = run(RuleType::SemverMajor, None, "1.25.3", NGINX);
        assert_eq!(outcome(&d, "1.27.0"), rejected("same major"));
        assert!(d.explanation.contains("(>= 2.0.0,"), "{}", d.explanation);
        let d = run(RuleType::SemverMinor, None, "1.25.3", NGINX);
        assert_eq!(outcome(&d, "1.25.4"), rejected("same minor"));
        assert_eq!(
            outcome(&d, "1.27.0-alpine"),
            rejected("variant alpine != current variant (none)")
        );
        assert_eq!(outcome(&d, "1.27"), Outcome::Eligible);
        assert_eq!(outcome(&d, "1.25"), rejected("not newer than current"));
        assert_eq!(outcome(&d, "1"), rejected("not newer than current"));
        assert_eq!(outcome(&d, "mainline"), rejected("unparsable"));
        assert_eq!(outcome(&d, "1.25.3"), rejected("current tag"));
        assert_eq!(d.considered.len(), NGINX.len());
        assert!(d.explanation.contains("chose 1.27.0"), "{}", d.explanation);
    }

    #[test]
    fn nginx_variants_stay_on_their_variant() {
        assert_eq!(
            pick(RuleType::SemverMinor, "1.25.3-alpine", NGINX).as_deref(),
            Some("1.27.0-alpine")
        );
        assert_eq!(
            pick(RuleType::SemverPatch, "1.25.3-alpine3.19", NGINX).as_deref(),
            Some("1.25.4-alpine3.19")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.25.3-bookworm", NGINX).as_deref(),
            Some("1.27.0-bookworm")
        );
        let d = run(RuleType::SemverMinor, None, "1.25.3-alpine", NGINX);
        assert_eq!(
            outcome(&d, "1.25.4-alpine3.19"),
            rejected("variant alpine3.19 != current variant alpine")
        );
        assert_eq!(
            outcome(&d, "1.27.0"),
            rejected("variant (none) != current variant alpine")
        );
    }

    #[test]
    fn nginx_floating_tags_prefer_same_precision() {
        // 1.27 and 1.27.0 are one version: a two-part current keeps two parts.
        assert_eq!(
            pick(RuleType::SemverMinor, "1.25", NGINX).as_deref(),
            Some("1.27")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.25-alpine", NGINX).as_deref(),
            Some("1.27.0-alpine")
        );
        // A one-part current has no same-precision newer tag: the smallest spelling wins.
        assert_eq!(
            pick(RuleType::SemverMinor, "1", NGINX).as_deref(),
            Some("1.27")
        );
    }

    #[test]
    fn duplicate_precision_and_prefix_spellings() {
        let list = ["1.3", "1.3.0", "v1.3.0", "v1.3", "1.2.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2.0", &list).as_deref(),
            Some("1.3.0")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2", &list).as_deref(),
            Some("1.3")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "v1.2.0", &list).as_deref(),
            Some("v1.3.0")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "v1.2", &list).as_deref(),
            Some("v1.3")
        );
        // Precision outweighs the prefix.
        let list = ["v1.3", "1.3.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2", &list).as_deref(),
            Some("v1.3")
        );
        // Neither spelling matches the current style: lexicographically smallest wins.
        let list = ["v1.3.0", "V1.3.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2", &list).as_deref(),
            Some("V1.3.0")
        );
        let list = ["1.03.0", "1.3.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2.0", &list).as_deref(),
            Some("1.03.0")
        );
        let list = ["1.3.0+build.1", "1.3.0"];
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2.0", &list).as_deref(),
            Some("1.3.0")
        );
    }

    #[test]
    fn postgres_prereleases_are_skipped_from_a_release() {
        assert_eq!(
            pick(RuleType::SemverMajor, "16.1", POSTGRES).as_deref(),
            Some("17.0")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "16.1", POSTGRES).as_deref(),
            Some("16.2")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "16.1-bookworm", POSTGRES).as_deref(),
            Some("16.2-bookworm")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "16-alpine", POSTGRES).as_deref(),
            Some("16.1-alpine")
        );
        assert_eq!(pick(RuleType::SemverMajor, "16-alpine", POSTGRES), None);
        assert_eq!(pick(RuleType::SemverMajor, "16.1-alpine", POSTGRES), None);
        let d = run(RuleType::SemverMajor, None, "16.1", POSTGRES);
        assert_eq!(
            outcome(&d, "17rc1"),
            rejected("pre-release while current is a release")
        );
        let without_final: Vec<&str> = POSTGRES
            .iter()
            .copied()
            .filter(|t| !t.starts_with("17") || t.contains("beta") || t.contains("rc"))
            .collect();
        assert_eq!(pick(RuleType::SemverMajor, "16.2", &without_final), None);
    }

    #[test]
    fn postgres_from_a_prerelease() {
        // 17beta1 is 17.0.0-beta1: its release and later pre-releases are in the patch bucket.
        assert_eq!(
            pick(RuleType::SemverPatch, "17beta1", POSTGRES).as_deref(),
            Some("17")
        );
        assert_eq!(pick(RuleType::SemverMajor, "17beta1", POSTGRES), None);
        let only_pre = ["17beta1", "17beta2", "17rc1", "16.2"];
        assert_eq!(
            pick(RuleType::SemverPatch, "17beta1", &only_pre).as_deref(),
            Some("17rc1")
        );
        // From a pre-release, a pre-release of the next major is in the major bucket.
        let next = ["1.0.0-rc1", "2.0.0-rc1", "1.1.0-rc1"];
        assert_eq!(
            pick(RuleType::SemverMajor, "1.0.0-rc1", &next).as_deref(),
            Some("2.0.0-rc1")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.0.0-rc1", &next).as_deref(),
            Some("1.1.0-rc1")
        );
        assert_eq!(pick(RuleType::SemverPatch, "1.0.0-rc1", &next), None);
    }

    #[test]
    fn traefik_semver() {
        assert_eq!(
            pick(RuleType::SemverPatch, "v2.10.6", TRAEFIK).as_deref(),
            Some("v2.10.7")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "v2.10.7", TRAEFIK).as_deref(),
            Some("v2.11.0")
        );
        assert_eq!(
            pick(RuleType::SemverMajor, "v2.10.7", TRAEFIK).as_deref(),
            Some("v3.1.2")
        );
        let d = run(RuleType::SemverMajor, None, "v2.10.7", TRAEFIK);
        assert_eq!(
            outcome(&d, "v3.1.0-rc1"),
            rejected("pre-release while current is a release")
        );
        assert_eq!(outcome(&d, "v3.1"), Outcome::Eligible);
        assert_eq!(outcome(&d, "latest"), rejected("unparsable"));
    }

    #[test]
    fn prerelease_current_moves_to_newer_prerelease_or_release() {
        let rc = ["3.0.0-rc1", "3.0.0-rc2", "3.0.0-beta1", "2.9.0"];
        assert_eq!(
            pick(RuleType::SemverPatch, "3.0.0-rc1", &rc).as_deref(),
            Some("3.0.0-rc2")
        );
        let released = ["3.0.0-rc1", "3.0.0-rc2", "3.0.0", "2.9.0"];
        assert_eq!(
            pick(RuleType::SemverPatch, "3.0.0-rc1", &released).as_deref(),
            Some("3.0.0")
        );
        let d = run(RuleType::SemverPatch, None, "3.0.0-rc2", &rc);
        assert_eq!(outcome(&d, "3.0.0-rc1"), rejected("not newer than current"));
        assert_eq!(
            outcome(&d, "3.0.0-beta1"),
            rejected("not newer than current")
        );
        assert_eq!(d.chosen, None);
        assert_eq!(
            pick(RuleType::SemverMinor, "v3.0.0-rc1", TRAEFIK).as_deref(),
            Some("v3.1.2")
        );
        let rcs = ["1.0.0-rc.9", "1.0.0-rc.10", "1.0.0-rc.2"];
        assert_eq!(
            pick(RuleType::SemverPatch, "1.0.0-rc.2", &rcs).as_deref(),
            Some("1.0.0-rc.10")
        );
    }

    #[test]
    fn prerelease_with_variant() {
        let list = [
            "1.2.3-rc.1-alpine",
            "1.2.3-rc.2-alpine",
            "1.2.3-rc.2",
            "1.2.3-alpine",
        ];
        assert_eq!(
            pick(RuleType::SemverPatch, "1.2.3-rc.1-alpine", &list).as_deref(),
            Some("1.2.3-alpine")
        );
        assert_eq!(
            pick(RuleType::SemverPatch, "1.2.2-alpine", &list).as_deref(),
            Some("1.2.3-alpine")
        );
    }

    #[test]
    fn redis_and_golang() {
        assert_eq!(
            pick(RuleType::SemverMinor, "7.2.3", REDIS).as_deref(),
            Some("7.4.0")
        );
        assert_eq!(
            pick(RuleType::SemverPatch, "7.2.3", REDIS).as_deref(),
            Some("7.2.4")
        );
        assert_eq!(
            pick(RuleType::SemverMajor, "6.2.14-alpine", REDIS).as_deref(),
            Some("7.2.4-alpine")
        );
        assert_eq!(
            pick(RuleType::SemverPatch, "7.4-rc1", REDIS).as_deref(),
            Some("7.4.0")
        );
        assert_eq!(pick(RuleType::SemverMinor, "7.4-rc1", REDIS), None);
        assert_eq!(
            pick(RuleType::SemverPatch, "1.22.0-alpine3.19", GOLANG).as_deref(),
            Some("1.22.1-alpine3.19")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.21.6-alpine3.19", GOLANG).as_deref(),
            Some("1.22.1-alpine3.19")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.21.6", GOLANG).as_deref(),
            Some("1.22.0")
        );
    }

    #[test]
    fn semver_constraint_value() {
        let d = run(RuleType::SemverMinor, Some(">=1.2, <2"), "1.25.3", NGINX);
        assert_eq!(d.chosen.as_deref(), Some("1.27.0"));
        let d = run(RuleType::SemverMinor, Some("<1.27"), "1.25.3", NGINX);
        assert_eq!(d.chosen.as_deref(), Some("1.26.1"));
        assert_eq!(
            outcome(&d, "1.27.0"),
            rejected("does not satisfy constraint <1.27")
        );
        assert!(
            d.explanation.contains("satisfying <1.27"),
            "{}",
            d.explanation
        );
        let d = run(RuleType::SemverMinor, Some("  "), "1.25.3", NGINX);
        assert_eq!(d.chosen.as_deref(), Some("1.27.0"));
        let err = evaluate(RuleType::SemverMinor, Some(">=x"), "1.25.3", &owned(NGINX));
        assert!(
            matches!(err, Err(RuleError::InvalidConstraint { ref value, .. }) if value == ">=x")
        );
        let msg = err.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("invalid version constraint \">=x\""), "{msg}");
    }

    #[test]
    fn never_downgrades_or_repeats() {
        let list = ["1.0.0", "1.1.0", "1.2.0", "0.9.0"];
        for rule in [
            RuleType::SemverMajor,
            RuleType::SemverMinor,
            RuleType::SemverPatch,
        ] {
            assert_eq!(pick(rule, "1.2.0", &list), None, "{rule}");
            assert_eq!(pick(rule, "v1.2.0", &["1.2.0", "1.2"]), None, "{rule}");
            assert_eq!(pick(rule, "2.0.0", &list), None, "{rule}");
        }
        assert_eq!(
            run(RuleType::Regex, Some("^1"), "1.2.0", &list).chosen,
            None
        );
    }

    #[test]
    fn empty_tag_list() {
        for rule in RuleType::ALL {
            if rule == RuleType::Digest {
                continue;
            }
            let current = if rule.as_str().starts_with("calver") {
                "2024.11.05"
            } else {
                "1.2.3"
            };
            let value = (rule == RuleType::Regex).then_some(".");
            let d = run(rule, value, current, &[]);
            assert_eq!(d.chosen, None);
            assert!(d.considered.is_empty());
            assert!(d.explanation.contains("no tags"), "{}", d.explanation);
        }
    }

    #[test]
    fn unparsable_current_tag() {
        for rule in [
            RuleType::SemverMinor,
            RuleType::SemverMajor,
            RuleType::SemverPatch,
        ] {
            let err = evaluate(rule, None, "latest", &owned(NGINX));
            assert_eq!(
                err,
                Err(RuleError::UnparsableCurrentTag {
                    tag: "latest".into(),
                    rule
                })
            );
        }
        let msg = evaluate(RuleType::SemverMinor, None, "latest", &[])
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert_eq!(
            msg,
            "the current tag \"latest\" is not a semantic version (such as 1.2.3 or v1.2); semver-minor needs one"
        );
        let msg = evaluate(RuleType::CalverMajor, None, "1.2.3", &[])
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("not a calendar version"), "{msg}");
        assert!(msg.contains("calver-major needs one"), "{msg}");
    }

    #[test]
    fn regex_rule_errors() {
        let tags = owned(BUILDS);
        assert_eq!(
            evaluate(RuleType::Regex, None, "build-1", &tags),
            Err(RuleError::MissingValue {
                rule: RuleType::Regex
            })
        );
        assert_eq!(
            evaluate(RuleType::Regex, Some(""), "build-1", &tags),
            Err(RuleError::MissingValue {
                rule: RuleType::Regex
            })
        );
        let err = evaluate(RuleType::Regex, Some(r"^(1\."), "1.0.0", &tags);
        let msg = err.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert_eq!(
            msg,
            r"invalid regex `^(1\.` in the rule's value: unclosed group"
        );
        let err = evaluate(RuleType::Regex, None, "x", &tags)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert_eq!(
            err,
            "regex needs a value: the regular expression that tags must match"
        );
    }

    #[test]
    fn regex_size_is_limited() {
        let tags = owned(BUILDS);
        let message = |value: &str| {
            evaluate(RuleType::Regex, Some(value), "build-1", &tags)
                .map(|d| format!("accepted, chose {:?}", d.chosen))
                .unwrap_or_else(|e| e.to_string())
        };
        // A word of SHA length compiles when its class is ASCII, as tags are.
        assert!(message(r"^[0-9a-f]{40}$").starts_with("accepted"));
        assert!(message(r"^(?-u:\w){40}$").starts_with("accepted"));
        // Small to write, several MiB compiled (Unicode \w repeated).
        assert_eq!(
            message(r"\w{100}"),
            "the regex `\\w{100}` in the rule's value compiles to more than 1 MiB (1048576 bytes): \
             use fewer or smaller repetitions, or ASCII classes such as [0-9a-z] instead of \\w"
        );
        let long = format!("^({})$", "a|".repeat(600));
        assert_eq!(
            message(&long),
            "the regex in the rule's value is 1204 bytes long, more than the 1024 allowed"
        );
        assert!(message(&"a".repeat(1024)).starts_with("accepted"));
    }

    #[test]
    fn tags_beyond_the_oci_limit_are_rejected_unranked() {
        // Found by kimup-fuzz: a broken registry's 15 KB tags took 13 ms to rank, and such a
        // tag could not be written into an image reference anyway.
        let long = format!("9.9.9-{}", "x".repeat(TAG_MAX_LEN));
        let d = run(RuleType::Always, None, "1.0.0", &["1.1.0", long.as_str()]);
        assert_eq!(d.chosen.as_deref(), Some("1.1.0"));
        let last = d.considered.last().expect("verdicts");
        assert_eq!(last.tag, long);
        assert_eq!(
            last.outcome,
            Outcome::Rejected("longer than 128 characters, the OCI limit for tags".into())
        );
    }

    #[test]
    fn regex_programs_are_capped() {
        // Found by kimup-fuzz: this took 145 ms per evaluation at the regex crate's 10 MiB
        // default, which it builds up to before refusing.
        let heavy = r"(\w+^[a-z]+v?$+(?:-rc\d+)?(?:-rc\d+)?\pL{101}){4}";
        let msg = evaluate(RuleType::Regex, Some(heavy), "1.0.0", &owned(BUILDS))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("compiles to more than 1 MiB"), "{msg}");
        // A long but real tag pattern still fits.
        let real =
            r"(?i)^v?\d{1,4}\.\d{1,4}\.\d{1,4}(-(alpine|slim|bookworm|bullseye)\w*(\.\d+)*)?$";
        let d = run(RuleType::Regex, Some(real), "v1.25.3", NGINX);
        assert_eq!(d.chosen.as_deref(), Some("1.27.0-bookworm"));
    }

    #[test]
    fn regex_picks_highest_in_natural_order() {
        let d = run(RuleType::Regex, Some("^build-"), "build-2", BUILDS);
        assert_eq!(d.chosen.as_deref(), Some("build-11"));
        assert_eq!(outcome(&d, "build-10"), Outcome::Eligible);
        assert_eq!(outcome(&d, "build-1"), rejected("not newer than current"));
        assert_eq!(outcome(&d, "main-12"), rejected("does not match regex"));
        assert_eq!(outcome(&d, "build-2"), rejected("current tag"));
        // Unanchored like Go's regexp.MatchString.
        let d = run(RuleType::Regex, Some("ain-"), "main-3", BUILDS);
        assert_eq!(d.chosen.as_deref(), Some("main-12"));
    }

    #[test]
    fn regex_never_downgrades() {
        let d = run(RuleType::Regex, Some("^build-"), "build-11", BUILDS);
        assert_eq!(d.chosen, None);
        let d = run(RuleType::Regex, Some(r"^1\.25\.\d+$"), "1.25.4", NGINX);
        assert_eq!(d.chosen, None);
        assert_eq!(outcome(&d, "1.25.3"), rejected("not newer than current"));
        let d = run(
            RuleType::Regex,
            Some(r"^1\.2\d\.\d+-alpine$"),
            "1.25.3-alpine",
            NGINX,
        );
        assert_eq!(d.chosen.as_deref(), Some("1.27.0-alpine"));
        // A version outranks any word, so a word current only moves to versions.
        let d = run(RuleType::Regex, Some(r"^v\d"), "latest", TRAEFIK);
        assert_eq!(d.chosen.as_deref(), Some("v3.1.2"));
        let d = run(RuleType::Regex, Some("^stable|^1"), "1.25.3", NGINX);
        assert_eq!(outcome(&d, "stable"), rejected("not newer than current"));
        let d = run(RuleType::Regex, Some("nomatch"), "1.25.3", NGINX);
        assert_eq!(d.chosen, None);
    }

    #[test]
    fn regex_uses_versions_for_prereleases() {
        let d = run(RuleType::Regex, Some(r"^v3\.0\.0"), "v3.0.0-rc1", TRAEFIK);
        assert_eq!(d.chosen.as_deref(), Some("v3.0.0"));
        assert_eq!(
            outcome(&d, "v3.0.0-beta5"),
            rejected("not newer than current")
        );
    }

    #[test]
    fn always_picks_the_highest_tag_without_flapping() {
        assert_eq!(
            pick(RuleType::Always, "build-11", BUILDS).as_deref(),
            Some("pr-7")
        );
        // Already at the highest tag: nothing, rather than flapping to the second highest.
        assert_eq!(pick(RuleType::Always, "v3.1.2", TRAEFIK), None);
        assert_eq!(
            pick(RuleType::Always, "anything", TRAEFIK).as_deref(),
            Some("v3.1.2")
        );
        assert_eq!(pick(RuleType::Always, "only", &["only"]), None);
    }

    #[test]
    fn digest_rule() {
        assert_eq!(
            evaluate(RuleType::Digest, None, "1.0", &owned(NGINX)),
            Err(RuleError::DigestNeedsRegistry)
        );
        assert!(!digest_changed(None, "sha256:a"));
        assert!(!digest_changed(Some("sha256:a"), "sha256:a"));
        assert!(digest_changed(Some("sha256:a"), "sha256:b"));
    }

    #[test]
    fn calver_ubuntu() {
        assert_eq!(
            pick(RuleType::CalverMajor, "22.04", UBUNTU).as_deref(),
            Some("24.10")
        );
        assert_eq!(
            pick(RuleType::CalverMinor, "22.04", UBUNTU).as_deref(),
            Some("22.10")
        );
        assert_eq!(pick(RuleType::CalverPatch, "22.04", UBUNTU), None);
        assert_eq!(pick(RuleType::CalverMinor, "24.10", UBUNTU), None);
        let d = run(RuleType::CalverMajor, None, "22.04", UBUNTU);
        assert_eq!(outcome(&d, "20.04"), rejected("not newer than current"));
        assert_eq!(outcome(&d, "noble"), rejected("unparsable"));
        assert_eq!(outcome(&d, "noble-20240530"), rejected("unparsable"));
    }

    #[test]
    fn calver_dates() {
        assert_eq!(
            pick(RuleType::CalverMajor, "2024.11.05", CALVER).as_deref(),
            Some("2025.01.15")
        );
        assert_eq!(
            pick(RuleType::CalverMinor, "2024.11.05", CALVER).as_deref(),
            Some("2024.12.01")
        );
        assert_eq!(
            pick(RuleType::CalverPatch, "2024.11.05", CALVER).as_deref(),
            Some("2024.11.20")
        );
        assert_eq!(
            pick(RuleType::CalverPatch, "2024.12.01-alpine", CALVER),
            None
        );
        let d = run(RuleType::CalverMajor, None, "2024.11.05", CALVER);
        assert_eq!(
            outcome(&d, "2025.02.01-rc1"),
            rejected("pre-release (calver-major takes releases only)")
        );
        // Missing parts are 0: 2025 is 2025.0.0, in the bucket but below 2025.01.15.
        assert_eq!(outcome(&d, "2025"), Outcome::Eligible);
        assert_eq!(outcome(&d, "2024.12.01"), rejected("same year"));
        assert_eq!(
            outcome(&d, "2024.12.01-alpine"),
            rejected("variant alpine != current variant (none)")
        );
        let d = run(RuleType::CalverPatch, None, "2024.11.05", CALVER);
        assert_eq!(outcome(&d, "2024.12.01"), rejected("different minor"));
        assert_eq!(outcome(&d, "2025.01.15"), rejected("different year"));
    }

    #[test]
    fn calver_precision_and_prefix_spellings() {
        assert_eq!(
            pick(RuleType::CalverMajor, "2023.1", CALVER).as_deref(),
            Some("2025.01.15")
        );
        assert_eq!(
            pick(RuleType::CalverMinor, "2023.1", CALVER).as_deref(),
            Some("2023.12")
        );
        assert_eq!(
            pick(RuleType::CalverMinor, "v2024.1", CALVER).as_deref(),
            Some("2024.12.01")
        );
        // Among spellings of one version, the current tag's number of parts, then its prefix.
        let same = ["2024.3", "v2024.3", "2024.03", "2024.3.0"];
        assert_eq!(
            pick(RuleType::CalverMinor, "v2024.1", &same).as_deref(),
            Some("v2024.3")
        );
        assert_eq!(
            pick(RuleType::CalverMinor, "2024.1.1", &same).as_deref(),
            Some("2024.3.0")
        );
        let years = ["2025.0.0", "2025", "2025.0"];
        assert_eq!(
            pick(RuleType::CalverMajor, "2024", &years).as_deref(),
            Some("2025")
        );
        assert_eq!(
            pick(RuleType::CalverMajor, "2024.0", &years).as_deref(),
            Some("2025.0")
        );
    }

    #[test]
    fn calver_two_and_four_digit_years_do_not_mix() {
        let list = ["23.10", "2023.10", "2025.01", "25.04"];
        assert_eq!(
            pick(RuleType::CalverMajor, "24.04", &list).as_deref(),
            Some("25.04")
        );
        let d = run(RuleType::CalverMajor, None, "24.04", &list);
        assert_eq!(
            outcome(&d, "2023.10"),
            rejected("YYYY year while current has YY")
        );
        assert!(d.explanation.contains("YY years"), "{}", d.explanation);
        assert_eq!(
            pick(RuleType::CalverMajor, "2024.04", &list).as_deref(),
            Some("2025.01")
        );
    }

    #[test]
    fn calver_upstream_doc_versions() {
        // kimup (Go)'s docs: 2024.0.0 and its buckets.
        let list = [
            "2023.5.0", "2024.0.0", "2024.0.1", "2024.0.9", "2024.1.0", "2024.7.2", "2025.0.0",
            "2026.3.1",
        ];
        let pick = |rule| pick(rule, "2024.0.0", &list);
        assert_eq!(pick(RuleType::CalverMajor).as_deref(), Some("2026.3.1"));
        assert_eq!(pick(RuleType::CalverMinor).as_deref(), Some("2024.7.2"));
        assert_eq!(pick(RuleType::CalverPatch).as_deref(), Some("2024.0.9"));
        let d = run(RuleType::CalverMinor, None, "2024.0.0", &list);
        assert!(
            d.explanation
                .contains("(>= 2024.1.0, < 2025.0.0, YYYY years"),
            "{}",
            d.explanation
        );
        let d = run(RuleType::CalverPatch, None, "2024.0.0", &list);
        assert!(
            d.explanation.contains("(>= 2024.0.1, < 2024.1.0,"),
            "{}",
            d.explanation
        );
        let d = run(RuleType::CalverMajor, None, "v2024.0.4", &list);
        assert_eq!(d.chosen.as_deref(), Some("2026.3.1"));
    }

    #[test]
    fn calver_prerelease_takes_prereleases_above_the_current_one() {
        assert_eq!(
            pick(RuleType::CalverPrerelease, "2024.11.05-rc1", CALVER).as_deref(),
            Some("2025.02.01-rc1")
        );
        let d = run(RuleType::CalverPrerelease, None, "2024.11.05-rc1", CALVER);
        assert_eq!(outcome(&d, "2024.11.05-rc2"), Outcome::Eligible);
        assert_eq!(outcome(&d, "2024.11.06-rc1"), Outcome::Eligible);
        assert_eq!(
            outcome(&d, "2024.11.05"),
            rejected("release (calver-prerelease takes pre-releases only)")
        );
        assert!(
            d.explanation.contains("(> 2024.11.5-rc1, YYYY years"),
            "{}",
            d.explanation
        );
        let dev = [
            "2024.0.0-dev.0",
            "2024.0.0-dev.1",
            "2024.0.0-dev.2",
            "2024.0.0",
            "2023.9.9-dev.9",
        ];
        assert_eq!(
            pick(RuleType::CalverPrerelease, "2024.0.0-dev.0", &dev).as_deref(),
            Some("2024.0.0-dev.2")
        );
        // From a release there is no pre-release to follow (kimup (Go) matches nothing either).
        let d = run(RuleType::CalverPrerelease, None, "2024.11.05", CALVER);
        assert_eq!(d.chosen, None);
        assert_eq!(
            outcome(&d, "2025.02.01-rc1"),
            rejected("current is a release (calver-prerelease starts from a pre-release)")
        );
        // The release-only rules skip pre-releases even from a pre-release current, and from
        // one the patch bucket holds its release.
        assert_eq!(
            pick(RuleType::CalverPatch, "2024.11.05-rc1", CALVER).as_deref(),
            Some("2024.11.20")
        );
        assert_eq!(
            pick(RuleType::CalverPatch, "2024.0.0-dev.0", &dev).as_deref(),
            Some("2024.0.0")
        );
    }

    #[test]
    fn calver_unparsable_current() {
        for current in ["latest", "1.2.3", "2024.111", "noble", "v2024.1.1.1"] {
            assert_eq!(
                evaluate(RuleType::CalverMinor, None, current, &owned(CALVER)),
                Err(RuleError::UnparsableCurrentTag {
                    tag: current.into(),
                    rule: RuleType::CalverMinor
                })
            );
        }
    }

    #[test]
    fn considered_is_sorted_and_deduplicated() {
        let list = [
            "1.2.4", "x", "1.2.10", "1.2.4", "a", "1.2.9", "2.0.0", "1.2.10",
        ];
        let d = run(RuleType::SemverPatch, None, "1.2.3", &list);
        let tags: Vec<&str> = d.considered.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, ["1.2.10", "1.2.9", "1.2.4", "2.0.0", "x", "a"]);
        assert_eq!(outcome(&d, "2.0.0"), rejected("different major"));
        assert!(
            d.explanation.contains("best of 3 eligible tags"),
            "{}",
            d.explanation
        );
        let d = run(RuleType::SemverPatch, None, "1.2.3", &["1.0.0", "2.0.0"]);
        assert!(
            d.explanation.contains("none of 2 tags qualifies"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn semver_rules_are_buckets() {
        let list = [
            "1.2.3",
            "1.2.4",
            "1.2.10",
            "1.3.0",
            "1.9.0",
            "1.10.0",
            "2.0.0",
            "2.4.1",
            "2.10.3",
            "3.0.0-rc1",
        ];
        assert_eq!(
            pick(RuleType::SemverPatch, "1.2.3", &list).as_deref(),
            Some("1.2.10")
        );
        assert_eq!(
            pick(RuleType::SemverMinor, "1.2.3", &list).as_deref(),
            Some("1.10.0")
        );
        assert_eq!(
            pick(RuleType::SemverMajor, "1.2.3", &list).as_deref(),
            Some("2.10.3")
        );
        // From 2.4.1 there is no 3.x release: 2.10.3 is semver-minor's, not semver-major's.
        assert_eq!(pick(RuleType::SemverMajor, "2.4.1", &list), None);
        assert_eq!(
            pick(RuleType::SemverMinor, "2.4.1", &list).as_deref(),
            Some("2.10.3")
        );
        let d = run(RuleType::SemverMinor, None, "1.2.3", &list);
        assert_eq!(outcome(&d, "1.2.4"), rejected("same minor"));
        assert_eq!(outcome(&d, "2.0.0"), rejected("different major"));
        assert!(
            d.explanation
                .contains("(>= 1.3.0, < 2.0.0, no variant, releases only)"),
            "{}",
            d.explanation
        );
        let d = run(RuleType::SemverMajor, None, "1.2.3", &list);
        assert_eq!(outcome(&d, "1.9.0"), rejected("same major"));
        assert!(d.explanation.contains("(>= 2.0.0, "), "{}", d.explanation);
        let d = run(RuleType::SemverPatch, None, "1.2.3", &list);
        assert_eq!(outcome(&d, "1.3.0"), rejected("different minor"));
        assert!(
            d.explanation.contains("(>= 1.2.4, < 1.3.0, "),
            "{}",
            d.explanation
        );
        let d = run(RuleType::SemverPatch, None, "1.2.3-rc1", &list);
        assert!(
            d.explanation.contains("(> 1.2.3-rc1, < 1.3.0, "),
            "{}",
            d.explanation
        );
        let d = run(RuleType::SemverMajor, None, "18446744073709551615", &list);
        assert!(
            d.explanation.contains(">= 18446744073709551616.0.0"),
            "{}",
            d.explanation
        );
    }

    /// Every newer tag a rule family may take (same variant, release from a release) is in
    /// exactly one of its three buckets, and no tag outside them is taken.
    #[test]
    fn buckets_partition_the_newer_tags() {
        let families = [
            (
                [
                    RuleType::SemverMajor,
                    RuleType::SemverMinor,
                    RuleType::SemverPatch,
                ],
                &[NGINX, POSTGRES, TRAEFIK, REDIS, GOLANG][..],
            ),
            (
                [
                    RuleType::CalverMajor,
                    RuleType::CalverMinor,
                    RuleType::CalverPatch,
                ],
                &[UBUNTU, CALVER][..],
            ),
        ];
        for (rules, lists) in families {
            for list in lists {
                for &current in *list {
                    let decisions: Vec<Decision> = rules
                        .iter()
                        .filter_map(|&r| evaluate(r, None, current, &owned(list)).ok())
                        .collect();
                    if decisions.len() != rules.len() {
                        continue;
                    }
                    for &tag in *list {
                        let taken = decisions
                            .iter()
                            .filter(|d| {
                                matches!(outcome(d, tag), Outcome::Chosen | Outcome::Eligible)
                            })
                            .count();
                        let reasons: Vec<Outcome> =
                            decisions.iter().map(|d| outcome(d, tag)).collect();
                        let in_no_bucket_because = |r: &Outcome| {
                            matches!(r, Outcome::Rejected(why) if why == "current tag"
                                || why == "unparsable"
                                || why == "not newer than current"
                                || why.starts_with("variant ")
                                || why.starts_with("pre-release")
                                || why.contains(" year while current has "))
                        };
                        let excluded = reasons.iter().all(in_no_bucket_because);
                        assert_eq!(
                            taken,
                            usize::from(!excluded),
                            "{tag} from {current}: {reasons:?}"
                        );
                    }
                }
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const LISTS: &[&[&str]] = &[
            NGINX, POSTGRES, TRAEFIK, REDIS, GOLANG, UBUNTU, CALVER, BUILDS,
        ];

        fn currents(list: usize) -> &'static [&'static str] {
            match list {
                0 => &["1.25.3", "1.25.3-alpine", "1.25", "1", "mainline"],
                1 => &["16.1", "16-alpine", "17beta1"],
                2 => &["v2.10.7", "v3.0.0-rc1", "v3", "latest"],
                3 => &["7.2.3", "7.4-rc1", "6.2.14-alpine"],
                4 => &["1.21.6-alpine3.19", "1.22rc2-alpine3.19"],
                5 => &["22.04", "20.04", "jammy"],
                6 => &["2024.11.05", "2024.11.05-rc1", "2023.1", "v2024.3"],
                _ => &["build-2", "main-3", "0.1.0"],
            }
        }

        fn values(rule: RuleType) -> &'static [Option<&'static str>] {
            match rule {
                RuleType::Regex => &[Some(r"^\d"), Some("alpine"), Some("^(build|v)"), Some(".")],
                RuleType::SemverMajor | RuleType::SemverMinor | RuleType::SemverPatch => {
                    &[None, Some("<17"), Some(">=1.22, <2")]
                }
                _ => &[None],
            }
        }

        /// A list, and the same list shuffled with some tags repeated.
        fn shuffled() -> impl Strategy<Value = (usize, Vec<String>)> {
            (0..LISTS.len()).prop_flat_map(|i| {
                let base = owned(LISTS[i]);
                let n = base.len();
                prop::collection::vec(0..n, 0..12).prop_flat_map(move |dups| {
                    let mut tags = base.clone();
                    tags.extend(dups.iter().map(|&d| base[d].clone()));
                    (Just(i), Just(tags).prop_shuffle())
                })
            })
        }

        proptest! {
            #[test]
            fn result_does_not_depend_on_tag_order((list, tags) in shuffled()) {
                let base = owned(LISTS[list]);
                for rule in RuleType::ALL {
                    for &value in values(rule) {
                        for &current in currents(list) {
                            let expected = evaluate(rule, value, current, &base);
                            let got = evaluate(rule, value, current, &tags);
                            prop_assert_eq!(&got, &expected, "{} {:?} from {}", rule, value, current);
                            if let Ok(d) = got {
                                prop_assert_eq!(d.considered.len(), base.len());
                                prop_assert!(d.chosen.as_deref() != Some(current));
                            }
                        }
                    }
                }
            }
        }
    }
}
