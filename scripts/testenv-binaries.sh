#!/usr/bin/env bash
# Builds or installs the binaries the test control plane needs, cached outside the repo and keyed
# by version, so a warm machine pays nothing and a version bump rebuilds only what changed.
#   kube-apiserver and etcd: built from their Go modules through tests/env/tools/*
#   kube-controller-manager, kube-scheduler: the same k8s.io/kubernetes module (rollout tests;
#          cluster add --long-lived needs the controller manager's token controller)
#   kwok: simulated nodes and pods, tests/env/tools/kwok, and its Stage files (kwok-stages/)
#   otelcol: an OpenTelemetry Collector (OTLP receiver, file and debug exporters), tests/env/tools/otelcol
#   helm: the helm v3 CLI, tests/env/tools/helm
#   toxiproxy: Shopify's TCP fault injector (latency, resets, timeouts), tests/env/tools/toxiproxy
#   crane: go-containerregistry's registry CLI, which assembles and pushes kimup's container image
#          without a daemon, tests/env/tools/crane
#   jaeger: the Jaeger all-in-one tracing backend (OTLP in, HTTP query API), tests/env/tools/jaeger
#   promql-check: Prometheus's PromQL parser behind a small main.go, tests/env/tools/promql
#   docker-registry: Debian's package
#   aiosmtpd: PyPI, the SMTP server alert tests deliver to
# Prints the cache directory on stdout's last line. Idempotent; safe to run concurrently is NOT
# promised, run it once before the tests (.ci/run and the README commands do).
# With names as arguments, builds or installs only those (scripts/build-image.sh asks for crane).
set -euo pipefail
only=" $* "
want() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KIMUP_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kimup-testenv}"
mkdir -p "$cache"

modver() { awk -v m="$2" '$1=="require" && $2==m {print $3} $1==m && (NF==2 || $3=="//") {print $2}' "$1/go.mod" | head -n1; }

kube_dir="$root/tests/env/tools/kube-apiserver"
etcd_dir="$root/tests/env/tools/etcd"
otelcol_dir="$root/tests/env/tools/otelcol"
helm_dir="$root/tests/env/tools/helm"
toxiproxy_dir="$root/tests/env/tools/toxiproxy"
crane_dir="$root/tests/env/tools/crane"
jaeger_dir="$root/tests/env/tools/jaeger"
promql_dir="$root/tests/env/tools/promql"
kwok_dir="$root/tests/env/tools/kwok"
KUBE_VERSION="$(modver "$kube_dir" k8s.io/kubernetes)"
ETCD_VERSION="$(modver "$etcd_dir" go.etcd.io/etcd/server/v3)"
# The collector's core and contrib modules move together (scripts/gen-tools-mod.sh), so the core
# otelcol version names the build.
OTELCOL_VERSION="$(modver "$otelcol_dir" go.opentelemetry.io/collector/otelcol)"
HELM_VERSION="$(modver "$helm_dir" helm.sh/helm/v3)"
HELM_CLIENT_GO="$(modver "$helm_dir" k8s.io/client-go)"
TOXIPROXY_VERSION="$(modver "$toxiproxy_dir" github.com/Shopify/toxiproxy/v2)"
CRANE_VERSION="$(modver "$crane_dir" github.com/google/go-containerregistry)"
JAEGER_VERSION="$(modver "$jaeger_dir" github.com/jaegertracing/jaeger)"
PROMETHEUS_VERSION="$(modver "$promql_dir" github.com/prometheus/prometheus)"
KWOK_VERSION="$(modver "$kwok_dir" sigs.k8s.io/kwok)"
[ -n "$KUBE_VERSION" ] && [ -n "$ETCD_VERSION" ] && [ -n "$OTELCOL_VERSION" ] && [ -n "$HELM_VERSION" ] && [ -n "$HELM_CLIENT_GO" ] \
  && [ -n "$TOXIPROXY_VERSION" ] && [ -n "$CRANE_VERSION" ] && [ -n "$JAEGER_VERSION" ] && [ -n "$PROMETHEUS_VERSION" ] && [ -n "$KWOK_VERSION" ] \
  || { echo "cannot read pinned versions from tests/env/tools/*/go.mod" >&2; exit 1; }

log() { echo "[testenv-binaries] $*" >&2; }

build_go() { # name version module_dir package ldflags
  local name="$1" version="$2" dir="$3" pkg="$4" ldflags="$5"
  local out="$cache/$name-$version/$name"
  want "$name" || return 0
  if [ -x "$out" ]; then log "$name $version cached at $out"; return; fi
  command -v go >/dev/null || { echo "go is required to build $name $version (install Go >= 1.26)" >&2; exit 1; }
  log "building $name $version (first run only, several minutes)"
  local start=$SECONDS tmp="$cache/$name-$version.tmp.$$"
  mkdir -p "$cache/$name-$version"
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
  mv "$tmp" "$out"
  log "built $name $version in $((SECONDS - start)) s"
}

kminor="$(echo "$KUBE_VERSION" | cut -d. -f2)"
kv="k8s.io/component-base/version"
cv="k8s.io/client-go/pkg/version"
kflags="-s -w"
for p in "$kv" "$cv"; do
  kflags="$kflags -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$kminor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build_go kube-apiserver "$KUBE_VERSION" "$kube_dir" k8s.io/kubernetes/cmd/kube-apiserver "$kflags" &
kpid=$!
# After kube-apiserver, not beside it: the three share most packages, so the second and third
# builds mostly read Go's build cache.
(wait_kube() { while [ ! -x "$cache/kube-apiserver-$KUBE_VERSION/kube-apiserver" ] && kill -0 "$kpid" 2>/dev/null; do sleep 1; done; }
 wait_kube
 build_go kube-controller-manager "$KUBE_VERSION" "$kube_dir" k8s.io/kubernetes/cmd/kube-controller-manager "$kflags" \
 && build_go kube-scheduler "$KUBE_VERSION" "$kube_dir" k8s.io/kubernetes/cmd/kube-scheduler "$kflags") &
kcpid=$!
build_go kwok "$KWOK_VERSION" "$kwok_dir" sigs.k8s.io/kwok/cmd/kwok "-s -w" &
kwpid=$!
build_go etcd "$ETCD_VERSION" "$etcd_dir" go.etcd.io/etcd/server/v3 "-s -w" &
epid=$!
# otelcol's build is a plain package main in its tools module (main.go), hence the package ".".
build_go otelcol "$OTELCOL_VERSION" "$otelcol_dir" . "-s -w -X main.version=$OTELCOL_VERSION" &
opid=$!
# As helm's Makefile: its version, and the default Kubernetes version of .Capabilities (helm
# template, helm lint) taken from the client-go it is built with (v0.Y.Z -> 1.Y).
hv="helm.sh/helm/v3"
hminor="$(echo "$HELM_CLIENT_GO" | cut -d. -f2)"
hflags="-s -w -X $hv/internal/version.version=$HELM_VERSION -X $hv/internal/version.gitTreeState=clean -X $hv/internal/version.metadata="
for p in "$hv/pkg/lint/rules" "$hv/pkg/chartutil"; do
  hflags="$hflags -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$hminor"
done
build_go helm "$HELM_VERSION" "$helm_dir" helm.sh/helm/v3/cmd/helm "$hflags" &
hpid=$!
# The server command is cmd/server; its version is a package variable of the module root.
build_go toxiproxy "$TOXIPROXY_VERSION" "$toxiproxy_dir" github.com/Shopify/toxiproxy/v2/cmd/server \
  "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" &
tpid=$!
build_go crane "$CRANE_VERSION" "$crane_dir" github.com/google/go-containerregistry/cmd/crane \
  "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION" &
cpid=$!
# Jaeger's Makefile stamps internal/version the same way. Its UI assets are built with npm from
# the jaeger-ui repository and are not part of the Go module, so this build serves Jaeger's
# placeholder page on the UI port; the query API (what the demo links and the test reads) is whole.
jv="github.com/jaegertracing/jaeger/internal/version"
build_go jaeger "$JAEGER_VERSION" "$jaeger_dir" github.com/jaegertracing/jaeger/cmd/jaeger \
  "-s -w -X $jv.latestVersion=$JAEGER_VERSION -X $jv.date=1970-01-01T00:00:00Z" &
jpid=$!
# Keyed by the parser's version and a hash of our main.go, which is ours and may change alone.
PROMQL_KEY="$PROMETHEUS_VERSION-$(sha256sum "$promql_dir/main.go" | cut -c1-12)"
build_go promql-check "$PROMQL_KEY" "$promql_dir" . "-s -w" &
ppid_=$!
fail=0
wait "$kpid" || fail=1
wait "$epid" || fail=1
wait "$opid" || fail=1
wait "$hpid" || fail=1
wait "$tpid" || fail=1
wait "$cpid" || fail=1
wait "$jpid" || fail=1
wait "$ppid_" || fail=1
wait "$kcpid" || fail=1
wait "$kwpid" || fail=1
[ "$fail" = 0 ] || { echo "building the test control plane binaries failed (see above)" >&2; exit 1; }

if want docker-registry && ! command -v docker-registry >/dev/null && [ ! -x /usr/bin/docker-registry ]; then
  log "installing Debian's docker-registry"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry >&2
  # The package starts a system service on :5000; the tests run their own instances.
  $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || $SUDO service docker-registry stop >/dev/null 2>&1 || true
fi

# The SMTP server of the alert tests: aiosmtpd, a real SMTP implementation, from PyPI.
AIOSMTPD_VERSION=1.4.6
if want aiosmtpd && ! python3 -c "import aiosmtpd" 2>/dev/null; then
  log "installing aiosmtpd $AIOSMTPD_VERSION"
  python3 -m pip install -q "aiosmtpd==$AIOSMTPD_VERSION" >&2 \
    || python3 -m pip install -q --break-system-packages "aiosmtpd==$AIOSMTPD_VERSION" >&2
fi

# A link to a tool not built yet (a run with names) dangles until a full run builds it.
ln -sfn "$cache/kube-apiserver-$KUBE_VERSION/kube-apiserver" "$cache/kube-apiserver"
ln -sfn "$cache/etcd-$ETCD_VERSION/etcd" "$cache/etcd"
ln -sfn "$cache/otelcol-$OTELCOL_VERSION/otelcol" "$cache/otelcol"
ln -sfn "$cache/helm-$HELM_VERSION/helm" "$cache/helm"
ln -sfn "$cache/toxiproxy-$TOXIPROXY_VERSION/toxiproxy" "$cache/toxiproxy"
ln -sfn "$cache/crane-$CRANE_VERSION/crane" "$cache/crane"
ln -sfn "$cache/jaeger-$JAEGER_VERSION/jaeger" "$cache/jaeger"
ln -sfn "$cache/promql-check-$PROMQL_KEY/promql-check" "$cache/promql-check"
ln -sfn "$cache/kube-controller-manager-$KUBE_VERSION/kube-controller-manager" "$cache/kube-controller-manager"
ln -sfn "$cache/kube-scheduler-$KUBE_VERSION/kube-scheduler" "$cache/kube-scheduler"
ln -sfn "$cache/kwok-$KWOK_VERSION/kwok" "$cache/kwok"
# kwok's node and pod lifecycles are Stage files of its module, not of its binary.
if want kwok && [ ! -d "$cache/kwok-$KWOK_VERSION/stages" ]; then
  kwok_src="$(cd "$kwok_dir" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "$cache/kwok-$KWOK_VERSION/stages.tmp.$$"
  cp "$kwok_src"/kustomize/stage/node/fast/node-*.yaml "$kwok_src"/kustomize/stage/pod/fast/pod-*.yaml \
    "$cache/kwok-$KWOK_VERSION/stages.tmp.$$/"
  chmod u+w "$cache/kwok-$KWOK_VERSION/stages.tmp.$$"/*.yaml
  mv "$cache/kwok-$KWOK_VERSION/stages.tmp.$$" "$cache/kwok-$KWOK_VERSION/stages"
fi
ln -sfn "$cache/kwok-$KWOK_VERSION/stages" "$cache/kwok-stages"
echo "$cache"
