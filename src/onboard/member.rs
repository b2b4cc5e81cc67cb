//! What `kimup cluster add` makes of a member, decided without I/O: member names, the kubeconfig
//! text and what a stored one says, whether a token is kept, which objects are kimup's, the
//! ClusterRole and its binding.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use kube::api::ObjectMeta;
use serde::Serialize;

use super::{CLUSTER_ROLE, EXTENSION, MANAGED_BY, SERVICE_ACCOUNT};
use crate::credential;
use crate::rbac;

/// Checks a member name: it becomes a file stem and a Secret key (`NAME.yaml`), so letters,
/// digits, `-`, `_` and `.`, not starting with `.` (hidden files are skipped), at most 200.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} cannot name a member (letters, digits, '-', '_' and '.', not starting with \
             '.'): choose one with --name"
        ))
    }
}

/// What `add` records in the member's kubeconfig about what it made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    /// UID of the member's `kube-system` namespace.
    pub identity: String,
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// `bound` (TokenRequest) or `long-lived` (token Secret).
    pub credential: String,
}

/// The cluster entry of a member kubeconfig, as `add` copies it from the administrator's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterEntry {
    /// API server URL.
    pub server: String,
    /// Base64 PEM of the CA that signs the API server's certificate; None to use the system's.
    pub ca_data: Option<String>,
    /// TLS server name, when the administrator's kubeconfig sets one.
    pub tls_server_name: Option<String>,
    /// Proxy, when the administrator's kubeconfig sets one.
    pub proxy_url: Option<String>,
}

/// The member kubeconfig: one cluster, one user with `token`, one context, all named `name`,
/// and the record of what `add` made (pure; same input, same bytes).
pub fn member_kubeconfig(
    name: &str,
    cluster: &ClusterEntry,
    token: &str,
    record: &MemberRecord,
) -> String {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), cluster.server.clone().into());
    if let Some(ca) = &cluster.ca_data {
        c.insert("certificate-authority-data".into(), ca.clone().into());
    }
    if let Some(t) = &cluster.tls_server_name {
        c.insert("tls-server-name".into(), t.clone().into());
    }
    if let Some(p) = &cluster.proxy_url {
        c.insert("proxy-url".into(), p.clone().into());
    }
    c.insert(
        "extensions".into(),
        serde_json::json!([{"name": EXTENSION, "extension": record}]),
    );
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": c}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// What a stored member kubeconfig holds, as far as `add` and `remove` care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The record of `add`, when it made this file.
    pub record: Option<MemberRecord>,
    /// The bearer token of its (first) user.
    pub token: Option<String>,
    /// Its API server.
    pub server: Option<String>,
}

/// Reads a stored member kubeconfig (pure; anything unreadable is simply absent).
pub fn read_stored(text: &str) -> Stored {
    let Ok(doc) = serde_yaml::from_str::<serde_json::Value>(text) else {
        return Stored::default();
    };
    let cluster = &doc["clusters"][0]["cluster"];
    let record = cluster["extensions"].as_array().and_then(|exts| {
        exts.iter()
            .find(|e| e["name"] == EXTENSION)
            .and_then(|e| serde_json::from_value(e["extension"].clone()).ok())
    });
    Stored {
        record,
        token: doc["users"][0]["user"]["token"].as_str().map(String::from),
        server: cluster["server"].as_str().map(String::from),
    }
}

/// What to do about the credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenPlan {
    /// The stored token stays (if the API server still accepts it): why.
    Keep(String),
    /// A new one is needed: why.
    Mint(String),
}

/// Whether the stored token can stay (pure): it must be the ServiceAccount's, of the kind asked
/// for, and a bound token must have more than half its lifetime left
/// ([`credential::keep_token`]). `--rotate` always mints.
pub fn plan_token(
    stored: Option<&str>,
    subject: &str,
    long_lived: bool,
    rotate: bool,
    now: DateTime<Utc>,
) -> TokenPlan {
    if rotate {
        return TokenPlan::Mint("--rotate".into());
    }
    let Some(token) = stored else {
        return TokenPlan::Mint("no credential yet".into());
    };
    let claims = credential::jwt_claims(token).unwrap_or_default();
    if claims.sub.as_deref() != Some(subject) {
        return TokenPlan::Mint(format!("the stored credential is not {subject}'s"));
    }
    match (long_lived, credential::token_expiry(token)) {
        (true, None) => TokenPlan::Keep("long-lived token".into()),
        (true, Some(_)) => TokenPlan::Mint("switching to a long-lived token".into()),
        (false, None) => TokenPlan::Mint("switching to a bound token".into()),
        (false, Some(e)) if credential::keep_token(&e, now) => TokenPlan::Keep(format!(
            "expires at {}, {} left",
            e.expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            credential::human(e.remaining(now))
        )),
        (false, Some(e)) => TokenPlan::Mint(format!(
            "the stored token has {} of its lifetime left, under half",
            credential::human(e.remaining(now))
        )),
    }
}

/// What to say when the API server granted a bound token a shorter lifetime than asked for
/// (its `--service-account-max-token-expiration`); None when it granted it (a minute of slack:
/// the granted lifetime is read from the token's own dates, to the second).
pub fn capped_note(asked: Duration, granted: Duration) -> Option<String> {
    (granted + Duration::from_secs(60) < asked).then(|| {
        format!(
            "the API server capped the {} asked for at {} (--service-account-max-token-expiration)",
            credential::human(asked),
            credential::human(granted)
        )
    })
}

/// Whether an existing object may be taken over by `add`, or deleted by `remove --purge`: only
/// objects it labelled (pure).
pub fn owned(labels: Option<&BTreeMap<String, String>>) -> Result<(), String> {
    match labels.and_then(|l| l.get(MANAGED_BY.0)) {
        Some(v) if v == MANAGED_BY.1 => Ok(()),
        Some(v) => Err(format!("it is managed by {v}, not kimup")),
        None => Err(format!("it has no {}={} label", MANAGED_BY.0, MANAGED_BY.1)),
    }
}

/// `system:serviceaccount:NS:NAME`.
pub fn service_account_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
}

pub(super) fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())])
}

pub(super) fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(String::from),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// The ClusterRole of the rule set.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(CLUSTER_ROLE, None),
        rules: Some(rbac::policy_rules()),
        ..Default::default()
    }
}

/// Its binding to the ServiceAccount in `namespace`.
pub fn cluster_role_binding(namespace: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(CLUSTER_ROLE, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        }]),
    }
}

/// Lowest and highest `--token-ttl`: the TokenRequest API refuses under 10 minutes, and a year
/// is longer than any API server lets a token live.
pub(super) const TOKEN_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(600), Duration::from_secs(8760 * 3600));

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine;
    use kube::config::Kubeconfig;

    use super::*;
    use crate::clusters;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn jwt(claims: &str) -> String {
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    fn record() -> MemberRecord {
        MemberRecord {
            identity: "uid-1".into(),
            namespace: "kimup".into(),
            service_account: "kimup".into(),
            credential: "bound".into(),
        }
    }

    #[test]
    fn names_must_be_file_stems_and_secret_keys() {
        for ok in ["prod", "eu-west-1", "a.b_c", "x"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "arn:aws:eks:eu-west-1:1:cluster/prod",
            "gke_p_z_c x",
            &"a".repeat(201),
        ] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.contains("--name"), "{e}");
        }
    }

    #[test]
    fn kubeconfig_holds_the_token_and_nothing_else_of_the_admin() {
        let entry = ClusterEntry {
            server: "https://10.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
            tls_server_name: Some("kubernetes".into()),
            proxy_url: None,
        };
        let text = member_kubeconfig("prod", &entry, "tok.en.x", &record());
        assert_eq!(
            text,
            member_kubeconfig("prod", &entry, "tok.en.x", &record()),
            "deterministic"
        );
        let kc = Kubeconfig::from_yaml(&text).expect("kube reads it");
        assert_eq!(kc.current_context.as_deref(), Some("prod"));
        let members = clusters::members_of(Path::new("/k/prod.yaml"), &text, Ok(kc), false);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, "prod");
        assert!(members[0].source.is_ok(), "kimup run accepts it");
        for absent in ["client-key", "client-certificate", "exec", "insecure"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        let stored = read_stored(&text);
        assert_eq!(stored.record, Some(record()));
        assert_eq!(stored.token.as_deref(), Some("tok.en.x"));
        assert_eq!(stored.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(text.contains("tls-server-name: kubernetes"));
        assert_eq!(read_stored("{{{"), Stored::default());
        // A kubeconfig written by hand: no record.
        let plain =
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://h'}}]\n";
        assert_eq!(read_stored(plain).record, None);
    }

    #[test]
    fn token_kept_while_more_than_half_is_left() {
        let user = service_account_user("kimup");
        let now = DateTime::from_timestamp(1_000_000, 0).expect("t");
        let bound = jwt(&format!(r#"{{"sub":"{user}","iat":990000,"exp":1090000}}"#));
        assert!(matches!(
            plan_token(Some(&bound), &user, false, false, now),
            TokenPlan::Keep(_)
        ));
        assert!(matches!(
            plan_token(Some(&bound), &user, false, true, now),
            TokenPlan::Mint(w) if w == "--rotate"
        ));
        let late = DateTime::from_timestamp(1_050_000, 0).expect("t");
        assert!(matches!(
            plan_token(Some(&bound), &user, false, false, late),
            TokenPlan::Mint(w) if w.contains("under half")
        ));
        assert!(matches!(
            plan_token(
                Some(&bound),
                &service_account_user("other"),
                false,
                false,
                now
            ),
            TokenPlan::Mint(_)
        ));
        assert!(matches!(
            plan_token(None, &user, false, false, now),
            TokenPlan::Mint(_)
        ));
        assert!(matches!(
            plan_token(Some(&bound), &user, true, false, now),
            TokenPlan::Mint(w) if w.contains("long-lived")
        ));
        let legacy = jwt(&format!(r#"{{"sub":"{user}"}}"#));
        assert!(matches!(
            plan_token(Some(&legacy), &user, true, false, now),
            TokenPlan::Keep(_)
        ));
        assert!(matches!(
            plan_token(Some(&legacy), &user, false, false, now),
            TokenPlan::Mint(w) if w.contains("bound")
        ));
        assert!(matches!(
            plan_token(Some("not-a-jwt"), &user, false, false, now),
            TokenPlan::Mint(_)
        ));
    }

    #[test]
    fn a_capped_lifetime_is_told() {
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(capped_note(week, week), None);
        assert_eq!(capped_note(week, week - Duration::from_secs(30)), None);
        let note = capped_note(week, Duration::from_secs(3600)).expect("capped");
        assert!(note.contains("capped the 7d asked for at 1h"), "{note}");
    }

    #[test]
    fn only_labelled_objects_are_kimups() {
        assert_eq!(owned(Some(&labels())), Ok(()));
        let helm = BTreeMap::from([(MANAGED_BY.0.to_string(), "Helm".to_string())]);
        assert!(owned(Some(&helm)).expect_err("helm's").contains("Helm"));
        assert!(owned(None).is_err());
        assert!(owned(Some(&BTreeMap::new())).is_err());
    }

    #[test]
    fn the_cluster_role_is_the_rule_set() {
        let role = cluster_role();
        assert_eq!(role.rules, Some(rbac::policy_rules()));
        assert_eq!(role.metadata.name.as_deref(), Some(CLUSTER_ROLE));
        let binding = cluster_role_binding("ops");
        let subject = &binding.subjects.expect("subjects")[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("kimup", Some("ops"))
        );
        assert_eq!(binding.role_ref.name, CLUSTER_ROLE);
    }
}
