//! The cluster set: every kubeconfig file of a folder (and every context in it) is a member
//! cluster. The folder is re-read periodically, so adding, changing or removing a file adds,
//! restarts or stops that cluster without a restart of kimup. Polling rather than inotify:
//! Secret mounts swap a `..data` symlink, which file watches miss, and a scan of a few small
//! files every couple of seconds costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

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

/// The members one kubeconfig text defines (pure: `kc` is the parsed file, `text` its content).
pub fn members_of(
    stem: &str,
    text: &str,
    kc: Result<Kubeconfig, String>,
    allow_exec: bool,
) -> Vec<Member> {
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
            }];
        }
    };
    if kc.contexts.is_empty() {
        return vec![Member {
            name: stem.to_string(),
            hash: hash_of(""),
            source: Err("kubeconfig has no context".into()),
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
            }
        })
        .collect()
}

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
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                out.insert(
                    stem.clone(),
                    Member {
                        name: stem,
                        hash: 0,
                        source: Err(format!("cannot read {}: {e}", path.display())),
                    },
                );
                continue;
            }
        };
        // read_from resolves relative certificate paths against the file's folder.
        let kc = Kubeconfig::read_from(&path).map_err(|e| e.to_string());
        for m in members_of(&stem, &text, kc, allow_exec) {
            out.insert(m.name.clone(), m);
        }
    }
    out
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
        let m = members_of("prod", ONE, parse(ONE), false);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "prod");
        assert!(m[0].source.is_ok());
    }

    #[test]
    fn exec_is_refused_unless_allowed() {
        let m = members_of("multi", TWO_EXEC, parse(TWO_EXEC), false);
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["multi/plain", "multi/eks"]);
        assert!(m[0].source.is_ok());
        let err = m[1].source.as_ref().expect_err("exec refused");
        assert!(
            err.contains("aws") && err.contains("--allow-exec-auth"),
            "{err}"
        );
        let allowed = members_of("multi", TWO_EXEC, parse(TWO_EXEC), true);
        assert!(allowed[1].source.is_ok());
        assert_ne!(
            allowed[1].hash, m[1].hash,
            "allowing exec restarts the member"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let m = members_of("broken", "{{{", parse("{{{"), false);
        assert_eq!(m[0].name, "broken");
        assert!(
            m[0].source
                .as_ref()
                .expect_err("error")
                .contains("invalid kubeconfig")
        );
        let empty = "apiVersion: v1\nkind: Config\n";
        let m = members_of("empty", empty, parse(empty), false);
        assert!(
            m[0].source
                .as_ref()
                .expect_err("error")
                .contains("no context")
        );
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
