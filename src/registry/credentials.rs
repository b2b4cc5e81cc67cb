//! Registry credentials from Kubernetes image pull secrets.
//!
//! Only the static `auths` data is read: `credsStore` and `credHelpers` name
//! programs on some workstation, and an operator must never execute them.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::reference;

/// Secret type of a modern Docker config pull secret.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Data key holding the Docker config in a `kubernetes.io/dockerconfigjson` secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// Secret type of a legacy `.dockercfg` pull secret.
pub const DOCKERCFG_TYPE: &str = "kubernetes.io/dockercfg";
/// Data key holding the legacy config in a `kubernetes.io/dockercfg` secret.
pub const DOCKERCFG_KEY: &str = ".dockercfg";

/// Username Docker pairs with an identity token when the config gives none.
const IDENTITY_TOKEN_USERNAME: &str = "<token>";

/// Top-level config keys that configure credential helpers and are deliberately skipped.
const HELPER_KEYS: [&str; 2] = ["credsStore", "credHelpers"];

// Hand-written secrets often drop the '=' padding, and Docker itself tolerates that.
const AUTH_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a pull secret could not be turned into credentials; never carries secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The secret's type requires a data key that is absent.
    #[error("pull secret {secret:?} has no {key:?} data key")]
    MissingKey { secret: String, key: String },
    /// The config data is not JSON of the expected shape.
    #[error("pull secret {secret:?} does not hold a valid Docker config: {reason}")]
    InvalidJson { secret: String, reason: String },
    /// An entry's `auth` or username/password fields are unusable.
    #[error("pull secret {secret:?} has invalid credentials for registry {registry:?}: {reason}")]
    InvalidAuth {
        secret: String,
        registry: String,
        reason: String,
    },
    /// The secret is neither a Docker config secret nor an Opaque one carrying a config key.
    #[error(
        "pull secret {secret:?} has unsupported type {type_:?}: expected {DOCKER_CONFIG_JSON_TYPE}, {DOCKERCFG_TYPE}, or Opaque with a {DOCKER_CONFIG_JSON_KEY} or {DOCKERCFG_KEY} key"
    )]
    UnsupportedType { secret: String, type_: String },
    /// The config parsed but contains no usable credentials.
    #[error("pull secret {secret:?} contains no registry credentials")]
    Empty { secret: String },
}

/// A username/password pair for registry basic or token auth.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Registry username (`<token>` for identity-token-only entries).
    pub username: String,
    /// Password, access token or identity token.
    pub password: String,
}

impl fmt::Debug for Credential {
    // Credentials end up in tracing spans and error chains; the password must never be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Borrowed view of a Kubernetes secret's fields relevant to pull credentials.
#[derive(Clone, Copy)]
pub struct PullSecretData<'a> {
    /// Secret name, used in error messages.
    pub name: &'a str,
    /// Secret `type`, if set.
    pub type_: Option<&'a str>,
    /// Decoded secret `data`.
    pub data: &'a BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for PullSecretData<'_> {
    // The data values are the secret itself; only their keys are safe to show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullSecretData")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PullSecretData<'_> {
    /// Parses this secret; see [`parse_secret`].
    pub fn parse(&self) -> Result<Vec<(String, Credential)>, CredentialError> {
        parse_secret(self.name, self.type_, self.data)
    }
}

#[derive(Clone, Copy)]
enum ConfigFormat {
    /// `{"auths": {...}}` as written by `docker login` into `config.json`.
    ConfigJson,
    /// Legacy `~/.dockercfg`: the auth map is the top-level object.
    DockerCfg,
}

/// Parses a pull secret into `(normalised registry host, credential)` pairs, sorted by original key.
pub fn parse_secret(
    name: &str,
    type_: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<(String, Credential)>, CredentialError> {
    let missing = |key: &str| CredentialError::MissingKey {
        secret: name.to_owned(),
        key: key.to_owned(),
    };
    let (format, raw) = match type_ {
        Some(DOCKER_CONFIG_JSON_TYPE) => (
            ConfigFormat::ConfigJson,
            data.get(DOCKER_CONFIG_JSON_KEY)
                .ok_or_else(|| missing(DOCKER_CONFIG_JSON_KEY))?,
        ),
        Some(DOCKERCFG_TYPE) => (
            ConfigFormat::DockerCfg,
            data.get(DOCKERCFG_KEY)
                .ok_or_else(|| missing(DOCKERCFG_KEY))?,
        ),
        // Kubernetes defaults an unset type to Opaque, and people do store configs there.
        None | Some("") | Some("Opaque") => {
            if let Some(raw) = data.get(DOCKER_CONFIG_JSON_KEY) {
                (ConfigFormat::ConfigJson, raw)
            } else if let Some(raw) = data.get(DOCKERCFG_KEY) {
                (ConfigFormat::DockerCfg, raw)
            } else {
                return Err(CredentialError::UnsupportedType {
                    secret: name.to_owned(),
                    type_: type_
                        .filter(|t| !t.is_empty())
                        .unwrap_or("Opaque")
                        .to_owned(),
                });
            }
        }
        Some(other) => {
            return Err(CredentialError::UnsupportedType {
                secret: name.to_owned(),
                type_: other.to_owned(),
            });
        }
    };

    let invalid_json = |reason: String| CredentialError::InvalidJson {
        secret: name.to_owned(),
        reason,
    };
    let root: Value =
        serde_json::from_slice(raw).map_err(|e| invalid_json(json_error_reason(&e)))?;
    let Value::Object(root) = root else {
        return Err(invalid_json("top level is not a JSON object".to_owned()));
    };
    let entries = auth_entries(format, &root).map_err(invalid_json)?;

    let mut out = Vec::new();
    if let Some(entries) = entries {
        let mut sorted: Vec<(&String, &Value)> = entries.iter().collect();
        // Sorting keeps the order independent of serde_json's preserve_order feature.
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (key, entry) in sorted {
            if HELPER_KEYS.contains(&key.as_str()) {
                continue;
            }
            let Some(cred) = entry_credential(name, key, entry)? else {
                continue;
            };
            let host = normalise_registry_key(key);
            // An empty host would never match a real registry and hides a broken secret.
            if host.is_empty() {
                return Err(invalid_json(format!("registry key {key:?} has no host")));
            }
            out.push((host, cred));
        }
    }
    if out.is_empty() {
        return Err(CredentialError::Empty {
            secret: name.to_owned(),
        });
    }
    Ok(out)
}

/// Returns the registry-keyed auth map of either config format; `None` when a config has no `auths`.
fn auth_entries(
    format: ConfigFormat,
    root: &Map<String, Value>,
) -> Result<Option<&Map<String, Value>>, String> {
    match (format, root.get("auths")) {
        (_, Some(Value::Object(auths))) => Ok(Some(auths)),
        (ConfigFormat::ConfigJson, None | Some(Value::Null)) => Ok(None),
        (_, Some(_)) => Err("\"auths\" is not a JSON object".to_owned()),
        // No registry host is literally "auths", so a legacy file without it is just the map.
        (ConfigFormat::DockerCfg, None) => Ok(Some(root)),
    }
}

/// Extracts a credential from one auth entry; `None` for entries with nothing usable (e.g. helper-managed).
fn entry_credential(
    secret: &str,
    key: &str,
    entry: &Value,
) -> Result<Option<Credential>, CredentialError> {
    let Value::Object(fields) = entry else {
        return Err(CredentialError::InvalidJson {
            secret: secret.to_owned(),
            reason: format!("entry for registry {key:?} is not a JSON object"),
        });
    };
    let invalid_auth = |reason: &str| CredentialError::InvalidAuth {
        secret: secret.to_owned(),
        registry: key.to_owned(),
        reason: reason.to_owned(),
    };
    let field = |field: &str| -> Result<Option<&str>, CredentialError> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(CredentialError::InvalidJson {
                secret: secret.to_owned(),
                reason: format!("entry for registry {key:?}: field {field:?} is not a string"),
            }),
        }
    };

    let auth = field("auth")?.map(str::trim).filter(|a| !a.is_empty());
    let identity_token = field("identitytoken")?;

    let (username, mut password) = if let Some(auth) = auth {
        decode_auth(auth).map_err(invalid_auth)?
    } else {
        match (field("username")?, field("password")?, identity_token) {
            (Some(user), Some(pass), _) => (user.to_owned(), pass.to_owned()),
            (Some(user), None, Some(_)) => (user.to_owned(), String::new()),
            (None, None, Some(_)) => (IDENTITY_TOKEN_USERNAME.to_owned(), String::new()),
            (None, None, None) => return Ok(None),
            (Some(_), None, None) => return Err(invalid_auth("username without password")),
            (None, Some(_), _) => return Err(invalid_auth("password without username")),
        }
    };
    // ACR-style configs pair a placeholder user and empty password in `auth` with the real token.
    if password.is_empty()
        && let Some(token) = identity_token
    {
        password = token.to_owned();
    }
    Ok(Some(Credential { username, password }))
}

/// Decodes base64 `user:password`; the error reason never includes the decoded value.
fn decode_auth(auth: &str) -> Result<(String, String), &'static str> {
    let bytes = AUTH_ENGINE
        .decode(auth)
        .map_err(|_| "\"auth\" is not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "decoded \"auth\" is not valid UTF-8")?;
    // Passwords and tokens may contain ':', usernames may not.
    let Some((username, password)) = text.split_once(':') else {
        return Err("decoded \"auth\" is not in user:password form");
    };
    if username.is_empty() {
        return Err("decoded \"auth\" has an empty username");
    }
    Ok((username.to_owned(), password.to_owned()))
}

/// Describes a JSON error by position only, because data errors can echo input values.
fn json_error_reason(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => err.to_string(),
        Category::Io | Category::Data => format!(
            "malformed JSON at line {} column {}",
            err.line(),
            err.column()
        ),
    }
}

/// Normalises a config key to `host[:port]`: strips scheme, path and trailing slash; Docker Hub aliases become `docker.io`.
pub fn normalise_registry_key(key: &str) -> String {
    reference::normalise_registry_host(key)
}

/// Returns the first credential whose key matches the registry host exactly (port included, Docker Hub aliases equal).
pub fn select<'a>(registry: &str, secrets: &'a [(String, Credential)]) -> Option<&'a Credential> {
    secrets
        .iter()
        .find(|(key, _)| reference::registry_matches_host(registry, key))
        .map(|(_, cred)| cred)
}

/// Returns a stable, non-reversible 16-hex-char id for a credential, or `anonymous` for none.
pub fn fingerprint(cred: Option<&Credential>) -> String {
    let Some(cred) = cred else {
        return "anonymous".to_owned();
    };
    let digest = Sha256::new()
        .chain_update(cred.username.as_bytes())
        .chain_update([0u8])
        .chain_update(cred.password.as_bytes())
        .finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

    fn data(key: &str, value: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(key.to_owned(), value.as_bytes().to_vec())])
    }

    fn cred(user: &str, pass: &str) -> Credential {
        Credential {
            username: user.to_owned(),
            password: pass.to_owned(),
        }
    }

    fn config_json(json: &str) -> Result<Vec<(String, Credential)>, CredentialError> {
        parse_secret(
            "regcred",
            Some(DOCKER_CONFIG_JSON_TYPE),
            &data(DOCKER_CONFIG_JSON_KEY, json),
        )
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn docker_login_output() {
        let json = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
            b64("alice:hunter2")
        );
        assert_eq!(
            config_json(&json).unwrap(),
            vec![("docker.io".to_owned(), cred("alice", "hunter2"))]
        );
    }

    #[test]
    fn kubectl_create_secret_docker_registry_shape() {
        // `kubectl create secret docker-registry` writes all fields at once.
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"username":"bot","password":"ghp_abc","email":"bot@example.com","auth":"{}"}}}}}}"#,
            b64("bot:ghp_abc")
        );
        assert_eq!(
            config_json(&json).unwrap(),
            vec![("ghcr.io".to_owned(), cred("bot", "ghp_abc"))]
        );
    }

    #[test]
    fn username_password_without_auth() {
        let json = r#"{"auths":{"ghcr.io":{"username":"bot","password":"ghp_abc"}}}"#;
        assert_eq!(
            config_json(json).unwrap(),
            vec![("ghcr.io".to_owned(), cred("bot", "ghp_abc"))]
        );
    }

    #[test]
    fn auth_takes_precedence_over_username_password() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"username":"old","password":"stale","auth":"{}"}}}}}}"#,
            b64("new:fresh")
        );
        assert_eq!(config_json(&json).unwrap()[0].1, cred("new", "fresh"));
    }

    #[test]
    fn empty_auth_falls_back_to_fields() {
        let json = r#"{"auths":{"ghcr.io":{"auth":"","username":"u","password":"p"}}}"#;
        assert_eq!(config_json(json).unwrap()[0].1, cred("u", "p"));
    }

    #[test]
    fn auth_without_padding() {
        // "user:pass1" encodes to 14 chars plus "==" padding.
        let unpadded = STANDARD_NO_PAD.encode("user:pass1");
        assert!(!unpadded.ends_with('='));
        let json = format!(r#"{{"auths":{{"quay.io":{{"auth":"{unpadded}"}}}}}}"#);
        assert_eq!(config_json(&json).unwrap()[0].1, cred("user", "pass1"));
    }

    #[test]
    fn auth_with_surrounding_whitespace() {
        let json = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}\n"}}}}}}"#,
            b64("user:pass")
        );
        assert_eq!(config_json(&json).unwrap()[0].1, cred("user", "pass"));
    }

    #[test]
    fn password_with_colons() {
        let json = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#,
            b64("robot$team+ci:a:b::c")
        );
        assert_eq!(
            config_json(&json).unwrap()[0].1,
            cred("robot$team+ci", "a:b::c")
        );
    }

    #[test]
    fn empty_password_in_auth_is_kept() {
        let json = format!(r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#, b64("user:"));
        assert_eq!(config_json(&json).unwrap()[0].1, cred("user", ""));
    }

    #[test]
    fn host_port_and_url_keys() {
        let json = format!(
            r#"{{"auths":{{
                "registry.example.com:5000": {{"auth":"{a}"}},
                "https://registry.example.com:5443/v2/": {{"auth":"{b}"}},
                "http://insecure.local": {{"auth":"{c}"}},
                "gcr.io/my-project": {{"auth":"{d}"}},
                "registry-1.docker.io": {{"auth":"{e}"}}
            }}}}"#,
            a = b64("a:1"),
            b = b64("b:2"),
            c = b64("c:3"),
            d = b64("d:4"),
            e = b64("e:5"),
        );
        let got = config_json(&json).unwrap();
        let hosts: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
        // Sorted by original key, then normalised.
        assert_eq!(
            hosts,
            vec![
                "gcr.io",
                "insecure.local",
                "registry.example.com:5443",
                "docker.io",
                "registry.example.com:5000",
            ]
        );
        assert_eq!(
            select("registry.example.com:5000", &got),
            Some(&cred("a", "1"))
        );
        assert_eq!(
            select("registry.example.com:5443", &got),
            Some(&cred("b", "2"))
        );
        assert_eq!(select("registry.example.com", &got), None);
        assert_eq!(select("insecure.local", &got), Some(&cred("c", "3")));
        assert_eq!(select("gcr.io", &got), Some(&cred("d", "4")));
        assert_eq!(select("index.docker.io", &got), Some(&cred("e", "5")));
    }

    #[test]
    fn creds_store_and_helpers_ignored() {
        let json = format!(
            r#"{{
                "auths": {{
                    "https://index.docker.io/v1/": {{}},
                    "ghcr.io": {{"auth": "{}"}}
                }},
                "credsStore": "desktop",
                "credHelpers": {{"123456789012.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"}},
                "currentContext": "default"
            }}"#,
            b64("bot:tok")
        );
        assert_eq!(
            config_json(&json).unwrap(),
            vec![("ghcr.io".to_owned(), cred("bot", "tok"))]
        );
    }

    #[test]
    fn only_helper_managed_entries_is_empty() {
        let json = r#"{"auths":{"https://index.docker.io/v1/":{}},"credsStore":"osxkeychain"}"#;
        assert_eq!(
            config_json(json),
            Err(CredentialError::Empty {
                secret: "regcred".to_owned()
            })
        );
    }

    #[test]
    fn a_key_of_spaces_has_no_host() {
        // Found by kimup-fuzz: this key normalised to "  ", a credential that `select` could
        // never hand out, instead of the "no host" error of an empty key.
        let json = format!(r#"{{"auths":{{"a://  /":{{"auth":"{}"}}}}}}"#, b64("u:p"));
        let err = config_json(&json).unwrap_err();
        assert!(err.to_string().contains("has no host"), "{err}");
    }

    #[test]
    fn no_auths_is_empty() {
        assert!(matches!(
            config_json("{}"),
            Err(CredentialError::Empty { .. })
        ));
        assert!(matches!(
            config_json(r#"{"auths":{}}"#),
            Err(CredentialError::Empty { .. })
        ));
        assert!(matches!(
            config_json(r#"{"auths":null}"#),
            Err(CredentialError::Empty { .. })
        ));
    }

    #[test]
    fn identity_token_entries() {
        // ACR writes a placeholder user with an empty password and the refresh token separately.
        let json = format!(
            r#"{{"auths":{{"myreg.azurecr.io":{{"auth":"{}","identitytoken":"eyJ.refresh"}}}}}}"#,
            b64("00000000-0000-0000-0000-000000000000:")
        );
        assert_eq!(
            config_json(&json).unwrap()[0].1,
            cred("00000000-0000-0000-0000-000000000000", "eyJ.refresh")
        );
        let json = r#"{"auths":{"myreg.azurecr.io":{"identitytoken":"eyJ.refresh"}}}"#;
        assert_eq!(
            config_json(json).unwrap()[0].1,
            cred("<token>", "eyJ.refresh")
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let json = format!(
            r#"{{"https://index.docker.io/v1/":{{"auth":"{}","email":"a@example.com"}},
                 "quay.io":{{"username":"q","password":"w","email":"q@example.com"}}}}"#,
            b64("hub:pw")
        );
        let got =
            parse_secret("legacy", Some(DOCKERCFG_TYPE), &data(DOCKERCFG_KEY, &json)).unwrap();
        assert_eq!(
            got,
            vec![
                ("docker.io".to_owned(), cred("hub", "pw")),
                ("quay.io".to_owned(), cred("q", "w")),
            ]
        );
    }

    #[test]
    fn dockercfg_holding_config_json_shape() {
        let json = r#"{"auths":{"quay.io":{"username":"q","password":"w"}}}"#;
        let got = parse_secret("legacy", Some(DOCKERCFG_TYPE), &data(DOCKERCFG_KEY, json)).unwrap();
        assert_eq!(got, vec![("quay.io".to_owned(), cred("q", "w"))]);
    }

    #[test]
    fn opaque_or_untyped_with_known_key_accepted() {
        let json = r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}}}"#;
        let d = data(DOCKER_CONFIG_JSON_KEY, json);
        for t in [None, Some("Opaque"), Some("")] {
            assert_eq!(
                parse_secret("s", t, &d).unwrap()[0].1,
                cred("u", "p"),
                "{t:?}"
            );
        }
        let legacy = data(
            DOCKERCFG_KEY,
            r#"{"ghcr.io":{"username":"u","password":"p"}}"#,
        );
        assert_eq!(
            parse_secret("s", None, &legacy).unwrap()[0].1,
            cred("u", "p")
        );
    }

    #[test]
    fn opaque_without_key_unsupported() {
        let d = data("token", "abc");
        assert_eq!(
            parse_secret("s", Some("Opaque"), &d),
            Err(CredentialError::UnsupportedType {
                secret: "s".to_owned(),
                type_: "Opaque".to_owned()
            })
        );
        assert!(matches!(
            parse_secret("s", None, &d),
            Err(CredentialError::UnsupportedType { .. })
        ));
    }

    #[test]
    fn other_type_unsupported_even_with_key() {
        let d = data(DOCKER_CONFIG_JSON_KEY, r#"{"auths":{}}"#);
        let err = parse_secret("tls", Some("kubernetes.io/tls"), &d).unwrap_err();
        assert_eq!(
            err,
            CredentialError::UnsupportedType {
                secret: "tls".to_owned(),
                type_: "kubernetes.io/tls".to_owned()
            }
        );
        assert!(err.to_string().contains("kubernetes.io/tls"));
    }

    #[test]
    fn missing_key() {
        let d = data(DOCKERCFG_KEY, "{}");
        assert_eq!(
            parse_secret("regcred", Some(DOCKER_CONFIG_JSON_TYPE), &d),
            Err(CredentialError::MissingKey {
                secret: "regcred".to_owned(),
                key: DOCKER_CONFIG_JSON_KEY.to_owned()
            })
        );
        let d = data(DOCKER_CONFIG_JSON_KEY, "{}");
        assert!(matches!(
            parse_secret("regcred", Some(DOCKERCFG_TYPE), &d),
            Err(CredentialError::MissingKey { .. })
        ));
    }

    #[test]
    fn malformed_json() {
        for bad in ["", "{", "not json", r#"{"auths": {"a": }}"#, "\u{feff}{}"] {
            let err = config_json(bad).unwrap_err();
            assert!(
                matches!(err, CredentialError::InvalidJson { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("regcred"));
        }
        let invalid_utf8 = BTreeMap::from([(DOCKER_CONFIG_JSON_KEY.to_owned(), vec![0xff, 0xfe])]);
        assert!(matches!(
            parse_secret("s", Some(DOCKER_CONFIG_JSON_TYPE), &invalid_utf8),
            Err(CredentialError::InvalidJson { .. })
        ));
    }

    #[test]
    fn wrong_json_shapes() {
        for bad in [
            r#"["auths"]"#,
            r#"{"auths": "c2VjcmV0OnZhbHVl"}"#,
            r#"{"auths": {"ghcr.io": "c2VjcmV0OnZhbHVl"}}"#,
            r#"{"auths": {"ghcr.io": {"auth": 42}}}"#,
            r#"{"auths": {"ghcr.io": {"username": "u", "password": ["p"]}}}"#,
            r#"{"auths": {"": {"username": "u", "password": "p"}}}"#,
        ] {
            let err = config_json(bad).unwrap_err();
            assert!(
                matches!(err, CredentialError::InvalidJson { .. }),
                "{bad:?}: {err:?}"
            );
            // Structural errors must not echo values that may be secrets.
            assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn bad_base64() {
        let json = r#"{"auths":{"ghcr.io":{"auth":"%%%not-base64%%%"}}}"#;
        let err = config_json(json).unwrap_err();
        assert_eq!(
            err,
            CredentialError::InvalidAuth {
                secret: "regcred".to_owned(),
                registry: "ghcr.io".to_owned(),
                reason: "\"auth\" is not valid base64".to_owned()
            }
        );
        assert!(!err.to_string().contains("%%%not-base64%%%"));
    }

    #[test]
    fn auth_without_colon() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            b64("justatoken")
        );
        let err = config_json(&json).unwrap_err();
        assert!(
            matches!(err, CredentialError::InvalidAuth { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(!msg.contains("justatoken"), "{msg}");
        assert!(msg.contains("ghcr.io") && msg.contains("regcred"), "{msg}");
    }

    #[test]
    fn auth_with_empty_username_or_bad_utf8() {
        let json = format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#, b64(":pw"));
        assert!(matches!(
            config_json(&json),
            Err(CredentialError::InvalidAuth { .. })
        ));
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode([0xffu8, b':', b'x'])
        );
        assert!(matches!(
            config_json(&json),
            Err(CredentialError::InvalidAuth { .. })
        ));
    }

    #[test]
    fn half_specified_username_password() {
        let json = r#"{"auths":{"ghcr.io":{"username":"u"}}}"#;
        assert!(matches!(
            config_json(json),
            Err(CredentialError::InvalidAuth { .. })
        ));
        let json = r#"{"auths":{"ghcr.io":{"password":"topsecret"}}}"#;
        let err = config_json(json).unwrap_err();
        assert!(matches!(err, CredentialError::InvalidAuth { .. }));
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn debug_redacts_password() {
        let c = cred("alice", "s3cr3t-P@ss");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-P@ss"), "{dbg}");
        assert!(dbg.contains("alice") && dbg.contains("<redacted>"), "{dbg}");
        let pairs = vec![("ghcr.io".to_owned(), c)];
        assert!(!format!("{pairs:?}").contains("s3cr3t-P@ss"));
        assert!(!format!("{pairs:#?}").contains("s3cr3t-P@ss"));
    }

    #[test]
    fn select_first_match_in_order() {
        let secrets = vec![
            ("ghcr.io".to_owned(), cred("first", "1")),
            ("docker.io".to_owned(), cred("hub", "2")),
            ("ghcr.io".to_owned(), cred("second", "3")),
        ];
        assert_eq!(select("ghcr.io", &secrets), Some(&cred("first", "1")));
        assert_eq!(select("GHCR.IO", &secrets), Some(&cred("first", "1")));
        assert_eq!(
            select("registry-1.docker.io", &secrets),
            Some(&cred("hub", "2"))
        );
        assert_eq!(select("quay.io", &secrets), None);
        assert_eq!(select("ghcr.io", &[]), None);
    }

    #[test]
    fn select_across_multiple_secrets() {
        let mut all =
            config_json(r#"{"auths":{"ghcr.io":{"username":"a","password":"1"}}}"#).unwrap();
        all.extend(
            config_json(r#"{"auths":{"docker.io":{"username":"b","password":"2"}}}"#).unwrap(),
        );
        assert_eq!(select("index.docker.io", &all), Some(&cred("b", "2")));
    }

    #[test]
    fn normalise_keys() {
        for (key, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("host:5000", "host:5000"),
            ("https://host:5000/v2/", "host:5000"),
            ("http://host", "host"),
            ("host/some/path", "host"),
            ("host/", "host"),
        ] {
            assert_eq!(normalise_registry_key(key), want, "{key:?}");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        assert_eq!(fingerprint(None), "anonymous");
        let a = fingerprint(Some(&cred("alice", "pw")));
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, fingerprint(Some(&cred("alice", "pw"))));
        assert_ne!(a, fingerprint(Some(&cred("alice", "pw2"))));
        // The NUL separator keeps shifted boundaries from colliding.
        assert_ne!(
            fingerprint(Some(&cred("ab", "c"))),
            fingerprint(Some(&cred("a", "bc")))
        );
        // Pinned value of sha256("alice\0pw"): cache keys must not change across releases.
        assert_eq!(a, "f1159c8ad57ebebd");
        assert!(!a.contains("pw"));
    }

    #[test]
    fn pull_secret_data_view() {
        let d = data(
            DOCKER_CONFIG_JSON_KEY,
            r#"{"auths":{"ghcr.io":{"username":"u","password":"p"}}}"#,
        );
        let view = PullSecretData {
            name: "s",
            type_: Some(DOCKER_CONFIG_JSON_TYPE),
            data: &d,
        };
        assert_eq!(
            view.parse().unwrap(),
            vec![("ghcr.io".to_owned(), cred("u", "p"))]
        );
    }
}
