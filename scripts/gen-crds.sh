#!/usr/bin/env bash
# Regenerates the CRDs from the Rust types (src/api): crds/kimup.yaml and the Helm chart's copy.
# tests/crds.rs fails when either is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --bin kimup -- crd > crds/kimup.yaml
cp crds/kimup.yaml charts/kimup/crds/kimup.yaml
echo "wrote crds/kimup.yaml and charts/kimup/crds/kimup.yaml"
