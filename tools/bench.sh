#!/usr/bin/env bash
# Runs every benchmark and prints its figures (as root: kernel benchmarks use
# network namespaces of their own). Not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bazel build -c opt //tests/bench:all
# The opt tree itself: bazel-bin follows whichever configuration built last.
BIN=$(bazel info -c opt bazel-bin 2>/dev/null)
for b in nat_bench packet_path_bench cni_bench heal_bench natpmp_bench upnp_bench conntrack_bench proxy_bench; do
  echo
  (cd "$BIN/tests/bench/$b.runfiles/fabric_nat" && TEST_SRCDIR=.. TEST_WORKSPACE=fabric_nat ../../$b "$@")
done
# The agent under load and at scale: readers while changes run, the periodic
# check and Diagnose, cold start, heal and RSS at 100k (a few minutes each).
for b in read_latency_bench check_bench scale_bench; do
  echo
  (cd "$BIN/tests/bench/$b.runfiles/fabric_nat" && TEST_SRCDIR=.. TEST_WORKSPACE=fabric_nat ../../$b)
done
