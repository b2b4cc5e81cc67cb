#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs or builds what the tests need
# (cached outside the repo), checks formatting and lints, then runs every test against real
# kube-apiservers, etcd, registries and alert listeners started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/testenv-binaries.sh >/dev/null
echo "[test] binaries ready after $((SECONDS - start)) s"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] lint clean after $((SECONDS - start)) s"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${KIMUP_TEST_THREADS:-4}"
echo "[test] suite finished after $((SECONDS - start)) s"
