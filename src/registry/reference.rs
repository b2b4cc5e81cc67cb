//! Docker-style image reference parsing and normalisation.
//!
//! Follows the rules of `github.com/distribution/reference` closely enough that
//! two spellings Docker considers the same image (`nginx`,
//! `docker.io/library/nginx`, `index.docker.io/library/nginx`) compare equal
//! here, without pulling in a regex engine.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Canonical Docker Hub registry name every Hub alias normalises to.
pub const DOCKER_HUB: &str = "docker.io";

/// Namespace Docker Hub implies for single-component repositories.
const OFFICIAL_NAMESPACE: &str = "library";

/// Host names that all mean Docker Hub.
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Longest accepted name (registry plus repository), as in distribution.
const NAME_MAX_LEN: usize = 255;

/// Longest accepted tag, as in distribution.
pub const TAG_MAX_LEN: usize = 128;

/// Why an image reference could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference was empty or only whitespace.
    #[error("image reference is empty")]
    Empty,
    /// The name part (before tag and digest), as written or as normalised
    /// (`registry/repository`), is longer than 255 characters.
    #[error(
        "invalid image reference {input:?}: name is {len} characters long, at most {NAME_MAX_LEN} allowed"
    )]
    NameTooLong { input: String, len: usize },
    /// The registry component is not a valid `host[:port]`.
    #[error(
        "invalid image reference {input:?}: registry {registry:?} is not a valid host[:port]: {reason}"
    )]
    InvalidRegistry {
        input: String,
        registry: String,
        reason: String,
    },
    /// The repository path contains uppercase letters.
    #[error("invalid image reference {input:?}: repository {repository:?} must be lowercase")]
    Uppercase { input: String, repository: String },
    /// The repository path is malformed.
    #[error("invalid image reference {input:?}: repository {repository:?} is invalid: {reason}")]
    InvalidRepository {
        input: String,
        repository: String,
        reason: String,
    },
    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid image reference {input:?}: tag {tag:?} is invalid: {reason}")]
    InvalidTag {
        input: String,
        tag: String,
        reason: String,
    },
    /// The digest is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid image reference {input:?}: digest {digest:?} is invalid: {reason}")]
    InvalidDigest {
        input: String,
        digest: String,
        reason: String,
    },
}

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, lowercase, Docker Hub aliases folded to `docker.io`.
    pub registry: String,
    /// Repository path; Docker Hub single-component names carry the `library/` prefix.
    pub repository: String,
    /// Tag, if the reference named one.
    pub tag: Option<String>,
    /// Digest (`algorithm:hex`), if the reference named one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Returns `registry/repository`, the identity of the repository without tag or digest.
    pub fn repository_key(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Returns `registry/repository:tag`, dropping any digest; `tag` is not validated.
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{}/{}:{}", self.registry, self.repository, tag)
    }

    /// Reports whether both references point at the same registry repository.
    pub fn same_repository(&self, other: &ImageRef) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses and normalises a Docker-style image reference.
pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
    if reference.trim().is_empty() {
        return Err(ReferenceError::Empty);
    }
    let input = reference.to_owned();

    // The digest itself contains ':', so it has to come off before looking for a tag.
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            check_digest(digest).map_err(|reason| ReferenceError::InvalidDigest {
                input: input.clone(),
                digest: digest.to_owned(),
                reason,
            })?;
            (rest, Some(digest.to_owned()))
        }
        None => (reference, None),
    };

    // Only the last path component can carry a tag; earlier ':' belong to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].split_once(':') {
        Some((_, tag)) => {
            let name = &rest[..rest.len() - tag.len() - 1];
            check_tag(tag).map_err(|reason| ReferenceError::InvalidTag {
                input: input.clone(),
                tag: tag.to_owned(),
                reason,
            })?;
            (name, Some(tag.to_owned()))
        }
        None => (rest, None),
    };

    if name.is_empty() {
        return Err(ReferenceError::InvalidRepository {
            input,
            repository: String::new(),
            reason: "repository name is empty".to_owned(),
        });
    }
    if name.len() > NAME_MAX_LEN {
        return Err(ReferenceError::NameTooLong {
            input,
            len: name.len(),
        });
    }

    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if looks_like_registry(first) => {
            check_registry(first).map_err(|reason| ReferenceError::InvalidRegistry {
                input: input.clone(),
                registry: first.to_owned(),
                reason,
            })?;
            (normalise_registry_host(first), path)
        }
        _ => (DOCKER_HUB.to_owned(), name),
    };

    check_repository(path).map_err(|err| match err {
        RepoError::Uppercase => ReferenceError::Uppercase {
            input: input.clone(),
            repository: path.to_owned(),
        },
        RepoError::Invalid(reason) => ReferenceError::InvalidRepository {
            input: input.clone(),
            repository: path.to_owned(),
            reason,
        },
    })?;

    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path.to_owned()
    };
    // Docker checks the length of the normalised name; checking only what was written let
    // `nginx`-style names through whose own `Display` (`docker.io/library/...`) did not parse.
    let normalised_len = registry.len() + 1 + repository.len();
    if normalised_len > NAME_MAX_LEN {
        return Err(ReferenceError::NameTooLong {
            input,
            len: normalised_len,
        });
    }

    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Normalises a registry host or credential key: strips scheme, path and trailing slash, lowercases, folds Docker Hub aliases.
pub fn normalise_registry_host(input: &str) -> String {
    let trimmed = input.trim();
    let without_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    // Trimmed again after the scheme comes off: `a://  /` has no host, not a host of spaces
    // (which no registry matches, since normalising it a second time leaves nothing).
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .trim()
        .to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    }
}

/// Reports whether a credential key (URL, host, or host/path) applies to the given registry host.
pub fn registry_matches_host(registry: &str, key: &str) -> bool {
    let key = normalise_registry_host(key);
    // An empty key would otherwise match an empty registry and hand out credentials by accident.
    !key.is_empty() && normalise_registry_host(registry) == key
}

/// Mirrors distribution's rule for telling a registry apart from a Docker Hub namespace.
fn looks_like_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated '[' in IPv6 address".to_owned())?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("{inner:?} is not a valid IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "unexpected characters after IPv6 address".to_owned())?,
            ),
        };
        (None, port)
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };

    if let Some(host) = host {
        check_domain(host)?;
    }
    if let Some(port) = port {
        check_port(port)?;
    }
    Ok(())
}

fn check_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty".to_owned());
    }
    for label in host.split('.') {
        let bytes = label.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Err("host has an empty label".to_owned());
        };
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(format!(
                "host label {label:?} must start and end with a letter or digit"
            ));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return Err(format!(
                "host label {label:?} may only contain letters, digits and '-'"
            ));
        }
    }
    Ok(())
}

fn check_port(port: &str) -> Result<(), String> {
    // u16::from_str would also accept a leading '+', which is not a port.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is out of range 1-65535")),
    }
}

enum RepoError {
    Uppercase,
    Invalid(String),
}

fn check_repository(path: &str) -> Result<(), RepoError> {
    if path.is_empty() {
        return Err(RepoError::Invalid("repository name is empty".to_owned()));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(RepoError::Uppercase);
    }
    for component in path.split('/') {
        check_component(component).map_err(RepoError::Invalid)?;
    }
    Ok(())
}

/// Checks `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*` by walking alternating alphanumeric and separator runs.
fn check_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("empty path component (leading, trailing or doubled '/')".to_owned());
    }
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if let Some(bad) = bytes
        .iter()
        .find(|b| !is_alnum(**b) && !matches!(**b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "path component {component:?} contains invalid character {:?}",
            char::from(*bad)
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let sep_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[sep_start..i];
        if sep_start == 0 && !separator.is_empty() {
            return Err(format!(
                "path component {component:?} must start with a letter or digit"
            ));
        }
        if i == bytes.len() {
            return Err(format!(
                "path component {component:?} must end with a letter or digit"
            ));
        }
        let valid_separator =
            matches!(separator, "" | "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid_separator {
            return Err(format!(
                "path component {component:?} has invalid separator {separator:?}"
            ));
        }
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
    }
    Ok(())
}

/// Whether `tag` is a valid tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`), e.g. one a registry lists.
pub fn is_valid_tag(tag: &str) -> bool {
    check_tag(tag).is_ok()
}

fn check_tag(tag: &str) -> Result<(), String> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let Some(&first) = tag.as_bytes().first() else {
        return Err("tag is empty".to_owned());
    };
    if tag.len() > TAG_MAX_LEN {
        return Err(format!(
            "tag is {} characters long, at most {TAG_MAX_LEN} allowed",
            tag.len()
        ));
    }
    if !is_word(first) {
        return Err("tag must start with a letter, digit or '_'".to_owned());
    }
    if !tag.bytes().all(|b| is_word(b) || b == b'.' || b == b'-') {
        return Err("tag may only contain letters, digits, '_', '.' and '-'".to_owned());
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("expected algorithm:hex, e.g. sha256:<64 hex characters>".to_owned());
    };
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => {
            return Err(format!(
                "unsupported algorithm {other:?} (expected sha256 or sha512)"
            ));
        }
    };
    // OCI requires lowercase hex for registered algorithms, so uppercase is rejected rather than folded.
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("{algorithm} hex must be lowercase hexadecimal"));
    }
    if hex.len() != expected_len {
        return Err(format!(
            "{algorithm} hex must be {expected_len} characters, got {}",
            hex.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(s: &str) -> ImageRef {
        match parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn image(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> ImageRef {
        ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        }
    }

    #[test]
    fn official_image_short_name() {
        assert_eq!(
            ok("alpine"),
            image("docker.io", "library/alpine", None, None)
        );
    }

    #[test]
    fn official_image_with_namespace() {
        assert_eq!(
            ok("library/alpine"),
            image("docker.io", "library/alpine", None, None)
        );
    }

    #[test]
    fn docker_io_prefix_adds_library() {
        assert_eq!(
            ok("docker.io/alpine"),
            image("docker.io", "library/alpine", None, None)
        );
    }

    #[test]
    fn index_docker_io_alias_with_tag() {
        assert_eq!(
            ok("index.docker.io/library/alpine:3.19"),
            image("docker.io", "library/alpine", Some("3.19"), None)
        );
    }

    #[test]
    fn registry_1_alias() {
        assert_eq!(
            ok("registry-1.docker.io/bitnami/redis:7"),
            image("docker.io", "bitnami/redis", Some("7"), None)
        );
    }

    #[test]
    fn user_namespace_on_hub_kept() {
        assert_eq!(
            ok("bitnami/redis"),
            image("docker.io", "bitnami/redis", None, None)
        );
    }

    #[test]
    fn localhost_is_registry() {
        assert_eq!(ok("localhost/foo"), image("localhost", "foo", None, None));
    }

    #[test]
    fn bare_localhost_is_a_hub_repository() {
        // Without a '/', distribution treats the whole name as a Hub repository.
        assert_eq!(
            ok("localhost"),
            image("docker.io", "library/localhost", None, None)
        );
    }

    #[test]
    fn localhost_with_port_and_tag() {
        assert_eq!(
            ok("localhost:5000/a/b:tag"),
            image("localhost:5000", "a/b", Some("tag"), None)
        );
    }

    #[test]
    fn ipv4_with_port_and_digest() {
        let digest = format!("sha256:{HEX}");
        assert_eq!(
            ok(&format!("127.0.0.1:5000/x@{digest}")),
            image("127.0.0.1:5000", "x", None, Some(&digest))
        );
    }

    #[test]
    fn ipv4_nested_path() {
        assert_eq!(
            ok("127.0.0.1:5443/team/app:v1"),
            image("127.0.0.1:5443", "team/app", Some("v1"), None)
        );
    }

    #[test]
    fn tag_and_digest() {
        let digest = format!("sha256:{HEX}");
        assert_eq!(
            ok(&format!("name:tag@{digest}")),
            image("docker.io", "library/name", Some("tag"), Some(&digest))
        );
    }

    #[test]
    fn full_hub_digest_reference() {
        let digest = format!("sha256:{HEX}");
        let r = ok(&format!("docker.io/library/nginx@{digest}"));
        assert_eq!(r, image("docker.io", "library/nginx", None, Some(&digest)));
        assert!(r.same_repository(&ok("nginx:1.25")));
    }

    #[test]
    fn sha512_digest() {
        let digest = format!("sha512:{HEX}{HEX}");
        assert_eq!(
            ok(&format!("x@{digest}")).digest.as_deref(),
            Some(digest.as_str())
        );
    }

    #[test]
    fn ipv6_registry() {
        assert_eq!(ok("[::1]:5000/x"), image("[::1]:5000", "x", None, None));
        assert_eq!(
            ok("[fe80::1]/x:t"),
            image("[fe80::1]", "x", Some("t"), None)
        );
    }

    #[test]
    fn bad_ipv6_registry() {
        assert!(matches!(
            parse("[::g]:5000/x"),
            Err(ReferenceError::InvalidRegistry { .. })
        ));
        assert!(matches!(
            parse("[::1:5000/x"),
            Err(ReferenceError::InvalidRegistry { .. })
        ));
    }

    #[test]
    fn ghcr_repository() {
        assert_eq!(
            ok("ghcr.io/orange-cloudavenue/kimup-operator"),
            image("ghcr.io", "orange-cloudavenue/kimup-operator", None, None)
        );
    }

    #[test]
    fn registry_host_is_lowercased() {
        assert_eq!(ok("GHCR.io/org/repo").registry, "ghcr.io");
        assert_eq!(ok("Index.Docker.IO/alpine").registry, "docker.io");
    }

    #[test]
    fn separators_in_components() {
        for name in ["a.b/c_d", "a__b", "a-b", "a---b", "a1.b2_c3-d4", "0"] {
            ok(name);
        }
    }

    #[test]
    fn invalid_separators_rejected() {
        for name in [
            "a..b", "a___b", "a._b", "-a", "a-", ".a", "a_", "a/_b", "a!b",
        ] {
            assert!(
                matches!(parse(name), Err(ReferenceError::InvalidRepository { .. })),
                "{name:?} should be rejected, got {:?}",
                parse(name)
            );
        }
    }

    #[test]
    fn uppercase_repository_rejected() {
        let err = parse("ghcr.io/Org/Repo").unwrap_err();
        assert_eq!(
            err,
            ReferenceError::Uppercase {
                input: "ghcr.io/Org/Repo".to_owned(),
                repository: "Org/Repo".to_owned(),
            }
        );
        assert!(err.to_string().contains("must be lowercase"));
        assert!(matches!(
            parse("Alpine"),
            Err(ReferenceError::Uppercase { .. })
        ));
    }

    #[test]
    fn uppercase_tag_allowed() {
        assert_eq!(ok("alpine:Latest").tag.as_deref(), Some("Latest"));
    }

    #[test]
    fn empty_rejected() {
        assert_eq!(parse(""), Err(ReferenceError::Empty));
        assert_eq!(parse("   "), Err(ReferenceError::Empty));
    }

    #[test]
    fn bad_digests_rejected() {
        let cases = [
            "x@sha256:abc".to_owned(),
            format!("x@md5:{HEX}"),
            format!("x@sha256:{}", HEX.to_uppercase()),
            format!("x@{HEX}"),
            format!("x@sha256:{HEX}0"),
            format!("x@sha256:{HEX}@sha256:{HEX}"),
            "x@".to_owned(),
        ];
        for case in &cases {
            assert!(
                matches!(parse(case), Err(ReferenceError::InvalidDigest { .. })),
                "{case:?} should be rejected, got {:?}",
                parse(case)
            );
        }
    }

    #[test]
    fn bad_tags_rejected() {
        let long = format!("x:{}", "a".repeat(129));
        for case in ["x:", "x:-v1", "x:.v1", "x:v1+build", "x:a:b", long.as_str()] {
            assert!(
                matches!(parse(case), Err(ReferenceError::InvalidTag { .. })),
                "{case:?} should be rejected, got {:?}",
                parse(case)
            );
        }
        ok(&format!("x:{}", "a".repeat(128)));
        ok("x:_v1.2-rc");
    }

    #[test]
    fn trailing_and_doubled_slashes_rejected() {
        for case in [
            "foo/",
            "ghcr.io/",
            "ghcr.io/org//repo",
            "/foo",
            "ghcr.io/org/:tag",
        ] {
            assert!(
                matches!(parse(case), Err(ReferenceError::InvalidRepository { .. })),
                "{case:?} should be rejected, got {:?}",
                parse(case)
            );
        }
    }

    #[test]
    fn bad_registry_ports_rejected() {
        for case in [
            "localhost:/x",
            "localhost:abc/x",
            "host.io:70000/x",
            "host.io:+1/x",
            "-a.io/x",
        ] {
            assert!(
                matches!(parse(case), Err(ReferenceError::InvalidRegistry { .. })),
                "{case:?} should be rejected, got {:?}",
                parse(case)
            );
        }
    }

    #[test]
    fn name_too_long_rejected() {
        let long = format!("ghcr.io/{}", "a".repeat(250));
        assert!(matches!(
            parse(&long),
            Err(ReferenceError::NameTooLong { .. })
        ));
        // Found by kimup-fuzz: 252 characters as written, 262 once normalised, as Docker counts.
        let hub = format!("a/{}:1", "b".repeat(250));
        assert_eq!(
            parse(&hub),
            Err(ReferenceError::NameTooLong {
                input: hub.clone(),
                len: 262
            })
        );
        let fits = format!("a/{}", "b".repeat(243));
        let image = parse(&fits).expect("255 characters once normalised");
        assert_eq!(parse(&image.to_string()), Ok(image));
    }

    #[test]
    fn tag_only_reference_rejected() {
        assert!(parse(":tag").is_err());
        assert!(parse(&format!("@sha256:{HEX}")).is_err());
    }

    #[test]
    fn error_names_the_input() {
        let err = parse("ghcr.io/org/repo:bad+tag").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ghcr.io/org/repo:bad+tag"), "{msg}");
        assert!(msg.contains("bad+tag"), "{msg}");
    }

    #[test]
    fn helpers() {
        let r = ok("nginx:1.25");
        assert_eq!(r.repository_key(), "docker.io/library/nginx");
        assert_eq!(r.with_tag("1.26"), "docker.io/library/nginx:1.26");
        assert_eq!(r.to_string(), "docker.io/library/nginx:1.25");
        let d = ok(&format!("ghcr.io/a/b:1@sha256:{HEX}"));
        assert_eq!(d.to_string(), format!("ghcr.io/a/b:1@sha256:{HEX}"));
        assert_eq!(d.with_tag("2"), "ghcr.io/a/b:2");
        assert_eq!("alpine".parse::<ImageRef>(), Ok(ok("alpine")));
    }

    #[test]
    fn same_repository_across_spellings() {
        let spec = ok("nginx");
        for other in [
            "nginx:1.25",
            "library/nginx",
            "docker.io/library/nginx:latest",
            "index.docker.io/library/nginx",
            "registry-1.docker.io/nginx",
        ] {
            assert!(spec.same_repository(&ok(other)), "{other}");
        }
        assert!(!spec.same_repository(&ok("ghcr.io/library/nginx")));
        assert!(!spec.same_repository(&ok("bitnami/nginx")));
        assert!(!ok("localhost:5000/x").same_repository(&ok("localhost/x")));
    }

    #[test]
    fn normalise_registry_host_shapes() {
        let cases = [
            ("https://index.docker.io/v1/", "docker.io"),
            ("docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("ghcr.io", "ghcr.io"),
            ("registry.example.com:5000", "registry.example.com:5000"),
            (
                "https://registry.example.com:5000/v2/",
                "registry.example.com:5000",
            ),
            ("http://host", "host"),
            ("host/some/path", "host"),
            ("ghcr.io/", "ghcr.io"),
            ("  GHCR.IO  ", "ghcr.io"),
            ("[::1]:5000/v2/", "[::1]:5000"),
            // Found by kimup-fuzz: spaces between the scheme and the path are no host.
            ("a://  /", ""),
            ("https:// ghcr.io /v2/", "ghcr.io"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise_registry_host(input), want, "{input:?}");
            assert_eq!(
                normalise_registry_host(want),
                want,
                "idempotent on {input:?}"
            );
        }
    }

    #[test]
    fn registry_matches_host_rules() {
        assert!(registry_matches_host(
            "docker.io",
            "https://index.docker.io/v1/"
        ));
        assert!(registry_matches_host(
            "index.docker.io",
            "registry-1.docker.io"
        ));
        assert!(registry_matches_host("ghcr.io", "https://ghcr.io"));
        assert!(registry_matches_host(
            "localhost:5000",
            "http://localhost:5000/v2/"
        ));
        assert!(!registry_matches_host("localhost:5000", "localhost"));
        assert!(!registry_matches_host("localhost", "localhost:5000"));
        assert!(!registry_matches_host("ghcr.io", "docker.io"));
        assert!(!registry_matches_host("", ""));
    }
}
