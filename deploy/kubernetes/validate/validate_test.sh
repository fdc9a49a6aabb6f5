#!/bin/bash
# Validates deploy/kubernetes/*.yaml offline against the Kubernetes schema
# (kubernetes-models) and Fabric NAT's own rules, then proves that broken
# manifests fail: in-process breakages (validate.mjs --self-test) and broken
# files fed through the command line. Run by Bazel
# (//deploy:kubernetes_validate_test, tags local: node_modules, installed by
# tools/setup.sh with npm ci, lives beside validate.mjs in the source tree).
set -uo pipefail

ROOT="${TEST_SRCDIR:-.}/${TEST_WORKSPACE:-}"
# The real source folder (runfiles are symlinks into it): node resolves the
# packages from the script's real path, and the default file list is every
# *.yaml in deploy/kubernetes there.
DIR=$(dirname "$(readlink -f "$ROOT/deploy/kubernetes/validate/validate.mjs")")
MANIFEST="$DIR/../fabric-nat.yaml"

if ! command -v node >/dev/null; then
  echo "node is missing: run tools/setup.sh"
  exit 1
fi
if [ ! -d "$DIR/node_modules/kubernetes-models" ]; then
  echo "$DIR/node_modules is missing: run tools/setup.sh (npm ci there)"
  exit 1
fi

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

echo "== every document in deploy/kubernetes/*.yaml, and the self-test"
node "$DIR/validate.mjs" --self-test || fail "the manifests do not validate (above)"

tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/fabric-k8s.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# expect_failure NAME EXPECTED-TEXT: validates $tmp/NAME.yaml, which must
# fail with a line containing EXPECTED-TEXT.
expect_failure() {
  local out
  out=$(node "$DIR/validate.mjs" "$tmp/$1.yaml" 2>&1)
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    fail "broken file $1 passed: $out"
  elif ! grep -qF -- "$2" <<<"$out"; then
    fail "broken file $1 failed without mentioning '$2': $out"
  else
    echo "ok: broken file $1 rejected: $(grep -F -- "$2" <<<"$out" | head -1)"
  fi
}

echo "== broken copies of fabric-nat.yaml"
sed 's/^      hostNetwork: true$/      hostNetwork: "yes"/' "$MANIFEST" >"$tmp/wrong-type.yaml"
cmp -s "$MANIFEST" "$tmp/wrong-type.yaml" && fail "sed did not find hostNetwork: true"
expect_failure wrong-type "/spec/template/spec/hostNetwork: must be boolean"

sed 's/^            periodSeconds: 5$/            periodSeconds: five/' "$MANIFEST" >"$tmp/wrong-int.yaml"
cmp -s "$MANIFEST" "$tmp/wrong-int.yaml" && fail "sed did not find periodSeconds: 5"
expect_failure wrong-int "readinessProbe/periodSeconds: must be integer"

sed 's/^kind: DaemonSet$/kind: DaemonSett/' "$MANIFEST" >"$tmp/wrong-kind.yaml"
expect_failure wrong-kind 'no Kubernetes schema for apiVersion "apps/v1" kind "DaemonSett"'

{ cat "$MANIFEST"; printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata: { name: x\n'; } >"$tmp/bad-yaml.yaml"
expect_failure bad-yaml "YAML:"

sed 's/add: \["NET_ADMIN"\]/add: ["NET_ADMIN", "SYS_ADMIN"]/' "$MANIFEST" >"$tmp/extra-cap.yaml"
expect_failure extra-cap "capabilities/add: must be exactly NET_ADMIN"

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "kubernetes manifests: all checks passed"
