//! Where member kubeconfigs live: a folder that `kimup run --kubeconfig-dir` reads, or the
//! Secret of the home cluster that the chart mounts as that folder. Files are written
//! atomically with mode 0600; the Secret is changed against its resourceVersion.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use super::member::meta;
use super::{Error, StoreArgs, admin_kubeconfig, client_of, cluster_err};
use crate::clusters;

/// A member kubeconfig found in the store.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Member name (file stem).
    pub name: String,
    /// File path or `namespace/secret[key]`.
    pub location: String,
    /// File name or Secret key.
    pub key: String,
    /// Content.
    pub text: String,
}

/// Where member kubeconfigs live (one is built per command: the size gap does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Store {
    Dir(PathBuf),
    Secret {
        api: Api<Secret>,
        namespace: String,
        name: String,
    },
}

fn stem(key: &str) -> String {
    Path::new(key)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| key.to_string())
}

impl Store {
    pub(super) async fn open(args: &StoreArgs, create_dir: bool) -> Result<Store, Error> {
        if let Some(dir) = &args.kubeconfig_dir {
            if !dir.is_dir() {
                if !create_dir {
                    return Err(Error::Usage(format!(
                        "--kubeconfig-dir {}: no such folder",
                        dir.display()
                    )));
                }
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode_0700()
                    .create(dir)
                    .map_err(|e| Error::Store(format!("creating {}: {e}", dir.display())))?;
            }
            return Ok(Store::Dir(dir.clone()));
        }
        let Some(secret) = &args.secret else {
            return Err(Error::Usage(
                "--kubeconfig-dir or --secret is required".into(),
            ));
        };
        let Some((namespace, name)) = secret.split_once('/') else {
            return Err(Error::Usage(format!(
                "--secret {secret:?}: expected NAMESPACE/NAME"
            )));
        };
        let (kc, described) = admin_kubeconfig(args.home_kubeconfig.as_deref())?;
        let (client, _) = client_of(&kc, &described, args.home_context.as_deref()).await?;
        Ok(Store::Secret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Store::Dir(d) => d.display().to_string(),
            Store::Secret {
                namespace, name, ..
            } => format!("Secret {namespace}/{name} of the home cluster"),
        }
    }

    /// The home cluster's client, when the store is its Secret.
    pub(super) fn home_client(&self) -> Option<kube::Client> {
        match self {
            Store::Dir(_) => None,
            Store::Secret { api, .. } => Some(api.clone().into_client()),
        }
    }

    pub(super) async fn secret(&self) -> Result<Option<Secret>, Error> {
        let Store::Secret {
            api,
            namespace,
            name,
        } = self
        else {
            return Ok(None);
        };
        api.get_opt(name)
            .await
            .map_err(cluster_err(format!("reading Secret {namespace}/{name}")))
    }

    /// Every member kubeconfig, by member name.
    pub(super) async fn entries(&self) -> Result<BTreeMap<String, Entry>, Error> {
        let mut out = BTreeMap::new();
        match self {
            Store::Dir(dir) => {
                let rd = std::fs::read_dir(dir)
                    .map_err(|e| Error::Store(format!("reading {}: {e}", dir.display())))?;
                let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
                paths.sort();
                for p in paths {
                    let key = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    // What kimup run reads: regular files (symlinks followed), hidden ones skipped.
                    if key.starts_with('.') || !p.is_file() {
                        continue;
                    }
                    let too_big = std::fs::metadata(&p)
                        .is_ok_and(|m| m.len() > clusters::MAX_KUBECONFIG_BYTES);
                    let text = if too_big {
                        String::new()
                    } else {
                        std::fs::read_to_string(&p).unwrap_or_default()
                    };
                    out.insert(
                        stem(&key),
                        Entry {
                            name: stem(&key),
                            location: p.display().to_string(),
                            key,
                            text,
                        },
                    );
                }
            }
            Store::Secret {
                namespace, name, ..
            } => {
                let data = self
                    .secret()
                    .await?
                    .and_then(|s| s.data)
                    .unwrap_or_default();
                for (key, value) in data {
                    out.insert(
                        stem(&key),
                        Entry {
                            name: stem(&key),
                            location: format!("{namespace}/{name}[{key}]"),
                            text: String::from_utf8_lossy(&value.0).into_owned(),
                            key,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    /// Writes a member's kubeconfig (under `key`) unless it already holds exactly `text`;
    /// whether it wrote.
    pub(super) async fn write(&self, key: &str, text: &str) -> Result<bool, Error> {
        match self {
            Store::Dir(dir) => {
                let path = dir.join(key);
                if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
                    return Ok(false);
                }
                write_atomically(&path, text.as_bytes())
                    .map_err(|e| Error::Store(format!("writing {}: {e}", path.display())))?;
                Ok(true)
            }
            Store::Secret {
                api,
                namespace,
                name,
            } => {
                // Read, change, replace with the read resourceVersion: a concurrent writer makes
                // it 409, and the change is made again on what it wrote.
                for _ in 0..5 {
                    let what = format!("writing {key} into Secret {namespace}/{name}");
                    match self.secret().await? {
                        None => {
                            let s = Secret {
                                metadata: meta(name, Some(namespace)),
                                data: Some(BTreeMap::from([(
                                    key.to_string(),
                                    ByteString(text.as_bytes().to_vec()),
                                )])),
                                type_: Some("Opaque".into()),
                                ..Default::default()
                            };
                            match api.create(&PostParams::default(), &s).await {
                                Ok(_) => return Ok(true),
                                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                                Err(e) => return Err(cluster_err(what)(e)),
                            }
                        }
                        Some(mut s) => {
                            let data = s.data.get_or_insert_with(BTreeMap::new);
                            if data.get(key).is_some_and(|v| v.0 == text.as_bytes()) {
                                return Ok(false);
                            }
                            data.insert(key.to_string(), ByteString(text.as_bytes().to_vec()));
                            match api.replace(name, &PostParams::default(), &s).await {
                                Ok(_) => return Ok(true),
                                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                                Err(e) => return Err(cluster_err(what)(e)),
                            }
                        }
                    }
                }
                Err(Error::Store(format!(
                    "Secret {namespace}/{name} kept changing while {key} was written; try again"
                )))
            }
        }
    }

    /// Removes a member's kubeconfig.
    pub(super) async fn remove(&self, entry: &Entry) -> Result<(), Error> {
        match self {
            Store::Dir(_) => std::fs::remove_file(&entry.location)
                .map_err(|e| Error::Store(format!("removing {}: {e}", entry.location))),
            Store::Secret {
                api,
                namespace,
                name,
            } => {
                for _ in 0..5 {
                    let Some(mut s) = self.secret().await? else {
                        return Ok(());
                    };
                    let Some(data) = s.data.as_mut() else {
                        return Ok(());
                    };
                    if data.remove(&entry.key).is_none() {
                        return Ok(());
                    }
                    match api.replace(name, &PostParams::default(), &s).await {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => {
                            return Err(cluster_err(format!(
                                "removing {} from Secret {namespace}/{name}",
                                entry.key
                            ))(e));
                        }
                    }
                }
                Err(Error::Store(format!(
                    "Secret {namespace}/{name} kept changing while {} was removed; try again",
                    entry.key
                )))
            }
        }
    }
}

/// A folder builder that creates with mode 0700 (member credentials live there).
trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

/// Writes `bytes` to `path` so that a reader (kimup's folder poll) sees the old file or the new
/// one, never a part: a hidden temporary file (kimup skips hidden entries) with mode 0600 in
/// the same folder, synced, then renamed over the target.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("prod.yaml");
        write_atomically(&p, b"one").expect("write");
        write_atomically(&p, b"two").expect("overwrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
