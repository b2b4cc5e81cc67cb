//! Input generators shared by the parsers' targets: random bytes, mutations of valid seeds and
//! structure-aware builders for tags, references and JSON.

use serde_json::{Map, Value, json};

use super::Rng;

/// Characters that break naive parsers: multi-byte, case-changing (`İ` lowercases to two
/// characters), invisible, control, and digits that are numeric but not ASCII.
pub const TRICKY: &[&str] = &[
    "é", "€", "𝄞", "\u{0}", "\u{feff}", "\u{2028}", "İ", "ß", "\u{212a}", "\u{301}", "\r\n", "\t",
    "\u{7f}", "Ⅻ", "٣", "１", "\u{fffd}", "\\", "\"", "'", "%", "\n",
];

/// Random bytes, mostly short, sometimes long.
pub fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = length(rng, max);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A length up to `max`, biased towards short ones.
pub fn length(rng: &mut Rng, max: usize) -> usize {
    match rng.below(10) {
        0..=5 => rng.below(max.min(16) + 1),
        6..=8 => rng.below(max.min(256) + 1),
        _ => rng.below(max + 1),
    }
}

/// Random text made of `alphabet` tokens with tricky characters mixed in.
pub fn tokens(rng: &mut Rng, alphabet: &[&str], max_tokens: usize) -> String {
    let count = length(rng, max_tokens);
    let mut out = String::new();
    for _ in 0..count {
        if rng.one_in(8) {
            out.push_str(rng.pick(TRICKY));
        } else {
            out.push_str(rng.pick(alphabet));
        }
    }
    out
}

/// A run of digits: small, large, zero-padded or far beyond 64 bits.
pub fn number(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => "0".to_string(),
        1..=5 => rng.below(30).to_string(),
        6 => rng.below(3000).to_string(),
        7 => format!("{:0>3}", rng.below(100)),
        8 => rng
            .pick(&[
                "18446744073709551615",
                "18446744073709551616",
                "4294967295",
                "4294967296",
            ])
            .to_string(),
        9 => (0..rng.between(20, 60))
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect(),
        _ => rng.next_u64().to_string(),
    }
}

/// 1 to 4 changes to `seed`, on characters so that multi-byte text stays valid: deletions,
/// dictionary insertions, tricky characters, repeated spans (large inputs), truncation, swaps.
pub fn mutate(rng: &mut Rng, seed: &str, dictionary: &[&str]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..rng.between(1, 4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(10) {
            0 => {
                let end = (at + rng.between(1, 8)).min(chars.len());
                chars.drain(at..end);
            }
            1 | 2 => {
                let token = rng.pick(dictionary);
                chars.splice(at..at, token.chars());
            }
            3 => {
                let token = rng.pick(TRICKY);
                chars.splice(at..at, token.chars());
            }
            4 => {
                // A repeated span: long inputs and deep nesting out of valid pieces.
                let end = (at + rng.between(1, 24)).min(chars.len());
                let span: Vec<char> = chars[at..end].to_vec();
                let times = if rng.one_in(20) {
                    rng.between(100, 4000)
                } else {
                    rng.between(1, 8)
                };
                let repeated: Vec<char> = span
                    .iter()
                    .copied()
                    .cycle()
                    .take(span.len() * times)
                    .collect();
                chars.splice(end..end, repeated);
            }
            5 => chars.truncate(at),
            6 => {
                let digits = number(rng);
                chars.splice(at..at, digits.chars());
            }
            7 => {
                if let Some(c) = chars.get_mut(at) {
                    *c = char::from(rng.between(0x20, 0x7e) as u8);
                }
            }
            8 => {
                if let Some(c) = chars.get_mut(at) {
                    *c = if c.is_ascii_lowercase() {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    };
                }
            }
            _ => {
                let other = rng.below(chars.len() + 1);
                if at < chars.len() && other < chars.len() {
                    chars.swap(at, other);
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// The usual mix for a text parser: random bytes (lossily decoded), random dictionary tokens,
/// mutated seeds, and built inputs (sometimes mutated).
pub fn text(
    rng: &mut Rng,
    seeds: &[&str],
    dictionary: &[&str],
    build: impl FnOnce(&mut Rng) -> String,
) -> String {
    match rng.below(16) {
        0 | 1 => String::from_utf8_lossy(&bytes(rng, 512)).into_owned(),
        2 | 3 => tokens(rng, dictionary, 64),
        4..=8 => {
            let seed = rng.pick(seeds);
            mutate(rng, seed, dictionary)
        }
        9..=13 => build(rng),
        _ => {
            let built = build(rng);
            mutate(rng, &built, dictionary)
        }
    }
}

/// Pre-release labels, valid and not.
const PRE: &[&str] = &[
    "rc.1",
    "rc1",
    "rc10",
    "RC2",
    "beta",
    "beta.2",
    "alpha",
    "alpha.1.2",
    "dev",
    "dev.1",
    "SNAPSHOT",
    "m1",
    "1",
    "2.3",
    "nightly.20240101",
    "pre",
    "canary",
    "rc-1",
    "rc..1",
    "",
    "rc_1",
];

/// Variants, valid and not.
const VARIANT: &[&str] = &[
    "alpine",
    "alpine3.19",
    "slim-bullseye",
    "bookworm",
    "windowsservercore-ltsc2022",
    "r0",
    "debian-12",
    "amd64",
    "",
    "alpine_3",
    "alp ine",
];

/// A semver-ish tag such as `v1.2.3-rc.1-alpine+build.5`, with its parts sometimes wrong.
pub fn semver_tag(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.below(6) {
        0 | 1 => s.push('v'),
        2 => s.push('V'),
        _ => {}
    }
    let parts = if rng.one_in(10) { 4 } else { rng.between(1, 3) };
    for i in 0..parts {
        if i > 0 {
            s.push('.');
        }
        s.push_str(&number(rng));
    }
    if rng.one_in(5) {
        s.push_str(rng.pick(&["beta1", "rc1", "alpha", "b1", "rc", "x"]));
    }
    if rng.one_in(3) {
        s.push('-');
        s.push_str(rng.pick(PRE));
    }
    if rng.one_in(3) {
        s.push('-');
        s.push_str(rng.pick(VARIANT));
    }
    if rng.one_in(6) {
        s.push('+');
        s.push_str(rng.pick(&["build.1", "20240101", "sha.abc", "x_y", "", "a..b", "b+c"]));
    }
    s
}

/// A calver-ish tag such as `2024.11.05`, `24.04` or `v2024.0.0-dev.1`.
pub fn calver_tag(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.one_in(6) {
        s.push('v');
    }
    s.push_str(&match rng.below(8) {
        0..=3 => format!("{}", rng.between(2000, 2099)),
        4 | 5 => format!("{:02}", rng.below(100)),
        6 => format!("{}", rng.below(1000)),
        _ => number(rng),
    });
    for _ in 0..rng.below(4) {
        s.push('.');
        s.push_str(&match rng.below(5) {
            0..=2 => rng.below(13).to_string(),
            3 => format!("{:02}", rng.below(32)),
            _ => number(rng),
        });
    }
    if rng.one_in(3) {
        s.push('-');
        s.push_str(rng.pick(PRE));
    }
    if rng.one_in(4) {
        s.push('-');
        s.push_str(rng.pick(VARIANT));
    }
    s
}

/// Tags registries really list, besides versions.
const WORD_TAGS: &[&str] = &[
    "latest",
    "stable",
    "mainline",
    "alpine",
    "edge",
    "sha-abc1234",
    "build-10",
    "build-9",
    "release-2024-01-02",
    "main",
    "pr-123",
    "1.2.3.4",
    "v",
    "",
    "-",
    ".",
    "+",
    "1..2",
    "01.02.03",
];

/// Any tag: semver, calver, a word, or random tag characters.
pub fn any_tag(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=3 => semver_tag(rng),
        4 | 5 => calver_tag(rng),
        6 | 7 => rng.pick(WORD_TAGS).to_string(),
        8 => tokens(
            rng,
            &[
                "a", "Z", "0", "9", "1", ".", "-", "_", "+", "v", "rc", "alpine", "12",
            ],
            24,
        ),
        _ => {
            let tag = semver_tag(rng);
            mutate(rng, &tag, &["-", ".", "+", "rc", "alpine", "v"])
        }
    }
}

/// `base` with one of its digit runs replaced by another number: a neighbouring version.
pub fn bump(rng: &mut Rng, base: &str) -> String {
    let runs: Vec<(usize, usize)> = digit_runs(base);
    if runs.is_empty() {
        return any_tag(rng);
    }
    let (start, end) = rng.pick(&runs);
    let replacement = if rng.one_in(3) {
        number(rng)
    } else {
        let old: u64 = base[start..end].parse().unwrap_or(0);
        old.saturating_add(rng.below(3) as u64)
            .saturating_sub(rng.below(2) as u64)
            .to_string()
    };
    format!("{}{replacement}{}", &base[..start], &base[end..])
}

/// Byte ranges of the ASCII digit runs of `s` (always on character boundaries).
fn digit_runs(s: &str) -> Vec<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Largest input a case gets, in bytes: the server's webhook body limit and Kubernetes' limit
/// on a Secret. Tag lists have no limit in kimup (see README, "Fuzzing"), so this bounds them.
pub const MAX_INPUT: usize = 1024 * 1024;

/// A registry's tag list around `base`: neighbours of it, other tags, duplicates; now and then
/// a long one. At most [`MAX_INPUT`] bytes of tags in all.
pub fn tag_list(rng: &mut Rng, base: &str, max: usize) -> Vec<String> {
    let count = if rng.one_in(30) {
        rng.between(200, 1000)
    } else {
        rng.below(max + 1)
    };
    let mut tags: Vec<String> = Vec::with_capacity(count);
    let mut bytes = 0;
    for _ in 0..count {
        if bytes > MAX_INPUT {
            break;
        }
        let tag = match rng.below(8) {
            0..=3 => bump(rng, base),
            4 if !tags.is_empty() => rng.pick_ref(&tags).clone(),
            5 => format!(
                "{base}{}",
                rng.pick(&["-alpine", "-rc1", ".0", "+b1", "-1", "beta"])
            ),
            _ => any_tag(rng),
        };
        bytes += tag.len();
        tags.push(tag);
    }
    tags
}

/// A registry host, valid or not: names, Hub aliases, IPs, ports in and out of range.
pub fn host(rng: &mut Rng) -> String {
    let mut h = match rng.below(9) {
        0 => "localhost".to_string(),
        1 => rng
            .pick(&[
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
                "Docker.IO",
            ])
            .to_string(),
        2 | 3 => {
            let labels: Vec<&str> = (0..rng.between(1, 4))
                .map(|_| {
                    rng.pick(&[
                        "registry", "example", "com", "a", "0", "my-reg", "-x", "x-", "", "REG",
                    ])
                })
                .collect();
            labels.join(".")
        }
        4 => format!(
            "{}.{}.{}.{}",
            rng.below(300),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        ),
        5 => rng
            .pick(&[
                "[::1]",
                "[fe80::1%eth0]",
                "[::1",
                "[2001:db8::1]",
                "[]",
                "[::ffff:1.2.3.4]",
            ])
            .to_string(),
        6 => rng
            .pick(&["ghcr.io", "quay.io", "harbor.example.com", "registry.local"])
            .to_string(),
        7 => tokens(rng, &["a", ".", "-", ":", "[", "]", "9", "/", "_"], 12),
        _ => "registry".to_string(),
    };
    if rng.one_in(3) {
        h.push(':');
        h.push_str(rng.pick(&[
            "5000",
            "0",
            "65535",
            "65536",
            "99999999999999999999",
            "",
            "+80",
            "abc",
            "5000:1",
        ]));
    }
    h
}

/// Repository path components, valid and not.
const COMPONENTS: &[&str] = &[
    "library", "nginx", "team", "app", "a", "b", "my-app", "my__app", "my_app", "a.b", "a--b",
    "-bad", "bad-", "A", "UPPER", "a___b", "a..b", "", "x_", "0", "é",
];

/// A hex string of `len` digits, sometimes with a wrong digit.
fn hex(rng: &mut Rng, len: usize) -> String {
    let digits = if rng.one_in(8) {
        "0123456789ABCDEFg"
    } else {
        "0123456789abcdef"
    };
    let digits = digits.as_bytes();
    (0..len).map(|_| char::from(rng.pick(digits))).collect()
}

/// An image reference such as `registry:5000/a/b:tag@sha256:...`, its parts sometimes wrong.
pub fn reference(rng: &mut Rng) -> String {
    let mut r = String::new();
    if rng.one_in(5) {
        r.push_str(rng.pick(&["https://", "http://", "/", "//"]));
    }
    if !rng.one_in(3) {
        r.push_str(&host(rng));
        r.push('/');
    }
    let components = if rng.one_in(30) {
        rng.between(20, 200)
    } else {
        rng.between(1, 4)
    };
    for i in 0..components {
        if i > 0 {
            r.push('/');
        }
        if rng.one_in(40) {
            r.push_str(&"x".repeat(rng.between(100, 300)));
        } else {
            r.push_str(rng.pick(COMPONENTS));
        }
    }
    if rng.one_in(2) {
        r.push(':');
        r.push_str(&if rng.one_in(10) {
            "t".repeat(rng.between(120, 140))
        } else {
            any_tag(rng)
        });
    }
    if rng.one_in(4) {
        r.push('@');
        let (algorithm, len) = rng.pick(&[
            ("sha256", 64),
            ("sha512", 128),
            ("sha256", 63),
            ("md5", 32),
            ("sha256", 0),
        ]);
        r.push_str(algorithm);
        r.push(':');
        r.push_str(&hex(rng, len));
    }
    r
}

/// Valid references to mutate.
pub const REFERENCE_SEEDS: &[&str] = &[
    "nginx",
    "nginx:1.25",
    "docker.io/library/nginx:latest",
    "registry:5000/a/b:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "[::1]:5000/x:y",
    "localhost/app",
    "127.0.0.1:5000/team/app:1.2.0",
    "index.docker.io/bitnami/redis:7.2.4-debian-12-r0",
    "quay.io/org/app",
];

/// Reference syntax, for mutations.
pub const REFERENCE_DICT: &[&str] = &[
    "/",
    ":",
    "@",
    "sha256:",
    ".",
    "-",
    "_",
    "__",
    "[",
    "]",
    "::1",
    "localhost",
    "docker.io",
    "5000",
    "library/",
];

/// A JSON value of any type, nested a little: the wrong type in a known field.
pub fn noise(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 => json!(rng.next_u64() as i64),
        3 => json!(-1.5e300),
        4 => json!(""),
        5 => json!(tokens(rng, &["a", "/", ":", "1", " ", "{"], 16)),
        6 => Value::Array((0..rng.below(4)).map(|_| noise(rng, depth + 1)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                map.insert(
                    tokens(rng, &["a", "b", "tag", "name"], 3),
                    noise(rng, depth + 1),
                );
            }
            Value::Object(map)
        }
    }
}

/// A field of an object being built: usually `good`, sometimes absent or of the wrong type.
pub fn field(rng: &mut Rng, map: &mut Map<String, Value>, key: &str, good: Value) {
    match rng.below(12) {
        0 => {}
        1 => {
            map.insert(key.to_string(), noise(rng, 0));
        }
        _ => {
            map.insert(key.to_string(), good);
        }
    }
}

/// JSON text of `value`, sometimes damaged, nested very deep or padded to a large size.
pub fn json_text(rng: &mut Rng, value: &Value, dictionary: &[&str]) -> Vec<u8> {
    let text = if rng.one_in(2) {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_default()
    };
    match rng.below(20) {
        0..=3 => mutate(rng, &text, dictionary).into_bytes(),
        4 => {
            let depth = rng.between(100, 3000);
            format!("{}{text}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        5 => {
            // A large, valid body near the server's 1 MiB limit: long white space and strings.
            let pad = " ".repeat(rng.between(1000, 512 * 1024));
            format!("{pad}{text}{pad}").into_bytes()
        }
        _ => text.into_bytes(),
    }
}
