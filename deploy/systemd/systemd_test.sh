#!/bin/bash
# Checks deploy/systemd/fabric-agent.service: `systemd-analyze verify` must
# report nothing (it exits 0 on most problems, so any output fails), and
# `systemd-analyze security --offline=yes` must rate its exposure at most
# 4.0 (MAX_EXPOSURE). verify needs the ExecStart binary and the system's own
# units (sysinit.target, ...), so both run on a temporary root: the system's
# unit files, the unit unchanged in /etc/systemd/system and the built
# fabric-agent at /usr/local/bin/fabric-agent. Broken and weak copies of the
# unit must fail too, so the test cannot pass by checking nothing.
# Run by Bazel (//deploy:systemd_test, tags local: it runs the host's
# systemd-analyze).
set -uo pipefail

ROOT="${TEST_SRCDIR:-.}/${TEST_WORKSPACE:-}"
UNIT="$ROOT/deploy/systemd/fabric-agent.service"
AGENT="$ROOT/agent/fabric-agent"
MAX_EXPOSURE="${MAX_EXPOSURE:-4.0}"

if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze is missing: run tools/setup.sh (package systemd)"
  exit 1
fi
units=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
  [ -e "$d/sysinit.target" ] && { units=$d; break; }
done
if [ -z "$units" ]; then
  echo "no system unit directory with sysinit.target"
  exit 1
fi

tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/fabric-unit.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a "$units" "$root/usr/lib/systemd/system"
cp "$AGENT" "$root/usr/local/bin/fabric-agent"

# install FILE: puts FILE in the root as fabric-agent.service.
install_unit() { cp "$1" "$root/etc/systemd/system/fabric-agent.service"; }

# verify: prints what systemd-analyze verify says; status 1 if anything.
verify() {
  local out rc
  out=$(systemd-analyze verify --root="$root" fabric-agent.service 2>&1)
  rc=$?
  [ -n "$out" ] && printf '%s\n' "$out"
  [ "$rc" -eq 0 ] && [ -z "$out" ]
}

# exposure: prints the overall exposure (0.0-10.0), or nothing.
exposure() {
  systemd-analyze security --offline=yes --root="$root" --no-pager fabric-agent.service 2>&1 |
    sed -n 's/.*Overall exposure level for fabric-agent\.service: \([0-9][0-9.]*\).*/\1/p'
}

above() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# The unit itself.
install_unit "$UNIT"
if out=$(verify); then
  echo "ok: systemd-analyze verify reports nothing"
else
  fail "systemd-analyze verify: $out"
fi
score=$(exposure)
if [ -z "$score" ]; then
  fail "no overall exposure in the output of systemd-analyze security"
  systemd-analyze security --offline=yes --root="$root" --no-pager fabric-agent.service
elif above "$score" "$MAX_EXPOSURE"; then
  fail "exposure $score is above $MAX_EXPOSURE"
  systemd-analyze security --offline=yes --root="$root" --no-pager fabric-agent.service | grep '✗'
else
  echo "ok: exposure $score (at most $MAX_EXPOSURE)"
fi
# The directives the deployment relies on, by name (verify accepts a unit
# without them).
for want in '^Type=notify$' '^NotifyAccess=main$' '^Restart=on-failure$' \
            '^CapabilityBoundingSet=CAP_NET_ADMIN$' '^ProtectSystem=strict$' \
            '^StateDirectory=fabric-nat$' '^RuntimeDirectory=fabric-nat$' \
            '^RuntimeDirectoryPreserve=yes$' '^NoNewPrivileges=yes$' '^PrivateTmp=yes$' \
            '^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK$'; do
  grep -qE "$want" "$UNIT" || fail "fabric-agent.service has no line matching $want"
done

# A broken copy must fail verify: a misspelt key, a bad value, a missing
# binary.
for breakage in 's/^Type=notify$/Typo=notify/' 's/^Restart=on-failure$/Restart=sometimes/' \
                's|^ExecStart=/usr/local/bin/fabric-agent|ExecStart=/usr/local/bin/fabric-agent-missing|'; do
  sed "$breakage" "$UNIT" >"$tmp/broken.service"
  cmp -s "$UNIT" "$tmp/broken.service" && { fail "self-test: '$breakage' changed nothing"; continue; }
  install_unit "$tmp/broken.service"
  if verify >/dev/null; then
    fail "self-test: verify accepted a unit broken by '$breakage'"
  else
    echo "ok: self-test: verify rejects a unit broken by '$breakage'"
  fi
done
# An unhardened copy must rate above the limit, so the parsing above is
# real.
printf '[Service]\nExecStart=/usr/local/bin/fabric-agent\n' >"$tmp/weak.service"
install_unit "$tmp/weak.service"
weak=$(exposure)
if [ -n "$weak" ] && above "$weak" "$MAX_EXPOSURE"; then
  echo "ok: self-test: an unhardened unit rates $weak, above $MAX_EXPOSURE"
else
  fail "self-test: an unhardened unit rated '${weak}', expected above $MAX_EXPOSURE"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "systemd unit: all checks passed (exposure $score)"
