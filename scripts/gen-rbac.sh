#!/usr/bin/env bash
# Regenerates the chart's copy of kimup's rule set from src/rbac.rs (the rules `kimup cluster add`
# grants in member clusters): charts/kimup/files/member-rules.yaml. tests/chart.rs fails when it
# is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p charts/kimup/files
cargo run -q --bin kimup -- rbac > charts/kimup/files/member-rules.yaml
echo "wrote charts/kimup/files/member-rules.yaml"
