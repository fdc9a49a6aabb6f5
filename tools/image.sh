#!/usr/bin/env bash
# Builds the Fabric NAT container image as an OCI archive, offline: no
# registry, no base image, no network. The image holds fabric-agent (the
# entrypoint; `fabric-agent install-cni` is the install step), fabricctl and
# fabric-nat in /usr/local/bin, plus the dynamic loader and every shared
# library `ldd` reports, taken from this machine (deploy/image/oci_image.py).
#
#   bash tools/image.sh OUT.tar [--name fabric-nat:dev]
#   podman load -i OUT.tar          # tags docker.io/library/fabric-nat:dev
#
# Without FABRIC_AGENT, FABRICCTL and FABRIC_NAT in the environment it runs
#   bazel build -c opt //agent:fabric-agent //agent:fabricctl //cni:fabric-nat
# and takes the binaries from there; with them (all three) it uses those
# files and runs no Bazel (that is how //deploy:image_test calls it).
# The output is byte-for-byte reproducible for the same binaries and
# SOURCE_DATE_EPOCH (default: the last commit's time, or 0 outside git).
set -euo pipefail

usage() { echo "usage: bash tools/image.sh OUT.tar [--name NAME:TAG]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1
shift
name=fabric-nat:dev
while [ $# -gt 0 ]; do
  case $1 in
    --name) [ $# -ge 2 ] || usage; name=$2; shift 2 ;;
    *) usage ;;
  esac
done

# Not `pwd -P`: under Bazel this script is a runfiles symlink and the
# assembler is found beside it in the runfiles tree.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
assembler=$root/deploy/image/oci_image.py

if [ -n "${FABRIC_AGENT:-}${FABRICCTL:-}${FABRIC_NAT:-}" ]; then
  : "${FABRIC_AGENT:?FABRIC_AGENT, FABRICCTL and FABRIC_NAT go together}"
  : "${FABRICCTL:?FABRIC_AGENT, FABRICCTL and FABRIC_NAT go together}"
  : "${FABRIC_NAT:?FABRIC_AGENT, FABRICCTL and FABRIC_NAT go together}"
  agent=$FABRIC_AGENT ctl=$FABRICCTL nat=$FABRIC_NAT
else
  (cd "$root" && bazel build -c opt //agent:fabric-agent //agent:fabricctl //cni:fabric-nat)
  bin=$(cd "$root" && bazel info -c opt bazel-bin 2>/dev/null)
  agent=$bin/agent/fabric-agent ctl=$bin/agent/fabricctl nat=$bin/cni/fabric-nat
fi

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

# The version label: what the agent itself says (empty if it cannot say).
version=$("$agent" --version 2>/dev/null | head -n1 || true)
version=${version#fabric-agent }
version=${version#version }

exec /usr/bin/python3 "$assembler" --out "$out" --name "$name" --version "$version" \
  --entrypoint /usr/local/bin/fabric-agent \
  --bin "fabric-agent=$agent" --bin "fabricctl=$ctl" --bin "fabric-nat=$nat"
