//! Registry webhook payloads: which repositories were pushed (pure parsers, one per source).

use serde_json::Value;

/// A push a registry told us about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoEvent {
    /// Registry host[:port], normalised like image references; None when the payload omits it.
    pub registry: Option<String>,
    /// Repository path, e.g. `team/app` or `library/nginx`.
    pub repository: String,
    /// Tag pushed, when the payload names one.
    pub tag: Option<String>,
}

/// Payload sources, as in `/webhooks/{source}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `{"repository": "host/repo", "tag": "..."}` or `{"image": "host/repo:tag"}`.
    Generic,
    /// Docker Hub repository webhooks.
    DockerHub,
    /// Harbor webhook policies (`PUSH_ARTIFACT`).
    Harbor,
    /// CNCF distribution notifications (Debian's docker-registry, Zot, ...).
    Distribution,
    /// GitHub `package` events for container packages (ghcr.io).
    Ghcr,
    /// Quay repository notifications.
    Quay,
}

impl std::str::FromStr for Source {
    type Err = WebhookError;

    fn from_str(s: &str) -> Result<Self, WebhookError> {
        Ok(match s {
            "generic" => Source::Generic,
            "dockerhub" => Source::DockerHub,
            "harbor" => Source::Harbor,
            "distribution" => Source::Distribution,
            "ghcr" => Source::Ghcr,
            "quay" => Source::Quay,
            other => return Err(WebhookError::UnknownSource(other.to_string())),
        })
    }
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Not one of the supported sources.
    #[error(
        "unknown webhook source {0:?}; use generic, dockerhub, harbor, distribution, ghcr or quay"
    )]
    UnknownSource(String),
    /// The body is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// JSON without the fields this source sends.
    #[error("payload lacks {0}")]
    Missing(&'static str),
    /// A repository that is not a valid reference.
    #[error("invalid repository {0:?}")]
    InvalidRepository(String),
}

impl WebhookError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::UnknownSource(_) => "unknown_source",
            WebhookError::NotJson(_) => "not_json",
            WebhookError::Missing(_) => "missing_field",
            WebhookError::InvalidRepository(_) => "invalid_repository",
        }
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// A full reference (`host/repo[:tag]`) as an event, normalised like image references.
fn from_reference(reference: &str, tag: Option<&str>) -> Result<RepoEvent, WebhookError> {
    let r = crate::registry::reference::parse(reference)
        .map_err(|_| WebhookError::InvalidRepository(reference.to_string()))?;
    Ok(RepoEvent {
        registry: Some(r.registry),
        repository: r.repository,
        tag: tag.map(str::to_string).or(r.tag),
    })
}

/// The pushes a payload reports (pure). Events that are not pushes yield nothing.
pub fn parse(source: Source, body: &[u8]) -> Result<Vec<RepoEvent>, WebhookError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::NotJson(e.to_string()))?;
    match source {
        Source::Generic => {
            let reference = str_at(&v, &["repository"])
                .or_else(|| str_at(&v, &["image"]))
                .ok_or(WebhookError::Missing("repository"))?;
            Ok(vec![from_reference(reference, str_at(&v, &["tag"]))?])
        }
        Source::DockerHub => {
            let repo = str_at(&v, &["repository", "repo_name"])
                .ok_or(WebhookError::Missing("repository.repo_name"))?;
            Ok(vec![from_reference(
                repo,
                str_at(&v, &["push_data", "tag"]),
            )?])
        }
        Source::Harbor => {
            if str_at(&v, &["type"]).is_some_and(|t| t != "PUSH_ARTIFACT" && t != "pushImage") {
                return Ok(Vec::new());
            }
            let resources = v["event_data"]["resources"]
                .as_array()
                .ok_or(WebhookError::Missing("event_data.resources"))?;
            resources
                .iter()
                .filter_map(|r| str_at(r, &["resource_url"]))
                .map(|url| from_reference(url, None))
                .collect()
        }
        Source::Distribution => {
            let events = v["events"]
                .as_array()
                .ok_or(WebhookError::Missing("events"))?;
            let mut out = Vec::new();
            for e in events {
                if str_at(e, &["action"]) != Some("push") {
                    continue;
                }
                // A push sends one event per blob before the manifest's; only a manifest (or a
                // tag) changes the tag list.
                let media_type = str_at(e, &["target", "mediaType"]).unwrap_or("");
                let is_manifest =
                    media_type.contains("manifest") || media_type.contains("image.index");
                if !is_manifest && str_at(e, &["target", "tag"]).is_none() {
                    continue;
                }
                let Some(repo) = str_at(e, &["target", "repository"]) else {
                    continue;
                };
                let host = str_at(e, &["request", "host"]);
                let reference = match host {
                    Some(h) => format!("{h}/{repo}"),
                    None => repo.to_string(),
                };
                let mut ev = from_reference(&reference, str_at(e, &["target", "tag"]))?;
                if host.is_none() {
                    ev.registry = None;
                }
                out.push(ev);
            }
            Ok(out)
        }
        Source::Ghcr => {
            let pkg = &v["package"];
            if str_at(pkg, &["package_type"]).is_some_and(|t| !t.eq_ignore_ascii_case("container"))
            {
                return Ok(Vec::new());
            }
            let owner = str_at(pkg, &["namespace"])
                .or_else(|| str_at(pkg, &["owner", "login"]))
                .ok_or(WebhookError::Missing("package.namespace"))?;
            let name = str_at(pkg, &["name"]).ok_or(WebhookError::Missing("package.name"))?;
            let tag = str_at(
                pkg,
                &["package_version", "container_metadata", "tag", "name"],
            );
            // GHCR repositories are lower-case even when the GitHub owner is not.
            let reference = format!("ghcr.io/{}/{}", owner.to_lowercase(), name.to_lowercase());
            Ok(vec![from_reference(&reference, tag)?])
        }
        Source::Quay => {
            let url = str_at(&v, &["docker_url"]).ok_or(WebhookError::Missing("docker_url"))?;
            let tags: Vec<&str> = v["updated_tags"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if tags.is_empty() {
                return Ok(vec![from_reference(url, None)?]);
            }
            tags.into_iter()
                .map(|t| from_reference(url, Some(t)))
                .collect()
        }
    }
}

/// Whether an Image's repository is the one an event names (the registry must agree when the
/// event names one).
pub fn matches(event: &RepoEvent, image: &crate::registry::ImageRef) -> bool {
    event.repository == image.repository
        && event
            .registry
            .as_deref()
            .is_none_or(|r| r == image.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(registry: Option<&str>, repository: &str, tag: Option<&str>) -> RepoEvent {
        RepoEvent {
            registry: registry.map(str::to_string),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn distribution_pushes() {
        let body = br#"{"events":[
          {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"1.2.0","url":"http://127.0.0.1:5000/v2/team/app/manifests/sha256:ab"},"request":{"host":"127.0.0.1:5000","method":"PUT"}},
          {"action":"pull","target":{"repository":"team/app"},"request":{"host":"127.0.0.1:5000"}},
          {"action":"push","target":{"mediaType":"application/octet-stream","repository":"team/app","digest":"sha256:ef"},"request":{"host":"127.0.0.1:5000"}},
          {"action":"push","target":{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"team/app","digest":"sha256:cd"},"request":{"host":"127.0.0.1:5000"}}
        ]}"#;
        assert_eq!(
            parse(Source::Distribution, body).expect("parse"),
            vec![
                ev(Some("127.0.0.1:5000"), "team/app", Some("1.2.0")),
                ev(Some("127.0.0.1:5000"), "team/app", None)
            ]
        );
    }

    #[test]
    fn docker_hub_harbor_ghcr_quay_generic() {
        let hub = br#"{"push_data":{"tag":"1.27","pusher":"x"},"repository":{"repo_name":"nginx","namespace":"library"}}"#;
        assert_eq!(
            parse(Source::DockerHub, hub).expect("hub"),
            vec![ev(Some("docker.io"), "library/nginx", Some("1.27"))]
        );
        let harbor = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"tag":"v1","resource_url":"harbor.example.com/proj/app:v1"}],"repository":{"repo_full_name":"proj/app"}}}"#;
        assert_eq!(
            parse(Source::Harbor, harbor).expect("harbor"),
            vec![ev(Some("harbor.example.com"), "proj/app", Some("v1"))]
        );
        let harbor_delete = br#"{"type":"DELETE_ARTIFACT","event_data":{"resources":[]}}"#;
        assert_eq!(
            parse(Source::Harbor, harbor_delete).expect("harbor"),
            vec![]
        );
        let ghcr = br#"{"action":"published","package":{"name":"Web","namespace":"Acme","package_type":"CONTAINER","package_version":{"container_metadata":{"tag":{"name":"v2.0.0"}}}}}"#;
        assert_eq!(
            parse(Source::Ghcr, ghcr).expect("ghcr"),
            vec![ev(Some("ghcr.io"), "acme/web", Some("v2.0.0"))]
        );
        let npm = br#"{"package":{"name":"x","namespace":"y","package_type":"npm"}}"#;
        assert_eq!(parse(Source::Ghcr, npm).expect("npm"), vec![]);
        let quay = br#"{"repository":"org/app","docker_url":"quay.io/org/app","updated_tags":["1.0","latest"]}"#;
        assert_eq!(
            parse(Source::Quay, quay).expect("quay"),
            vec![
                ev(Some("quay.io"), "org/app", Some("1.0")),
                ev(Some("quay.io"), "org/app", Some("latest"))
            ]
        );
        let generic = br#"{"repository":"registry.local:5000/team/app","tag":"3"}"#;
        assert_eq!(
            parse(Source::Generic, generic).expect("generic"),
            vec![ev(Some("registry.local:5000"), "team/app", Some("3"))]
        );
        assert_eq!(
            parse(Source::Generic, br#"{"image":"alpine:3.20"}"#).expect("image"),
            vec![ev(Some("docker.io"), "library/alpine", Some("3.20"))]
        );
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert!(matches!(
            parse(Source::Generic, b"not json"),
            Err(WebhookError::NotJson(_))
        ));
        assert_eq!(
            parse(Source::Generic, b"{}"),
            Err(WebhookError::Missing("repository"))
        );
        assert_eq!(
            parse(Source::Distribution, b"{}"),
            Err(WebhookError::Missing("events"))
        );
        assert_eq!(
            parse(Source::Generic, br#"{"repository":"UPPER/case"}"#),
            Err(WebhookError::InvalidRepository("UPPER/case".into()))
        );
        assert!("gitlab".parse::<Source>().is_err());
        assert_eq!("quay".parse::<Source>(), Ok(Source::Quay));
    }

    #[test]
    fn matching_needs_the_same_repository_and_registry() {
        let image = crate::registry::reference::parse("127.0.0.1:5000/team/app").expect("ref");
        assert!(matches(
            &ev(Some("127.0.0.1:5000"), "team/app", None),
            &image
        ));
        assert!(matches(&ev(None, "team/app", None), &image));
        assert!(!matches(&ev(Some("other:5000"), "team/app", None), &image));
        assert!(!matches(
            &ev(Some("127.0.0.1:5000"), "team/other", None),
            &image
        ));
    }
}
