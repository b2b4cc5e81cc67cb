//! Lenient parsing and ordering of image tags: semver-ish, calver-ish and natural order (pure).
//!
//! The `semver` crate is too strict for registry tags: it rejects `v1.2.3`, `1.2` and `1.02.3`
//! and reads `1.2.3-alpine` as a pre-release, which would make every variant look older than
//! its release. Tags here are split into a numeric core, a pre-release and a variant instead.

use std::cmp::Ordering;

/// Words that open a pre-release label (matched case-insensitively as a prefix).
const PRE_RELEASE_WORDS: [&str; 8] = [
    "alpha", "beta", "rc", "pre", "dev", "snapshot", "nightly", "canary",
];

/// A semver-ish tag: `[v]MAJOR[.MINOR[.PATCH]][-PRE][-VARIANT][+BUILD]`.
#[derive(Clone, Debug)]
pub struct SemverTag {
    /// The tag exactly as the registry lists it.
    pub raw: String,
    /// Whether the tag starts with `v` or `V`.
    pub v_prefix: bool,
    /// Major number.
    pub major: u64,
    /// Minor number (0 when absent).
    pub minor: u64,
    /// Patch number (0 when absent).
    pub patch: u64,
    /// How many numeric parts the tag spelled out (1 to 3).
    pub precision: u8,
    /// Pre-release label such as `rc.1` or `beta1`.
    pub pre: Option<String>,
    /// Variant such as `alpine3.19` or `slim-bullseye`.
    pub variant: Option<String>,
    /// Build metadata after `+` (ignored for ordering).
    pub build: Option<String>,
}

impl SemverTag {
    /// Parses a semver-ish tag; `None` for anything else (`latest`, `sha-abc`, `1.2.3.4`).
    pub fn parse(tag: &str) -> Option<Self> {
        let (body, build) = split_build(tag)?;
        let (v_prefix, body) = strip_v(body);
        let (core, suffix) = match body.split_once('-') {
            Some((core, suffix)) => (core, Some(suffix)),
            None => (body, None),
        };
        // Postgres and Python spell pre-releases without a dash (`17beta1`, `3.13.0rc1`).
        let (core, attached_pre) = split_attached_pre(core)?;
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return None;
        }
        let mut numbers = [0u64; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if !is_digits(part) {
                return None;
            }
            *slot = part.parse().ok()?;
        }
        let (pre, variant) = match suffix {
            Some(suffix) => split_suffix(suffix)?,
            None => (None, None),
        };
        let pre = match (attached_pre, pre) {
            (Some(_), Some(_)) => return None,
            (attached, dashed) => attached.or(dashed),
        };
        Some(Self {
            raw: tag.to_string(),
            v_prefix,
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            precision: u8::try_from(parts.len()).ok()?,
            pre,
            variant,
            build: build.map(str::to_string),
        })
    }

    /// Whether the tag is a pre-release.
    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some()
    }

    /// Compares versions only: numbers, then release above pre-release, then pre-release labels.
    pub fn version_cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| cmp_optional_pre(self.pre.as_deref(), other.pre.as_deref()))
    }
}

impl Ord for SemverTag {
    /// Version order, then natural order of the raw tag so that distinct tags never tie.
    fn cmp(&self, other: &Self) -> Ordering {
        self.version_cmp(other)
            .then_with(|| natural_cmp(&self.raw, &other.raw))
    }
}

impl PartialOrd for SemverTag {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SemverTag {
    // Equality follows `Ord` so that sorting and deduplication agree.
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SemverTag {}

/// A calver-ish tag: `[v]YYYY|YY[.MINOR[.PATCH]][-PRE][-VARIANT][+BUILD]`.
///
/// The parts are numbers, as in kimup (Go)'s pattern
/// `^([0-9]{4}|[0-9]{2})(\.[0-9]{1,2})?(\.[0-9]{1,2})?(-…)?$`, not validated dates: its docs
/// version `2024.0.0`, so a zero or a 42 is as good as a month or a day.
#[derive(Clone, Debug)]
pub struct CalverTag {
    /// The tag exactly as the registry lists it.
    pub raw: String,
    /// Whether the tag starts with `v` or `V`.
    pub v_prefix: bool,
    /// Year as written (`24` stays 24: two- and four-digit years are different formats).
    pub year: u32,
    /// Number of digits the year was written with (2 or 4).
    pub year_digits: u8,
    /// Second part, 0 when absent.
    pub minor: u32,
    /// Third part, 0 when absent.
    pub patch: u32,
    /// How many parts the tag spelled out (1 to 3).
    pub precision: u8,
    /// Pre-release label such as `dev.1` or `rc1`.
    pub pre: Option<String>,
    /// Variant such as `alpine`.
    pub variant: Option<String>,
}

impl CalverTag {
    /// Parses a calver-ish tag such as `2024.11.05`, `24.04`, `v2024.0.4` or `2024.0.0-dev.1`.
    pub fn parse(tag: &str) -> Option<Self> {
        let (body, _build) = split_build(tag)?;
        let (v_prefix, body) = strip_v(body);
        let (core, suffix) = match body.split_once('-') {
            Some((core, suffix)) => (core, Some(suffix)),
            None => (body, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 || !parts.iter().all(|p| is_digits(p)) {
            return None;
        }
        let year_text = parts[0];
        if year_text.len() != 2 && year_text.len() != 4 {
            return None;
        }
        if parts[1..].iter().any(|p| p.len() > 2) {
            return None;
        }
        let mut numbers = [0u32; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            *slot = part.parse().ok()?;
        }
        let (pre, variant) = match suffix {
            Some(suffix) => split_suffix(suffix)?,
            None => (None, None),
        };
        Some(Self {
            raw: tag.to_string(),
            v_prefix,
            year: numbers[0],
            year_digits: u8::try_from(year_text.len()).ok()?,
            minor: numbers[1],
            patch: numbers[2],
            precision: u8::try_from(parts.len()).ok()?,
            pre,
            variant,
        })
    }

    /// Whether the tag is a pre-release.
    pub fn is_prerelease(&self) -> bool {
        self.pre.is_some()
    }

    /// `YY` or `YYYY`: how the year is written.
    pub fn year_format(&self) -> &'static str {
        if self.year_digits == 2 { "YY" } else { "YYYY" }
    }

    /// Compares the numbers (missing parts are 0), then release above pre-release, then
    /// pre-release labels.
    pub fn version_cmp(&self, other: &Self) -> Ordering {
        (self.year, self.minor, self.patch)
            .cmp(&(other.year, other.minor, other.patch))
            .then_with(|| cmp_optional_pre(self.pre.as_deref(), other.pre.as_deref()))
    }
}

/// A tag in the version-aware total order used to rank arbitrary tags.
///
/// Semver-ish tags rank above all other tags and compare as versions; other tags compare in
/// natural order. Keeping the two classes apart is what makes the order transitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedTag {
    /// The tag as listed.
    pub raw: String,
    /// Its semver-ish reading, if any.
    pub semver: Option<SemverTag>,
}

impl OrderedTag {
    /// Wraps a tag, parsing it once.
    pub fn new(tag: &str) -> Self {
        Self {
            raw: tag.to_string(),
            semver: SemverTag::parse(tag),
        }
    }
}

impl Ord for OrderedTag {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.semver, &other.semver) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => natural_cmp(&self.raw, &other.raw),
        }
    }
}

impl PartialOrd for OrderedTag {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Version-aware total order of two tags (see [`OrderedTag`]).
pub fn tag_cmp(a: &str, b: &str) -> Ordering {
    OrderedTag::new(a).cmp(&OrderedTag::new(b))
}

/// Natural order: digit runs compare as numbers (`build-10` > `build-9`), the rest bytewise.
///
/// Ties between spellings of one number (`01` and `1`) fall back to bytewise order, so the
/// result is `Equal` only for identical strings.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let mut left = Runs(a);
    let mut right = Runs(b);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = if is_digits(x) && is_digits(y) {
                    cmp_numeric(x, y)
                } else {
                    x.cmp(y)
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Semver-style pre-release order: dot-separated identifiers, numeric ones numerically and
/// below alphanumeric ones, alphanumeric ones in natural order (so `rc10` > `rc9`).
pub fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (is_digits(x), is_digits(y)) {
                    (true, true) => cmp_numeric(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => natural_cmp(&x.to_ascii_lowercase(), &y.to_ascii_lowercase()),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Whether a suffix segment reads as a pre-release rather than a variant.
pub fn is_prerelease_label(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let numeric = bytes.first().is_some_and(u8::is_ascii_digit)
        && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'.');
    let milestone = bytes.first() == Some(&b'm') && bytes.get(1).is_some_and(u8::is_ascii_digit);
    numeric || milestone || PRE_RELEASE_WORDS.iter().any(|w| lower.starts_with(w))
}

/// Release above any pre-release; two pre-releases by [`cmp_prerelease`].
fn cmp_optional_pre(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => cmp_prerelease(x, y),
    }
}

/// Compares digit strings as numbers of any size.
fn cmp_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

fn strip_v(s: &str) -> (bool, &str) {
    match s.strip_prefix(['v', 'V']) {
        Some(rest) => (true, rest),
        None => (false, s),
    }
}

/// Splits off `+build` metadata; `None` when it is present but malformed.
fn split_build(tag: &str) -> Option<(&str, Option<&str>)> {
    match tag.split_once('+') {
        Some((body, build)) if build.split('.').all(is_label) && !build.contains('_') => {
            Some((body, Some(build)))
        }
        Some(_) => None,
        None => Some((tag, None)),
    }
}

/// Splits `17beta1` into `17` and `beta1`; `None` when letters follow that are no pre-release.
fn split_attached_pre(core: &str) -> Option<(&str, Option<String>)> {
    let Some(start) = core.find(|c: char| !c.is_ascii_digit() && c != '.') else {
        return Some((core, None));
    };
    let (numbers, label) = core.split_at(start);
    let ends_in_digit = numbers.bytes().last().is_some_and(|b| b.is_ascii_digit());
    let alphabetic = label
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic());
    (ends_in_digit && alphabetic && is_label(label) && is_prerelease_label(label))
        .then(|| (numbers, Some(label.to_string())))
}

/// Splits the part after the first `-` into a pre-release and a variant.
///
/// The first segment is a pre-release when it looks like one, and numeric segments right after
/// it still belong to it (`rc-1`); whatever remains is the variant (`rc.1-alpine`).
fn split_suffix(suffix: &str) -> Option<(Option<String>, Option<String>)> {
    let segments: Vec<&str> = suffix.split('-').collect();
    if !segments.iter().all(|s| is_label(s)) {
        return None;
    }
    if !is_prerelease_label(segments[0]) {
        return Some((None, Some(suffix.to_string())));
    }
    let pre_len = 1 + segments[1..].iter().take_while(|s| is_digits(s)).count();
    let pre = segments[..pre_len].join("-");
    let variant = (pre_len < segments.len()).then(|| segments[pre_len..].join("-"));
    Some((Some(pre), variant))
}

/// Iterator over maximal runs of ASCII digits and of everything else.
struct Runs<'a>(&'a str);

impl<'a> Iterator for Runs<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let first = self.0.bytes().next()?;
        let digit = first.is_ascii_digit();
        let end = self
            .0
            .bytes()
            .position(|b| b.is_ascii_digit() != digit)
            .unwrap_or(self.0.len());
        // Runs split only between ASCII bytes, so `end` is always a char boundary.
        let (run, rest) = self.0.split_at(end);
        self.0 = rest;
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(tag: &str) -> SemverTag {
        SemverTag::parse(tag).unwrap_or_else(|| panic!("{tag} should parse"))
    }

    fn cv(tag: &str) -> CalverTag {
        CalverTag::parse(tag).unwrap_or_else(|| panic!("{tag} should parse"))
    }

    #[test]
    fn semver_plain_and_prefixed() {
        let t = sv("v1.2.3");
        assert!(t.v_prefix);
        assert_eq!((t.major, t.minor, t.patch, t.precision), (1, 2, 3, 3));
        assert_eq!((t.pre, t.variant, t.build), (None, None, None));
        let t = sv("V10.20.30");
        assert!(t.v_prefix);
        assert_eq!((t.major, t.minor, t.patch), (10, 20, 30));
    }

    #[test]
    fn semver_short_forms_are_padded_with_precision() {
        let t = sv("1.2");
        assert_eq!((t.major, t.minor, t.patch, t.precision), (1, 2, 0, 2));
        let t = sv("16");
        assert_eq!((t.major, t.minor, t.patch, t.precision), (16, 0, 0, 1));
        let t = sv("1.02.3");
        assert_eq!((t.major, t.minor, t.patch), (1, 2, 3));
    }

    #[test]
    fn semver_variants_are_not_prereleases() {
        for (tag, variant) in [
            ("1.25.3-alpine", "alpine"),
            ("1.25.3-alpine3.19", "alpine3.19"),
            ("1.27.0-bookworm", "bookworm"),
            ("3.12-slim-bullseye", "slim-bullseye"),
            ("16-alpine", "alpine"),
            ("7.2.4-debian", "debian"),
            ("1.22.0-alpine3.19", "alpine3.19"),
            ("1.25.3-debian-12-r0", "debian-12-r0"),
        ] {
            let t = sv(tag);
            assert_eq!(t.pre, None, "{tag}");
            assert_eq!(t.variant.as_deref(), Some(variant), "{tag}");
        }
    }

    #[test]
    fn semver_prereleases() {
        for (tag, pre) in [
            ("3.0.0-rc1", "rc1"),
            ("1.0.0-rc.1", "rc.1"),
            ("1.0.0-alpha", "alpha"),
            ("1.0.0-Beta.2", "Beta.2"),
            ("2.0.0-preview3", "preview3"),
            ("1.0.0-SNAPSHOT", "SNAPSHOT"),
            ("1.0.0-dev", "dev"),
            ("1.0.0-nightly.20240101", "nightly.20240101"),
            ("1.0.0-canary", "canary"),
            ("6.0.0-M2", "M2"),
            ("1.0.0-0.3.7", "0.3.7"),
            ("1.0.0-rc-1", "rc-1"),
            ("17beta1", "beta1"),
            ("17rc1", "rc1"),
            ("3.13.0rc2", "rc2"),
        ] {
            let t = sv(tag);
            assert_eq!(t.pre.as_deref(), Some(pre), "{tag}");
            assert_eq!(t.variant, None, "{tag}");
        }
    }

    #[test]
    fn semver_prerelease_with_variant() {
        let t = sv("1.2.3-rc.1-alpine");
        assert_eq!(t.pre.as_deref(), Some("rc.1"));
        assert_eq!(t.variant.as_deref(), Some("alpine"));
        let t = sv("17beta1-bookworm");
        assert_eq!(t.pre.as_deref(), Some("beta1"));
        assert_eq!(t.variant.as_deref(), Some("bookworm"));
    }

    #[test]
    fn semver_build_metadata_is_kept_but_ignored() {
        let a = sv("1.2.3+build.5");
        let b = sv("1.2.3");
        assert_eq!(a.build.as_deref(), Some("build.5"));
        assert_eq!(a.version_cmp(&b), Ordering::Equal);
        assert_ne!(a.cmp(&b), Ordering::Equal);
    }

    #[test]
    fn semver_rejects_non_versions() {
        for tag in [
            "",
            "latest",
            "main",
            "mainline",
            "stable-alpine",
            "sha-abc123",
            "1.2.3.4",
            "v",
            "1.",
            ".1",
            "1..2",
            "1.2.3-",
            "1.2.3--x",
            "1.2.3alpine",
            "abc1.2",
            "1.2.3+",
            "1.2.3-a/b",
            "-1.2",
            "1.2.x",
            "1.0rc1-rc2",
            "99999999999999999999999",
        ] {
            assert!(SemverTag::parse(tag).is_none(), "{tag:?} should not parse");
        }
    }

    #[test]
    fn semver_order_is_numeric_not_lexical() {
        assert!(sv("v1.10.0") > sv("v1.9.5"));
        assert!(sv("1.2.10") > sv("1.2.9"));
        assert!(sv("2") > sv("1.99.99"));
    }

    #[test]
    fn semver_release_beats_prerelease() {
        assert!(sv("3.0.0") > sv("3.0.0-rc1"));
        assert!(sv("3.0.0-rc2") > sv("3.0.0-rc1"));
        assert!(sv("3.0.0-rc10") > sv("3.0.0-rc9"));
        assert!(sv("3.0.0-rc.10") > sv("3.0.0-rc.9"));
        assert!(sv("3.0.0-beta") > sv("3.0.0-alpha"));
        assert!(sv("3.0.0-rc1") > sv("3.0.0-beta5"));
        assert!(sv("1.0.0-alpha.1") > sv("1.0.0-alpha"));
        assert!(sv("1.0.0-alpha.beta") > sv("1.0.0-alpha.1"));
        assert!(sv("3.0.1-rc1") > sv("3.0.0"));
    }

    #[test]
    fn semver_precision_variants_are_version_equal() {
        assert_eq!(sv("1.2").version_cmp(&sv("1.2.0")), Ordering::Equal);
        assert_eq!(sv("v1.2.0").version_cmp(&sv("1.2.0")), Ordering::Equal);
        assert_eq!(sv("1.2-alpine").version_cmp(&sv("1.2.0")), Ordering::Equal);
        assert_ne!(sv("1.2"), sv("1.2.0"));
    }

    #[test]
    fn calver_parses() {
        let t = cv("2024.11.05");
        assert_eq!((t.year, t.minor, t.patch, t.precision), (2024, 11, 5, 3));
        let t = cv("24.04");
        assert_eq!(
            (t.year, t.year_digits, t.minor, t.patch, t.precision),
            (24, 2, 4, 0, 2)
        );
        assert_eq!(t.year_format(), "YY");
        let t = cv("v2024.1");
        assert!(t.v_prefix);
        assert_eq!((t.year, t.minor, t.precision), (2024, 1, 2));
        let t = cv("2024.11.05-rc1");
        assert_eq!(t.pre.as_deref(), Some("rc1"));
        let t = cv("2024");
        assert_eq!((t.precision, t.minor, t.patch), (1, 0, 0));
        assert_eq!(t.year_format(), "YYYY");
        let t = cv("2024.11.05-alpine");
        assert_eq!((t.pre, t.variant.as_deref()), (None, Some("alpine")));
    }

    #[test]
    fn calver_parts_are_numbers_not_dates() {
        // kimup (Go)'s docs version 2024.0.0 and 2024.0.0-dev.1.
        let t = cv("2024.0.0");
        assert_eq!((t.year, t.minor, t.patch, t.precision), (2024, 0, 0, 3));
        let t = cv("2024.0.0-dev.1");
        assert_eq!(t.pre.as_deref(), Some("dev.1"));
        let t = cv("v2024.0.4");
        assert!(t.v_prefix);
        assert_eq!((t.minor, t.patch), (0, 4));
        for tag in [
            "2024.13",
            "2024.0",
            "2024.11.32",
            "2024.11.0",
            "2024.99.99",
            "24.1.1",
        ] {
            assert!(CalverTag::parse(tag).is_some(), "{tag:?} should parse");
        }
    }

    #[test]
    fn calver_rejects_other_shapes() {
        for tag in [
            "",
            "latest",
            "v",
            "2024.",
            ".1",
            "202.1",
            "20245.1",
            "1.2.3",
            "2024.11.05.1",
            "2024.111",
            "24.1.100",
            "noble-20240530",
            "2024.1.1-",
            "2024.x",
        ] {
            assert!(CalverTag::parse(tag).is_none(), "{tag:?} should not parse");
        }
    }

    #[test]
    fn calver_order() {
        assert_eq!(
            cv("2024.11.05").version_cmp(&cv("2024.11.04")),
            Ordering::Greater
        );
        assert_eq!(
            cv("2024.11.05").version_cmp(&cv("2024.11.05-rc1")),
            Ordering::Greater
        );
        assert_eq!(
            cv("2024.11.05-rc2").version_cmp(&cv("2024.11.05-rc1")),
            Ordering::Greater
        );
        assert_eq!(
            cv("2024.0.0-dev.2").version_cmp(&cv("2024.0.0-dev.1")),
            Ordering::Greater
        );
        assert_eq!(cv("2025.1").version_cmp(&cv("2024.12")), Ordering::Greater);
        assert_eq!(cv("2024.10").version_cmp(&cv("2024.9")), Ordering::Greater);
        assert_eq!(cv("2024.01").version_cmp(&cv("2024.1")), Ordering::Equal);
        // Missing parts are 0, as in kimup (Go).
        assert_eq!(cv("2025").version_cmp(&cv("2025.0.0")), Ordering::Equal);
        assert_eq!(cv("2025.1").version_cmp(&cv("2025")), Ordering::Greater);
    }

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("build-10", "build-9"), Ordering::Greater);
        assert_eq!(natural_cmp("a2b10", "a2b9"), Ordering::Greater);
        assert_eq!(natural_cmp("abc", "abd"), Ordering::Less);
        assert_eq!(natural_cmp("x", "x1"), Ordering::Less);
        assert_eq!(natural_cmp("007", "7"), Ordering::Less);
        assert_eq!(natural_cmp("7", "7"), Ordering::Equal);
        assert_eq!(
            natural_cmp("99999999999999999999999", "99999999999999999999998"),
            Ordering::Greater
        );
        assert_eq!(natural_cmp("é1", "é2"), Ordering::Less);
    }

    #[test]
    fn tag_order_ranks_versions_above_words() {
        assert_eq!(tag_cmp("v1.10.0", "v1.9.5"), Ordering::Greater);
        assert_eq!(tag_cmp("1.0.0", "latest"), Ordering::Greater);
        assert_eq!(tag_cmp("build-10", "build-9"), Ordering::Greater);
        assert_eq!(tag_cmp("3.0.0", "3.0.0-rc1"), Ordering::Greater);
    }

    #[test]
    fn orders_are_total_on_a_mixed_sample() {
        let tags = [
            "1.2.3",
            "v1.2.3",
            "1.2",
            "1.2.0",
            "1.2.3-alpine",
            "1.2.3-rc1",
            "1.2.3-rc.1",
            "latest",
            "build-9",
            "build-10",
            "01",
            "1",
            "v1",
            "a",
            "A",
            "1.10",
            "1.9",
            "x-1.2",
            "17beta1",
            "1.2.3+b",
            "",
        ];
        for a in tags {
            for b in tags {
                assert_eq!(natural_cmp(a, b), natural_cmp(b, a).reverse(), "{a} {b}");
                assert_eq!(tag_cmp(a, b), tag_cmp(b, a).reverse(), "{a} {b}");
                assert_eq!(tag_cmp(a, b) == Ordering::Equal, a == b, "{a} {b}");
                for c in tags {
                    for cmp in [natural_cmp, tag_cmp] {
                        if cmp(a, b) != Ordering::Greater && cmp(b, c) != Ordering::Greater {
                            assert_ne!(cmp(a, c), Ordering::Greater, "{a} {b} {c}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prerelease_labels() {
        for label in [
            "rc1", "RC.2", "alpha", "beta", "preview", "dev", "m3", "0.1", "nightly",
        ] {
            assert!(is_prerelease_label(label), "{label}");
        }
        for label in [
            "alpine",
            "bookworm",
            "slim",
            "debian",
            "musl",
            "m",
            "windowsservercore",
        ] {
            assert!(!is_prerelease_label(label), "{label}");
        }
    }
}
