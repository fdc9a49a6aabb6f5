#!/usr/bin/env bash
# Installs every Debian package that the build, the tests, the demo and the
# benchmarks need. Idempotent: packages already present are not touched and
# apt's index is refreshed only when something is missing.
set -euo pipefail

PACKAGES=(
  # build
  bazel-bootstrap g++ pkg-config
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libgrpc-dev
  libabsl-dev libnftnl-dev libmnl-dev libip4tc-dev libip6tc-dev libxtables-dev
  libnetfilter-conntrack-dev libsqlite3-dev nlohmann-json3-dev libmicrohttpd-dev libpugixml-dev
  libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libsystemd-dev zlib1g-dev
  libre2-dev libc-ares-dev libminiupnpc-dev libnghttp2-dev
  # the fuzz build (bazel --config=fuzz): clang and its libFuzzer runtime
  clang libclang-rt-14-dev
  # kernel-facing tools used by tests and the demo (never by the product)
  iproute2 nftables iptables conntrack
  # real peers
  containernetworking-plugins natpmpc miniupnpc miniupnpd
  # container runtimes the deploy tests drive (containerd through CRI, Podman
  # for the image) and the busybox the test images are made of
  containerd runc podman busybox-static
  # crun: //deploy:image_test runs its containers without cgroups
  # (--cgroups=disabled), which runc cannot do
  crun
  # systemd-analyze for the unit's verify/security test
  systemd
  # promtool, which lints /metrics (the package's server is never started),
  # and the headless browser the status page is tested in
  prometheus chromium
  # test clients
  socat curl iputils-ping netcat-openbsd python3 python3-yaml jq procps kmod openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # miniupnpd is only a benchmark baseline, run inside namespaces: never let
  # its package start a daemon on this machine's own interfaces.
  echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get update -qq
  # No package may start a daemon on this machine (prometheus, miniupnpd):
  # policy-rc.d refuses every start while we install, unless one is there.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # miniupnpd asks debconf questions; answer them with the defaults.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$guard" ]; then rm -f "$guard"; trap - EXIT; fi
fi

# The Kubernetes manifest validator's npm packages (versions pinned in its
# package-lock.json), installed with npm ci into its git-ignored
# node_modules. Skipped when node_modules was installed from this very lock
# file (a stamp holds the lock file's hash).
validator=deploy/kubernetes/validate
if [ -f "$(dirname "$0")/../$validator/package-lock.json" ]; then
  validator="$(cd "$(dirname "$0")/.." && pwd)/$validator"
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    echo "setup: installing nodejs npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  want=$(cat "$validator/package.json" "$validator/package-lock.json" | sha256sum | cut -d' ' -f1)
  stamp="$validator/node_modules/.fabric-nat-lock.sha256"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: npm ci in $validator" >&2
    (cd "$validator" && npm ci --no-audit --no-fund --loglevel=error) >&2
    echo "$want" >"$stamp"
  fi
fi

# The kernel modules the nftables backend and tests use. Loading may fail
# inside some containers where they are built in; that is fine.
for m in nf_tables nft_nat nft_chain_nat nf_nat nf_conntrack nft_fib nft_fib_inet \
         nft_masq nft_ct nf_conntrack_netlink sctp; do
  modprobe -q "$m" 2>/dev/null || true
done
