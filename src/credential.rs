//! Member credentials and their expiry: what a kubeconfig authenticates with, when that stops
//! working, and when to warn about it or replace it (pure). Bearer tokens are JWTs whose claims
//! are read without verifying the signature: the API server verifies them, kimup only needs to
//! know the dates it announces. Nothing here ever returns or formats a token.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use kube::config::Kubeconfig;
use secrecy::ExposeSecret;

/// What a member's kubeconfig authenticates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token; `expiry` is None for a token that does not expire (a ServiceAccount
    /// token Secret) or is not a JWT.
    Token {
        /// When it expires, if it says.
        expiry: Option<Expiry>,
        /// The JWT subject (`system:serviceaccount:NS:NAME` for ServiceAccount tokens).
        subject: Option<String>,
    },
    /// A client certificate; `expiry` from its validity period when it parses.
    ClientCertificate {
        /// When it expires, if its certificate could be read.
        expiry: Option<Expiry>,
    },
    /// An exec or auth-provider plugin, a token file or a username and password: nothing kimup
    /// can date.
    Other {
        /// Which.
        what: String,
    },
    /// No user, or a user without credentials.
    None,
}

impl Credential {
    /// The expiry, when it is known.
    pub fn expiry(&self) -> Option<&Expiry> {
        match self {
            Credential::Token { expiry, .. } | Credential::ClientCertificate { expiry } => {
                expiry.as_ref()
            }
            _ => None,
        }
    }

    /// A short description for tables: `token`, `token (no expiry)`, `client certificate`.
    pub fn describe(&self) -> String {
        match self {
            Credential::Token {
                expiry: Some(_), ..
            } => "token".into(),
            Credential::Token { expiry: None, .. } => "token (no expiry)".into(),
            Credential::ClientCertificate { .. } => "client certificate".into(),
            Credential::Other { what } => what.clone(),
            Credential::None => "none".into(),
        }
    }
}

/// When a credential stops working, and since when it works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// Not valid after.
    pub expires: DateTime<Utc>,
    /// Issued at (JWT `iat`, else `nbf`; a certificate's notBefore), when known.
    pub issued: Option<DateTime<Utc>>,
}

impl Expiry {
    /// The whole validity period, when the issue time is known and before the expiry.
    pub fn lifetime(&self) -> Option<Duration> {
        self.issued
            .and_then(|i| (self.expires - i).to_std().ok())
            .filter(|d| !d.is_zero())
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.expires - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// The claims of a JWT that date it (and its subject).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the epoch.
    pub exp: Option<i64>,
    /// Issued at.
    pub iat: Option<i64>,
    /// Not before.
    pub nbf: Option<i64>,
    /// Subject.
    pub sub: Option<String>,
}

/// Reads a JWT's claims without verifying it: None when `token` is not a JWT.
pub fn jwt_claims(token: &str) -> Option<Claims> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    // base64url without padding, as JWTs are; tolerate padding anyway.
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn at(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

/// The expiry a JWT announces, if any.
pub fn token_expiry(token: &str) -> Option<Expiry> {
    let c = jwt_claims(token)?;
    Some(Expiry {
        expires: at(c.exp)?,
        issued: at(c.iat).or(at(c.nbf)),
    })
}

/// The validity period of a PEM (or DER) certificate, when it parses.
pub fn certificate_expiry(cert: &[u8]) -> Option<Expiry> {
    let der = match x509_parser::pem::parse_x509_pem(cert) {
        Ok((_, pem)) => pem.contents,
        Err(_) => cert.to_vec(),
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&der).ok()?;
    let validity = x509.validity();
    Some(Expiry {
        expires: DateTime::from_timestamp(validity.not_after.timestamp(), 0)?,
        issued: DateTime::from_timestamp(validity.not_before.timestamp(), 0),
    })
}

/// What the user of `context` authenticates with (reads nothing but `kc`).
pub fn of_kubeconfig(kc: &Kubeconfig, context: &str) -> Credential {
    let Some(user) = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
    else {
        return Credential::None;
    };
    let Some(auth) = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
    else {
        return Credential::None;
    };
    if auth.exec.is_some() {
        return Credential::Other {
            what: "exec plugin".into(),
        };
    }
    if auth.auth_provider.is_some() {
        return Credential::Other {
            what: "auth-provider plugin".into(),
        };
    }
    if let Some(token) = &auth.token {
        let token = token.expose_secret();
        return Credential::Token {
            expiry: token_expiry(token),
            subject: jwt_claims(token).and_then(|c| c.sub),
        };
    }
    if auth.token_file.is_some() {
        return Credential::Other {
            what: "token file".into(),
        };
    }
    if let Some(data) = &auth.client_certificate_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .unwrap_or_default();
        return Credential::ClientCertificate {
            expiry: certificate_expiry(&pem),
        };
    }
    if auth.client_certificate.is_some() {
        return Credential::ClientCertificate { expiry: None };
    }
    if auth.username.is_some() {
        return Credential::Other {
            what: "username and password".into(),
        };
    }
    Credential::None
}

/// Share of its lifetime under which a credential is announced as expiring: a 7-day token warns
/// 33.6 hours ahead, a 1-hour one 12 minutes ahead.
pub const WARN_BELOW_FRACTION: f64 = 0.2;
/// Warning window of a credential whose issue time is unknown.
pub const WARN_WITHOUT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Share of its lifetime a token must keep for `kimup cluster add` to keep it: above half, a
/// re-run on any schedule shorter than half the lifetime never lets a warning fire.
pub const KEEP_ABOVE_FRACTION: f64 = 0.5;

/// How close a credential is to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// More than the warning window left.
    Fresh,
    /// Inside the warning window.
    Expiring {
        /// Time left.
        remaining: Duration,
    },
    /// Past its expiry.
    Expired,
}

/// Whether `expiry` deserves a warning at `now`: under [`WARN_BELOW_FRACTION`] of its lifetime
/// left, or [`WARN_WITHOUT_LIFETIME`] when the lifetime is unknown.
pub fn freshness(expiry: &Expiry, now: DateTime<Utc>) -> Freshness {
    if now >= expiry.expires {
        return Freshness::Expired;
    }
    let remaining = expiry.remaining(now);
    let window = expiry
        .lifetime()
        .map(|l| l.mul_f64(WARN_BELOW_FRACTION))
        .unwrap_or(WARN_WITHOUT_LIFETIME);
    if remaining < window {
        Freshness::Expiring { remaining }
    } else {
        Freshness::Fresh
    }
}

/// The warning for a member credential at `now`, if it needs one (never containing the token).
pub fn warning(expiry: &Expiry, now: DateTime<Utc>) -> Option<String> {
    let when = expiry
        .expires
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match freshness(expiry, now) {
        Freshness::Fresh => None,
        Freshness::Expiring { remaining } => Some(format!(
            "credential expires at {when} (in {}): refresh it with `kimup cluster add`",
            human(remaining)
        )),
        Freshness::Expired => Some(format!(
            "credential expired at {when}: refresh it with `kimup cluster add`"
        )),
    }
}

/// Whether `kimup cluster add` keeps a token rather than minting a new one: it still has more
/// than [`KEEP_ABOVE_FRACTION`] of its lifetime left (a token without a known lifetime is
/// replaced, as nothing says how long it lasts).
pub fn keep_token(expiry: &Expiry, now: DateTime<Utc>) -> bool {
    match expiry.lifetime() {
        Some(lifetime) => expiry.remaining(now) > lifetime.mul_f64(KEEP_ABOVE_FRACTION),
        None => false,
    }
}

/// `3d4h`, `5h12m`, `7m`, `42s`: a duration as an operator reads it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(claims)
        )
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("time")
    }

    #[test]
    fn jwt_dates_are_read_without_verifying() {
        let token = jwt(
            r#"{"aud":["https://k"],"exp":1700086400,"iat":1700000000,"sub":"system:serviceaccount:kimup:kimup"}"#,
        );
        let e = token_expiry(&token).expect("expiry");
        assert_eq!(e.expires, t(1_700_086_400));
        assert_eq!(e.issued, Some(t(1_700_000_000)));
        assert_eq!(e.lifetime(), Some(Duration::from_secs(86_400)));
        assert_eq!(
            jwt_claims(&token).and_then(|c| c.sub).as_deref(),
            Some("system:serviceaccount:kimup:kimup")
        );
        // A legacy ServiceAccount token: no exp.
        assert_eq!(token_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        // nbf stands in for iat.
        let e = token_expiry(&jwt(r#"{"exp":200,"nbf":100}"#)).expect("expiry");
        assert_eq!(e.lifetime(), Some(Duration::from_secs(100)));
        for garbage in [
            "",
            "abc",
            "a.b",
            "a.%%%.c",
            "a.b.c.d",
            &format!("x.{}.y", b64("[1]")),
        ] {
            assert_eq!(jwt_claims(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn warnings_come_at_a_fifth_of_the_lifetime() {
        let day = Expiry {
            expires: t(86_400),
            issued: Some(t(0)),
        };
        assert_eq!(freshness(&day, t(60_000)), Freshness::Fresh);
        // 20% of a day is 4.8 h = 17,280 s.
        assert_eq!(freshness(&day, t(86_400 - 17_281)), Freshness::Fresh);
        assert_eq!(
            freshness(&day, t(86_400 - 17_279)),
            Freshness::Expiring {
                remaining: Duration::from_secs(17_279)
            }
        );
        assert_eq!(freshness(&day, t(86_400)), Freshness::Expired);
        let w = warning(&day, t(86_400 - 3600)).expect("warning");
        assert!(
            w.contains("1970-01-02T00:00:00Z") && w.contains("in 1h)"),
            "{w}"
        );
        assert!(warning(&day, t(90_000)).expect("w").contains("expired"));
        assert_eq!(warning(&day, t(0)), None);
        // Unknown lifetime: a day's notice.
        let unknown = Expiry {
            expires: t(200_000),
            issued: None,
        };
        assert_eq!(freshness(&unknown, t(100_000)), Freshness::Fresh);
        assert!(matches!(
            freshness(&unknown, t(200_000 - 3600)),
            Freshness::Expiring { .. }
        ));
    }

    #[test]
    fn tokens_are_kept_above_half_their_lifetime() {
        let day = Expiry {
            expires: t(86_400),
            issued: Some(t(0)),
        };
        assert!(keep_token(&day, t(0)));
        assert!(keep_token(&day, t(43_199)));
        assert!(!keep_token(&day, t(43_200)));
        assert!(!keep_token(&day, t(100_000)));
        let unknown = Expiry {
            expires: t(86_400),
            issued: None,
        };
        assert!(!keep_token(&unknown, t(0)));
    }

    #[test]
    fn kubeconfig_credentials_are_told_apart() {
        let token = jwt(r#"{"exp":2000000000,"iat":1990000000,"sub":"system:serviceaccount:a:b"}"#);
        let kc = |user: &str| {
            Kubeconfig::from_yaml(&format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://h'}}}}]\n\
                 users: [{{name: u, user: {user}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n"
            ))
            .expect("kubeconfig")
        };
        let c = of_kubeconfig(&kc(&format!("{{token: {token}}}")), "x");
        assert_eq!(
            c.expiry().map(|e| e.expires),
            DateTime::from_timestamp(2_000_000_000, 0)
        );
        assert_eq!(c.describe(), "token");
        assert!(!format!("{c:?}").contains(&token), "never the token");
        assert_eq!(
            of_kubeconfig(&kc("{token: opaque}"), "x").describe(),
            "token (no expiry)"
        );
        assert_eq!(
            of_kubeconfig(
                &kc("{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}"),
                "x"
            )
            .describe(),
            "exec plugin"
        );
        assert_eq!(of_kubeconfig(&kc("{}"), "x"), Credential::None);
        assert_eq!(of_kubeconfig(&kc("{}"), "missing"), Credential::None);
        assert_eq!(
            of_kubeconfig(&kc("{client-certificate-data: bm9wZQ==}"), "x"),
            Credential::ClientCertificate { expiry: None }
        );
    }

    #[test]
    fn certificates_are_dated() {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let e = certificate_expiry(cert.pem().as_bytes()).expect("expiry");
        assert_eq!(e.expires.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(e.lifetime(), Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(certificate_expiry(b"not a certificate"), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(7 * 60)), "7m");
        assert_eq!(human(Duration::from_secs(5 * 3600 + 12 * 60)), "5h12m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(7 * 86_400)), "7d");
    }
}
