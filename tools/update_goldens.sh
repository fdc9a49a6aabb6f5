#!/usr/bin/env bash
# Rewrites the netlink golden files from the current encoder. Review the diff
# (git diff nat/backend/nftables/testdata) before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
bazel test //nat/backend/nftables:encode_test --nocache_test_results \
  --test_env=FABRIC_GOLDEN_DIR="$PWD/nat/backend/nftables/testdata" \
  --spawn_strategy=local
