//! The cluster set: every kubeconfig file of a folder (and every context in it) is a member
//! cluster. The folder is re-read periodically, so adding, changing or removing a file adds,
//! restarts or stops that cluster without a restart of kimup. Polling rather than inotify:
//! Secret mounts swap a `..data` symlink, which file watches miss, and a scan of a few small
//! files every couple of seconds costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// A member cluster as read from its kubeconfig: its name, a content hash (identity) and either
/// the kubeconfig plus context to use, or why it cannot be used.
#[derive(Clone, Debug)]
pub struct Member {
    /// `<file stem>` for a single-context file, `<file stem>/<context>` otherwise.
    pub name: String,
    /// Hash of the file content and context; a change restarts the cluster.
    pub hash: u64,
    /// The usable configuration, or a clear error.
    pub source: Result<(Kubeconfig, String), String>,
    /// The kubeconfig file it comes from.
    pub file: PathBuf,
}

/// Why a kubeconfig would run code, if it would.
pub fn runs_code(kc: &Kubeconfig, context: &str) -> Option<String> {
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())?;
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()?;
    if let Some(exec) = &auth.exec {
        return Some(format!(
            "user {user} runs the exec plugin {:?}",
            exec.command.clone().unwrap_or_default()
        ));
    }
    if auth.auth_provider.is_some() {
        return Some(format!("user {user} uses an auth-provider plugin"));
    }
    None
}

/// The members one kubeconfig text defines (pure: `file` names the file, `kc` is the parsed
/// file, `text` its content).
pub fn members_of(
    file: &Path,
    text: &str,
    kc: Result<Kubeconfig, String>,
    allow_exec: bool,
) -> Vec<Member> {
    let stem = &stem(file);
    let hash_of = |ctx: &str| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        ctx.hash(&mut h);
        allow_exec.hash(&mut h);
        h.finish()
    };
    let kc = match kc {
        Ok(kc) => kc,
        Err(e) => {
            return vec![Member {
                name: stem.to_string(),
                hash: hash_of(""),
                source: Err(format!("invalid kubeconfig: {e}")),
                file: file.to_path_buf(),
            }];
        }
    };
    if kc.contexts.is_empty() {
        return vec![Member {
            name: stem.to_string(),
            hash: hash_of(""),
            source: Err("kubeconfig has no context".into()),
            file: file.to_path_buf(),
        }];
    }
    let single = kc.contexts.len() == 1;
    kc.contexts
        .iter()
        .map(|c| {
            let name = if single {
                stem.to_string()
            } else {
                format!("{stem}/{}", c.name)
            };
            let source = match runs_code(&kc, &c.name) {
                Some(why) if !allow_exec => Err(format!(
                    "refused: {why}; a kubeconfig must not run code unless kimup runs with --allow-exec-auth"
                )),
                _ => Ok((kc.clone(), c.name.clone())),
            };
            Member {
                name,
                hash: hash_of(&c.name),
                source,
                file: file.to_path_buf(),
            }
        })
        .collect()
}

/// Largest kubeconfig file read: a member's file is a few KiB; anything far larger is a mistake
/// that would otherwise be read (and hashed) at every poll.
pub const MAX_KUBECONFIG_BYTES: u64 = 1024 * 1024;

/// Reads the kubeconfig files of `dirs` (hidden entries such as `..data` skipped, symlinks
/// followed) and the explicit `files`, returning every member by name.
pub fn scan(dirs: &[PathBuf], files: &[PathBuf], allow_exec: bool) -> BTreeMap<String, Member> {
    let mut paths: Vec<PathBuf> = files.to_vec();
    for dir in dirs {
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut found: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        !name.starts_with('.') && p.is_file()
                    })
                    .collect();
                found.sort();
                paths.extend(found);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read kubeconfig folder")
            }
        }
    }
    let mut out = BTreeMap::new();
    for path in paths {
        let stem = stem(&path);
        let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_KUBECONFIG_BYTES);
        let text = match std::fs::read_to_string(&path) {
            _ if too_big => Err(std::io::Error::other(format!(
                "larger than {} KiB, the most a kubeconfig may be",
                MAX_KUBECONFIG_BYTES / 1024
            ))),
            read => read,
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                out.insert(
                    stem.clone(),
                    Member {
                        name: stem,
                        hash: 0,
                        source: Err(format!("cannot read {}: {e}", path.display())),
                        file: path.clone(),
                    },
                );
                continue;
            }
        };
        // read_from resolves relative certificate paths against the file's folder.
        let kc = check_expansion(&text)
            .and_then(|()| Kubeconfig::read_from(&path).map_err(|e| e.to_string()));
        for m in members_of(&path, &text, kc, allow_exec) {
            out.insert(m.name.clone(), m);
        }
    }
    out
}

/// Events that YAML aliases may replay in a kubeconfig: a kubeconfig that uses aliases at all
/// repeats a user or a cluster of a dozen events a few times.
const KUBECONFIG_ALIAS_EVENTS: usize = 5_000;

/// Refuses YAML whose aliases expand to far more than a kubeconfig needs.
///
/// kube parses kubeconfigs with serde-saphyr's default budgets (250,000 nodes, 1,000,000
/// replayed events), which let a 400-byte "billion laughs" file cost 0.4 s of parsing on every
/// poll (found by kimup-fuzz). This first pass stops at [`KUBECONFIG_ALIAS_EVENTS`] replayed
/// events, and at `2 * len + 1000` nodes: without aliases a node takes at least one byte of
/// text (an empty value after its `:`), so no file is refused for its own size.
pub fn check_expansion(text: &str) -> Result<(), String> {
    // Only an alias (`*name`) of an anchor (`&name`) expands: without both characters there is
    // nothing to check, and ordinary kubeconfigs skip this pass, which costs as much as kube's
    // parse (about 0.5 µs a node).
    if !text.contains('*') || !text.contains('&') {
        return Ok(());
    }
    let mut options = serde_saphyr::Options::default();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_nodes = text.len().saturating_mul(2).saturating_add(1_000);
    }
    options.alias_limits.max_total_replayed_events = KUBECONFIG_ALIAS_EVENTS;
    options.with_snippet = false;
    match serde_saphyr::from_multiple_with_options::<serde::de::IgnoredAny>(text, options) {
        Err(e) if is_expansion_error(&e) => Err(format!(
            "YAML aliases expand beyond what a kubeconfig needs ({KUBECONFIG_ALIAS_EVENTS} \
             replayed events, or twice as many nodes as the file has bytes)"
        )),
        // Other errors are kube's parse's to report, in its words.
        _ => Ok(()),
    }
}

/// Whether a serde-saphyr error is a node or alias-replay limit rather than bad syntax (or
/// another budget, such as nesting depth, which kube's own parse refuses alike).
fn is_expansion_error(mut error: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error;
    use serde_saphyr::budget::BudgetBreach;
    loop {
        match error {
            Error::WithSnippet { error: inner, .. } | Error::AliasError { error: inner, .. } => {
                error = inner
            }
            Error::Budget {
                breach: BudgetBreach::Nodes { .. },
                ..
            }
            | Error::AliasReplayLimitExceeded { .. }
            | Error::AliasReplayCounterOverflow { .. }
            | Error::AliasExpansionLimitExceeded { .. } => return true,
            _ => return false,
        }
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster".into())
}

/// What to do to go from the running set to the desired one (pure).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Start these.
    pub start: Vec<String>,
    /// Stop and start again (content changed).
    pub restart: Vec<String>,
    /// Stop these.
    pub stop: Vec<String>,
}

/// Compares running hashes with desired hashes.
pub fn diff(running: &HashMap<String, u64>, desired: &BTreeMap<String, Member>) -> Diff {
    let mut d = Diff::default();
    for (name, m) in desired {
        match running.get(name) {
            None => d.start.push(name.clone()),
            Some(h) if *h != m.hash => d.restart.push(name.clone()),
            Some(_) => {}
        }
    }
    for name in running.keys() {
        if !desired.contains_key(name) {
            d.stop.push(name.clone());
        }
    }
    d.stop.sort();
    d
}

/// The kube client configuration of a member.
pub async fn client_config(kc: Kubeconfig, context: &str) -> Result<kube::Config, String> {
    let opts = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| format!("unusable kubeconfig: {e}"))
}

/// Who serves a cluster that several members reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This member serves its cluster.
    Serve,
    /// The named member reaches the same cluster and serves it; this one stands by.
    DuplicateOf(String),
}

/// Decides, for every member whose cluster identity (the UID of its `kube-system` namespace) is
/// known, whether it serves (pure). Two kubeconfigs reaching one cluster would sync each Image
/// twice, so each identity is served once: by the member first in name order, which every replica
/// computes alike whatever order the probes finished in. Members whose identity is not known yet
/// (not probed, unreachable since start) get no verdict and hold back nobody.
pub fn who_serves<'a>(
    members: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> BTreeMap<String, Verdict> {
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    let mut known: Vec<(&str, &str)> = members
        .into_iter()
        .filter_map(|(name, id)| id.map(|id| (name, id)))
        .collect();
    known.sort();
    let mut out = BTreeMap::new();
    for (name, id) in known {
        let verdict = match first.get(id) {
            Some(f) => Verdict::DuplicateOf((*f).to_string()),
            None => {
                first.insert(id, name);
                Verdict::Serve
            }
        };
        out.insert(name.to_string(), verdict);
    }
    out
}

/// Timeouts of the requests kimup makes to API servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeTimeouts {
    /// TCP connect plus TLS handshake, for every request, watches included.
    pub connect: Duration,
    /// Read and write timeout of every request except watches.
    pub request: Duration,
}

impl Default for KubeTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Whether a request to the API server is a watch: kube asks for one with `watch=true` (pure).
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

/// A kube client whose requests time out while its watches do not. A watch is a response that
/// legitimately stays silent for minutes, so it cannot share a read timeout with a GET; kube's
/// watcher ends a silent watch itself (its idle timeout, the server-side timeout plus a margin).
/// So two connection pools sit behind one `Client`: watches go to one with only the connect
/// timeout, everything else to one with connect, read and write timeouts. One `Client` rather
/// than two handed around keeps every watch anyone adds (Images today, AlertConfigs or Secrets
/// tomorrow) on the right pool without the callers having to know.
pub fn kube_client(config: kube::Config, timeouts: KubeTimeouts) -> Result<kube::Client, String> {
    let default_namespace = config.default_namespace.clone();
    let mut requests = config.clone();
    requests.connect_timeout = Some(timeouts.connect);
    requests.read_timeout = Some(timeouts.request);
    requests.write_timeout = Some(timeouts.request);
    // Count the read timeout from when a request is sent, not from when its pooled connection
    // went idle.
    requests.reset_reader_on_write = true;
    let mut watches = config;
    watches.connect_timeout = Some(timeouts.connect);
    watches.read_timeout = None;
    let requests = kube::Client::try_from(requests).map_err(|e| format!("building client: {e}"))?;
    let watches = kube::Client::try_from(watches).map_err(|e| format!("building client: {e}"))?;
    let route = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let client = if is_watch(req.uri()) {
            watches.clone()
        } else {
            requests.clone()
        };
        async move { client.send(req).await }
    });
    Ok(kube::Client::new(route, default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
"#;

    const TWO_EXEC: &str = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users:
- {name: u, user: {token: abc}}
- {name: e, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}}}
contexts:
- {name: plain, context: {cluster: c, user: u}}
- {name: eks, context: {cluster: c, user: e}}
"#;

    fn parse(text: &str) -> Result<Kubeconfig, String> {
        Kubeconfig::from_yaml(text).map_err(|e| e.to_string())
    }

    #[test]
    fn single_context_is_named_by_stem() {
        let m = members_of(Path::new("/k/prod.yaml"), ONE, parse(ONE), false);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "prod");
        assert!(m[0].source.is_ok());
    }

    #[test]
    fn exec_is_refused_unless_allowed() {
        let m = members_of(Path::new("/k/multi.yaml"), TWO_EXEC, parse(TWO_EXEC), false);
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["multi/plain", "multi/eks"]);
        assert!(m[0].source.is_ok());
        let err = m[1].source.as_ref().expect_err("exec refused");
        assert!(
            err.contains("aws") && err.contains("--allow-exec-auth"),
            "{err}"
        );
        let allowed = members_of(Path::new("/k/multi.yaml"), TWO_EXEC, parse(TWO_EXEC), true);
        assert!(allowed[1].source.is_ok());
        assert_ne!(
            allowed[1].hash, m[1].hash,
            "allowing exec restarts the member"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let m = members_of(Path::new("/k/broken.yaml"), "{{{", parse("{{{"), false);
        assert_eq!(m[0].name, "broken");
        assert!(
            m[0].source
                .as_ref()
                .expect_err("error")
                .contains("invalid kubeconfig")
        );
        let empty = "apiVersion: v1\nkind: Config\n";
        let m = members_of(Path::new("/k/empty"), empty, parse(empty), false);
        assert!(
            m[0].source
                .as_ref()
                .expect_err("error")
                .contains("no context")
        );
    }

    #[test]
    fn alias_bombs_are_refused_and_plain_aliases_kept() {
        // Found by kimup-fuzz: 9^7 expansions in 400 bytes took kube's parser 0.4 s (release).
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g"])
        {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            laughs.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        laughs.push_str("preferences: {extensions: [{name: x, extension: *g}]}\n");
        let err = check_expansion(&laughs).expect_err("refused");
        assert!(err.contains("aliases expand"), "{err}");
        // Also found by kimup-fuzz: thousands of aliases in a long file, where a budget
        // proportional to the file's size still allowed 40 ms of replays.
        let wide = format!(
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [{}]\n",
            vec!["*b"; 4000].join(", ")
        );
        assert!(check_expansion(&wide).is_err());

        let shared_user = r#"
apiVersion: v1
kind: Config
clusters: [{name: a, cluster: {server: "https://a:6443"}}, {name: b, cluster: {server: "https://b:6443"}}]
users: [{name: u, user: &cred {token: abc}}, {name: v, user: *cred}]
contexts: [{name: a, context: {cluster: a, user: u}}, {name: b, context: {cluster: b, user: v}}]
"#;
        for text in [ONE, TWO_EXEC, shared_user, "{{{", ""] {
            assert_eq!(check_expansion(text), Ok(()), "{text}");
        }
        assert!(parse(shared_user).is_ok());
    }

    #[test]
    fn diff_starts_restarts_and_stops() {
        let desired: BTreeMap<String, Member> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Member {
                        name: n.to_string(),
                        hash: if *n == "b" { 2 } else { 1 },
                        source: Err(String::new()),
                        file: PathBuf::new(),
                    },
                )
            })
            .collect();
        let running: HashMap<String, u64> = [
            ("b".to_string(), 1),
            ("c".to_string(), 1),
            ("d".to_string(), 1),
        ]
        .into();
        assert_eq!(
            diff(&running, &desired),
            Diff {
                start: vec!["a".into()],
                restart: vec!["b".into()],
                stop: vec!["d".into()]
            }
        );
    }

    #[test]
    fn each_identity_is_served_once_by_the_first_name() {
        let v = who_serves([
            ("cluster-1-copy", Some("uid-1")),
            ("cluster-1", Some("uid-1")),
            ("cluster-0", Some("uid-0")),
            ("unprobed", None),
            ("a-copy", Some("uid-0")),
        ]);
        assert_eq!(v["cluster-1"], Verdict::Serve);
        assert_eq!(
            v["cluster-1-copy"],
            Verdict::DuplicateOf("cluster-1".into())
        );
        assert_eq!(v["a-copy"], Verdict::Serve, "name order, not arrival order");
        assert_eq!(v["cluster-0"], Verdict::DuplicateOf("a-copy".into()));
        assert!(!v.contains_key("unprobed"), "no identity, no verdict");
        // The original gone, the copy serves.
        let v = who_serves([("cluster-1-copy", Some("uid-1"))]);
        assert_eq!(v["cluster-1-copy"], Verdict::Serve);
        // Three reaching one cluster: the first serves, both others name it.
        let v = who_serves([("c", Some("x")), ("b", Some("x")), ("a", Some("x"))]);
        assert_eq!(v["a"], Verdict::Serve);
        assert_eq!(v["b"], Verdict::DuplicateOf("a".into()));
        assert_eq!(v["c"], Verdict::DuplicateOf("a".into()));
    }

    #[test]
    fn watches_are_told_apart_by_their_query() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert!(is_watch(&uri(
            "/apis/kimup.cloudavenue.io/v1alpha1/images?&watch=true&timeoutSeconds=290"
        )));
        assert!(is_watch(&uri("/api/v1/namespaces?watch=1")));
        assert!(!is_watch(&uri("/api/v1/namespaces/kube-system")));
        assert!(!is_watch(&uri(
            "/api/v1/secrets?limit=1&fieldSelector=watch%3Dtrue"
        )));
        assert!(!is_watch(&uri("/api/v1/pods?watch=false")));
    }

    #[tokio::test]
    async fn requests_time_out_on_a_silent_server() {
        // A listener that never accepts: the kernel completes the handshake (backlog), nothing
        // ever answers, so only the read timeout ends the request.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
        let timeouts = KubeTimeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(300),
        };
        let client = kube_client(config, timeouts).expect("client");
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
            .await
            .expect("the request timed out by itself")
            .expect_err("nothing answers");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}: {err}",
            started.elapsed()
        );
        drop(listener);
    }

    #[test]
    fn scan_refuses_oversized_files_and_skips_fifos() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ok.yaml"), ONE).expect("write");
        let big = format!("{ONE}\n# {}", "x".repeat(MAX_KUBECONFIG_BYTES as usize));
        std::fs::write(dir.path().join("big.yaml"), big).expect("write");
        // A FIFO would block the read for ever: only regular files are read.
        let fifo = dir.path().join("pipe.yaml");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let found = scan(&[dir.path().to_path_buf()], &[], false);
        assert!(
            found.keys().any(|k| k.starts_with("ok")),
            "{:?}",
            found.keys()
        );
        assert!(!found.keys().any(|k| k.starts_with("pipe")));
        let big = found
            .iter()
            .find(|(k, _)| k.starts_with("big"))
            .map(|(_, m)| m)
            .expect("big member");
        let err = big.source.as_ref().expect_err("refused");
        assert!(err.contains("larger than 1024 KiB"), "{err}");
    }

    #[test]
    fn scan_skips_hidden_entries_and_follows_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("east.yaml"), ONE).expect("write");
        std::os::unix::fs::symlink(data.join("east.yaml"), dir.path().join("east.yaml"))
            .expect("symlink");
        std::fs::write(dir.path().join("broken.yaml"), "::").expect("write");
        let found = scan(&[dir.path().to_path_buf()], &[], false);
        let names: Vec<_> = found.keys().cloned().collect();
        assert_eq!(names, vec!["broken".to_string(), "east".to_string()]);
        assert!(found["east"].source.is_ok());
        assert!(found["broken"].source.is_err());
    }
}
