//! `kimup cluster add | list | remove`: onboarding member clusters with least privilege.
//!
//! `add` runs with an administrator's kubeconfig (exec plugins welcome: they run on the
//! administrator's machine) and leaves in the member exactly what kimup needs: its CRDs, a
//! namespace, a ServiceAccount bound to the rule set of [`crate::rbac`], and a credential of that
//! ServiceAccount, written as a kubeconfig with inline data where `kimup run` reads member
//! kubeconfigs (a folder, or the Secret the chart mounts as that folder). Decisions (names,
//! kubeconfig text, whether to keep a token, who owns an object) are pure functions with unit
//! tests in `member`; where kubeconfigs are stored is `store`; the API calls are here.
//!
//! Tokens never reach a message: errors name objects and servers, never credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clusters::{self, KubeTimeouts};
use crate::credential;
use crate::rbac;
use crate::run::{parse_duration, with_causes};

mod member;
mod store;

pub use member::*;
use member::{TOKEN_TTL_RANGE, meta};
use store::Store;
pub use store::{Entry, write_atomically};

/// ServiceAccount kimup runs as in every member.
pub const SERVICE_ACCOUNT: &str = "kimup";
/// ClusterRole and ClusterRoleBinding of that ServiceAccount (not `kimup`, which is the chart's
/// in the home cluster, which may be a member too).
pub const CLUSTER_ROLE: &str = "kimup-member";
/// The ServiceAccount token Secret of `--long-lived`.
pub const TOKEN_SECRET: &str = "kimup-token";
/// Label on every object `kimup cluster add` creates; `remove --purge` deletes only those.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kimup");
/// Field manager of the server-side applies.
const FIELD_MANAGER: &str = "kimup-cluster-add";
/// Name of the kubeconfig cluster extension recording what `add` made (offline duplicate checks,
/// `remove --purge`).
pub const EXTENSION: &str = "kimup.cloudavenue.io/member";

/// `kimup cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Make a cluster a member: CRDs, a ServiceAccount with kimup's rules, a credential, and its
    /// kubeconfig where kimup reads them. Run with an administrator's kubeconfig.
    Add(Box<AddArgs>),
    /// Show every member: reachable, CRDs, RBAC, credential expiry, Images.
    List(ListArgs),
    /// Stop serving a member (its kubeconfig); `--purge` also deletes what `add` created in it.
    Remove(RemoveArgs),
}

/// Where member kubeconfigs live: what `kimup run --kubeconfig-dir` reads.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Folder of member kubeconfigs (`kimup run --kubeconfig-dir`).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "secret",
        required_unless_present = "secret"
    )]
    pub kubeconfig_dir: Option<PathBuf>,
    /// Secret of member kubeconfigs in the home cluster, as NAMESPACE/NAME (the chart's
    /// `clusters.kubeconfigSecret`, mounted as the folder).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub secret: Option<String>,
    /// Kubeconfig of the home cluster holding `--secret` (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE", requires = "secret")]
    pub home_kubeconfig: Option<PathBuf>,
    /// Context of `--home-kubeconfig` (default: its current context).
    #[arg(long, requires = "secret")]
    pub home_context: Option<String>,
}

/// Flags of `kimup cluster add`.
#[derive(Clone, Debug, clap::Args)]
pub struct AddArgs {
    /// Context of the administrator's kubeconfig that reaches the new member.
    #[arg(required_unless_present = "context_flag", value_name = "CONTEXT")]
    pub context: Option<String>,
    /// The same, as kubectl spells it.
    #[arg(long = "context", value_name = "CONTEXT", conflicts_with = "context")]
    pub context_flag: Option<String>,
    /// The administrator's kubeconfig (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Member name: its kubeconfig file is NAME.yaml (default: the context's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of kimup's ServiceAccount in the member.
    #[arg(long, default_value = "kimup")]
    pub namespace: String,
    /// Leave the CRDs alone (they are installed or upgraded otherwise).
    #[arg(long)]
    pub skip_crds: bool,
    /// Lifetime asked for the bound token (the API server may cap it; the real expiry is read
    /// back). Between 10m and 8760h.
    #[arg(long, default_value = "168h", value_parser = parse_duration, conflicts_with = "long_lived")]
    pub token_ttl: Duration,
    /// A ServiceAccount token Secret instead: never expires, valid until the Secret is deleted.
    #[arg(long)]
    pub long_lived: bool,
    /// Mint a new credential even when the current one is still good.
    #[arg(long)]
    pub rotate: bool,
    /// Where member kubeconfigs live.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Output format of `kimup cluster list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, then one note per problem.
    Table,
    /// One JSON array.
    Json,
}

/// Flags of `kimup cluster list`.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// Where member kubeconfigs live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Flags of `kimup cluster remove`.
#[derive(Clone, Debug, clap::Args)]
pub struct RemoveArgs {
    /// Member name (its kubeconfig's file stem).
    pub name: String,
    /// Also delete the ServiceAccount, ClusterRoleBinding, ClusterRole and token Secret that
    /// `add` created in the member (labelled managed-by kimup), which revokes its credential.
    /// Needs `--context`. CRDs and Images are never deleted.
    #[arg(long, requires = "context")]
    pub purge: bool,
    /// Context of the administrator's kubeconfig reaching the member (for `--purge`).
    #[arg(long)]
    pub context: Option<String>,
    /// The administrator's kubeconfig (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of kimup's ServiceAccount, when the member's kubeconfig does not record it.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Where member kubeconfigs live.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Why a cluster command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something impossible or inconsistent (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A kubeconfig named on the command line cannot be used (exit 2).
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The cluster is a member already, under another name (exit 2).
    #[error(
        "this cluster (kube-system UID {identity}) is already a member as {existing} ({location}); \
         re-run with --name {existing} to refresh it, or remove {existing} first"
    )]
    Duplicate {
        /// The member reaching the same cluster.
        existing: String,
        /// Its kubeconfig file or Secret key.
        location: String,
        /// The cluster's identity.
        identity: String,
    },
    /// A cluster refused or failed a request, or could not be reached (exit 1).
    #[error("{what}: {reason}")]
    Cluster {
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// Reading or writing the member kubeconfigs failed (exit 1).
    #[error("{0}")]
    Store(String),
}

impl Error {
    /// The process exit code: 2 for usage errors, 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Kubeconfig { .. } | Error::Duplicate { .. } => 2,
            Error::Cluster { .. } | Error::Store(_) => 1,
        }
    }
}

/// A kube error in the words an operator needs, never with a credential (pure).
pub fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 401 => {
            format!("credentials refused (401): {}", s.message)
        }
        kube::Error::Api(s) if s.code == 403 => {
            format!("permission denied (403): {}", s.message)
        }
        kube::Error::Api(s) => format!("API server answered {}: {}", s.code, s.message),
        other => format!("unreachable: {}", with_causes(other)),
    }
}

fn cluster_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |e| Error::Cluster {
        what,
        reason: api_reason(&e),
    }
}

/// Runs a cluster command, printing its report on stdout; the exit code.
pub async fn main(cmd: ClusterCommand) -> u8 {
    let result = match cmd {
        ClusterCommand::Add(args) => add(&args).await,
        ClusterCommand::List(args) => list(&args).await,
        ClusterCommand::Remove(args) => remove(&args).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubeconfigs and clients

/// Reads the administrator's kubeconfig: a file, else $KUBECONFIG or ~/.kube/config.
fn admin_kubeconfig(path: Option<&Path>) -> Result<(Kubeconfig, String), Error> {
    match path {
        Some(p) => Kubeconfig::read_from(p)
            .map(|k| (k, p.display().to_string()))
            .map_err(|e| Error::Kubeconfig {
                path: p.display().to_string(),
                reason: e.to_string(),
            }),
        None => Kubeconfig::read()
            .map(|k| (k, "$KUBECONFIG or ~/.kube/config".to_string()))
            .map_err(|e| Error::Kubeconfig {
                path: "$KUBECONFIG or ~/.kube/config".into(),
                reason: e.to_string(),
            }),
    }
}

/// A client of `context` (the current one when None), checking that it exists.
async fn client_of(
    kc: &Kubeconfig,
    described: &str,
    context: Option<&str>,
) -> Result<(Client, kube::Config), Error> {
    if let Some(ctx) = context
        && !kc.contexts.iter().any(|c| c.name == ctx)
    {
        let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "context {ctx:?} is not in {described} (contexts: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    let opts = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
        .await
        .map_err(|e| Error::Kubeconfig {
            path: described.to_string(),
            reason: e.to_string(),
        })?;
    let client =
        clusters::kube_client(config.clone(), KubeTimeouts::default()).map_err(|reason| {
            Error::Kubeconfig {
                path: described.to_string(),
                reason,
            }
        })?;
    Ok((client, config))
}

/// The cluster entry of `context` in the administrator's kubeconfig, CA inlined from its data or
/// its file; None for the CA when the kubeconfig trusts the system's roots or skips TLS checks.
fn admin_cluster(kc: &Kubeconfig, context: &str) -> Result<(ClusterEntry, bool), Error> {
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| Error::Usage(format!("context {context:?} names no cluster")))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| Error::Usage(format!("cluster {cluster_name:?} has no server")))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(d.trim().to_string()),
        (None, Some(file)) => {
            let pem = std::fs::read(file).map_err(|e| Error::Kubeconfig {
                path: file.clone(),
                reason: format!("reading the CA of cluster {cluster_name:?}: {e}"),
            })?;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };
    let insecure = cluster.insecure_skip_tls_verify.unwrap_or(false);
    Ok((
        ClusterEntry {
            server,
            ca_data,
            tls_server_name: cluster.tls_server_name.clone(),
            proxy_url: cluster.proxy_url.clone(),
        },
        insecure,
    ))
}

/// The UID of `kube-system`: who the cluster is.
async fn identity(client: &Client, what: &str) -> Result<String, Error> {
    let ns = Api::<Namespace>::all(client.clone())
        .get_metadata("kube-system")
        .await
        .map_err(cluster_err(format!("reading the identity of {what}")))?;
    ns.metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::Cluster {
            what: format!("reading the identity of {what}"),
            reason: "namespace kube-system has no UID".into(),
        })
}

/// A client of a member kubeconfig text with short timeouts, never running plugins.
async fn member_client(text: &str) -> Result<Client, String> {
    clusters::check_expansion(text)?;
    let kc = Kubeconfig::from_yaml(text).map_err(|e| format!("invalid kubeconfig: {e}"))?;
    let context = kc
        .current_context
        .clone()
        .or_else(|| kc.contexts.first().map(|c| c.name.clone()))
        .ok_or("kubeconfig has no context")?;
    if let Some(why) = clusters::runs_code(&kc, &context) {
        return Err(format!("not contacted: {why}"));
    }
    let config = clusters::client_config(kc, &context).await?;
    clusters::kube_client(
        config,
        KubeTimeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(15),
        },
    )
}

/// Who the API server says the client is.
async fn whoami(client: &Client) -> Result<String, kube::Error> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// kimup cluster add

/// What happened to one object: printed one line each.
fn changed(before: Option<&str>, after: Option<&str>) -> &'static str {
    match (before, after) {
        (None, _) => "created",
        (Some(a), Some(b)) if a == b => "unchanged",
        _ => "updated",
    }
}

/// Server-side applies `obj` (named `name`), refusing to take over an object kimup did not
/// label; says whether it was created, updated or left unchanged.
async fn apply_owned<K>(api: &Api<K>, name: &str, obj: &K, what: &str) -> Result<String, Error>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Serialize,
{
    let existing = api
        .get_opt(name)
        .await
        .map_err(cluster_err(format!("reading {what}")))?;
    if let Some(e) = &existing
        && let Err(why) = owned(e.meta().labels.as_ref())
    {
        return Err(Error::Cluster {
            what: format!("{what} exists already"),
            reason: format!(
                "{why}; kimup does not take over objects it did not create (use another --namespace, or remove it)"
            ),
        });
    }
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(cluster_err(format!("applying {what}")))?;
    let before = existing.and_then(|e| e.meta().resource_version.clone());
    Ok(format!(
        "{what}: {}",
        changed(
            before.as_deref(),
            applied.meta().resource_version.as_deref()
        )
    ))
}

/// Installs or upgrades kimup's CRDs and waits until they are served.
async fn apply_crds(client: &Client) -> Result<Vec<String>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut lines = Vec::new();
    for crd in crate::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let what = format!("CRD {name}");
        let before = api
            .get_opt(&name)
            .await
            .map_err(cluster_err(format!("reading {what}")))?
            .and_then(|c| c.metadata.resource_version);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(cluster_err(format!("applying {what}")))?;
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(Duration::from_secs(60), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Cluster {
                    what: format!("waiting for {what}"),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Error::Cluster {
                    what: format!("waiting for {what}"),
                    reason: "not Established after 60 s".into(),
                });
            }
        }
        lines.push(format!(
            "{what}: {}",
            changed(
                before.as_deref(),
                applied.metadata.resource_version.as_deref()
            )
        ));
    }
    Ok(lines)
}

/// A bound token of the ServiceAccount from the TokenRequest API, with the expiry the API
/// server granted (it may cap the lifetime asked for).
async fn bound_token(
    client: &Client,
    namespace: &str,
    ttl: Duration,
) -> Result<(String, Option<DateTime<Utc>>), Error> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            // None: the API server's own audiences, which is what it checks requests against.
            audiences: None,
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(cluster_err(format!(
            "requesting a token for ServiceAccount {namespace}/{SERVICE_ACCOUNT}"
        )))?
        .status
        .ok_or_else(|| Error::Cluster {
            what: "requesting a token".into(),
            reason: "the API server answered without a token".into(),
        })?;
    let expires = status
        .expiration_timestamp
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Cluster {
            what: "requesting a token".into(),
            reason: "the API server answered without a token".into(),
        })?;
    Ok((token, expires))
}

/// How long the token controller may take to fill a token Secret.
const TOKEN_SECRET_WAIT: Duration = Duration::from_secs(30);

/// The ServiceAccount token Secret's token, creating the Secret (or a new one, on `rotate`) and
/// waiting for the token controller to fill it.
async fn long_lived_token(client: &Client, namespace: &str, rotate: bool) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("Secret {namespace}/{TOKEN_SECRET}");
    let existing = api
        .get_opt(TOKEN_SECRET)
        .await
        .map_err(cluster_err(format!("reading {what}")))?;
    if let Some(s) = &existing
        && let Err(why) = owned(s.metadata.labels.as_ref())
    {
        return Err(Error::Cluster {
            what: format!("{what} exists already"),
            reason: why,
        });
    }
    let token_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .filter(|t| !t.is_empty())
    };
    // A Secret made for a ServiceAccount since deleted and recreated holds a token the API
    // server refuses (the token names the old UID): replace it as a rotation would.
    let sa_uid = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_metadata(SERVICE_ACCOUNT)
        .await
        .map_err(cluster_err(format!(
            "reading ServiceAccount {namespace}/{SERVICE_ACCOUNT}"
        )))?
        .metadata
        .uid;
    let stale = existing.as_ref().is_some_and(|s| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.uid"))
            .is_some_and(|uid| Some(uid) != sa_uid.as_ref())
    });
    let rotate = rotate || stale;
    if rotate && existing.is_some() {
        // Deleting the Secret revokes its token.
        api.delete(TOKEN_SECRET, &DeleteParams::default())
            .await
            .map_err(cluster_err(format!("deleting {what} to rotate it")))?;
        let deadline = tokio::time::Instant::now() + TOKEN_SECRET_WAIT;
        while api
            .get_opt(TOKEN_SECRET)
            .await
            .map_err(cluster_err(format!("reading {what}")))?
            .is_some()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Cluster {
                    what: format!("rotating {what}"),
                    reason: "it was not deleted within 30 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else if let Some(token) = existing.as_ref().and_then(token_of) {
        return Ok(token);
    }
    if rotate || existing.is_none() {
        let mut m = meta(TOKEN_SECRET, Some(namespace));
        m.annotations = Some(BTreeMap::from([(
            "kubernetes.io/service-account.name".to_string(),
            SERVICE_ACCOUNT.to_string(),
        )]));
        let s = Secret {
            metadata: m,
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &s)
            .await
            .map_err(cluster_err(format!("creating {what}")))?;
    }
    let deadline = tokio::time::Instant::now() + TOKEN_SECRET_WAIT;
    loop {
        let s = api
            .get_opt(TOKEN_SECRET)
            .await
            .map_err(cluster_err(format!("reading {what}")))?;
        if let Some(token) = s.as_ref().and_then(token_of) {
            return Ok(token);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Cluster {
                what: format!("waiting for the token of {what}"),
                reason: "the token controller (kube-controller-manager) did not fill it within \
                         30 s; without it, use a bound token (drop --long-lived)"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes an object kimup labelled; says what happened. Objects it did not label stay.
async fn delete_owned<K>(api: &Api<K>, name: &str, what: &str) -> Result<String, Error>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    let Some(existing) = api
        .get_opt(name)
        .await
        .map_err(cluster_err(format!("reading {what}")))?
    else {
        return Ok(format!("{what}: absent"));
    };
    if let Err(why) = owned(existing.meta().labels.as_ref()) {
        return Ok(format!("{what}: kept ({why})"));
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(format!("{what}: deleted")),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(format!("{what}: absent")),
        Err(e) => Err(cluster_err(format!("deleting {what}"))(e)),
    }
}

/// The stored member named `name`, if any, after checking that no member under another name
/// reaches the cluster `id` (a duplicate, exit 2) and that `name` does not already name another
/// cluster. A member recorded by `add` says who it is; others are asked, with their own
/// credentials (never running a plugin), and one that cannot be asked is only warned about.
async fn member_named(store: &Store, name: &str, id: &str) -> Result<Option<Entry>, Error> {
    let mut same_name: Option<Entry> = None;
    for (other, e) in &store.entries().await? {
        let their_id = match read_stored(&e.text).record {
            Some(r) => Some(r.identity),
            None => {
                let asked = match member_client(&e.text).await {
                    Ok(c) => identity(&c, other).await.map_err(|err| err.to_string()),
                    Err(err) => Err(err),
                };
                asked
                    .inspect_err(|err| {
                        eprintln!(
                            "warning: cannot tell whether member {other} ({}) is this cluster: {err}",
                            e.location
                        )
                    })
                    .ok()
            }
        };
        if other == name {
            if let Some(theirs) = their_id
                && theirs != id
            {
                return Err(Error::Usage(format!(
                    "member {name} ({}) is another cluster (kube-system UID {theirs}): choose \
                     another --name, or remove {name} first",
                    e.location
                )));
            }
            same_name = Some(e.clone());
        } else if their_id.as_deref() == Some(id) {
            return Err(Error::Duplicate {
                existing: other.clone(),
                location: e.location.clone(),
                identity: id.to_string(),
            });
        }
    }
    Ok(same_name)
}

/// The namespace (created when missing, never taken over: it may hold other things), the
/// ServiceAccount, and the ClusterRole and its binding with the rule set; one report line each.
async fn apply_access(client: &Client, ns: &str) -> Result<Vec<String>, Error> {
    let mut lines = Vec::new();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_exists = namespaces
        .get_opt(ns)
        .await
        .map_err(cluster_err(format!("reading namespace {ns}")))?
        .is_some();
    if ns_exists {
        lines.push(format!("namespace {ns}: exists"));
    } else {
        let n = Namespace {
            metadata: meta(ns, None),
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &n)
            .await
            .map_err(cluster_err(format!("creating namespace {ns}")))?;
        lines.push(format!("namespace {ns}: created"));
    }
    let sa = ServiceAccount {
        metadata: meta(SERVICE_ACCOUNT, Some(ns)),
        ..Default::default()
    };
    let line = apply_owned(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        SERVICE_ACCOUNT,
        &sa,
        &format!("ServiceAccount {ns}/{SERVICE_ACCOUNT}"),
    )
    .await?;
    lines.push(line);
    let line = apply_owned(
        &Api::<ClusterRole>::all(client.clone()),
        CLUSTER_ROLE,
        &cluster_role(),
        &format!("ClusterRole {CLUSTER_ROLE}"),
    )
    .await?;
    lines.push(line);
    let line = apply_owned(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        CLUSTER_ROLE,
        &cluster_role_binding(ns),
        &format!("ClusterRoleBinding {CLUSTER_ROLE}"),
    )
    .await?;
    lines.push(line);
    Ok(lines)
}

/// The cluster's root CA (base64 PEM) from the `kube-root-ca.crt` ConfigMap that
/// kube-controller-manager publishes in every namespace: kube-system has had it since the cluster
/// started, a namespace just created may not have it yet.
async fn root_ca(client: &Client, ns: &str) -> Result<String, Error> {
    let mut ca = None;
    for namespace in ["kube-system", ns] {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt("kube-root-ca.crt")
            .await
            .map_err(cluster_err(format!(
                "reading ConfigMap {namespace}/kube-root-ca.crt"
            )))?;
        ca = cm
            .and_then(|c| c.data)
            .and_then(|d| d.get("ca.crt").cloned());
        if ca.is_some() {
            break;
        }
    }
    let ca = ca.ok_or_else(|| Error::Cluster {
        what: "finding the cluster's CA".into(),
        reason: "the administrator's kubeconfig skips TLS verification and no \
                 kube-root-ca.crt ConfigMap has a ca.crt; kimup never writes a kubeconfig \
                 that skips TLS verification"
            .into(),
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(ca))
}

async fn add(args: &AddArgs) -> Result<(), Error> {
    let context = args
        .context
        .clone()
        .or_else(|| args.context_flag.clone())
        .ok_or_else(|| Error::Usage("the context of the new member is required".into()))?;
    let name = args.name.clone().unwrap_or_else(|| context.clone());
    check_name(&name).map_err(Error::Usage)?;
    if args.namespace.is_empty() {
        return Err(Error::Usage("--namespace must not be empty".into()));
    }
    if args.token_ttl < TOKEN_TTL_RANGE.0 || args.token_ttl > TOKEN_TTL_RANGE.1 {
        return Err(Error::Usage(
            "--token-ttl must be between 10m and 8760h (the TokenRequest API refuses less than 10 minutes)"
                .into(),
        ));
    }
    let ns = args.namespace.as_str();
    let (kc, described) = admin_kubeconfig(args.kubeconfig.as_deref())?;
    let (client, _) = client_of(&kc, &described, Some(&context)).await?;
    let (mut entry, insecure) = admin_cluster(&kc, &context)?;

    let id = identity(&client, &format!("context {context}")).await?;
    let store = Store::open(&args.store, true).await?;
    println!(
        "cluster {name}: context {}, {} (kube-system UID {id})",
        context, entry.server
    );
    // The home cluster as a member as well: kimup serves it once, through whichever comes first
    // in name order, and reports the other as a duplicate. Legitimate without the chart's
    // serveHomeCluster, so a note rather than a refusal.
    if let Some(home) = store.home_client()
        && identity(&home, "the home cluster").await.ok().as_deref() == Some(id.as_str())
    {
        eprintln!(
            "note: {name} is the home cluster holding the Secret; if kimup also serves it \
             in-cluster (the chart's clusters.serveHomeCluster, on by default), it is served once \
             and the other entry is reported as a duplicate"
        );
    }

    // A cluster is served once: refuse it under a second name.
    let same_name = member_named(&store, &name, &id).await?;

    if args.skip_crds {
        println!("  CRDs: skipped (--skip-crds)");
    } else {
        for line in apply_crds(&client).await? {
            println!("  {line}");
        }
    }
    for line in apply_access(&client, ns).await? {
        println!("  {line}");
    }

    // The CA: the administrator's, else (when it skips TLS checks) the cluster's own root CA.
    if entry.ca_data.is_none() && insecure {
        entry.ca_data = Some(root_ca(&client, ns).await?);
        println!(
            "  CA: from ConfigMap kube-root-ca.crt (the administrator's kubeconfig skips TLS verification)"
        );
    }

    let user = service_account_user(ns);
    let stored = same_name
        .as_ref()
        .map(|e| read_stored(&e.text))
        .unwrap_or_default();
    let mut plan = plan_token(
        stored.token.as_deref(),
        &user,
        args.long_lived,
        args.rotate,
        Utc::now(),
    );
    let record = MemberRecord {
        identity: id.clone(),
        namespace: ns.to_string(),
        service_account: SERVICE_ACCOUNT.to_string(),
        credential: if args.long_lived {
            "long-lived"
        } else {
            "bound"
        }
        .into(),
    };
    // A kept token must still be accepted: a recreated ServiceAccount or a deleted token
    // Secret makes it worthless whatever its dates say.
    let mut refused = false;
    if let (TokenPlan::Keep(_), Some(token)) = (&plan, &stored.token) {
        let text = member_kubeconfig(&name, &entry, token, &record);
        let works = match member_client(&text).await {
            Ok(c) => whoami(&c).await.map(|u| u == user).unwrap_or(false),
            Err(_) => false,
        };
        if !works {
            plan = TokenPlan::Mint("the API server no longer accepts the stored token".into());
            refused = true;
        }
    }
    let token_secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = match &plan {
        TokenPlan::Keep(why) => {
            println!("  credential: kept ({why})");
            stored.token.clone().unwrap_or_default()
        }
        TokenPlan::Mint(why) if args.long_lived => {
            // A refused token's Secret, if it is still there, is replaced too.
            let token = long_lived_token(&client, ns, args.rotate || refused).await?;
            println!("  credential: token of Secret {ns}/{TOKEN_SECRET}, never expires ({why})");
            token
        }
        TokenPlan::Mint(why) => {
            let (token, expires) = bound_token(&client, ns, args.token_ttl).await?;
            // The token's own dates say what was granted (iat to exp); else the time left.
            let granted = credential::token_expiry(&token)
                .and_then(|e| e.lifetime())
                .or_else(|| expires.map(|e| (e - Utc::now()).to_std().unwrap_or_default()));
            println!(
                "  credential: bound token, expires {} ({why}){}",
                expires
                    .map(|e| e.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "at an unknown time".into()),
                granted
                    .and_then(|g| capped_note(args.token_ttl, g))
                    .map(|n| format!("; {n}"))
                    .unwrap_or_default()
            );
            token
        }
    };

    let text = member_kubeconfig(&name, &entry, &token, &record);
    // Never store a kubeconfig that does not work: check it as kimup will use it.
    let check = member_client(&text)
        .await
        .map_err(|reason| Error::Cluster {
            what: "checking the new kubeconfig".into(),
            reason,
        })?;
    let who = whoami(&check).await.map_err(cluster_err(
        "checking the new kubeconfig against the API server",
    ))?;
    if who != user {
        return Err(Error::Cluster {
            what: "checking the new kubeconfig".into(),
            reason: format!("the API server sees {who:?}, not {user}"),
        });
    }
    let key = same_name
        .map(|e| e.key)
        .unwrap_or_else(|| format!("{name}.yaml"));
    let wrote = store.write(&key, &text).await?;
    println!(
        "  kubeconfig {key} in {}: {}",
        store.describe(),
        if wrote { "written" } else { "unchanged" }
    );
    // A long-lived token left behind by a switch to a bound one would outlive it: revoked once
    // the new kubeconfig is stored, so kimup is never left without a working credential.
    if !args.long_lived
        && token_secrets
            .get_opt(TOKEN_SECRET)
            .await
            .map_err(cluster_err(format!("reading Secret {ns}/{TOKEN_SECRET}")))?
            .is_some()
    {
        let line = delete_owned(
            &token_secrets,
            TOKEN_SECRET,
            &format!("Secret {ns}/{TOKEN_SECRET} (the former long-lived token)"),
        )
        .await?;
        println!("  {line}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kimup cluster list

/// One member as `kimup cluster list` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name.
    pub name: String,
    /// Its kubeconfig file or Secret key.
    pub source: String,
    /// API server URL.
    pub server: Option<String>,
    /// kube-system UID, when it could be read.
    pub identity: Option<String>,
    /// Whether the API server answered.
    pub reachable: bool,
    /// Whether the Image and AlertConfig CRDs are served (None when not reachable).
    pub crds: Option<bool>,
    /// Whether the member's own credential is allowed every rule of the set (None when not
    /// checked).
    pub rbac_sufficient: Option<bool>,
    /// The rules refused, `verb group/resource`.
    pub rbac_missing: Vec<String>,
    /// `token`, `token (no expiry)`, `client certificate`, `exec plugin`, ...
    pub credential: String,
    /// When the credential expires (RFC 3339), when it says.
    pub credential_expiry: Option<String>,
    /// A warning about the credential (expiring, expired).
    pub warning: Option<String>,
    /// Images in the member (None when not counted).
    pub images: Option<usize>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

async fn status_of(name: String, e: Entry) -> MemberStatus {
    let mut s = MemberStatus {
        name,
        source: e.location.clone(),
        ..Default::default()
    };
    let parsed = Kubeconfig::from_yaml(&e.text);
    if let Ok(kc) = &parsed {
        let context = kc
            .current_context
            .clone()
            .or_else(|| kc.contexts.first().map(|c| c.name.clone()))
            .unwrap_or_default();
        let cred = credential::of_kubeconfig(kc, &context);
        s.credential = cred.describe();
        if let Some(exp) = cred.expiry() {
            s.credential_expiry = Some(exp.expires.to_rfc3339_opts(SecondsFormat::Secs, true));
            s.warning = credential::warning(exp, Utc::now());
        }
        s.server = admin_cluster(kc, &context).ok().map(|(c, _)| c.server);
    }
    let client = match member_client(&e.text).await {
        Ok(c) => c,
        Err(err) => {
            s.error = Some(err);
            return s;
        }
    };
    // Any answer of the API server, a refusal included, means it is reachable.
    match Api::<Namespace>::all(client.clone())
        .get_metadata("kube-system")
        .await
    {
        Ok(ns) => {
            s.reachable = true;
            s.identity = ns.metadata.uid;
        }
        Err(err) => {
            s.reachable = matches!(err, kube::Error::Api(_));
            s.error = Some(format!(
                "reading its identity (kube-system): {}",
                api_reason(&err)
            ));
        }
    }
    if !s.reachable {
        return s;
    }
    // Discovery is open to every authenticated user, whatever its rules.
    s.crds = Some(
        match client
            .list_api_group_resources("kimup.cloudavenue.io/v1alpha1")
            .await
        {
            Ok(list) => ["images", "alertconfigs"]
                .iter()
                .all(|r| list.resources.iter().any(|x| x.name == *r)),
            Err(_) => false,
        },
    );
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut checked = true;
    for attrs in rbac::access_checks() {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(attrs.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|st| st.allowed) => {}
            Ok(_) => missing.push(rbac::describe(&attrs)),
            Err(err) => {
                checked = false;
                s.error
                    .get_or_insert(format!("SelfSubjectAccessReview: {}", api_reason(&err)));
                break;
            }
        }
    }
    if checked {
        s.rbac_sufficient = Some(missing.is_empty());
        s.rbac_missing = missing;
    }
    if s.crds == Some(true) {
        let images: Api<crate::api::Image> = Api::all(client);
        let mut count = 0usize;
        let mut params = ListParams::default().limit(500);
        loop {
            match images.list_metadata(&params).await {
                Ok(page) => {
                    count += page.items.len();
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(c) => params = params.continue_token(&c),
                        None => {
                            s.images = Some(count);
                            break;
                        }
                    }
                }
                Err(err) => {
                    s.error
                        .get_or_insert(format!("listing Images: {}", api_reason(&err)));
                    break;
                }
            }
        }
    }
    s
}

/// The table of `kimup cluster list` (pure).
pub fn table(members: &[MemberStatus]) -> String {
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let mut rows = vec![vec![
        "NAME".to_string(),
        "SERVER".into(),
        "IDENTITY".into(),
        "REACHABLE".into(),
        "CRDS".into(),
        "RBAC".into(),
        "CREDENTIAL".into(),
        "EXPIRES".into(),
        "IMAGES".into(),
    ]];
    for m in members {
        rows.push(vec![
            m.name.clone(),
            m.server.clone().unwrap_or_else(|| "-".into()),
            m.identity.clone().unwrap_or_else(|| "-".into()),
            yes_no(Some(m.reachable)).into(),
            yes_no(m.crds).into(),
            yes_no(m.rbac_sufficient).into(),
            m.credential.clone(),
            m.credential_expiry.clone().unwrap_or_else(|| "-".into()),
            m.images
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = crate::table::align(&rows);
    for m in members {
        if let Some(e) = &m.error {
            out.push_str(&format!("{}: {e}\n", m.name));
        }
        if !m.rbac_missing.is_empty() {
            out.push_str(&format!(
                "{}: its credential may not {}\n",
                m.name,
                m.rbac_missing.join(", ")
            ));
        }
        if let Some(w) = &m.warning {
            out.push_str(&format!("{}: {w}\n", m.name));
        }
    }
    out
}

async fn list(args: &ListArgs) -> Result<(), Error> {
    let store = Store::open(&args.store, false).await?;
    let entries = store.entries().await?;
    let members =
        futures::future::join_all(entries.into_iter().map(|(name, e)| status_of(name, e))).await;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&members).unwrap_or_default()
        ),
        Output::Table => print!("{}", table(&members)),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kimup cluster remove

async fn remove(args: &RemoveArgs) -> Result<(), Error> {
    let store = Store::open(&args.store, false).await?;
    let entries = store.entries().await?;
    let entry = entries.get(&args.name).cloned();
    if entry.is_none() && !args.purge {
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "no member named {} in {} (members: {})",
            args.name,
            store.describe(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let record = entry.as_ref().and_then(|e| read_stored(&e.text).record);
    if args.purge {
        let context = args.context.clone().unwrap_or_default();
        let (kc, described) = admin_kubeconfig(args.kubeconfig.as_deref())?;
        let (client, _) = client_of(&kc, &described, Some(&context)).await?;
        let id = identity(&client, &format!("context {context}")).await?;
        // Purging the wrong cluster would revoke another member's access: the identity recorded
        // by `add` must be the one the administrator's context reaches.
        if let Some(r) = &record
            && r.identity != id
        {
            return Err(Error::Usage(format!(
                "context {context} reaches the cluster whose kube-system UID is {id}, but member \
                 {} is {}: nothing purged",
                args.name, r.identity
            )));
        }
        let ns = args
            .namespace
            .clone()
            .or_else(|| record.as_ref().map(|r| r.namespace.clone()))
            .unwrap_or_else(|| "kimup".into());
        println!("purging cluster {} (kube-system UID {id}):", args.name);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for line in [
            delete_owned(
                &Api::<ClusterRoleBinding>::all(client.clone()),
                CLUSTER_ROLE,
                &format!("ClusterRoleBinding {CLUSTER_ROLE}"),
            )
            .await?,
            delete_owned(
                &Api::<ClusterRole>::all(client.clone()),
                CLUSTER_ROLE,
                &format!("ClusterRole {CLUSTER_ROLE}"),
            )
            .await?,
            delete_owned(
                &secrets,
                TOKEN_SECRET,
                &format!("Secret {ns}/{TOKEN_SECRET}"),
            )
            .await?,
            // Deleting the ServiceAccount revokes every token bound to it.
            delete_owned(
                &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
                SERVICE_ACCOUNT,
                &format!("ServiceAccount {ns}/{SERVICE_ACCOUNT}"),
            )
            .await?,
        ] {
            println!("  {line}");
        }
        println!("  namespace {ns}, CRDs and Images: kept");
    }
    match entry {
        Some(e) => {
            store.remove(&e).await?;
            println!("removed member {} ({})", args.name, e.location);
        }
        None => println!(
            "no kubeconfig named {} in {}: nothing else to remove",
            args.name,
            store.describe()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_exit_two_for_usage_and_one_for_failures() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            Error::Duplicate {
                existing: "a".into(),
                location: "/k/a.yaml".into(),
                identity: "u".into()
            }
            .exit_code(),
            2
        );
        assert_eq!(
            Error::Cluster {
                what: "w".into(),
                reason: "r".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(Error::Store("s".into()).exit_code(), 1);
    }

    #[test]
    fn the_table_shows_every_member_and_its_problems() {
        let members = vec![
            MemberStatus {
                name: "east".into(),
                server: Some("https://e".into()),
                identity: Some("uid-e".into()),
                reachable: true,
                crds: Some(true),
                rbac_sufficient: Some(false),
                rbac_missing: vec!["watch apps/deployments".into()],
                credential: "token".into(),
                credential_expiry: Some("2026-12-06T10:00:00Z".into()),
                images: Some(3),
                ..Default::default()
            },
            MemberStatus {
                name: "west".into(),
                credential: "client certificate".into(),
                error: Some("unreachable: connection refused".into()),
                ..Default::default()
            },
        ];
        let t = table(&members);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME  SERVER"), "{t}");
        assert!(lines[1].contains("uid-e") && lines[1].ends_with("3"), "{t}");
        assert!(
            lines[2].starts_with("west") && lines[2].contains(" no "),
            "{t}"
        );
        assert!(t.contains("east: its credential may not watch apps/deployments"));
        assert!(t.contains("west: unreachable"));
    }
}
