#!/usr/bin/env bash
# Builds kimup's container image without a Docker daemon and pushes it, or writes it to a
# tarball. Same image as the Dockerfile: the filesystem comes from scripts/image-rootfs.sh.
#
#   scripts/build-image.sh --push ghcr.io/you/kimup:0.1.0
#   scripts/build-image.sh --push 127.0.0.1:5000/kimup --insecure --binary target/debug/kimup
#   scripts/build-image.sh --tarball kimup.tar          # docker load / podman load / crane push
#
#   --push REF      repository[:tag] to push to; the tag defaults to Cargo.toml's version
#   --tarball FILE  write a `docker save` tarball instead of (or as well as) pushing
#   --binary PATH   package this kimup binary (the tests give their debug build); by default
#                   `cargo build --release --locked` builds one
#   --insecure      the registry of REF speaks plain HTTP
# Credentials for REF come from crane's keychain: ~/.docker/config.json ($DOCKER_CONFIG), as
# written by `crane auth login` or `docker login`. Prints the pushed `repo@sha256:...` (or the
# tarball's path) on stdout's last line.
#
# Why crane (go-containerregistry): it needs no daemon, no root, no storage driver and no base
# image to pull (the image is one layer on an empty base), and it is built from its pinned Go
# module like the test tools (scripts/testenv-binaries.sh crane). buildah would need a storage
# driver, user namespaces or root, and a FROM scratch build that still goes through containers/storage.
#
# The layer is reproducible: names sorted, mtime SOURCE_DATE_EPOCH (default 0), owner 0:0, PAX
# headers without atime/ctime; crane gzips it deterministically and the config carries no
# timestamp, so the same binary gives the same image digest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

push="" tarball="" binary="" insecure=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push="${2:?--push needs a reference}"; shift 2 ;;
    --tarball) tarball="${2:?--tarball needs a file}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --insecure) insecure=(--insecure); shift ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$push$tarball" ] || { echo "$0: give --push REF and/or --tarball FILE (see --help)" >&2; exit 2; }
log() { echo "[build-image] $*" >&2; }
die() { echo "$0: $*" >&2; exit 1; }

# [package] fields of Cargo.toml: the version, licence, description and source of the labels.
cargo_field() {
  awk -v k="$1" -F'"' '/^\[/ {p = ($0 == "[package]")} p && $0 ~ "^" k " *=" {print $2; exit}' \
    "$root/Cargo.toml"
}
version="$(cargo_field version)"
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$root/charts/kimup/Chart.yaml")"
[ -n "$version" ] || die "no version in Cargo.toml's [package]"
[ "$version" = "$app_version" ] \
  || die "Cargo.toml's version $version is not charts/kimup/Chart.yaml's appVersion $app_version: the chart would run another image"

if [ -n "$push" ]; then
  case "$push" in *@*) die "--push takes repository[:tag], not a digest" ;; esac
  # A tag is a ':' after the last '/' (a ':' before it is a registry port).
  case "${push##*/}" in *:*) ;; *) push="$push:$version" ;; esac
fi

if [ -z "$binary" ]; then
  log "cargo build --release --locked --bin kimup"
  (cd "$root" && cargo build --release --locked --bin kimup >&2)
  binary="${CARGO_TARGET_DIR:-$root/target}/release/kimup"
fi
built="$("$binary" version)" || die "$binary does not run"
[ "$built" = "kimup $version" ] || die "$binary is $built, Cargo.toml says $version"

case "$(uname -m)" in
  x86_64) platform=linux/amd64 ;;
  aarch64) platform=linux/arm64 ;;
  *) die "no image platform for $(uname -m)" ;;
esac

crane="${CRANE:-}"
if [ -z "$crane" ]; then
  crane="$(bash "$root/scripts/testenv-binaries.sh" crane | tail -n1)/crane"
fi
[ -x "$crane" ] || die "crane not found at $crane"

work="$(mktemp -d "${TMPDIR:-/tmp}/kimup-image.XXXXXX")"
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true # its status is SIGTERM's, not the build's
  fi
  rm -rf "$work"
}
trap cleanup EXIT

bash "$root/scripts/image-rootfs.sh" "$binary" "$work/rootfs"
epoch="${SOURCE_DATE_EPOCH:-0}"
(cd "$work/rootfs" && LC_ALL=C tar --create --file "$work/layer.tar" --sort=name \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -- $(LC_ALL=C ls -A))
log "layer: $(du -k "$work/layer.tar" | cut -f1) KiB uncompressed"

# crane mutate reads its input from a registry, so the bare image (the layer on an empty OCI
# base) goes to a throwaway in-memory registry on loopback; only the finished image (entrypoint,
# user, labels) ever reaches REF.
"$crane" registry serve --address 127.0.0.1:0 2>"$work/registry.log" &
registry_pid=$!
deadline=$((SECONDS + 20))
port=""
while [ -z "$port" ]; do
  port="$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")"
  if [ -z "$port" ]; then
    kill -0 "$registry_pid" 2>/dev/null || die "crane registry serve exited: $(cat "$work/registry.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "crane registry serve did not report its port within 20 s"
    sleep 0.1
  fi
done
bare="127.0.0.1:$port/kimup:bare"
"$crane" append --oci-empty-base --new_layer "$work/layer.tar" --new_tag "$bare" 2>"$work/append.log" >/dev/null \
  || die "crane append failed: $(cat "$work/append.log")"

repository="$(cargo_field repository)"
revision=""
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  revision="$(git -C "$root" rev-parse HEAD)"
  [ -z "$(git -C "$root" status --porcelain 2>/dev/null)" ] \
    || log "warning: the work tree has changes that revision $revision does not hold"
fi
config=(
  --entrypoint /kimup --cmd run --user 65532:65532
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  --set-platform "$platform"
  --label org.opencontainers.image.title=kimup
  --label "org.opencontainers.image.description=$(cargo_field description)"
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.revision=$revision"
  --label "org.opencontainers.image.source=$repository"
  --label "org.opencontainers.image.licenses=$(cargo_field license)"
)
if [ -n "$tarball" ]; then
  "$crane" mutate "$bare" "${config[@]}" --tag "${push:-kimup:$version}" --output "$tarball" >&2
  log "wrote $tarball"
fi
if [ -n "$push" ]; then
  digest_ref="$("$crane" mutate "${insecure[@]}" "$bare" "${config[@]}" --tag "$push")"
  log "pushed $push"
  echo "$digest_ref"
else
  echo "$tarball"
fi
