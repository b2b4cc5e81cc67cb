//! The container image. scripts/build-image.sh builds it without a daemon from the kimup binary
//! these tests were built with (a debug build, which spares CI a release build; a publish uses
//! release) and pushes it to a real registry; what comes back must be what Cargo.toml, the chart
//! and the Dockerfile say. Then the image's own filesystem runs kimup as a container runtime
//! would: chrooted into it, the root filesystem read-only, as the image's user with no
//! capabilities, with the chart's command line and mounts, against a real API server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use common::*;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kimup::api::{Image, SyncResult};
use kimup_testenv::Binaries;
use kimup_testenv::process::{free_port, tail};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const KIMUP: &str = env!("CARGO_BIN_EXE_kimup");
/// Where the image keeps its CA bundle, and what its SSL_CERT_FILE names.
const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd` to completion within `timeout`; past it, kills the command's process group and
/// fails naming `what`.
fn run(what: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.with_context(|| format!("waiting for {what}")),
        Err(_) => {
            // SAFETY: kill(2) on the process group started above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            bail!("{what} did not finish within {timeout:?}")
        }
    }
}

/// As `run`, failing with its stderr unless it exits 0.
fn run_ok(what: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let out = run(what, cmd, timeout)?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Runs crane (plain HTTP: crane speaks HTTP to loopback registries).
fn crane(args: &[&str]) -> Result<Vec<u8>> {
    let bins = Binaries::get()?;
    let what = format!("crane {}", args.join(" "));
    Ok(run_ok(
        &what,
        Command::new(&bins.crane).args(args),
        Duration::from_secs(120),
    )?
    .stdout)
}

fn crane_json(args: &[&str]) -> Result<Value> {
    let out = crane(args)?;
    serde_json::from_slice(&out).with_context(|| format!("crane {} printed no JSON", args[0]))
}

/// Runs scripts/build-image.sh on the test binary, pushing to `push` (repository[:tag]) over
/// plain HTTP; returns what it printed last (`repository@sha256:...`) and the seconds it took.
fn build_image(push: &str, extra: &[&str]) -> Result<(String, f64)> {
    let start = Instant::now();
    let out = run_ok(
        "scripts/build-image.sh",
        Command::new("bash")
            .arg(repo_root().join("scripts/build-image.sh"))
            .args(["--push", push, "--insecure", "--binary", KIMUP])
            .args(extra),
        Duration::from_secs(600),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).context("build-image.sh output")?;
    let last = stdout
        .lines()
        .last()
        .context("build-image.sh printed nothing on stdout")?;
    Ok((last.to_string(), seconds))
}

/// The image every test reads, built once per test binary.
struct Built {
    /// `host:port/kimup-<pid>/kimup`, pushed without a tag (the script adds the version).
    repository: String,
    /// What the script printed: `repository@sha256:...`.
    digest_ref: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<std::result::Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let repository = format!(
                "{}/kimup-{}/kimup",
                env().plain_registry().host,
                std::process::id()
            );
            let (digest_ref, seconds) =
                build_image(&repository, &[]).map_err(|e| format!("{e:#}"))?;
            eprintln!("image built and pushed in {seconds:.1} s: {digest_ref}");
            Ok(Built {
                repository,
                digest_ref,
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("building the image: {e}"))
}

fn image_config() -> Value {
    crane_json(&["config", &built().digest_ref]).expect("crane config")
}

fn image_manifest() -> Value {
    crane_json(&["manifest", &built().digest_ref]).expect("crane manifest")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `uid:gid` of the image's `User`.
fn image_user(config: &Value) -> (u32, u32) {
    let user = config["config"]["User"].as_str().expect("image has a User");
    let (uid, gid) = user.split_once(':').expect("User is uid:gid");
    (
        uid.parse().expect("numeric uid"),
        gid.parse().expect("numeric gid"),
    )
}

/// The image's `Env` as pairs.
fn image_env(config: &Value) -> Vec<(String, String)> {
    strings(&config["config"]["Env"])
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("Env entries are K=V");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn chart_app_version() -> String {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("charts/kimup/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    chart["appVersion"]
        .as_str()
        .expect("Chart.yaml has an appVersion")
        .to_string()
}

/// The chart's objects, rendered by `helm template` in `namespace` with `sets` (`--set`) and
/// `json_sets` (`--set-json`).
fn render_chart(namespace: &str, sets: &[String], json_sets: &[String]) -> Vec<Value> {
    let bins = Binaries::get().expect("binaries");
    let mut cmd = Command::new(&bins.helm);
    cmd.args(["template", "kimup"])
        .arg(repo_root().join("charts/kimup"))
        .args(["--namespace", namespace]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    for s in json_sets {
        cmd.args(["--set-json", s]);
    }
    let out = run_ok("helm template", &mut cmd, Duration::from_secs(60)).expect("helm template");
    let text = String::from_utf8(out.stdout).expect("helm output");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("YAML");
        if !value.is_null() {
            docs.push(serde_json::to_value(value).expect("JSON"));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("the chart rendered no {kind}"))
}

/// The final stage of the Dockerfile: its instructions with continuation lines joined.
fn dockerfile_final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let last_from = joined
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("Dockerfile has a FROM");
    joined[last_from..]
        .iter()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// `k="v" k2="v2"` of a LABEL instruction.
fn dockerfile_labels(args: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = args.trim();
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').expect("closing quote of a LABEL value");
        labels.insert(key.trim().to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start();
    }
    labels
}

#[test]
fn image_config_is_what_cargo_the_chart_and_the_dockerfile_say() {
    let built = built();
    assert_eq!(
        chart_app_version(),
        VERSION,
        "Chart.yaml's appVersion must be Cargo.toml's version: the chart runs the image of that tag"
    );

    // Pushed without a tag, it got the version as its tag.
    let (repo, digest) = built
        .digest_ref
        .split_once('@')
        .expect("build-image.sh prints repository@digest");
    assert_eq!(repo, built.repository);
    let tagged = format!("{}:{VERSION}", built.repository);
    let tag_digest =
        String::from_utf8(crane(&["digest", &tagged]).expect("crane digest")).expect("digest text");
    assert_eq!(
        tag_digest.trim(),
        digest,
        "{tagged} is the image just built"
    );

    let config = image_config();
    eprintln!(
        "image config: {}",
        serde_json::to_string_pretty(&config).unwrap_or_default()
    );
    let c = &config["config"];
    assert_eq!(image_user(&config), (65532, 65532));
    assert_eq!(strings(&c["Entrypoint"]), ["/kimup"]);
    assert_eq!(strings(&c["Cmd"]), ["run"]);
    assert_eq!(
        image_env(&config),
        [("SSL_CERT_FILE".to_string(), BUNDLE.to_string())]
    );
    assert_eq!(config["os"], "linux");
    let arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    assert_eq!(config["architecture"], arch);
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(1)
    );

    let labels: BTreeMap<String, String> =
        serde_json::from_value(c["Labels"].clone()).expect("labels are strings");
    let label = |k: &str| {
        labels
            .get(&format!("org.opencontainers.image.{k}"))
            .cloned()
            .unwrap_or_else(|| panic!("no org.opencontainers.image.{k} label in {labels:?}"))
    };
    assert_eq!(label("title"), "kimup");
    assert_eq!(label("version"), VERSION);
    assert_eq!(label("licenses"), env!("CARGO_PKG_LICENSE"));
    assert_eq!(label("description"), env!("CARGO_PKG_DESCRIPTION"));
    assert_eq!(label("source"), env!("CARGO_PKG_REPOSITORY"));
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(label("revision"), head),
        None => assert_eq!(label("revision"), "", "no git checkout, no revision"),
    }

    let manifest = image_manifest();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer on an empty base");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer_size = layers[0]["size"].as_u64().expect("layer size");
    let binary_size = std::fs::metadata(KIMUP).expect("test binary").len();
    eprintln!(
        "layer: {:.1} MiB compressed; the debug binary alone: {:.1} MiB",
        layer_size as f64 / 1048576.0,
        binary_size as f64 / 1048576.0
    );

    // The chart runs this image as this user, with a read-only root, and passes a command line
    // that starts after the entrypoint (so its `run` replaces the image's Cmd).
    let docs = render_chart("kimup", &[], &[]);
    let pod = &of_kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/kimup/kimup:{VERSION}"),
        "the chart's default image is the version's tag"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args = strings(&container["args"]);
    assert!(
        args.iter().any(|a| a == "run") && !args.iter().any(|a| a.contains("/kimup")),
        "the chart passes kimup's arguments, not the binary: {args:?}"
    );
    assert!(
        container["command"].is_null(),
        "the chart keeps the entrypoint"
    );

    // The Dockerfile builds the same image: same filesystem script, same configuration.
    let stage = dockerfile_final_stage();
    let all = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        all.contains("scripts/image-rootfs.sh target/release/kimup /rootfs")
            && stage.contains(&("COPY".into(), "--from=build /rootfs/ /".into())),
        "the Dockerfile's filesystem comes from scripts/image-rootfs.sh"
    );
    assert!(
        all.contains(&format!(
            "FROM docker.io/library/rust:{}-bookworm AS build",
            env!("CARGO_PKG_RUST_VERSION")
        )),
        "the Dockerfile builds with Cargo.toml's rust-version on Debian 12"
    );
    let instruction = |k: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(instruction("FROM"), ["scratch"]);
    assert_eq!(instruction("USER"), [c["User"].as_str().unwrap_or("")]);
    let json = |s: &str| serde_json::from_str::<Vec<String>>(s).expect("exec-form JSON array");
    assert_eq!(
        instruction("ENTRYPOINT")
            .iter()
            .map(|s| json(s))
            .collect::<Vec<_>>(),
        [strings(&c["Entrypoint"])]
    );
    assert_eq!(
        instruction("CMD")
            .iter()
            .map(|s| json(s))
            .collect::<Vec<_>>(),
        [strings(&c["Cmd"])]
    );
    assert_eq!(instruction("ENV"), strings(&c["Env"]));
    let docker_labels: BTreeMap<String, String> = instruction("LABEL")
        .iter()
        .flat_map(|l| dockerfile_labels(l))
        .collect();
    assert_eq!(
        docker_labels.keys().collect::<Vec<_>>(),
        labels.keys().collect::<Vec<_>>(),
        "the Dockerfile sets the same labels"
    );
    for (k, v) in &docker_labels {
        if !v.contains("${") {
            assert_eq!(Some(v), labels.get(k), "label {k}");
        }
    }
}

/// One entry of the image's layer.
struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
}

fn layer_entries() -> Vec<Entry> {
    let manifest = image_manifest();
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest");
    let blob = crane(&["blob", &format!("{}@{digest}", built().repository)]).expect("crane blob");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    let mut entries = Vec::new();
    for e in archive.entries().expect("layer is a tar") {
        let mut e = e.expect("tar entry");
        let header = e.header();
        let path = e.path().expect("entry path").display().to_string();
        let (kind, mode) = (header.entry_type(), header.mode().expect("mode"));
        let (uid, gid) = (header.uid().expect("uid"), header.gid().expect("gid"));
        let mtime = header.mtime().expect("mtime");
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("entry data");
        entries.push(Entry {
            path: path.trim_end_matches('/').to_string(),
            kind,
            mode,
            uid,
            gid,
            mtime,
            data,
        });
    }
    entries
}

/// The paths `ldd` gives for the test binary's libraries and loader.
fn ldd_paths() -> BTreeSet<String> {
    let out = run_ok(
        "ldd",
        Command::new("ldd").arg(KIMUP),
        Duration::from_secs(30),
    )
    .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, "=>", p, ..] if p.starts_with('/') => Some(p.to_string()),
                [p, ..] if p.starts_with('/') => Some(p.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn layer_is_root_owned_read_only_and_holds_only_what_kimup_needs() {
    let entries = layer_entries();
    let epoch: u64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for e in &entries {
        assert_eq!((e.uid, e.gid), (0, 0), "{} is owned by root", e.path);
        assert_eq!(
            e.mode & 0o7022,
            0,
            "{} ({:o}) is writable only by its owner, no setuid/setgid/sticky bit",
            e.path,
            e.mode
        );
        assert_eq!(e.mtime, epoch, "{}: mtime of a reproducible layer", e.path);
        assert!(
            matches!(e.kind, tar::EntryType::Regular | tar::EntryType::Directory),
            "{}: only files and directories ({:?})",
            e.path,
            e.kind
        );
    }
    let files: BTreeMap<&str, &Entry> = entries
        .iter()
        .filter(|e| e.kind == tar::EntryType::Regular)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let tops: BTreeSet<&str> = entries
        .iter()
        .map(|e| e.path.split('/').next().unwrap_or(""))
        .collect();
    assert_eq!(
        tops,
        BTreeSet::from(["etc", "kimup", "lib", "lib64", "usr", "var"]),
        "nothing else at the root: no shell, no /tmp"
    );

    let kimup = files.get("kimup").expect("/kimup in the layer");
    assert_eq!(kimup.mode, 0o755);
    assert!(
        kimup.data == std::fs::read(KIMUP).expect("test binary"),
        "/kimup is the binary given to build-image.sh"
    );

    // The libraries are exactly what the loader resolves for the binary, as real files.
    let libs: BTreeSet<String> = files
        .keys()
        .filter(|p| p.starts_with("lib/") || p.starts_with("lib64/"))
        .map(|p| format!("/{p}"))
        .collect();
    assert_eq!(
        libs,
        ldd_paths(),
        "the layer's libraries are what ldd names"
    );
    assert!(libs.iter().any(|l| l.ends_with("/libc.so.6")));

    let text = |p: &str| {
        String::from_utf8(files.get(p).unwrap_or_else(|| panic!("/{p}")).data.clone())
            .expect("text file")
    };
    assert!(text("etc/passwd").contains("\nnonroot:x:65532:65532:"));
    assert!(text("etc/group").contains("\nnonroot:x:65532:"));
    assert!(
        text("etc/nsswitch.conf")
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["hosts:", "files", "dns"]),
        "hosts from /etc/hosts first, then DNS"
    );
    let bundle = text(BUNDLE.trim_start_matches('/'));
    let certificates = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(
        certificates >= 100,
        "the CA bundle holds Debian's roots ({certificates} certificates)"
    );
    assert!(
        files.contains_key("var/lib/dpkg/status.d/libc6")
            && files.contains_key("usr/share/doc/libc6/copyright"),
        "glibc's package record and licence are in the image"
    );
    eprintln!("layer: {} entries, {} files", entries.len(), files.len());
}

#[test]
fn same_binary_same_digest_and_a_tarball_on_request() {
    let built = built();
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = dir.path().join("kimup.tar");
    let again = format!("{}:again", built.repository);
    let (digest_ref, seconds) = build_image(
        &again,
        &["--tarball", tarball.to_str().expect("utf-8 path")],
    )
    .expect("second build");
    eprintln!("second build in {seconds:.1} s: {digest_ref}");
    assert_eq!(
        digest_ref, built.digest_ref,
        "the same binary and commit give the same image digest"
    );
    // A `docker save` tarball: the manifest names the tag, and the layer is the pushed one.
    let mut archive = tar::Archive::new(std::fs::File::open(&tarball).expect("tarball written"));
    let mut names = Vec::new();
    let mut manifest = Value::Null;
    for e in archive.entries().expect("tarball is a tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        if name == "manifest.json" {
            let mut text = String::new();
            e.read_to_string(&mut text).expect("manifest.json");
            manifest = serde_json::from_str(&text).expect("manifest.json is JSON");
        }
        names.push(name);
    }
    assert_eq!(manifest[0]["RepoTags"][0], again, "{names:?}");
    let layer = image_manifest()["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .trim_start_matches("sha256:")
        .to_string();
    assert!(
        names.iter().any(|n| n.starts_with(&layer)),
        "the tarball holds the pushed layer {layer}: {names:?}"
    );
}

/// A program run inside the exported image as a container runtime runs it: in its own mount
/// namespace, chrooted into the image's filesystem bound read-only, `binds` (host path, path in
/// the image) mounted read-only on top, as `uid:gid` with no supplementary groups and no new
/// privileges; a non-root user has no capabilities left.
struct Sandbox {
    root: PathBuf,
    uid: u32,
    gid: u32,
    binds: Vec<(PathBuf, String)>,
}

impl Sandbox {
    fn command(&self, argv: &[String], vars: &[(String, String)]) -> Result<Command> {
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("NUL in a path");
        let mut binds = Vec::new();
        for (src, dst) in &self.binds {
            let target = self.root.join(dst.trim_start_matches('/'));
            // As a runtime does, the mount point is made in the copy before it goes read-only.
            if src.is_dir() {
                std::fs::create_dir_all(&target)?;
            } else if !target.exists() {
                std::fs::create_dir_all(target.parent().context("mount point parent")?)?;
                std::fs::File::create(&target)?;
            }
            binds.push((cstr(src)?, cstr(&target)?));
        }
        let root = cstr(&self.root)?;
        let (uid, gid) = (self.uid, self.gid);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)));
        // SAFETY: `enter` makes only async-signal-safe system calls, on memory allocated before
        // the fork.
        unsafe {
            cmd.pre_exec(move || enter(&root, &binds, uid, gid));
        }
        Ok(cmd)
    }
}

fn enter(root: &CStr, binds: &[(CString, CString)], uid: u32, gid: u32) -> std::io::Result<()> {
    fn ok(r: libc::c_int) -> std::io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    let none = std::ptr::null::<libc::c_char>();
    let no_data = std::ptr::null::<libc::c_void>();
    let remount_ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    // SAFETY: plain system calls on NUL-terminated strings that outlive them.
    unsafe {
        ok(libc::unshare(libc::CLONE_NEWNS))?;
        // Private first, so that none of the mounts below reaches the host's namespace.
        ok(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            no_data,
        ))?;
        ok(libc::mount(
            root.as_ptr(),
            root.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            no_data,
        ))?;
        for (src, dst) in binds {
            ok(libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                none,
                libc::MS_BIND,
                no_data,
            ))?;
            ok(libc::mount(none, dst.as_ptr(), none, remount_ro, no_data))?;
        }
        ok(libc::mount(none, root.as_ptr(), none, remount_ro, no_data))?;
        ok(libc::chroot(root.as_ptr()))?;
        ok(libc::chdir(c"/".as_ptr()))?;
        ok(libc::setgroups(0, std::ptr::null()))?;
        ok(libc::setgid(gid))?;
        ok(libc::setuid(uid))?;
        ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // After setuid, which clears it: the program dies with the test.
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    Ok(())
}

/// The image's filesystem as `crane export` flattens it, unpacked into `dir/rootfs`.
fn export_rootfs(dir: &Path) -> PathBuf {
    let tarball = dir.join("image.tar");
    crane(&[
        "export",
        &built().digest_ref,
        tarball.to_str().expect("utf-8 path"),
    ])
    .expect("crane export");
    let root = dir.join("rootfs");
    std::fs::create_dir(&root).expect("rootfs folder");
    // The image's `/`: what a non-root user must be able to enter.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut archive = tar::Archive::new(std::fs::File::open(&tarball).expect("exported tarball"));
    archive.set_preserve_permissions(true);
    // Root-owned as in the image; a non-root user cannot chown and keeps the files as its own.
    archive.set_preserve_ownerships(is_root());
    archive.unpack(&root).expect("unpack the image");
    std::fs::remove_file(&tarball).expect("remove tarball");
    root
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kimup_runs_from_the_image_filesystem_read_only_as_nonroot() {
    let config = image_config();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = export_rootfs(dir.path());
    let crds = std::fs::read_to_string(repo_root().join("crds/kimup.yaml")).expect("CRDs");
    let vars = image_env(&config);
    let (uid, gid) = image_user(&config);
    let kimup = |args: &[&str]| -> Vec<String> {
        strings(&config["config"]["Entrypoint"])
            .into_iter()
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };

    if !is_root() {
        // Without root there is no chroot: the image's own loader and libraries run the binary.
        eprintln!("not root: running the image's loader directly, without chroot or mounts");
        let loader = root.join("lib64/ld-linux-x86-64.so.2");
        let mut cmd = Command::new(&loader);
        cmd.arg("--inhibit-cache")
            .arg("--library-path")
            .arg(root.join("lib/x86_64-linux-gnu"))
            .arg(root.join("kimup"));
        let out = run_ok(
            "kimup version",
            cmd.arg("version").env_clear(),
            Duration::from_secs(30),
        )
        .expect("kimup version from the image's libraries");
        assert_eq!(stdout_of(&out), format!("kimup {VERSION}\n"));
        return;
    }

    for (who, uid, gid) in [("root", 0, 0), ("the image's user", uid, gid)] {
        let sandbox = Sandbox {
            root: root.clone(),
            uid,
            gid,
            binds: Vec::new(),
        };
        let out = run_ok(
            &format!("kimup version as {who}"),
            &mut sandbox
                .command(&kimup(&["version"]), &vars)
                .expect("command"),
            Duration::from_secs(30),
        )
        .expect("kimup version from the image");
        assert_eq!(stdout_of(&out), format!("kimup {VERSION}\n"), "as {who}");
        let out = run_ok(
            &format!("kimup crd as {who}"),
            &mut sandbox.command(&kimup(&["crd"]), &vars).expect("command"),
            Duration::from_secs(30),
        )
        .expect("kimup crd from the image");
        assert!(
            stdout_of(&out) == crds,
            "kimup crd from the image as {who} prints crds/kimup.yaml"
        );
    }

    // TLS roots: kimup reaches the TLS test registry with nothing but the image's trust store.
    // With the image's bundle as built, the registry's private CA is unknown; with that CA added
    // to a bundle mounted over the image's path, the handshake succeeds and the registry's
    // basic auth refuses the anonymous listing instead.
    let env = env();
    let tls = env.tls_registry();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).expect("input folder");
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        input.join("image.yaml"),
        format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\n\
             spec:\n  image: {}/team/app\n  baseTag: 1.0.0\n  \
             triggers: [{{type: crontab, value: '@daily'}}]\n  \
             rules: [{{name: minors, type: semver-minor, actions: [{{type: apply}}]}}]\n",
            tls.host
        ),
    )
    .expect("image.yaml");
    let with_ca = dir.path().join("bundle-with-test-ca.crt");
    let image_bundle = std::fs::read_to_string(root.join(BUNDLE.trim_start_matches('/')))
        .expect("the image's CA bundle");
    std::fs::write(
        &with_ca,
        format!(
            "{image_bundle}{}",
            tls.ca_pem.as_deref().expect("TLS registry CA")
        ),
    )
    .expect("bundle with the test CA");
    std::fs::set_permissions(&with_ca, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let evaluate = |binds: Vec<(PathBuf, String)>| -> String {
        let sandbox = Sandbox {
            root: root.clone(),
            uid,
            gid,
            binds,
        };
        let out = run(
            "kimup evaluate against the TLS registry",
            &mut sandbox
                .command(&kimup(&["evaluate", "-f", "/input/image.yaml"]), &vars)
                .expect("command"),
            Duration::from_secs(60),
        )
        .expect("kimup evaluate from the image");
        assert!(
            !out.status.success(),
            "anonymous evaluate cannot list the TLS registry"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let untrusted = evaluate(vec![(input.clone(), "/input".into())]);
    eprintln!("with the image's bundle: {untrusted}");
    assert!(
        untrusted.contains("certificate") || untrusted.contains("UnknownIssuer"),
        "the private CA is not in the image's bundle: {untrusted}"
    );
    let trusted = evaluate(vec![
        (input.clone(), "/input".into()),
        (with_ca.clone(), BUNDLE.into()),
    ]);
    eprintln!("with the test CA in the bundle: {trusted}");
    assert!(
        !trusted.contains("certificate") && trusted.contains("refused the credentials"),
        "the handshake passes with the bundle at the image's path, then basic auth refuses: {trusted}"
    );
}

/// The controller started from the image; killed on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log_tail(&self) -> String {
        format!("{}:\n{}", self.log.display(), tail(&self.log, 30))
    }

    /// Polls `check` until it holds; fails at once when kimup exits, and after `timeout`,
    /// naming `what` and kimup's log.
    async fn wait<F, Fut>(&mut self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kimup from the image exited with {status} before {what}; {}",
                    self.log_tail()
                );
            }
            match check().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => last = Some(format!("{e:#}")),
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last error: {}); {}",
                    last.as_deref().unwrap_or("none"),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Applies the chart's ServiceAccount and RBAC objects from `docs` to `client`'s cluster.
async fn apply_rbac(client: &kube::Client, namespace: &str, docs: &[Value]) -> Vec<String> {
    let mut applied = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if ![
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
        .contains(&kind)
        {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("group, version, kind");
        let (ar, caps) = pinned_kind(client, &gvk).await.expect("kind is served");
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(client.clone(), namespace, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = obj.metadata.name.clone().expect("name");
        api.patch(
            &name,
            &PatchParams::apply("image-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
        applied.push(format!("{kind}/{name}"));
    }
    applied
}

/// The chart's default deployment (kimup serving its own cluster through its ServiceAccount,
/// leader election on), run from the image the way kubelet and a container runtime run the
/// pod: the image's entrypoint with the chart's args and env, the ServiceAccount's token
/// mounted where in-cluster clients look, `KUBERNETES_SERVICE_*` set, the chart's user, a
/// read-only root. It must become ready and roll out a new tag.
#[tokio::test]
async fn chart_command_runs_the_controller_from_the_image() {
    assert!(
        is_root(),
        "running the image as a container runtime would needs root (chroot, mounts); CI runs as root"
    );
    let env = env();
    let cluster = &env.clusters[0];
    let client = cluster.client().await.expect("client");
    let config = image_config();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = export_rootfs(dir.path());

    let release_ns = env.namespace(0, "kimup-release").await.expect("namespace");
    let ns = env.namespace(0, "image-e2e").await.expect("namespace");
    let reg = env.plain_registry();
    let repo = format!("image-e2e-{}/app", std::process::id());
    reg.push_tags(&repo, &["1.0.0", "1.1.0"])
        .await
        .expect("push tags");
    let image_ref = format!("{}/{repo}", reg.host);
    let port = free_port().expect("port");

    let docs = render_chart(
        &release_ns,
        &[
            format!("watchNamespace={ns}"),
            format!("port={port}"),
            "registry.tagCacheTTL=0s".into(),
        ],
        &[format!("registry.insecureRegistries=[\"{}\"]", reg.host)],
    );
    let applied = apply_rbac(&client, &release_ns, &docs).await;
    eprintln!("applied the chart's {applied:?}");
    let rendered = of_kind(&docs, "Deployment");
    let pod = &rendered["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let uid = pod["securityContext"]["runAsUser"]
        .as_u64()
        .and_then(|u| u32::try_from(u).ok())
        .expect("the chart sets runAsUser");
    // No runAsGroup in the chart: the runtime takes the image's group.
    let (_, gid) = image_user(&config);

    // The pod's 0.0.0.0 is the pod's own network; here the host's is shared, so loopback.
    let pod_listen = format!("--listen-addr=0.0.0.0:{port}");
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| {
            if a == pod_listen {
                format!("--listen-addr=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    assert!(
        args.contains(&format!("--listen-addr=127.0.0.1:{port}")),
        "the chart passes {pod_listen}: {args:?}"
    );
    let argv: Vec<String> = strings(&config["config"]["Entrypoint"])
        .into_iter()
        .chain(args)
        .collect();

    // What kubelet adds to every pod: the API server's address and the ServiceAccount's token,
    // CA and namespace (files 0644 in a 0755 folder, as a projected volume lays them out).
    let api_port = cluster
        .url
        .rsplit(':')
        .next()
        .expect("API server port")
        .to_string();
    let mut vars = image_env(&config);
    vars.push(("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()));
    vars.push(("KUBERNETES_SERVICE_PORT".into(), api_port));
    for var in container["env"].as_array().expect("container env") {
        let name = var["name"].as_str().expect("env name").to_string();
        let value = match (
            &var["value"],
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => "kimup-image-0".into(),
            (_, Some("metadata.namespace")) => release_ns.clone(),
            _ => panic!("no value for the chart's env {var}"),
        };
        vars.push((name, value));
    }
    assert!(
        vars.contains(&("KIMUP_SERVE_IN_CLUSTER".into(), "true".into())),
        "the chart serves its own cluster by default: {vars:?}"
    );
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &release_ns)
        .create_token_request(account, &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
        .expect("a token");
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&cluster.kubeconfig_yaml).expect("kubeconfig");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .expect("CA data"),
        )
        .expect("CA is base64");
    let sa_dir = dir.path().join("serviceaccount");
    std::fs::create_dir(&sa_dir).expect("serviceaccount folder");
    std::fs::set_permissions(&sa_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (file, content) in [
        ("token", token.into_bytes()),
        ("ca.crt", ca),
        ("namespace", release_ns.clone().into_bytes()),
    ] {
        let path = sa_dir.join(file);
        std::fs::write(&path, content).expect("serviceaccount file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    assert!(
        container["volumeMounts"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "the default chart mounts nothing but the token: {container}"
    );
    let binds = vec![(
        sa_dir.clone(),
        "/var/run/secrets/kubernetes.io/serviceaccount".to_string(),
    )];

    let log = env.log_dir().join(format!("kimup-image-{ns}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let sandbox = Sandbox {
        root: root.clone(),
        uid,
        gid,
        binds,
    };
    let start = Instant::now();
    let child = sandbox
        .command(&argv, &vars)
        .expect("command")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start kimup from the image");
    let mut running = Running { child, log };

    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    running
        .wait(
            &format!("kimup from the image to answer {readyz}"),
            Duration::from_secs(60),
            || {
                let get = http.get(&readyz).send();
                async move { Ok(get.await?.status().is_success()) }
            },
        )
        .await;
    eprintln!(
        "kimup from the image ready after {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // What the kernel says about the running controller: the image's user, no capabilities, no
    // new privileges, inside the image's filesystem mounted read-only.
    let pid = running.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |k: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(field("Uid"), vec![uid.to_string(); 4]);
    assert_eq!(field("Gid"), vec![gid.to_string(); 4]);
    assert!(field("Groups").is_empty(), "no supplementary groups");
    assert_eq!(field("CapEff"), ["0000000000000000"]);
    assert_eq!(field("CapPrm"), ["0000000000000000"]);
    assert_eq!(field("NoNewPrivs"), ["1"]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).expect("proc root"),
        root.canonicalize().expect("rootfs path")
    );
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("proc mountinfo");
    let mount_options = |at: &str| -> String {
        mountinfo
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&at))
            .and_then(|f| f.get(5).map(|s| s.to_string()))
            .unwrap_or_else(|| panic!("nothing mounted at {at} for kimup:\n{mountinfo}"))
    };
    for at in ["/", "/var/run/secrets/kubernetes.io/serviceaccount"] {
        assert!(
            mount_options(at).split(',').any(|o| o == "ro"),
            "{at} is read-only for kimup: {}",
            mount_options(at)
        );
    }

    // And it does its job: the Image's rule picks 1.1.0 and the opted-in Deployment runs it.
    create_deployment(
        &client,
        &ns,
        &deployment("app", &format!("{image_ref}:1.0.0"), true),
    )
    .await;
    create_image(
        &client,
        &ns,
        &format!(
            "apiVersion: kimup.cloudavenue.io/v1alpha1\nkind: Image\nmetadata: {{name: app}}\n\
             spec:\n  image: {image_ref}\n  baseTag: 1.0.0\n  \
             triggers: [{{type: crontab, value: '@daily'}}]\n  \
             rules: [{{name: minors, type: semver-minor, actions: [{{type: apply}}]}}]\n"
        ),
    )
    .await;
    let images: Api<Image> = Api::namespaced(client.clone(), &ns);
    let synced = Instant::now();
    running
        .wait(
            &format!("kimup from the image to sync Image {ns}/app to 1.1.0"),
            Duration::from_secs(60),
            || {
                let get = images.get("app");
                async move {
                    let status = get.await?.status.unwrap_or_default();
                    ensure!(
                        status.result != Some(SyncResult::Error),
                        "status: {status:?}"
                    );
                    Ok(status.result == Some(SyncResult::Success)
                        && status.tag.as_deref() == Some("1.1.0"))
                }
            },
        )
        .await;
    let (containers, _) = deployment_images(&client, &ns, "app").await;
    assert_eq!(containers[0], format!("{image_ref}:1.1.0"), "applied");
    eprintln!(
        "Image synced and applied {:.1} s after it was created",
        synced.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&running.log).expect("kimup log");
    assert!(
        !log.contains("forbidden") && !log.contains("Read-only file system"),
        "kimup from the image was refused nothing; {}",
        running.log_tail()
    );
}
