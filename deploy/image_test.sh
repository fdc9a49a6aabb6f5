#!/bin/bash
# The offline image, run for real (//deploy:image_test, tagged local: root,
# unsandboxed). tools/image.sh builds the OCI archive from the three
# binaries; the test loads it into a private Podman store and runs, inside
# the container:
#   1. fabric-agent --version: the line the same binary prints on the host;
#   2. fabric-nat with CNI_COMMAND=VERSION: the supportedVersions list;
#   3. the agent itself, in a "host" network namespace with NET_ADMIN, its
#      socket and state dir bind-mounted from a temp dir; fabricctl (exec'd
#      in the container) publishes tcp 8080 -> a server namespace's :80, and
#      a client namespace's connection to the host's 192.0.2.1:8080 must
#      reach that server (refused before the mapping, and after its removal).
#
# Nothing of the machine's own is touched: the namespaces are the test's
# (fnt-<pid>-img-*, deleted on every exit path, and swept by the C++ tests'
# Netns if this process dies), and every Podman call runs in a private mount
# namespace where /var/lib, /var/cache and /var/tmp are empty temp dirs (a
# root Podman writes its blob cache and short-name cache there whatever
# --root says) with the store, run root, tmp dir, network config dir and
# crun state all under the test's temp dir. Containers run with crun and no
# cgroups (--cgroups=disabled; on a cgroup v1/v2 hybrid host the cgroup2
# mount is unmounted in that private mount namespace only, as crun asks).
set -euo pipefail

RUN=${TEST_SRCDIR:?run me with bazel test //deploy:image_test}/${TEST_WORKSPACE:?}
AGENT=$RUN/agent/fabric-agent
CTL=$RUN/agent/fabricctl
NAT=$RUN/cni/fabric-nat
NETTOOL=$RUN/testing/nettool.py
IMAGE=docker.io/library/fabric-nat:dev
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=testing/podman_env.sh
source "$RUN/testing/podman_env.sh"

checks=0
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { checks=$((checks + 1)); echo "ok: $*"; }

# ---------------------------------------------------------------- inner half
# Runs under `unshare --mount --propagation private`: T, HOST_NS, CTR set.
if [ "${1:-}" = --inner ]; then
  podman_private_env "$T"
  P=(podman --root "$T/store/root" --runroot "$T/store/run" --tmpdir "$T/store/tmp"
     --network-config-dir "$T/store/net" --events-backend file
     --cgroup-manager cgroupfs --storage-driver overlay --runtime "$T/bin/crun")
  R=("${PODMAN_RUN_ARGS[@]}")

  inner_cleanup() {
    local rc=$?
    trap - EXIT
    if [ "$rc" != 0 ] && "${P[@]}" container exists "$CTR" 2>/dev/null; then
      echo "--- agent container log" >&2
      "${P[@]}" logs "$CTR" 2>&1 | tail -n 30 >&2 || true
    fi
    "${P[@]}" rm -f -t 1 "$CTR" >/dev/null 2>&1 || true
    "${P[@]}" rm -af >/dev/null 2>&1 || true
    "${P[@]}" rmi -af >/dev/null 2>&1 || true
    exit "$rc"
  }
  trap inner_cleanup EXIT
  trap 'exit 143' TERM INT

  # podman load names the image from the archive's index.
  out=$("${P[@]}" load -i "$T/image.tar" 2>&1) || fail "podman load: $out"
  grep -qx "Loaded image: $IMAGE" <<<"$out" || fail "podman load named no $IMAGE: $out"
  pass "podman load tags $IMAGE"
  entry=$("${P[@]}" image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")
  [ "$entry" = '["/usr/local/bin/fabric-agent"]' ] || fail "entrypoint $entry"
  pass "entrypoint $entry"

  # 1. The version, exactly as the same binary says it on the host.
  want=$("$AGENT" --version)
  [[ $want =~ ^fabric-agent\ [0-9]+\.[0-9]+\.[0-9]+ ]] || fail "host agent --version said '$want'"
  got=$("${P[@]}" run --rm "${R[@]}" --network none "$IMAGE" --version) ||
    fail "fabric-agent --version in the container exited $?"
  [ "$got" = "$want" ] || fail "in the container: '$got', on the host: '$want'"
  pass "fabric-agent --version in the container: $got"
  got=$("${P[@]}" run --rm "${R[@]}" --network none --entrypoint /usr/local/bin/fabricctl \
        "$IMAGE" --version) || fail "fabricctl --version in the container exited $?"
  [ "$got" = "$("$CTL" --version)" ] || fail "fabricctl --version: '$got'"
  pass "fabricctl --version in the container: $got"

  # 2. fabric-nat VERSION, config on stdin.
  got=$(echo '{"cniVersion":"1.0.0","name":"img-test","type":"fabric-nat"}' |
        "${P[@]}" run --rm -i "${R[@]}" --network none -e CNI_COMMAND=VERSION \
          --entrypoint /usr/local/bin/fabric-nat "$IMAGE") || fail "fabric-nat VERSION exited $?"
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
want = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
if r.get("cniVersion") != "1.0.0" or r.get("supportedVersions") != want:
    sys.exit("fabric-nat VERSION answered %r, want cniVersion 1.0.0 and %r" % (r, want))
' "$got" || fail "fabric-nat VERSION"
  pass "fabric-nat VERSION in the container: supportedVersions 0.3.0 0.3.1 0.4.0 1.0.0 1.1.0"

  # 3. The agent in the host namespace, NET_ADMIN only.
  "${P[@]}" run -d --name "$CTR" "${R[@]}" --network "ns:/run/netns/$HOST_NS" \
    --cap-add NET_ADMIN --conmon-pidfile "$T/conmon.pid" \
    -v "$T/agent-run:/run/fabric-nat" -v "$T/agent-state:/var/lib/fabric-nat" \
    "$IMAGE" --socket=/run/fabric-nat/agent.sock --state_dir=/var/lib/fabric-nat \
    --metrics_address=127.0.0.1:9333 >/dev/null || fail "podman run -d the agent"
  ctl() { "${P[@]}" exec "$CTR" /usr/local/bin/fabricctl --socket /run/fabric-nat/agent.sock "$@"; }
  ready=
  for _ in $(seq 100); do
    if ctl status >/dev/null 2>&1; then ready=1; break; fi
    [ "$("${P[@]}" inspect --format '{{.State.Running}}' "$CTR")" = true ] ||
      fail "the agent exited: $("${P[@]}" logs "$CTR" 2>&1 | tail -n 5)"
    sleep 0.1
  done
  [ -n "$ready" ] || fail "the agent did not become ready: $(ctl status 2>&1)"
  [ -S "$T/agent-run/agent.sock" ] || fail "no socket in the bind-mounted run dir"
  [ -f "$T/agent-state/state.db" ] || fail "no state.db in the bind-mounted state dir"
  pass "agent ready in netns $HOST_NS; socket and state.db in the bind mounts"
  ip netns exec "$HOST_NS" nft list table inet fabric_nat >/dev/null ||
    fail "no table inet fabric_nat in $HOST_NS"
  pass "the agent's nftables table is in $HOST_NS"

  # The install step, from the image, as the DaemonSet runs it: the node's
  # network (containerd's default, bridge + portmap) chained with fabric-nat
  # once the agent answers on the shared socket.
  mkdir -p "$T/cni-bin" "$T/cni-conf"
  cat > "$T/cni-conf/10-containerd-net.conflist" <<'JSON'
{"cniVersion": "1.0.0", "name": "containerd-net", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  cp "$T/cni-conf/10-containerd-net.conflist" "$T/original.conflist"
  out=$(timeout 60 "${P[@]}" run --rm "${R[@]}" --network none \
          -v "$T/agent-run:/run/fabric-nat" -v "$T/cni-bin:/opt/cni/bin" \
          -v "$T/cni-conf:/etc/cni/net.d" "$IMAGE" install-cni 2>&1) ||
    fail "fabric-agent install-cni: $out"
  cmp -s "$T/cni-bin/fabric-nat" "$NAT" || fail "install-cni did not copy fabric-nat: $out"
  [ -x "$T/cni-bin/fabric-nat" ] || fail "the installed fabric-nat is not executable"
  cmp -s "$T/cni-conf/10-containerd-net.conflist" "$T/original.conflist" ||
    fail "install-cni changed the node's own conflist"
  python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
types = [p.get("type") for p in c["plugins"]]
nat = c["plugins"][-1]
if (c.get("name") != "containerd-net" or types != ["bridge", "fabric-nat"] or
        nat.get("agentSocket") != "/run/fabric-nat/agent.sock" or
        nat.get("capabilities") != {"portMappings": True}):
    sys.exit("install-cni wrote %s" % json.dumps(c))
' "$T/cni-conf/00-fabric-nat.conflist" || fail "00-fabric-nat.conflist"
  pass "install-cni in the container: fabric-nat in the CNI bin dir, containerd-net chained (bridge, fabric-nat)"

  # Before any mapping the port is closed.
  if ip netns exec "$CLIENT_NS" python3 "$NETTOOL" ask tcp 192.0.2.1 8080 --timeout 1 \
       >/dev/null 2>&1; then
    fail "192.0.2.1:8080 answered before any mapping"
  fi
  out=$(ctl add tcp 8080 10.99.0.2:80 --owner image-test) || fail "fabricctl add: $out"
  [[ $out =~ ^([^ ]+)\ tcp\ host\ port\ 8080\ -\>\ 10\.99\.0\.2:80$ ]] || fail "fabricctl add said '$out'"
  id=${BASH_REMATCH[1]}
  pass "fabricctl add in the container: $out"
  answer=
  for _ in $(seq 50); do
    if answer=$(ip netns exec "$CLIENT_NS" python3 "$NETTOOL" ask tcp 192.0.2.1 8080 \
                  --timeout 1 2>/dev/null); then break; fi
    sleep 0.1
  done
  # The server names itself and the peer it saw: the client, DNAT only.
  [ "$answer" = "img-server 192.0.2.2" ] || fail "client -> 192.0.2.1:8080 answered '$answer'"
  pass "client -> 192.0.2.1:8080 reached the server through DNAT: '$answer'"
  out=$(ctl remove "$id") || fail "fabricctl remove $id: $out"
  if ip netns exec "$CLIENT_NS" python3 "$NETTOOL" ask tcp 192.0.2.1 8080 --timeout 1 \
       >/dev/null 2>&1; then
    fail "192.0.2.1:8080 still answers after fabricctl remove"
  fi
  pass "after fabricctl remove the port no longer answers"

  # SIGTERM (podman stop) ends the agent cleanly.
  "${P[@]}" stop -t 10 "$CTR" >/dev/null
  code=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$CTR")
  [ "$code" = 0 ] || fail "the agent exited $code on SIGTERM"
  pass "podman stop: the agent exited 0"
  echo "$checks" > "$T/inner-checks"
  exit 0
fi

# ---------------------------------------------------------------- outer half
T=$(mktemp -d /tmp/fnt-img-XXXXXX)
NS=fnt-$$-img
HOST_NS=$NS-host CLIENT_NS=$NS-client SERVER_NS=$NS-server
CTR=fnt-img-$$
export T HOST_NS CLIENT_NS SERVER_NS CTR

outer_cleanup() {
  local rc=$?
  trap - EXIT
  # Backstop for an inner half that died without its own cleanup: conmon,
  # then whatever still runs in the test's namespaces (agent, server).
  if [ -s "$T/conmon.pid" ]; then kill -9 "$(cat "$T/conmon.pid")" 2>/dev/null || true; fi
  for ns in "$HOST_NS" "$CLIENT_NS" "$SERVER_NS"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$T"
  if [ "$rc" = 0 ]; then echo "image_test: all checks passed"; else echo "image_test: FAILED" >&2; fi
  exit "$rc"
}
trap outer_cleanup EXIT
trap 'exit 143' TERM INT

# The archive, twice: the same bytes both times.
FABRIC_AGENT=$AGENT FABRICCTL=$CTL FABRIC_NAT=$NAT SOURCE_DATE_EPOCH=0 \
  bash "$RUN/tools/image.sh" "$T/image.tar" || fail "tools/image.sh"
FABRIC_AGENT=$AGENT FABRICCTL=$CTL FABRIC_NAT=$NAT SOURCE_DATE_EPOCH=0 \
  bash "$RUN/tools/image.sh" "$T/image2.tar" >/dev/null || fail "tools/image.sh (2)"
cmp -s "$T/image.tar" "$T/image2.tar" || fail "two builds of the image differ"
rm "$T/image2.tar"
pass "tools/image.sh: $(stat -c %s "$T/image.tar") bytes, reproducible"

# client 192.0.2.2 --- 192.0.2.1 [host] 10.99.0.1 --- 10.99.0.2 server
for ns in "$HOST_NS" "$CLIENT_NS" "$SERVER_NS"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip link add "fi$$a" netns "$HOST_NS" type veth peer name "fi$$b" netns "$CLIENT_NS"
ip -n "$HOST_NS" link set "fi$$a" name wan0
ip -n "$CLIENT_NS" link set "fi$$b" name eth0
ip link add "fi$$c" netns "$HOST_NS" type veth peer name "fi$$d" netns "$SERVER_NS"
ip -n "$HOST_NS" link set "fi$$c" name ctr0
ip -n "$SERVER_NS" link set "fi$$d" name eth0
ip -n "$HOST_NS" addr add 192.0.2.1/24 dev wan0
ip -n "$HOST_NS" addr add 10.99.0.1/24 dev ctr0
ip -n "$CLIENT_NS" addr add 192.0.2.2/24 dev eth0
ip -n "$SERVER_NS" addr add 10.99.0.2/24 dev eth0
for pair in "$HOST_NS wan0" "$HOST_NS ctr0" "$CLIENT_NS eth0" "$SERVER_NS eth0"; do
  set -- $pair
  ip -n "$1" link set "$2" up
done
ip -n "$SERVER_NS" route add default via 10.99.0.1
ip netns exec "$HOST_NS" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$SERVER_NS" python3 "$NETTOOL" serve tcp 80 img-server 0.0.0.0 &
disown  # killed with the namespace's other processes in outer_cleanup
# The server listens before the image is asked to reach it.
for _ in $(seq 50); do
  if ip netns exec "$SERVER_NS" python3 "$NETTOOL" ask tcp 127.0.0.1 80 --timeout 1 \
       >/dev/null 2>&1; then break; fi
  sleep 0.1
done
mkdir -p "$T/var/lib" "$T/var/cache" "$T/var/tmp" "$T/agent-run" "$T/agent-state"

unshare --mount --propagation private -- bash "$0" --inner || exit $?
checks=$((checks + $(cat "$T/inner-checks")))
echo "image_test: $checks checks"
