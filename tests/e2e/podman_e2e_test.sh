#!/bin/bash
# Debian's Podman 4.3 publishing container ports through fabric-nat, set up
# as a Podman host's administrator would (//tests/e2e:podman_e2e_test,
# tagged local: root, unsandboxed):
#   - fabric-agent runs in a "host" network namespace; `fabric-agent
#     install-cni --network_config` (the real install step) writes the
#     network "fabricnet" (bridge + host-local, then fabric-nat) as
#     00-fabric-nat.conflist into a CNI config dir once the agent is ready;
#   - Podman runs in that namespace with the CNI network backend and a
#     containers.conf (CONTAINERS_CONF) naming that config dir
#     (network_config_dir) and a plugin dir holding Debian's bridge,
#     host-local and loopback and the installed fabric-nat (cni_plugin_dirs);
#   - `podman run -p 8080:80/tcp -p 5353:53/udp` sends
#     runtimeConfig.portMappings with Podman's own lower-case keys (checked
#     in libcni's cache); a client in an "outside" namespace reaches the
#     container through 192.0.2.1:8080 (TCP) and :5353 (UDP), the container
#     reaches itself there (hairpin), fabricctl lists exactly those two
#     mappings owned by the container, a second container asking for 8080 is
#     refused with Podman printing fabric-nat's message naming the holder,
#     and `podman rm -f` (CNI DEL) closes the ports;
#   - then install-cni's default mode chains Podman's own default network
#     (Debian's 87-podman-bridge.conflist, portmap replaced), and a plain
#     `podman run -p 8080:80` is published by fabric-nat too.
#
# Nothing of the machine's own is touched: the namespaces are the test's
# (fnt-<pid>-pod-*, deleted on every exit path), and every Podman call runs
# in a private mount namespace where /var/lib, /var/cache, /var/tmp (CNI's
# cache and host-local's leases live in /var/lib/cni), /dev/shm (Podman's
# lock segment) and /run/netns (where a root Podman binds its containers'
# network namespaces) are temp dirs, with the store, run root, tmp dir, CNI
# config and plugin dirs and crun's state under the test's temp dir.
# Containers run with crun and no cgroups, as in //deploy:image_test. About
# 4 s.
set -euo pipefail
# A command that fails outside fail() says which it was.
trap 'echo "podman_e2e_test: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

RUN=${TEST_SRCDIR:?run me with bazel test //tests/e2e:podman_e2e_test}/${TEST_WORKSPACE:?}
AGENT=$RUN/agent/fabric-agent
CTL=$RUN/agent/fabricctl
NAT=$RUN/cni/fabric-nat
NETTOOL=$RUN/testing/nettool.py
OCI_IMAGE=$RUN/testing/oci_image.py
PODSERVE=$RUN/testing/podserve
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=testing/podman_env.sh
source "$RUN/testing/podman_env.sh"

checks=0
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { checks=$((checks + 1)); echo "ok: $*"; }

# ---------------------------------------------------------------- inner half
# Runs in the host network namespace (nsenter --net) under
# `unshare --mount --propagation private`: T, OUT_NS, SOCK set.
if [ "${1:-}" = --inner ]; then
  podman_private_env "$T"
  # The client's namespace keeps a handle of its own before /run/netns is
  # hidden: Podman's container namespaces (netns-<uuid>) go to a temp dir.
  : > "$T/outside.net"
  mount -n --bind "/run/netns/$OUT_NS" "$T/outside.net"
  mount -n --bind "$T/netns" /run/netns
  # What a Podman host sets in /etc/containers/containers.conf: the CNI
  # backend (Debian 12's default while netavark is not installed), where the
  # network configurations are, and where the plugins are.
  cat > "$T/containers.conf" <<EOF
[network]
network_backend = "cni"
network_config_dir = "$T/net.d"
cni_plugin_dirs = ["$T/cni-bin"]

[engine]
events_logger = "file"
cgroup_manager = "cgroupfs"
EOF
  export CONTAINERS_CONF=$T/containers.conf
  P=(podman --root "$T/store/root" --runroot "$T/store/run" --tmpdir "$T/store/tmp"
     --storage-driver overlay --runtime "$T/bin/crun")
  R=("${PODMAN_RUN_ARGS[@]}")
  CTR_A=fnt-pod-a-$$ CTR_B=fnt-pod-b-$$ CTR_C=fnt-pod-c-$$

  inner_cleanup() {
    local rc=$?
    trap - EXIT
    if [ "$rc" != 0 ]; then
      for c in "$CTR_A" "$CTR_B" "$CTR_C"; do
        if "${P[@]}" container exists "$c" 2>/dev/null; then
          echo "--- podman logs $c" >&2
          "${P[@]}" logs "$c" 2>&1 | tail -n 20 >&2 || true
        fi
      done
    fi
    "${P[@]}" rm -af -t 0 >/dev/null 2>&1 || true
    "${P[@]}" rmi -af >/dev/null 2>&1 || true
    exit "$rc"
  }
  trap inner_cleanup EXIT
  trap 'exit 143' TERM INT

  out() { nsenter --net="$T/outside.net" python3 "$NETTOOL" ask "$@" --timeout 1 2>/dev/null; }
  ctl() { "$CTL" --socket "$SOCK" "$@"; }

  backend=$("${P[@]}" info --format '{{.Host.NetworkBackend}}')
  [ "$backend" = cni ] || fail "podman info: network backend '$backend', want cni"
  pass "podman info: network backend cni (from containers.conf)"
  nets=$("${P[@]}" network ls --format '{{.Name}} {{.Driver}}' | sort | tr '\n' ' ')
  [[ " $nets" == *" fabricnet bridge "* ]] || fail "podman network ls: '$nets'"
  pass "podman network ls: fabricnet (bridge) from 00-fabric-nat.conflist"

  # The image: busybox-static, podserve (TCP and UDP, nettool.py's protocol).
  IMAGE=localhost/fnt-podserve:latest
  python3 "$OCI_IMAGE" "$T/image.tar" --name "$IMAGE" \
    --applet sh --file "$PODSERVE:/bin/podserve" --cmd /bin/podserve serve idle tcp:80 ||
    fail "testing/oci_image.py"
  loaded=$("${P[@]}" load -i "$T/image.tar" 2>&1) || fail "podman load: $loaded"
  grep -qx "Loaded image: $IMAGE" <<<"$loaded" || fail "podman load named no $IMAGE: $loaded"
  pass "podman load: $IMAGE (testing/oci_image.py: busybox-static and podserve)"

  if out tcp 192.0.2.1 8080 >/dev/null; then fail "192.0.2.1:8080 answered before any container"; fi

  # The first container publishes tcp 8080 -> 80 and udp 5353 -> 53.
  id_a=$("${P[@]}" run -d --name "$CTR_A" "${R[@]}" --network fabricnet \
           --conmon-pidfile "$T/conmon-a.pid" -p 8080:80/tcp -p 5353:53/udp \
           "$IMAGE" /bin/podserve serve ctr-a tcp:80 udp:53 2>"$T/run-a.err") ||
    fail "podman run -p 8080:80/tcp -p 5353:53/udp: $(cat "$T/run-a.err")"
  [[ $id_a =~ ^[0-9a-f]{64}$ ]] || fail "podman run -d printed '$id_a'"
  "${P[@]}" inspect --format '{{.State.Pid}}' "$CTR_A" >> "$T/ctr.pids"
  ip_a=$("${P[@]}" inspect --format '{{(index .NetworkSettings.Networks "fabricnet").IPAddress}}' "$CTR_A")
  [[ $ip_a == 10.77.0.* ]] || fail "container address '$ip_a', want one of host-local's 10.77.0.0/24"
  pass "podman run -d --network fabricnet -p 8080:80/tcp -p 5353:53/udp: ${id_a:0:12} at $ip_a"
  [[ $(ls "$T/netns") == netns-* ]] ||
    fail "the container's network namespace is not in the private /run/netns: '$(ls "$T/netns")'"

  # What Podman handed the plugins (libcni's cache, under /var/lib/cni):
  # the port mappings with Podman's own spelling of the keys.
  python3 - "$T/var/lib/cni/results/fabricnet-$id_a-eth0" <<'PY' || fail "libcni's cache of the ADD"
import json, sys
c = json.load(open(sys.argv[1]))
pm = sorted(c["capabilityArgs"]["portMappings"], key=lambda m: m["protocol"])
want = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]
got = [{k: v for k, v in m.items() if k != "hostIP" or v} for m in pm]
if got != want:
    sys.exit("podman sent portMappings %s, want %s" % (json.dumps(pm), json.dumps(want)))
PY
  pass "Podman's portMappings as sent: hostPort/containerPort/protocol, lower-case"

  # From outside, through the host's address: the container answers and
  # sees the client's own address (DNAT, no masquerade on the way in).
  answer=
  for _ in $(seq 50); do
    if answer=$(out tcp 192.0.2.1 8080); then break; fi
    sleep 0.1
  done
  [ "$answer" = "ctr-a 192.0.2.2" ] || fail "outside -> 192.0.2.1:8080/tcp answered '$answer'"
  pass "outside -> 192.0.2.1:8080/tcp: '$answer'"
  answer=$(out udp 192.0.2.1 5353) || fail "outside -> 192.0.2.1:5353/udp: no answer"
  [ "$answer" = "ctr-a 192.0.2.2" ] || fail "outside -> 192.0.2.1:5353/udp answered '$answer'"
  pass "outside -> 192.0.2.1:5353/udp: '$answer'"

  # The agent holds exactly those two, owned by the container's attachment.
  check_list() {  # check_list ID IP: exactly tcp 8080 and udp 5353 of ID
    ctl list --json > "$T/list.json" || fail "fabricctl list --json"
    python3 - "$T/list.json" "$1" "$2" <<'PY'
import json, sys
path, cid, ip = sys.argv[1:]
ms = json.load(open(path)).get("mappings", [])
got = sorted((m.get("protocol"), m.get("host_port"), m.get("target_ip"), m.get("target_port"),
              m.get("owner", {}).get("kind"), m.get("owner", {}).get("id")) for m in ms)
owner = cid + "/eth0/fabricnet"
want = sorted([("PROTOCOL_TCP", 8080, ip, 80, "OWNER_KIND_CNI", owner),
               ("PROTOCOL_UDP", 5353, ip, 53, "OWNER_KIND_CNI", owner)])
if got != want:
    sys.exit("fabricctl list: %s\nwant: %s\nfull: %s" % (got, want, json.dumps(ms)))
PY
  }
  check_list "$id_a" "$ip_a" || fail "fabricctl list after the first container"
  pass "fabricctl list: tcp 8080 -> $ip_a:80 and udp 5353 -> $ip_a:53, owner $id_a/eth0/fabricnet"

  # Hairpin (install-cni's default "hairpin": true): the container reaches
  # its own published port through the host's address.
  answer=$("${P[@]}" exec "$CTR_A" /bin/podserve ask tcp 192.0.2.1 8080) ||
    fail "container -> 192.0.2.1:8080 (hairpin): no answer: $answer"
  # Its source is masqueraded to the bridge address, so the answer comes back
  # through the host.
  [ "$answer" = "ctr-a 10.77.0.1" ] || fail "container -> 192.0.2.1:8080 (hairpin) answered '$answer'"
  pass "hairpin: the container -> 192.0.2.1:8080/tcp: '$answer'"

  # A second container asking for 8080: Podman's error carries fabric-nat's
  # message, the holder named by its short id (12 hex digits).
  if "${P[@]}" run -d --name "$CTR_B" "${R[@]}" --network fabricnet -p 8080:80/tcp \
       "$IMAGE" /bin/podserve serve ctr-b tcp:80 > "$T/run-b.out" 2>&1; then
    fail "a second -p 8080:80 was accepted: $(cat "$T/run-b.out")"
  fi
  # Podman 4.3 passes the plugin's error msg through whole:
  #   Error: plugin type="fabric-nat" failed (add): cni plugin fabric-nat
  #   failed: host port 8080/tcp on 0.0.0.0 is held by container <12 hex>
  #   (eth0, network fabricnet)
  want="Error: plugin type=\"fabric-nat\" failed (add): cni plugin fabric-nat failed: host port 8080/tcp on 0.0.0.0 is held by container ${id_a:0:12} (eth0, network fabricnet)"
  grep -qxF "$want" "$T/run-b.out" ||
    fail "podman run of a second -p 8080:80 said: $(cat "$T/run-b.out"); want the line '$want'"
  pass "second -p 8080:80 refused, podman says: $want"
  # Podman ran DEL for the failed container (and again on rm); nothing of it
  # is left, and the first container keeps its ports.
  check_list "$id_a" "$ip_a" || fail "fabricctl list after the refused container"
  "${P[@]}" rm -f -t 0 "$CTR_B" >/dev/null 2>&1 || true
  check_list "$id_a" "$ip_a" || fail "fabricctl list after podman rm -f of the refused container"
  answer=$(out tcp 192.0.2.1 8080) || fail "192.0.2.1:8080 stopped answering after the refusal"
  [ "$answer" = "ctr-a 192.0.2.2" ] || fail "after the refusal 192.0.2.1:8080 answered '$answer'"
  pass "after the refusal: still exactly the first container's two mappings, 8080 still answers"

  # podman rm -f: CNI DEL through fabric-nat closes both ports.
  "${P[@]}" rm -f -t 0 "$CTR_A" > /dev/null || fail "podman rm -f $CTR_A"
  if out tcp 192.0.2.1 8080 >/dev/null; then fail "192.0.2.1:8080 still answers after podman rm -f"; fi
  if out udp 192.0.2.1 5353 >/dev/null; then fail "192.0.2.1:5353 still answers after podman rm -f"; fi
  ctl list --json > "$T/list.json" || fail "fabricctl list --json"
  python3 -c '
import json, sys
ms = json.load(open(sys.argv[1])).get("mappings", [])
if ms: sys.exit("fabricctl list after podman rm -f: %s" % json.dumps(ms))
' "$T/list.json" || fail "mappings left after podman rm -f"
  grep -qE "op=detach container=${id_a:0:12} ifname=eth0 network=fabricnet outcome=ok" \
    "$T/agent.log" || fail "the agent logged no detach of ${id_a:0:12}: $(tail -n 5 "$T/agent.log")"
  pass "podman rm -f: DEL through fabric-nat (agent: detach ${id_a:0:12}), 8080/tcp and 5353/udp closed, fabricctl list empty"
  # Podman's own default network as Debian ships it (87-podman-bridge.conflist:
  # bridge cni-podman0, portmap, firewall, tuning), chained by install-cni's
  # default mode: 00-fabric-nat.conflist is the same network "podman" with
  # fabric-nat where portmap stood, and sorts first, so Podman loads it (and
  # skips the original's duplicate name): a plain `podman run -p` goes
  # through fabric-nat.
  src=/etc/cni/net.d/87-podman-bridge.conflist  # only read, never changed
  [ -f "$src" ] || src=/usr/share/doc/podman/examples/cni/net.d/87-podman-bridge.conflist
  mkdir -p "$T/net-podman.d"
  cp "$src" "$T/net-podman.d/87-podman-bridge.conflist"
  res=$(timeout 30 "$AGENT" install-cni --cni_conf_dir="$T/net-podman.d" --cni_bin_dir="$T/cni-bin" \
          --plugin="$NAT" --socket="$SOCK" 2>&1) || fail "install-cni into podman's network: $res"
  chain=$(python3 -c '
import json, sys
orig = [p["type"] for p in json.load(open(sys.argv[1]))["plugins"]]
c = json.load(open(sys.argv[2]))
types = [p.get("type") for p in c["plugins"]]
want = ["fabric-nat" if t == "portmap" else t for t in orig]
if "portmap" not in orig or c.get("name") != "podman" or types != want:
    sys.exit("from %s install-cni wrote %s" % (orig, json.dumps(c)))
print(", ".join(types))
' "$src" "$T/net-podman.d/00-fabric-nat.conflist") || fail "00-fabric-nat.conflist for podman's network"
  pass "install-cni chained Podman's default network: podman ($chain)"
  for p in $(python3 -c 'import json,sys; print(" ".join(p["type"] for p in json.load(open(sys.argv[1]))["plugins"]))' "$src"); do
    [ -e "$T/cni-bin/$p" ] || [ "$p" = portmap ] || cp "/usr/lib/cni/$p" "$T/cni-bin/"
  done
  P2=("${P[@]}" --network-config-dir "$T/net-podman.d")
  id_c=$("${P2[@]}" run -d --name "$CTR_C" "${R[@]}" -p 8080:80/tcp "$IMAGE" \
           /bin/podserve serve ctr-c tcp:80 2>"$T/run-c.err") ||
    fail "podman run -p 8080:80 on the default network: $(cat "$T/run-c.err")"
  "${P2[@]}" inspect --format '{{.State.Pid}}' "$CTR_C" >> "$T/ctr.pids"
  ip_c=$("${P2[@]}" inspect --format '{{(index .NetworkSettings.Networks "podman").IPAddress}}' "$CTR_C")
  [[ $ip_c == 10.88.* ]] || fail "default-network container at '$ip_c', want 10.88.0.0/16"
  answer=
  for _ in $(seq 50); do
    if answer=$(out tcp 192.0.2.1 8080); then break; fi
    sleep 0.1
  done
  [ "$answer" = "ctr-c 192.0.2.2" ] || fail "outside -> 192.0.2.1:8080 (default network) answered '$answer'"
  ctl list --json > "$T/list.json" || fail "fabricctl list --json"
  python3 - "$T/list.json" "$id_c/eth0/podman" "$ip_c" <<'PY' || fail "fabricctl list (default network)"
import json, sys
ms = json.load(open(sys.argv[1])).get("mappings", [])
got = [(m.get("protocol"), m.get("host_port"), m.get("target_ip"), m.get("target_port"),
        m.get("owner", {}).get("id")) for m in ms]
want = [("PROTOCOL_TCP", 8080, sys.argv[3], 80, sys.argv[2])]
if got != want:
    sys.exit("fabricctl list: %s, want %s" % (got, want))
PY
  pass "podman run -p 8080:80 (default network podman): outside -> 192.0.2.1:8080: '$answer'; one mapping, owner ${id_c:0:12}/eth0/podman"
  "${P2[@]}" rm -f -t 0 "$CTR_C" > /dev/null || fail "podman rm -f $CTR_C"
  if out tcp 192.0.2.1 8080 >/dev/null; then fail "192.0.2.1:8080 still answers after podman rm -f $CTR_C"; fi
  [ "$(ctl list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("mappings", [])))')" = 0 ] ||
    fail "mappings left after podman rm -f $CTR_C: $(ctl list)"
  pass "podman rm -f on the default network: 8080 closed, fabricctl list empty"

  [ -f "$T/shm/libpod_lock" ] || fail "Podman's lock segment is not in the private /dev/shm"
  [ -z "$(ls -A "$T/netns")" ] || fail "Podman left network namespaces: $(ls "$T/netns")"
  pass "no container network namespace left; Podman's lock segment was the private one"

  echo "$checks" > "$T/inner-checks"
  exit 0
fi

# ---------------------------------------------------------------- outer half
T=$(mktemp -d /tmp/fnt-pod-XXXXXX)
NS=fnt-$$-pod
HOST_NS=$NS-host OUT_NS=$NS-out
SOCK=$T/agent-run/agent.sock
AGENT_PID=
export T OUT_NS SOCK

# What must not change: the machine's Podman and CNI state. (Not all of
# /var/lib/cni or /run/netns: tests running beside this one may use them.)
machine_state() {
  for p in /var/lib/containers /etc/cni/net.d /run/containers /run/libpod /etc/containers; do
    if [ -e "$p" ]; then
      # find fails when a file goes while it walks (tests beside this one
      # come and go in /var/lib/cni): what it listed is still the answer.
      { find "$p" -printf '%p %s %T@\n' 2>/dev/null || true; } | sort
    else
      echo "$p absent"
    fi
  done
  # Leases and cached results of the two networks this test uses.
  { find /var/lib/cni \( -name '*fabricnet*' -o -name '*podman*' \) -printf '%p %s %T@\n' \
      2>/dev/null || true; } | sort
}

outer_cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" != 0 ] && [ -s "$T/agent.log" ]; then
    echo "--- agent log" >&2
    tail -n 30 "$T/agent.log" >&2
  fi
  # Backstop for an inner half that died without its own cleanup: the
  # containers and their conmon, then whatever still runs in the test's
  # namespaces (the agent, podman).
  for f in "$T"/conmon-*.pid "$T/ctr.pids"; do
    [ -s "$f" ] && xargs -r kill -9 < "$f" 2>/dev/null || true
  done
  if [ -n "$AGENT_PID" ]; then
    kill "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  for ns in "$HOST_NS" "$OUT_NS"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$T"
  if [ "$rc" = 0 ]; then echo "podman_e2e_test: all checks passed"; else echo "podman_e2e_test: FAILED" >&2; fi
  exit "$rc"
}
trap outer_cleanup EXIT
trap 'exit 143' TERM INT

machine_state > "$T/machine.before"

# outside 192.0.2.2 --- 192.0.2.1 [host: agent, podman, bridge fnpod0 10.77.0.1]
for ns in "$HOST_NS" "$OUT_NS"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip link add "fp$$a" netns "$HOST_NS" type veth peer name "fp$$b" netns "$OUT_NS"
ip -n "$HOST_NS" link set "fp$$a" name wan0
ip -n "$OUT_NS" link set "fp$$b" name eth0
ip -n "$HOST_NS" addr add 192.0.2.1/24 dev wan0
ip -n "$OUT_NS" addr add 192.0.2.2/24 dev eth0
ip -n "$HOST_NS" link set wan0 up
ip -n "$OUT_NS" link set eth0 up
ip netns exec "$HOST_NS" sysctl -qw net.ipv4.ip_forward=1

mkdir -p "$T/var/lib" "$T/var/cache" "$T/var/tmp" "$T/shm" "$T/netns" "$T/agent-run" "$T/agent-state" \
         "$T/net.d" "$T/cni-bin"

ip netns exec "$HOST_NS" "$AGENT" --socket="$SOCK" --state_dir="$T/agent-state" --run_dir="$T/agent-run" \
  --metrics_address= > "$T/agent.log" 2>&1 &
AGENT_PID=$!

# The node's plugins (Debian's containernetworking-plugins) next to where
# fabric-nat is installed.
for p in bridge host-local loopback; do cp "/usr/lib/cni/$p" "$T/cni-bin/"; done
cat > "$T/fabricnet.conflist" <<'JSON'
{"cniVersion": "1.0.0", "name": "fabricnet", "plugins": [
  {"type": "bridge", "bridge": "fnpod0", "isGateway": true, "ipMasq": false,
   "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
# The install step, one-shot: waits for the agent, installs the plugin and
# the network with fabric-nat chained, exits.
out=$(timeout 30 "$AGENT" install-cni --network_config="$T/fabricnet.conflist" \
        --cni_conf_dir="$T/net.d" --cni_bin_dir="$T/cni-bin" --plugin="$NAT" \
        --socket="$SOCK" 2>&1) || fail "fabric-agent install-cni: $out"
cmp -s "$T/cni-bin/fabric-nat" "$NAT" || fail "install-cni did not install fabric-nat: $out"
python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
types = [p.get("type") for p in c["plugins"]]
nat = c["plugins"][-1]
if (c.get("name") != "fabricnet" or types != ["bridge", "fabric-nat"] or
        nat.get("agentSocket") != sys.argv[2] or nat.get("hairpin") is not True or
        nat.get("capabilities") != {"portMappings": True}):
    sys.exit("install-cni wrote %s" % json.dumps(c))
' "$T/net.d/00-fabric-nat.conflist" "$SOCK" || fail "00-fabric-nat.conflist"
[ "$(ls "$T/net.d")" = 00-fabric-nat.conflist ] || fail "CNI config dir holds: $(ls "$T/net.d")"
pass "install-cni: fabric-nat in the plugin dir, 00-fabric-nat.conflist = fabricnet (bridge, fabric-nat)"

# Podman in the host namespace, entered from the root mount namespace, with
# a private mount namespace of its own.
nsenter --net="/run/netns/$HOST_NS" unshare --mount --propagation private -- \
  bash "$0" --inner || exit $?
checks=$((checks + $(cat "$T/inner-checks")))

machine_state > "$T/machine.after"
diff "$T/machine.before" "$T/machine.after" >&2 ||
  fail "the machine's Podman/CNI state changed (above)"
pass "the machine's /var/lib/containers, /etc/cni/net.d, /run/containers, /run/libpod, /etc/containers unchanged"
echo "podman_e2e_test: $checks checks"
