#!/usr/bin/env bash
# Runs every test: installs what is missing, builds everything, runs all
# Bazel test targets (unit, kernel-in-namespace, end-to-end), and prints one
# closing line "N passed, N failed" counting test targets.
#
# Kernel tests need root: they create their own network namespaces and
# remove them, even on failure. Extra arguments go to `bazel test`.
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
bazel test //... --nocache_test_results "$@" 2>&1 | tee "$log" | grep -vE 'linux-sandbox|^\[[0-9,]+ / [0-9,]+\]'
rc=${PIPESTATUS[0]}

passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE|FAILED TO BUILD)' "$log")
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # The build itself failed before any test could report.
  failed=1
fi
echo "${passed} passed, ${failed} failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
