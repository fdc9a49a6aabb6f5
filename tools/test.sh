#!/usr/bin/env bash
# Runs every test: installs what is missing, builds everything, runs all
# Bazel test targets (unit, kernel-in-namespace, end-to-end), then the
# concurrency stress test again under ThreadSanitizer and the protocol
# parsers under libFuzzer (clang, bounded run), and prints one closing line
# "N passed, N failed, N skipped": test targets passed and failed (each extra
# run counts as one more), and test cases skipped inside passing targets.
#
# Kernel tests need root: they create their own network namespaces and
# remove them, even on failure. Extra arguments go to both `bazel test` runs.
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
skipped=0
overall=0
log=$(mktemp)
marker=$(mktemp)
trap 'rm -f "$log" "$marker"' EXIT

# run_bazel LABEL ARGS...: runs `bazel test`, adds its targets to the counts.
run_bazel() {
  local label=$1; shift
  echo "== $label: bazel test $*"
  touch "$marker"
  bazel test "$@" 2>&1 | tee "$log" | grep -vE 'linux-sandbox|^\[[0-9,]+ / [0-9,]+\]'
  local rc=${PIPESTATUS[0]}
  # Test cases skipped inside a passing target (GTEST_SKIP: SCTP without the
  # kernel module) are counted as skipped, not passed.
  local s
  s=$(find -L bazel-testlogs -name test.log -newer "$marker" \
        -exec grep -hE '^\[  SKIPPED \] [^ ]+ \([0-9]+ ms\)' {} + 2>/dev/null | wc -l)
  skipped=$((skipped + s))
  local p f
  p=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
  f=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE|FAILED TO BUILD)' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1  # the build itself failed before any test could report
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$rc" -eq 0 ] || overall=1
}

run_bazel "all tests" //... --nocache_test_results "$@"
run_bazel "ThreadSanitizer" --config=tsan //tests/stress:all --nocache_test_results "$@"
run_bazel "libFuzzer (bounded)" --config=fuzz //agent/natpmp:codec_fuzz_test //cni:plugin_fuzz_test //cni:grpc_unary_fuzz_test //agent:unary_server_fuzz_test //agent:http_server_fuzz_test //agent/ssdp:ssdp_fuzz_test //agent/upnp:soap_fuzz_test //agent/upstream:codec_fuzz_test --nocache_test_results "$@"

echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$overall" -eq 0 ] && [ "$failed" -eq 0 ]
