//! The parsers under fuzzing, each with its generator and what it checks besides not panicking.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::hint::black_box;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use chrono::{DateTime, Utc};
use kube::config::Kubeconfig;
use reqwest::header::{HeaderMap, HeaderValue, LINK, WWW_AUTHENTICATE};
use serde_json::{Map, Value, json};

use super::inputs::{self, field, noise};
use super::{Bytes, Fuzzer, Rng, Target};
use crate::actions::template::{self, AlertContext};
use crate::clusters;
use crate::credential;
use crate::registry::{client, credentials, reference};
use crate::rules::{self, RuleType};
use crate::server::WEBHOOK_BODY_LIMIT;
use crate::triggers::cron::Schedule;
use crate::triggers::webhook::{self, Source};
use crate::version::{self, CalverTag, OrderedTag, SemverTag};

/// Every parser under fuzzing, in report order.
pub fn all() -> Vec<&'static dyn Fuzzer> {
    vec![
        &Tags,
        &Rules,
        &Cron,
        &Template,
        &Reference,
        &DockerConfig,
        &Webhook(Source::Generic),
        &Webhook(Source::DockerHub),
        &Webhook(Source::Harbor),
        &Webhook(Source::Distribution),
        &Webhook(Source::Ghcr),
        &Webhook(Source::Quay),
        &KubeconfigFile,
        &WwwAuthenticate,
        &LinkHeader,
        &PromotionAfter,
    ]
}

/// Tag syntax, for mutations.
const TAG_DICT: &[&str] = &[
    "v", ".", "-", "+", "rc", "beta", "alpha", "alpine", "0", "1", "9", "10", "_", "2024", "dev",
    "m1", "..",
];

/// Real tags to mutate.
const TAG_SEEDS: &[&str] = &[
    "v1.2.3-alpine",
    "2024.0.0-dev.1",
    "1.25.3-alpine3.19",
    "17beta1",
    "3.13.0rc1",
    "v3.0.0-rc.1",
    "24.04",
    "v2024.11.05",
    "1.2.3+build.5",
    "7.2.4-debian-12-r0",
    "latest",
    "1",
];

/// `SemverTag`, `CalverTag` and `OrderedTag` on a few related tags: every parse, and the
/// orders antisymmetric, transitive and equal only for equal tags (sorting panics otherwise).
struct Tags;

impl Target for Tags {
    type Input = Vec<String>;

    fn name(&self) -> &'static str {
        "tag"
    }

    fn generate(&self, rng: &mut Rng) -> Vec<String> {
        let first = inputs::text(rng, TAG_SEEDS, TAG_DICT, inputs::any_tag);
        let mut tags = vec![first];
        for _ in 0..rng.between(1, 6) {
            let base = rng.pick_ref(&tags).clone();
            let next = match rng.below(4) {
                0 | 1 => inputs::bump(rng, &base),
                2 => inputs::mutate(rng, &base, TAG_DICT),
                _ => inputs::any_tag(rng),
            };
            tags.push(next);
        }
        tags
    }

    fn exercise(&self, tags: &Vec<String>) {
        let ordered: Vec<OrderedTag> = tags.iter().map(|t| OrderedTag::new(t)).collect();
        let semver: Vec<Option<SemverTag>> = tags.iter().map(|t| SemverTag::parse(t)).collect();
        let calver: Vec<Option<CalverTag>> = tags.iter().map(|t| CalverTag::parse(t)).collect();
        for ((a, s), c) in tags.iter().zip(&semver).zip(&calver) {
            black_box(version::is_prerelease_label(a));
            if let Some(s) = s {
                assert_eq!(s.raw, *a, "a semver tag keeps its raw text");
            }
            if let Some(c) = c {
                black_box((c.year_format(), c.is_prerelease()));
            }
        }
        // The pairwise and triple checks are the fuzzer's own work, quadratic and cubic in the
        // tags: on huge tags they would swamp the parsers' time, so only the sort runs there.
        if tags.iter().map(String::len).sum::<usize>() <= 4096 {
            check_orders(tags, &ordered, &semver, &calver);
        }
        let mut sorted = ordered;
        sorted.sort();
        black_box(sorted);
    }
}

/// The orders on `tags` are antisymmetric, transitive, and tie only equal tags.
fn check_orders(
    tags: &[String],
    ordered: &[OrderedTag],
    semver: &[Option<SemverTag>],
    calver: &[Option<CalverTag>],
) {
    for (i, (a, oa)) in tags.iter().zip(ordered).enumerate() {
        for (j, (b, ob)) in tags.iter().zip(ordered).enumerate() {
            let order = oa.cmp(ob);
            assert_eq!(order, ob.cmp(oa).reverse(), "tag order antisymmetric");
            assert_eq!(
                order == Ordering::Equal,
                a == b,
                "tag order ties only equal tags"
            );
            let natural = version::natural_cmp(a, b);
            assert_eq!(natural, version::natural_cmp(b, a).reverse());
            assert_eq!(
                natural == Ordering::Equal,
                a == b,
                "natural order ties only equal tags"
            );
            black_box(version::cmp_prerelease(a, b));
            if let (Some(x), Some(y)) = (&semver[i], &semver[j]) {
                assert_eq!(x.version_cmp(y), y.version_cmp(x).reverse());
            }
            if let (Some(x), Some(y)) = (&calver[i], &calver[j]) {
                assert_eq!(x.version_cmp(y), y.version_cmp(x).reverse());
            }
            for oc in ordered {
                if order != Ordering::Greater && ob.cmp(oc) != Ordering::Greater {
                    assert_ne!(oa.cmp(oc), Ordering::Greater, "tag order transitive");
                }
            }
        }
    }
}

/// What `rules::evaluate` is given.
#[derive(Debug)]
struct RuleInput {
    rule: RuleType,
    value: Option<String>,
    current: String,
    tags: Vec<String>,
}

/// A regular expression as tenants write them for tags, sometimes heavy or broken.
fn regex_value(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "^",
        "$",
        "v?",
        "\\d+",
        "[0-9]+",
        "\\.",
        "-",
        ".*",
        "(alpine|slim)",
        "[a-z]+",
        "\\w+",
        "1",
        "\\d{1,3}",
        "(",
        ")",
        "[",
        "|",
        "*",
        "+",
        "?",
        "{2}",
        "\\",
        "(?i)",
        "\\pL",
        "(?:-rc\\d+)?",
        "\\b",
    ];
    let mut pattern = String::new();
    for _ in 0..rng.between(1, 8) {
        pattern.push_str(rng.pick(PIECES));
    }
    if rng.one_in(12) {
        // Counted repetitions: the regex crate refuses what exceeds its size limit, but builds
        // up to that limit first.
        let class = rng.pick(&["\\w", "\\d", ".", "[a-z]", "\\pL", "(a|b)", "\\S"]);
        let count = rng.between(10, 2000);
        pattern.push_str(&format!("{class}{{{count}}}"));
        if rng.one_in(2) {
            pattern = format!("({pattern}){{{}}}", rng.between(2, 100));
        }
    }
    pattern
}

/// A semver constraint as tenants write them, valid or not.
fn constraint_value(rng: &mut Rng) -> String {
    let mut parts = Vec::new();
    for _ in 0..rng.between(1, 3) {
        let op = rng.pick(&[">=", "<", "~", "^", "=", "", "*", ">", "<=", "=>", "!"]);
        parts.push(format!("{op}{}", inputs::semver_tag(rng)));
    }
    parts.join(rng.pick(&[", ", ",", " ", " || "]))
}

/// `rules::evaluate` of every rule type over generated tag lists: a chosen tag is a listed tag
/// other than the current one, and every distinct tag gets a verdict.
struct Rules;

impl Target for Rules {
    type Input = RuleInput;

    fn name(&self) -> &'static str {
        "rules"
    }

    fn generate(&self, rng: &mut Rng) -> RuleInput {
        let rule = rng.pick(&RuleType::ALL);
        let current = match rng.below(6) {
            0 => inputs::calver_tag(rng),
            1 => inputs::text(rng, TAG_SEEDS, TAG_DICT, inputs::any_tag),
            _ => inputs::semver_tag(rng),
        };
        let value = match (rule, rng.below(8)) {
            (_, 0) => None,
            (_, 1) => Some(inputs::tokens(rng, TAG_DICT, 12)),
            (RuleType::Regex, _) => Some(regex_value(rng)),
            (RuleType::SemverMajor | RuleType::SemverMinor | RuleType::SemverPatch, 2..=4) => {
                Some(constraint_value(rng))
            }
            _ => None,
        };
        let tags = inputs::tag_list(rng, &current, 60);
        RuleInput {
            rule,
            value,
            current,
            tags,
        }
    }

    fn exercise(&self, input: &RuleInput) {
        let result = rules::evaluate(
            input.rule,
            input.value.as_deref(),
            &input.current,
            &input.tags,
        );
        if let Ok(decision) = &result {
            if let Some(chosen) = &decision.chosen {
                assert!(input.tags.contains(chosen), "the chosen tag is listed");
                assert_ne!(*chosen, input.current, "the current tag is never chosen");
            }
            let mut distinct = input.tags.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                decision.considered.len(),
                distinct.len(),
                "every tag has a verdict"
            );
        }
        let _ = black_box(result);
    }
}

/// What a cron case is: the expression and the times to compute the next fires after.
#[derive(Debug)]
struct CronInput {
    expr: String,
    after: Vec<i64>,
}

/// Bounds of the Quartz fields: second, minute, hour, day-of-month, month, day-of-week, year.
const CRON_BOUNDS: [(usize, usize); 7] = [
    (0, 59),
    (0, 59),
    (0, 23),
    (1, 31),
    (1, 12),
    (0, 7),
    (1970, 2099),
];

/// One value of cron field `field`: in range mostly, sometimes out of it or a name.
fn cron_value(rng: &mut Rng, field: usize) -> String {
    let (lo, hi) = CRON_BOUNDS[field];
    match (rng.below(10), field) {
        (6, _) => rng
            .pick(&[hi + 1, lo.saturating_sub(1), hi * 10])
            .to_string(),
        (7, 4) => rng
            .pick(&["JAN", "feb", "DEC", "Dec", "JANUARY", "XYZ"])
            .to_string(),
        (7, 5) => rng
            .pick(&["SUN", "mon", "SAT", "Fri", "SUNDAY"])
            .to_string(),
        (8, _) => inputs::number(rng),
        _ => rng.between(lo, hi).to_string(),
    }
}

/// One list element of cron field `field`: `*`, a value, a range, a step or a special form.
fn cron_item(rng: &mut Rng, field: usize) -> String {
    let (lo, hi) = CRON_BOUNDS[field];
    let step = |rng: &mut Rng| match rng.below(6) {
        0 => "0".to_string(),
        1 => inputs::number(rng),
        _ => rng.between(1, hi - lo + 1).to_string(),
    };
    match rng.below(15) {
        0 => "*".to_string(),
        1 => "?".to_string(),
        2..=4 => cron_value(rng, field),
        5 | 6 => format!("{}-{}", cron_value(rng, field), cron_value(rng, field)),
        7 => format!("*/{}", step(rng)),
        8 => format!("{}/{}", cron_value(rng, field), step(rng)),
        9 => format!(
            "{}-{}/{}",
            cron_value(rng, field),
            cron_value(rng, field),
            step(rng)
        ),
        10 if field == 3 => match rng.below(5) {
            0 => "L".to_string(),
            1 => "LW".to_string(),
            2 => format!("L-{}", rng.below(40)),
            3 => format!("{}W", cron_value(rng, field)),
            _ => "W".to_string(),
        },
        10 if field == 5 => match rng.below(4) {
            0 => "L".to_string(),
            1 => format!("{}L", cron_value(rng, field)),
            2 => format!("{}#{}", cron_value(rng, field), rng.below(7)),
            _ => "#".to_string(),
        },
        11 => String::new(),
        12 => inputs::tokens(rng, CRON_DICT, 4),
        _ => cron_value(rng, field),
    }
}

/// Cron syntax, for mutations.
const CRON_DICT: &[&str] = &[
    "*", "?", "/", "-", ",", " ", "L", "W", "#", "LW", "L-", "JAN", "MON", "SUN", "@", "@hourly",
    "59", "0", "7", "2099", "\t",
];

/// Real crontabs to mutate.
const CRON_SEEDS: &[&str] = &[
    "0 */5 * * * *",
    "@hourly",
    "*/2 * * * * *",
    "0 0 12 ? * MON-FRI",
    "0 15 10 L * ?",
    "0 15 10 ? * 6L",
    "0 15 10 ? * 6#3",
    "0 0 0 LW * ?",
    "0 0 0 15W * ?",
    "0 0 0 L-3 * ?",
    "30 4 1,15 * 5",
    "0 0 0 29 2 ? 2024-2099/4",
    "0 0 0 30 2 ?",
    "@yearly",
    "0 0 * * 0",
    "59 59 23 31 12 ? 2099",
    "0 0 0 1 JAN-DEC/3 SUN",
    "0 0 0 LW * SUN",
];

/// A crontab: a macro, or 5, 6 or 7 fields of lists, ranges, steps and special forms.
fn cron_expr(rng: &mut Rng) -> String {
    let fields: &[usize] = match rng.below(10) {
        0 => {
            return rng
                .pick(&[
                    "@yearly",
                    "@annually",
                    "@monthly",
                    "@weekly",
                    "@daily",
                    "@midnight",
                    "@hourly",
                    "@HOURLY",
                    "@reboot",
                    "@",
                    "@every 5m",
                ])
                .to_string();
        }
        1..=3 => &[1, 2, 3, 4, 5],
        4..=8 => &[0, 1, 2, 3, 4, 5],
        _ => &[0, 1, 2, 3, 4, 5, 6],
    };
    let mut out = String::new();
    for (i, &field) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(rng.pick(&[" ", " ", " ", "  ", "\t"]));
        }
        let items: Vec<String> = (0..rng.between(1, 3))
            .map(|_| cron_item(rng, field))
            .collect();
        out.push_str(&items.join(","));
    }
    out
}

/// `Schedule` parsing, then up to three next fire times after several instants (the search
/// for a day that never comes runs its full 400 years): each fire is after the one before.
struct Cron;

impl Target for Cron {
    type Input = CronInput;

    fn name(&self) -> &'static str {
        "cron"
    }

    fn generate(&self, rng: &mut Rng) -> CronInput {
        let expr = inputs::text(rng, CRON_SEEDS, CRON_DICT, cron_expr);
        let max = DateTime::<Utc>::MAX_UTC.timestamp();
        let min = DateTime::<Utc>::MIN_UTC.timestamp();
        let after = (0..rng.between(1, 2))
            .map(|_| match rng.below(8) {
                0 => max - rng.below(100_000) as i64,
                1 => min + rng.below(100_000) as i64,
                2 => 4_102_444_800 - rng.below(1_000_000) as i64,
                3 => 1_704_067_200,
                _ => (rng.next_u64() % 4_200_000_000) as i64,
            })
            .collect();
        CronInput { expr, after }
    }

    fn exercise(&self, input: &CronInput) {
        let Ok(schedule) = input.expr.parse::<Schedule>() else {
            return;
        };
        black_box(schedule.source());
        for &after in &input.after {
            let Some(mut t) = DateTime::<Utc>::from_timestamp(after, 0) else {
                continue;
            };
            for _ in 0..3 {
                match schedule.next_after(t) {
                    Some(next) => {
                        assert!(next > t, "the next fire is after the instant asked about");
                        t = next;
                    }
                    None => break,
                }
            }
        }
    }
}

/// What an alert template case is: the template and the values it renders.
#[derive(Debug)]
struct TemplateInput {
    template: String,
    ctx: AlertContext,
}

/// Template syntax, for mutations.
const TEMPLATE_DICT: &[&str] = &[
    "{{",
    "}}",
    "{{-",
    "-}}",
    " ",
    "range",
    "end",
    "join",
    ".AvailableTags",
    "$.",
    ".",
    "$",
    ".NewTag",
    "\"",
    "`",
    "\\",
    "/*",
    "*/",
    "{{ . }}",
    "{{ end }}",
    "{{ range .AvailableTags }}",
    "\n",
    "{",
    "}",
];

/// Real templates to mutate.
const TEMPLATE_SEEDS: &[&str] = &[
    template::DEFAULT_SUBJECT,
    template::DEFAULT_BODY,
    "{{ range $.AvailableTags }}{{ . }}{{ end }}",
    "{{ join .AvailableTags \", \" }}",
    "{{- .Name -}}",
    "{{/* comment */}}x",
    "New {{.NewTag}} for {{.ImageName}} in {{ .Namespace }}/{{ .Name }}: {{ .AvailableTags }}",
    "{{ range .AvailableTags -}}\n- {{ . }} ({{ $.BaseTag }})\n{{ end }}",
    "{{ join .AvailableTags `\n` }}",
    "{{ range .AvailableTags }}{{ range $.AvailableTags }}{{ . }}{{ end }}{{ end }}",
];

/// Deepest `range` nesting the builder writes. Three levels is already more than an alert
/// template needs; the render is (tags)^(depth), which the template size limit being added in
/// src/actions/template.rs is for, not this fuzzer.
const TEMPLATE_MAX_DEPTH: usize = 3;

/// Most tags a template context gets (a registry lists more, but alerts show a handful).
const TEMPLATE_MAX_TAGS: usize = 20;

/// Template actions and text, nested up to [`TEMPLATE_MAX_DEPTH`] ranges.
fn template_nodes(rng: &mut Rng, depth: usize, out: &mut String) {
    for _ in 0..rng.below(7) {
        let (open, close) = rng.pick(&[
            ("{{", "}}"),
            ("{{ ", " }}"),
            ("{{- ", " -}}"),
            ("{{-", "-}}"),
        ]);
        match rng.below(12) {
            0..=2 => out.push_str(rng.pick(&[
                "Hello ", "\n", "- ", "{", "}", "}}", " { {", "**", "é", "\t", "  \n  ", "{ {x}}",
            ])),
            3 | 4 => {
                let var = rng.pick(&[
                    ".Namespace",
                    ".Name",
                    ".ImageName",
                    ".BaseTag",
                    ".NewTag",
                    ".ActualTag",
                    ".AvailableTags",
                    "$.NewTag",
                    "$.AvailableTags",
                    ".Unknown",
                    ".",
                    "$",
                    "$.",
                    ".A.B",
                    ".Name|upper",
                    "\"lit\"",
                    "nil",
                ]);
                out.push_str(&format!("{open}{var}{close}"));
            }
            5 if depth < TEMPLATE_MAX_DEPTH => {
                let list = rng.pick(&[".AvailableTags", "$.AvailableTags", ".NewTag", "", ". ."]);
                out.push_str(&format!("{open}range {list}{close}"));
                template_nodes(rng, depth + 1, out);
                if !rng.one_in(10) {
                    out.push_str(rng.pick(&["{{ end }}", "{{end}}", "{{- end -}}", "{{ end x }}"]));
                }
            }
            6 => out.push_str(&format!("{open}.{close}")),
            7 => {
                let separator = rng.pick(&[
                    "\", \"",
                    "`\n`",
                    "\"\\n\"",
                    "\"\\x\"",
                    "\"unterminated",
                    "` `",
                    "\"\\\"\"",
                    "x",
                ]);
                let list = rng.pick(&[".AvailableTags", "$.AvailableTags", ".Name"]);
                out.push_str(&format!("{open}join {list} {separator}{close}"));
            }
            8 => out.push_str(rng.pick(&[
                "{{/* c */}}",
                "{{- /* c */ -}}",
                "{{/* c",
                "{{/* c */ }}",
                "{{/**/}}",
            ])),
            9 => out.push_str(rng.pick(&[
                "{{",
                "{{ }}",
                "{{ if .X }}",
                "{{ \"a\"b }}",
                "{{ end }}",
                "{{ 1 }}",
                "{{ `a",
            ])),
            _ => out.push_str(&inputs::tokens(
                rng,
                &["x", " ", "\n", "{", "}", "-", "."],
                10,
            )),
        }
    }
}

/// `template::validate` and `template::render` with a generated context: both agree on
/// whether the template is valid.
struct Template;

impl Target for Template {
    type Input = TemplateInput;

    fn name(&self) -> &'static str {
        "template"
    }

    fn generate(&self, rng: &mut Rng) -> TemplateInput {
        let template = inputs::text(rng, TEMPLATE_SEEDS, TEMPLATE_DICT, |rng| {
            let mut out = String::new();
            template_nodes(rng, 0, &mut out);
            out
        });
        let new_tag = inputs::any_tag(rng);
        let ctx = AlertContext {
            namespace: inputs::tokens(rng, &["team", "-", "a", "é", "{{"], 4),
            name: inputs::tokens(rng, &["app", "-", "1", "}}"], 4),
            image_name: inputs::reference(rng),
            base_tag: inputs::bump(rng, &new_tag),
            actual_tag: inputs::bump(rng, &new_tag),
            available_tags: inputs::tag_list(rng, &new_tag, TEMPLATE_MAX_TAGS)
                .into_iter()
                .take(TEMPLATE_MAX_TAGS)
                .collect(),
            new_tag,
            failure: None,
        };
        TemplateInput { template, ctx }
    }

    fn exercise(&self, input: &TemplateInput) {
        let valid = template::validate(&input.template);
        let rendered = template::render(&input.template, &input.ctx);
        // A template that parses renders, unless the rendering meets a limit that only the
        // values can reach (iterations, output size).
        let within_limits = !matches!(
            &rendered,
            Err(e) if matches!(
                e.kind,
                template::TemplateErrorKind::TooManyIterations | template::TemplateErrorKind::TooLong
            )
        );
        if within_limits {
            assert_eq!(valid.is_ok(), rendered.is_ok(), "validate and render agree");
        } else {
            assert!(
                valid.is_ok(),
                "only a valid template reaches a rendering limit"
            );
        }
        black_box(rendered.ok());
    }
}

/// `reference::parse`: a parsed reference prints as a reference that parses back to itself.
struct Reference;

impl Target for Reference {
    type Input = String;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn generate(&self, rng: &mut Rng) -> String {
        inputs::text(
            rng,
            inputs::REFERENCE_SEEDS,
            inputs::REFERENCE_DICT,
            inputs::reference,
        )
    }

    fn exercise(&self, input: &String) {
        if let Ok(image) = reference::parse(input) {
            let shown = image.to_string();
            assert_eq!(
                reference::parse(&shown).as_ref(),
                Ok(&image),
                "parse(display) = itself"
            );
            black_box((image.repository_key(), image.with_tag("x")));
        }
        black_box(reference::registry_matches_host(input, input));
    }
}

/// A pull secret as the API server hands it over.
struct SecretInput {
    name: String,
    type_: Option<String>,
    data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data: BTreeMap<&String, Bytes> = self
            .data
            .iter()
            .map(|(k, v)| (k, Bytes(v.clone())))
            .collect();
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("data", &data)
            .finish()
    }
}

/// Base64 of `text` in one of the spellings found in secrets.
fn base64_of(rng: &mut Rng, text: &[u8]) -> String {
    match rng.below(4) {
        0 => STANDARD_NO_PAD.encode(text),
        1 => URL_SAFE.encode(text),
        _ => STANDARD.encode(text),
    }
}

/// One `auths` entry: `auth`, username/password, identity token, or broken versions of them.
fn auth_entry(rng: &mut Rng) -> Value {
    let mut entry = Map::new();
    let user = rng.pick(&[
        "user",
        "",
        "a:b",
        "<token>",
        "é",
        "00000000-0000-0000-0000-000000000000",
    ]);
    let pass = match rng.below(6) {
        0 => "x".repeat(rng.between(100, 5000)),
        n => ["pass", "", "p:a:ss", "tok\nen", "é:"][n - 1].to_string(),
    };
    match rng.below(6) {
        0 | 1 => {
            let auth = base64_of(rng, format!("{user}:{pass}").as_bytes());
            field(rng, &mut entry, "auth", json!(auth));
        }
        2 => {
            let auth = match rng.below(6) {
                0 => "not base64!".to_string(),
                1 => base64_of(rng, b"no-colon"),
                2 => base64_of(rng, b"\xff\xfe:x"),
                3 => " ".to_string(),
                4 => "====".to_string(),
                _ => inputs::tokens(rng, &["A", "b", "=", "+", "/", "-", "_", " "], 16),
            };
            field(rng, &mut entry, "auth", json!(auth));
        }
        3 => {
            field(rng, &mut entry, "username", json!(user));
            field(rng, &mut entry, "password", json!(pass));
        }
        4 => {
            field(rng, &mut entry, "identitytoken", json!(pass));
            if rng.one_in(2) {
                field(rng, &mut entry, "username", json!(user));
            }
            if rng.one_in(2) {
                let placeholder = base64_of(rng, b"00000000-0000-0000-0000-000000000000:");
                field(rng, &mut entry, "auth", json!(placeholder));
            }
        }
        _ => {
            for key in ["auth", "username", "password", "identitytoken", "email"] {
                if rng.one_in(2) {
                    entry.insert(key.to_string(), noise(rng, 1));
                }
            }
        }
    }
    if rng.one_in(4) {
        field(rng, &mut entry, "email", json!("a@b.c"));
    }
    Value::Object(entry)
}

/// Registry keys as `docker login` and people write them.
fn registry_key(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => inputs::host(rng),
        1 => rng
            .pick(&[
                "https://index.docker.io/v1/",
                "registry:5000",
                "ghcr.io",
                "http://localhost:5000/v2/",
                "",
                "https://",
                "credsStore",
                "auths",
                " x /",
                "a://  /",
                "HTTPS://Quay.IO",
            ])
            .to_string(),
        _ => inputs::tokens(rng, &["a", ":", "/", " ", ".", "https://", "\t"], 8),
    }
}

/// A Docker config: `{"auths": {...}}`, or the legacy bare map, with helper keys at times.
fn docker_config(rng: &mut Rng, legacy: bool) -> Value {
    let mut auths = Map::new();
    for _ in 0..rng.below(5) {
        auths.insert(
            registry_key(rng),
            if rng.one_in(12) {
                noise(rng, 0)
            } else {
                auth_entry(rng)
            },
        );
    }
    let mut root = if legacy {
        auths
    } else {
        let mut root = Map::new();
        field(rng, &mut root, "auths", Value::Object(auths));
        root
    };
    if rng.one_in(4) {
        root.insert("credsStore".to_string(), json!("desktop"));
    }
    if rng.one_in(4) {
        root.insert("credHelpers".to_string(), json!({"gcr.io": "gcloud"}));
    }
    Value::Object(root)
}

/// Secret data keys and types, right and wrong.
const SECRET_TYPES: &[Option<&str>] = &[
    Some(credentials::DOCKER_CONFIG_JSON_TYPE),
    Some(credentials::DOCKERCFG_TYPE),
    Some("Opaque"),
    Some(""),
    None,
    Some("kubernetes.io/tls"),
];

/// JSON syntax and config field names, for mutations.
const DOCKER_DICT: &[&str] = &[
    "{",
    "}",
    "\"",
    ":",
    ",",
    "auths",
    "auth",
    "username",
    "password",
    "identitytoken",
    "null",
    "[",
    "]",
    "\\u0000",
    "=",
    "credsStore",
];

/// Real configs to mutate.
const DOCKER_SEEDS: &[&str] = &[
    r#"{"auths":{"registry:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
    r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"},"ghcr.io":{"auth":"dTpw"}},"credsStore":"desktop"}"#,
    r#"{"registry:5000":{"auth":"dXNlcjpwYXNz","email":"a@b.c"}}"#,
    r#"{"auths":{"x.azurecr.io":{"auth":"MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOg==","identitytoken":"tok"}}}"#,
];

/// `credentials::parse_secret` for `kubernetes.io/dockerconfigjson`, `.dockercfg` and Opaque
/// secrets; every credential it returns is found again by `select` for its own host.
struct DockerConfig;

impl Target for DockerConfig {
    type Input = SecretInput;

    fn name(&self) -> &'static str {
        "dockerconfig"
    }

    fn generate(&self, rng: &mut Rng) -> SecretInput {
        let type_ = rng.pick(SECRET_TYPES).map(str::to_string);
        let legacy = match type_.as_deref() {
            Some(credentials::DOCKERCFG_TYPE) => !rng.one_in(8),
            _ => rng.one_in(8),
        };
        let mut content = match rng.below(8) {
            0 => inputs::bytes(rng, 512),
            1 | 2 => {
                let seed = rng.pick(DOCKER_SEEDS);
                inputs::mutate(rng, seed, DOCKER_DICT).into_bytes()
            }
            _ => {
                let config = docker_config(rng, legacy);
                inputs::json_text(rng, &config, DOCKER_DICT)
            }
        };
        let key = match (legacy, rng.below(10)) {
            (_, 0) => "other",
            (true, _) => credentials::DOCKERCFG_KEY,
            (false, _) => credentials::DOCKER_CONFIG_JSON_KEY,
        };
        let mut data = BTreeMap::new();
        // The API server refuses Secrets over 1 MiB.
        content.truncate(inputs::MAX_INPUT);
        data.insert(key.to_string(), content);
        if rng.one_in(6) {
            let other = if key == credentials::DOCKERCFG_KEY {
                credentials::DOCKER_CONFIG_JSON_KEY
            } else {
                credentials::DOCKERCFG_KEY
            };
            data.insert(other.to_string(), inputs::bytes(rng, 64));
        }
        SecretInput {
            name: "pull".to_string(),
            type_,
            data,
        }
    }

    fn exercise(&self, input: &SecretInput) {
        let parsed = credentials::parse_secret(&input.name, input.type_.as_deref(), &input.data);
        if let Ok(creds) = &parsed {
            for (host, cred) in creds {
                assert!(
                    credentials::select(host, creds).is_some(),
                    "a parsed credential is found for its own host {host:?}"
                );
                black_box(credentials::fingerprint(Some(cred)));
            }
        }
        let _ = black_box(parsed.map(|c| c.len()));
    }
}

/// A value for a repository field: a reference, usually, or noise.
fn repository_value(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => noise(rng, 0),
        1 => json!(inputs::mutate(rng, "team/app", inputs::REFERENCE_DICT)),
        _ => json!(inputs::reference(rng)),
    }
}

/// A value for a tag field.
fn tag_value(rng: &mut Rng) -> Value {
    if rng.one_in(10) {
        noise(rng, 0)
    } else {
        json!(inputs::any_tag(rng))
    }
}

/// A payload of `source` with its field names, values of any type, lists of any length.
fn webhook_payload(rng: &mut Rng, source: Source) -> Value {
    let mut root = Map::new();
    let list_len = |rng: &mut Rng| {
        if rng.one_in(40) {
            rng.between(100, 3000)
        } else {
            rng.below(5)
        }
    };
    match source {
        Source::Generic => {
            let repository = repository_value(rng);
            field(rng, &mut root, "repository", repository);
            let tag = tag_value(rng);
            field(rng, &mut root, "tag", tag);
            if rng.one_in(3) {
                let image = repository_value(rng);
                field(rng, &mut root, "image", image);
            }
        }
        Source::DockerHub => {
            let mut push = Map::new();
            let tag = tag_value(rng);
            field(rng, &mut push, "tag", tag);
            field(rng, &mut push, "pusher", json!("x"));
            field(rng, &mut root, "push_data", Value::Object(push));
            let mut repo = Map::new();
            let name = repository_value(rng);
            field(rng, &mut repo, "repo_name", name);
            field(rng, &mut repo, "namespace", json!("library"));
            field(rng, &mut root, "repository", Value::Object(repo));
        }
        Source::Harbor => {
            let kind = rng.pick(&[
                "PUSH_ARTIFACT",
                "pushImage",
                "DELETE_ARTIFACT",
                "",
                "push_artifact",
            ]);
            field(rng, &mut root, "type", json!(kind));
            let resources: Vec<Value> = (0..list_len(rng))
                .map(|_| {
                    let mut r = Map::new();
                    let url = repository_value(rng);
                    field(rng, &mut r, "resource_url", url);
                    let tag = tag_value(rng);
                    field(rng, &mut r, "tag", tag);
                    Value::Object(r)
                })
                .collect();
            let mut data = Map::new();
            field(rng, &mut data, "resources", Value::Array(resources));
            field(
                rng,
                &mut data,
                "repository",
                json!({"repo_full_name": "proj/app"}),
            );
            field(rng, &mut root, "event_data", Value::Object(data));
        }
        Source::Distribution => {
            let events: Vec<Value> = (0..list_len(rng))
                .map(|_| {
                    let mut target = Map::new();
                    let media = rng.pick(&[
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.index.v1+json",
                        "application/octet-stream",
                        "",
                    ]);
                    field(rng, &mut target, "mediaType", json!(media));
                    let repo = repository_value(rng);
                    field(rng, &mut target, "repository", repo);
                    if rng.one_in(2) {
                        let tag = tag_value(rng);
                        field(rng, &mut target, "tag", tag);
                    }
                    field(rng, &mut target, "digest", json!("sha256:ab"));
                    let mut event = Map::new();
                    let action = rng.pick(&["push", "pull", "delete", "PUSH"]);
                    field(rng, &mut event, "action", json!(action));
                    field(rng, &mut event, "target", Value::Object(target));
                    let host = if rng.one_in(8) {
                        noise(rng, 1)
                    } else {
                        json!(inputs::host(rng))
                    };
                    field(
                        rng,
                        &mut event,
                        "request",
                        json!({"host": host, "method": "PUT"}),
                    );
                    Value::Object(event)
                })
                .collect();
            field(rng, &mut root, "events", Value::Array(events));
        }
        Source::Ghcr => {
            let mut package = Map::new();
            let name = rng.pick(&["Web", "app", "a/b", "", "İx", "UP", "x..y"]);
            field(rng, &mut package, "name", json!(name));
            let owner = rng.pick(&["Acme", "acme", "", "a b", "İstanbul", "o/w"]);
            if rng.one_in(2) {
                field(rng, &mut package, "namespace", json!(owner));
            } else {
                field(rng, &mut package, "owner", json!({"login": owner}));
            }
            let kind = rng.pick(&["CONTAINER", "container", "npm", "docker"]);
            field(rng, &mut package, "package_type", json!(kind));
            let tag = tag_value(rng);
            field(
                rng,
                &mut package,
                "package_version",
                json!({"container_metadata": {"tag": {"name": tag}}}),
            );
            field(rng, &mut root, "action", json!("published"));
            field(rng, &mut root, "package", Value::Object(package));
        }
        Source::Quay => {
            field(rng, &mut root, "repository", json!("org/app"));
            let url = repository_value(rng);
            field(rng, &mut root, "docker_url", url);
            let tags: Vec<Value> = (0..list_len(rng)).map(|_| tag_value(rng)).collect();
            field(rng, &mut root, "updated_tags", Value::Array(tags));
        }
    }
    Value::Object(root)
}

/// JSON syntax and payload field names, for mutations.
const WEBHOOK_DICT: &[&str] = &[
    "{",
    "}",
    "\"",
    ":",
    ",",
    "[",
    "]",
    "null",
    "repository",
    "tag",
    "events",
    "push",
    "resource_url",
    "package",
    "docker_url",
    "\\u0000",
    "\\ud800",
    "1e999",
];

/// Real payloads (from the unit tests in src/triggers/webhook.rs) to mutate.
const WEBHOOK_SEEDS: &[&str] = &[
    r#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"1.2.0"},"request":{"host":"127.0.0.1:5000","method":"PUT"}}]}"#,
    r#"{"push_data":{"tag":"1.27","pusher":"x"},"repository":{"repo_name":"nginx","namespace":"library"}}"#,
    r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v1","resource_url":"harbor.example.com/proj/app:v1"}],"repository":{"repo_full_name":"proj/app"}}}"#,
    r#"{"action":"published","package":{"name":"Web","namespace":"Acme","package_type":"CONTAINER","package_version":{"container_metadata":{"tag":{"name":"v2.0.0"}}}}}"#,
    r#"{"repository":"org/app","docker_url":"quay.io/org/app","updated_tags":["1.0","latest"]}"#,
    r#"{"repository":"registry.local:5000/team/app","tag":"3"}"#,
    r#"{"image":"alpine:3.20"}"#,
];

/// `webhook::parse` for one source: every event names a repository that parses back.
struct Webhook(Source);

impl Target for Webhook {
    type Input = Bytes;

    fn name(&self) -> &'static str {
        match self.0 {
            Source::Generic => "webhook-generic",
            Source::DockerHub => "webhook-dockerhub",
            Source::Harbor => "webhook-harbor",
            Source::Distribution => "webhook-distribution",
            Source::Ghcr => "webhook-ghcr",
            Source::Quay => "webhook-quay",
        }
    }

    fn generate(&self, rng: &mut Rng) -> Bytes {
        let mut body = match rng.below(10) {
            0 => inputs::bytes(rng, 512),
            1 | 2 => {
                let seed = rng.pick(WEBHOOK_SEEDS);
                inputs::mutate(rng, seed, WEBHOOK_DICT).into_bytes()
            }
            _ => {
                let payload = webhook_payload(rng, self.0);
                inputs::json_text(rng, &payload, WEBHOOK_DICT)
            }
        };
        // The server refuses larger bodies before they reach the parser.
        body.truncate(WEBHOOK_BODY_LIMIT);
        Bytes(body)
    }

    fn exercise(&self, body: &Bytes) {
        let Ok(events) = webhook::parse(self.0, &body.0) else {
            return;
        };
        let image = reference::parse("127.0.0.1:5000/team/app").ok();
        for event in &events {
            assert!(!event.repository.is_empty(), "an event names a repository");
            if let Some(registry) = &event.registry {
                let again = reference::parse(&format!("{registry}/{}", event.repository));
                assert!(
                    again
                        .is_ok_and(|r| r.registry == *registry && r.repository == event.repository),
                    "an event's repository parses back"
                );
            }
            if let Some(image) = &image {
                black_box(webhook::matches(event, image));
            }
        }
    }
}

/// What a kubeconfig case is: the file's stem and content, and whether exec is allowed.
#[derive(Debug)]
struct KubeconfigInput {
    stem: &'static str,
    text: String,
    allow_exec: bool,
}

/// Longest kubeconfig generated, in bytes. kube's YAML parser costs about 0.5 µs a node, so a
/// file of tiny nodes (`[x, x, x, ...]`) past some 20 KB takes 10 ms whatever kimup does;
/// real kubeconfigs are a few hundred nodes, their certificates long single scalars.
const KUBECONFIG_MAX: usize = 24 * 1024;

/// Names for clusters, users and contexts, YAML-special ones included.
const KUBE_NAMES: &[&str] = &[
    "c",
    "u",
    "ctx",
    "prod",
    "a/b",
    "é",
    "\"\"",
    "\"quoted\"",
    "'x'",
    "~",
    "null",
    "0",
    "e",
    "dup",
];

/// `user:` bodies: token, exec, auth-provider, certificates, and wrong shapes.
const KUBE_USERS: &[&str] = &[
    "{token: abc}",
    "{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}}",
    "{exec: {command: /bin/sh, apiVersion: v1, interactiveMode: Never, env: [{name: A, value: b}]}}",
    "{exec: {}}",
    "{exec: null}",
    "{auth-provider: {name: gcp, config: {access-token: x}}}",
    "{client-certificate: cert.pem, client-key: key.pem}",
    "{client-certificate-data: !!binary AAAA, client-key-data: QUFB}",
    "{username: a, password: b}",
    "{tokenFile: /var/run/token}",
    "{as: admin, as-groups: [a, b]}",
    "{exec: [1, 2]}",
    "{}",
    "[]",
    "~",
];

/// `cluster:` bodies.
const KUBE_CLUSTERS: &[&str] = &[
    "{server: \"https://127.0.0.1:6443\"}",
    "{server: \"http://[::1]:8080\", insecure-skip-tls-verify: true}",
    "{server: \"\", certificate-authority: ca.pem}",
    "{server: not a url, certificate-authority-data: AAAA}",
    "{server: \"https://x:99999\", proxy-url: \"socks5://x\", tls-server-name: x}",
    "{}",
    "[1]",
];

/// A kubeconfig: clusters, users (exec ones too) and contexts that refer to them or to nothing,
/// in block or flow style, sometimes with anchors or several documents.
fn kubeconfig(rng: &mut Rng) -> String {
    let mut s = String::new();
    let documents = if rng.one_in(6) { 2 } else { 1 };
    for doc in 0..documents {
        if doc > 0 || rng.one_in(8) {
            s.push_str("---\n");
        }
        s.push_str("apiVersion: v1\nkind: Config\n");
        let name = |rng: &mut Rng| {
            let base = rng.pick(KUBE_NAMES);
            if rng.one_in(3) {
                format!("{base}{}", rng.below(3))
            } else {
                base.to_string()
            }
        };
        s.push_str("clusters:\n");
        for _ in 0..rng.below(4) {
            let cluster = rng.pick(KUBE_CLUSTERS);
            s.push_str(&format!("- name: {}\n  cluster: {cluster}\n", name(rng)));
        }
        let anchored = rng.one_in(8);
        s.push_str("users:\n");
        for i in 0..rng.below(4) {
            let user = rng.pick(KUBE_USERS);
            let anchor = if anchored {
                format!("&u{i} ")
            } else {
                String::new()
            };
            s.push_str(&format!("- name: {}\n  user: {anchor}{user}\n", name(rng)));
        }
        let contexts = if rng.one_in(40) {
            rng.between(30, 150)
        } else {
            rng.below(4)
        };
        s.push_str(rng.pick(&["contexts:\n", "contexts: \n", "contexts:\n  "]));
        for _ in 0..contexts {
            s.push_str(&format!(
                "- name: {}\n  context: {{cluster: {}, user: {}, namespace: {}}}\n",
                name(rng),
                name(rng),
                name(rng),
                rng.pick(&["default", "", "x", "[a]"])
            ));
        }
        if rng.one_in(2) {
            s.push_str(&format!("current-context: {}\n", name(rng)));
        }
        if anchored {
            s.push_str("preferences: {extensions: [{name: x, extension: *u0}]}\n");
        }
    }
    s
}

/// YAML syntax and kubeconfig keys, for mutations.
const KUBE_DICT: &[&str] = &[
    ":",
    "- ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: ",
    "!!binary ",
    "exec",
    "command",
    "user",
    "context",
    "---\n",
    "\t",
    "'",
    "\"",
    "? ",
    "|",
    ">",
];

/// Real kubeconfigs (from the unit tests in src/clusters.rs) and a billion-laughs bomb.
const KUBE_SEEDS: &[&str] = &[
    "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443\"}}]\nusers: [{name: u, user: {token: abc}}]\ncontexts: [{name: ctx, context: {cluster: c, user: u}}]\ncurrent-context: ctx\n",
    "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443\"}}]\nusers:\n- {name: u, user: {token: abc}}\n- {name: e, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}}}\ncontexts:\n- {name: plain, context: {cluster: c, user: u}}\n- {name: eks, context: {cluster: c, user: e}}\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\npreferences: {extensions: [{name: x, extension: *g}]}\n",
    "apiVersion: v1\nkind: Config\n",
    "{{{",
    // What `kimup cluster add` writes: a JWT whose dates kimup reads (credential::of_kubeconfig).
    "apiVersion: v1\nkind: Config\nclusters: [{name: p, cluster: {server: \"https://10.0.0.1:6443\", extensions: [{name: kimup.cloudavenue.io/member, extension: {identity: u}}]}}]\nusers: [{name: p, user: {token: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a2ltdXA6a2ltdXAiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDYwNDgwMH0.c2ln}}]\ncontexts: [{name: p, context: {cluster: p, user: p}}]\ncurrent-context: p\n",
    "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://h\"}}]\nusers: [{name: u, user: {client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUI=, client-key-data: eA==}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n",
];

/// A kubeconfig's content through `clusters::check_expansion`, `Kubeconfig::from_yaml` and
/// `clusters::members_of` (where exec and auth-provider users are refused): no member that
/// would run code is usable unless exec is allowed.
struct KubeconfigFile;

impl Target for KubeconfigFile {
    type Input = KubeconfigInput;

    fn name(&self) -> &'static str {
        "kubeconfig"
    }

    fn generate(&self, rng: &mut Rng) -> KubeconfigInput {
        let mut text = inputs::text(rng, KUBE_SEEDS, KUBE_DICT, kubeconfig);
        text.truncate(text.floor_char_boundary(KUBECONFIG_MAX));
        KubeconfigInput {
            stem: rng.pick(&["prod", "a.b", "é", ".hidden", "x y"]),
            text,
            allow_exec: rng.one_in(4),
        }
    }

    fn exercise(&self, input: &KubeconfigInput) {
        let path = format!("/k/{}.yaml", input.stem);
        // As clusters::scan reads a file: the expansion check, then kube's parse.
        let parsed = clusters::check_expansion(&input.text)
            .and_then(|()| Kubeconfig::from_yaml(&input.text).map_err(|e| e.to_string()));
        let members = clusters::members_of(Path::new(&path), &input.text, parsed, input.allow_exec);
        assert!(!members.is_empty(), "a file is at least one member");
        for member in &members {
            if let Ok((kc, context)) = &member.source {
                let runs = clusters::runs_code(kc, context);
                assert!(
                    input.allow_exec || runs.is_none(),
                    "code runs only when allowed"
                );
                // As `kimup run` dates each member's credential (a JWT, a certificate).
                let cred = credential::of_kubeconfig(kc, context);
                if let Some(e) = cred.expiry() {
                    black_box(credential::warning(e, Utc::now()));
                    black_box(credential::keep_token(e, Utc::now()));
                }
            }
        }
        black_box(members);
    }
}

/// A header value with only the bytes HTTP allows (what hyper hands over).
fn header_safe(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.retain(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f));
    bytes
}

/// A `WWW-Authenticate` challenge: scheme, then parameters quoted, unquoted, escaped, broken.
fn challenge(rng: &mut Rng) -> String {
    let mut s = rng
        .pick(&[
            "Bearer ", "bearer ", "Basic ", "BEARER ", "Bearer", "Bearer  ", "",
        ])
        .to_string();
    for i in 0..rng.below(6) {
        if i > 0 {
            s.push_str(rng.pick(&[",", ", ", " , ", ",,", " "]));
        }
        s.push_str(rng.pick(&[
            "realm", "service", "scope", "error", "Realm", "SCOPE", " realm ", "", "x y", "é",
        ]));
        if !rng.one_in(10) {
            s.push('=');
        }
        let value = rng.pick(&[
            "https://auth.docker.io/token",
            "registry.docker.io",
            "repository:library/nginx:pull",
            "repository:a:pull,push",
            "",
            "a\\\"b",
            "\\",
            "x,y",
        ]);
        match rng.below(4) {
            0 => s.push_str(value),
            1 => s.push_str(&format!("\"{value}")),
            _ => s.push_str(&format!("\"{value}\"")),
        }
    }
    s
}

/// Header syntax, for mutations.
const HEADER_DICT: &[&str] = &[
    "\"", ",", "=", ";", " ", "\\", "<", ">", "rel", "next", "realm", "Bearer ", "é",
];

/// Real challenges to mutate.
const CHALLENGE_SEEDS: &[&str] = &[
    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
    r#"Bearer realm="https://auth",service="x",scope="repository:a:pull""#,
    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull",error="insufficient_scope""#,
    r#"Basic realm="x""#,
    "bearer realm=unquoted, service=x",
];

/// `client::bearer_challenge` on a `WWW-Authenticate` header.
struct WwwAuthenticate;

impl Target for WwwAuthenticate {
    type Input = Bytes;

    fn name(&self) -> &'static str {
        "www-authenticate"
    }

    fn generate(&self, rng: &mut Rng) -> Bytes {
        let text = match rng.below(10) {
            0 => inputs::bytes(rng, 512),
            _ => inputs::text(rng, CHALLENGE_SEEDS, HEADER_DICT, challenge).into_bytes(),
        };
        Bytes(header_safe(text))
    }

    fn exercise(&self, value: &Bytes) {
        let Ok(value) = HeaderValue::from_bytes(&value.0) else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, value);
        black_box(client::bearer_challenge(&headers));
    }
}

/// One `Link` header value: targets with `rel` parameters, right and wrong.
fn link_value(rng: &mut Rng) -> String {
    let links: Vec<String> = (0..rng.between(1, 3))
        .map(|_| {
            let target = rng.pick(&[
                "/v2/x/tags/list?n=100&last=b",
                "https://r/v2/x/tags/list?last=1.25&n=100",
                "",
                "/v2/a,b/tags/list",
                "<nested>",
                "/v2/x?last=a;b",
                "http://o/v2/x",
            ]);
            let params = rng.pick(&[
                "; rel=\"next\"",
                ";rel=next",
                "; rel=\"prev\"",
                "; rel = \"next\"",
                "; REL=\"next\"",
                "",
                ";",
                "; rel=\"next\"; type=x",
                "; title=\"a,b\"; rel=\"next\"",
            ]);
            let (open, close) = rng.pick(&[("<", ">"), ("<", ""), ("", ">"), ("", "")]);
            format!("{open}{target}{close}{params}")
        })
        .collect();
    links.join(rng.pick(&[", ", ",", " , "]))
}

/// Real `Link` headers to mutate.
const LINK_SEEDS: &[&str] = &[
    r#"</v2/x/tags/list?n=100&last=b>; rel="next""#,
    r#"<https://x/a>; rel="prev""#,
    r#"</v2/library/nginx/tags/list?last=1.25&n=100>; rel="next""#,
];

/// `client::next_link` on one or more `Link` headers, then `client::next_page`.
struct LinkHeader;

impl Target for LinkHeader {
    type Input = Vec<Bytes>;

    fn name(&self) -> &'static str {
        "link"
    }

    fn generate(&self, rng: &mut Rng) -> Vec<Bytes> {
        (0..rng.between(1, 3))
            .map(|_| {
                let text = match rng.below(10) {
                    0 => inputs::bytes(rng, 512),
                    _ => inputs::text(rng, LINK_SEEDS, HEADER_DICT, link_value).into_bytes(),
                };
                Bytes(header_safe(text))
            })
            .collect()
    }

    fn exercise(&self, values: &Vec<Bytes>) {
        let mut headers = HeaderMap::new();
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(&value.0) {
                headers.append(LINK, value);
            }
        }
        let link = client::next_link(&headers);
        black_box(client::next_page(link, Some("b".to_string()), 100, 100));
    }
}

/// Pieces of member names and `promotion.after` patterns.
const CLUSTER_DICT: &[&str] = &[
    "*", "?", "**", "staging", "-", "prod", "dev", "eu", "a", "/", "ctx", ".", "é", "[", "\\",
];

/// Real names and patterns to mutate.
const CLUSTER_SEEDS: &[&str] = &[
    "staging-*",
    "prod",
    "dev",
    "*",
    "st?ging-*-eu",
    "ring-1/ctx-*",
    "*a*a*a*a*a*a*b",
];

/// A promotion's member matching and soak: `promotion::glob_match` against a plain recursive
/// matcher (on short inputs), `gate_clusters` (never this cluster, only matches, sorted), the
/// soak's parse and print.
struct PromotionAfter;

/// `*` any run, `?` one character, anything else itself: the definition `glob_match` follows,
/// written the obvious (exponential) way.
fn glob_reference(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => (0..=n.len()).any(|i| glob_reference(rest, &n[i..])),
        Some((c, rest)) => n
            .split_first()
            .is_some_and(|(d, tail)| (*c == '?' || c == d) && glob_reference(rest, tail)),
    }
}

impl Target for PromotionAfter {
    type Input = (Vec<String>, Vec<String>, String);

    fn name(&self) -> &'static str {
        "promotion"
    }

    fn generate(&self, rng: &mut Rng) -> (Vec<String>, Vec<String>, String) {
        let part = |rng: &mut Rng| match rng.below(6) {
            0 => inputs::tokens(rng, CLUSTER_DICT, 40),
            1 => "*a".repeat(rng.between(1, 300)),
            _ => inputs::text(rng, CLUSTER_SEEDS, CLUSTER_DICT, |r| {
                inputs::tokens(r, CLUSTER_DICT, 8)
            }),
        };
        let after = (0..rng.between(1, 4)).map(|_| part(rng)).collect();
        let members = (0..rng.between(0, 6)).map(|_| part(rng)).collect();
        let soak = match rng.below(3) {
            0 => format!(
                "{}{}",
                rng.below(100_000),
                rng.pick(&["", "ms", "s", "m", "h", "d"])
            ),
            1 => format!("{}h", u64::MAX / rng.between(1, 5) as u64),
            _ => inputs::tokens(rng, &["1", "0", "9", "h", "m", "s", " ", "-"], 12),
        };
        (after, members, soak)
    }

    fn exercise(&self, (after, members, soak): &(Vec<String>, Vec<String>, String)) {
        for p in after {
            for m in members {
                let got = crate::promotion::glob_match(p, m);
                let (pc, mc): (Vec<char>, Vec<char>) = (p.chars().collect(), m.chars().collect());
                // The reference is exponential in stars: only on inputs it answers in
                // microseconds, so that a slow case is glob_match's own.
                if pc.iter().filter(|c| **c == '*').count() <= 3 && pc.len() + mc.len() <= 40 {
                    assert_eq!(got, glob_reference(&pc, &mc), "{p:?} on {m:?}");
                }
                if !p.contains(['*', '?']) {
                    assert_eq!(got, p == m, "a plain name matches only itself");
                }
            }
        }
        let own = members.first().cloned().unwrap_or_default();
        let promotion = crate::api::image::Promotion {
            after: after
                .iter()
                .map(|a| crate::api::image::ClusterPattern(a.clone()))
                .collect(),
            soak: soak.clone(),
        };
        if let Ok(gate) = crate::promotion::gate_clusters(&promotion, &own, members) {
            assert!(!gate.is_empty() && !gate.contains(&own), "{gate:?}");
            assert!(gate.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
            assert!(gate.iter().all(|g| members.contains(g)));
        }
        if let Ok(d) = crate::promotion::soak(&promotion) {
            black_box(crate::promotion::human(d));
        }
    }
}
