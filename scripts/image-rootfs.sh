#!/usr/bin/env bash
# Assembles the filesystem of kimup's container image into OUTDIR. It is the one description of
# what the image holds: the Dockerfile's build stage and scripts/build-image.sh both run it.
#   usage: scripts/image-rootfs.sh BINARY OUTDIR
#
#   /kimup                                  the binary
#   /lib64/ld-linux-x86-64.so.2, /lib/...   the dynamic loader and libraries `ldd BINARY` names,
#                                           copied as real files (the distroless/cc approach)
#   /etc/ssl/certs/ca-certificates.crt      Debian's CA bundle, for registries with public TLS
#   /etc/passwd, /etc/group                 root and nonroot (65532), the user the image runs as
#   /etc/nsswitch.conf                      files, then dns (without it glibc asks DNS first)
#   /var/lib/dpkg/status.d/, /usr/share/doc/*/copyright
#                                           which Debian packages those files are (so image
#                                           scanners see glibc's version) and their licences
#
# Nothing in it is writable or needs to be: kimup runs on a read-only root filesystem and writes
# no file, not even in /tmp (there is none). The host must be a glibc >= 2.34 system (Debian 12):
# since 2.34 the files and dns NSS modules are inside libc.so.6, so no libnss_*.so is needed.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BINARY OUTDIR" >&2; exit 2; }
bin="$1" out="$2"
[ -x "$bin" ] || { echo "$0: $bin is not an executable file" >&2; exit 1; }
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "$0: $out exists and is not empty" >&2
  exit 1
fi
die() { echo "$0: $*" >&2; exit 1; }

glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
case "$glibc" in
  2.3[4-9]* | 2.[4-9]* | [3-9].*) ;;
  *) die "glibc ${glibc:-unknown} on this host; the image needs >= 2.34 (NSS files/dns inside libc)" ;;
esac
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || die "$bundle is missing or empty (apt-get install ca-certificates)"

mkdir -p "$out"
install -m 0755 "$bin" "$out/kimup"

# `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for the loader; the vDSO
# has no path. A library it cannot find ("not found") fails the build instead of the container.
libs="$(ldd "$bin" 2>&1)" || true
if grep -q 'not a dynamic executable\|statically linked' <<<"$libs"; then
  libs=""
elif grep -q 'not found' <<<"$libs"; then
  die "ldd cannot resolve every library of $bin:"$'\n'"$libs"
fi
paths="$(awk '$2 == "=>" && $3 ~ /^\// {print $3} $2 != "=>" && $1 ~ /^\// {print $1}' <<<"$libs")"
if [ -n "$libs" ] && ! grep -q 'ld-linux' <<<"$paths"; then
  die "ldd names no dynamic loader for $bin:"$'\n'"$libs"
fi
packages=""
for p in $paths; do
  mkdir -p "$out$(dirname "$p")"
  cp -L "$p" "$out$p"
  # dpkg knows the loader and libraries by their unmerged paths (/lib64, /lib), as ldd prints them.
  if command -v dpkg >/dev/null; then
    pkg="$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1 || true)"
    [ -n "$pkg" ] && packages="$packages $pkg"
  fi
done

mkdir -p "$out/etc/ssl/certs"
cp -L "$bundle" "$out$bundle"
command -v dpkg >/dev/null && dpkg -s ca-certificates >/dev/null 2>&1 && packages="$packages ca-certificates"

# No home directory: kimup writes nothing, and kube looks for ~/.kube/config only to fall back
# to the in-cluster configuration.
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd:    files
group:     files
hosts:     files dns
networks:  files
protocols: files
services:  files
EOF

for pkg in $(tr ' ' '\n' <<<"$packages" | sort -u); do
  mkdir -p "$out/var/lib/dpkg/status.d" "$out/usr/share/doc/$pkg"
  dpkg-query -s "$pkg" >"$out/var/lib/dpkg/status.d/$pkg"
  if [ -e "/usr/share/doc/$pkg/copyright" ]; then
    cp -L "/usr/share/doc/$pkg/copyright" "$out/usr/share/doc/$pkg/copyright"
  fi
done

# Files readable by all and written by none but their owner (root, once packed); the binary and
# the loader executable.
chmod -R u=rwX,go=rX "$out"
chmod 0755 "$out/kimup"

# The binary must start with nothing but these libraries (a binary linked against a newer glibc
# than this host's would fail here, not in the cluster).
loader="$(grep 'ld-linux' <<<"$paths" | head -n1 || true)"
if [ -n "$loader" ]; then
  libdirs="$(for p in $paths; do dirname "$out$p"; done | sort -u | paste -sd:)"
  "$out$loader" --inhibit-cache --library-path "$libdirs" "$out/kimup" version >/dev/null \
    || die "$out/kimup does not start with the copied libraries"
fi
