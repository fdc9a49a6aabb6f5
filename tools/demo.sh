#!/usr/bin/env bash
# The Fabric NAT demo: everything happens inside network namespaces this
# script creates (the machine's own firewall and routes are never touched).
#
#   outside (192.0.2.2) --- host (192.0.2.1, runs fabric-agent, bridge fdemo0)
#                              |-- c1 10.88.0.x: web server, published as 8080
#                              |-- c2 10.88.0.y: web server, published as 8081
#                              `-- lan0 192.168.77.1 --- lan (192.168.77.10)
#
# It starts the agent, shows the install step chaining fabric-nat into a
# node's network, adds two containers the way a runtime does (the
# reference bridge + host-local plugins, then fabric-nat, chained; the
# second with containerd's spelling of the port mappings), shows a
# request from outside reaching a published port, a hairpin request, a LAN
# host mapping a port for itself with NAT-PMP (Debian's natpmpc), PCP and
# UPnP IGD (Debian's upnpc, finding the gateway by SSDP), a router's static
# forward from a file (also for IPv6 clients to the IPv4-only LAN host, through
# the agent's proxy), its LAN's fixed SNAT address, its own drop-policy
# firewall healed by --forward_accept, a second node behind a home router
# (miniupnpd) publishing a container through it with --upstream=auto,
# what fabricctl and the kernel hold, a firewall flush healing itself, and
# removes everything.
#
#   bash tools/demo.sh           run and clean up
#   bash tools/demo.sh --keep    keep everything until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

bash tools/setup.sh
bazel build //agent:fabric-agent //agent:fabricctl //cni:fabric-nat 2>&1 | grep -vE 'linux-sandbox|^INFO|^Loading|^Analyzing|^\[' || true
BIN="$PWD/bazel-bin"

TAG="fdemo$$"
HOST="$TAG-host"; OUT="$TAG-out"; C1="$TAG-c1"; C2="$TAG-c2"; LAN="$TAG-lan"
# The upstream scene: a node behind a home router (Debian's miniupnpd).
UPR="$TAG-upr"; NODE2="$TAG-node2"; CTR="$TAG-ctr"; OUT2="$TAG-out2"
AGENT2_PID=""
WORK="$(mktemp -d /tmp/fdemo-XXXXXX)"
SOCK="$WORK/agent.sock"
CNI_BIN="$WORK/cni-bin"
AGENT_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cleanup() {
  set +e
  say "Cleaning up"
  for c in "$C2" "$C1"; do
    [ -f "$WORK/$c.result" ] && cni_chain DEL "$c" >/dev/null 2>&1
  done
  if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null; fi
  if [ -n "$AGENT2_PID" ]; then kill "$AGENT2_PID" 2>/dev/null; wait "$AGENT2_PID" 2>/dev/null; fi
  for ns in "$C1" "$C2" "$LAN" "$OUT" "$HOST" "$CTR" "$NODE2" "$OUT2" "$UPR"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
  echo "removed namespaces $TAG-*, the agent and its state"
}
trap cleanup EXIT

# The network configuration list a runtime would read from /etc/cni/net.d.
cat > "$WORK/demo.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "demo",
  "plugins": [
    { "type": "bridge", "bridge": "fdemo0", "isDefaultGateway": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.0.0/24" }]],
                "dataDir": "$WORK/ipam" } },
    { "type": "fabric-nat", "capabilities": { "portMappings": true },
      "agentSocket": "$SOCK", "masquerade": true, "hairpin": true }
  ]
}
JSON

# Runs the chain for one container the way libcni does: each plugin gets the
# config with name and cniVersion, runtimeConfig for its capabilities, and the
# previous plugin's result; DEL runs in reverse with the cached result.
cni_chain() {
  local cmd=$1 ns=$2 ports=${3:-[]} prev="" out n i order
  n=$(jq '.plugins | length' "$WORK/demo.conflist")
  order=$(seq 0 $((n - 1)))
  if [ "$cmd" = DEL ]; then order=$(seq $((n - 1)) -1 0); prev=$(cat "$WORK/$ns.result"); fi
  for i in $order; do
    local conf
    conf=$(jq -c --argjson i "$i" --argjson ports "$ports" --arg prev "$prev" '
      . as $l | .plugins[$i] | .name = $l.name | .cniVersion = $l.cniVersion
      | (if .capabilities.portMappings then .runtimeConfig.portMappings = $ports else . end)
      | del(.capabilities)
      | (if $prev != "" then .prevResult = ($prev | fromjson) else . end)' "$WORK/demo.conflist")
    local type; type=$(jq -r .type <<<"$conf")
    out=$(in_ns "$HOST" env CNI_COMMAND="$cmd" CNI_CONTAINERID="$ns" CNI_NETNS="/run/netns/$ns" \
          CNI_IFNAME=eth0 CNI_PATH="$CNI_BIN" "$CNI_BIN/$type" <<<"$conf") || {
      echo "$type $cmd failed: $out" >&2; return 1; }
    [ "$cmd" = ADD ] && prev=$out
  done
  if [ "$cmd" = ADD ]; then echo "$prev" > "$WORK/$ns.result"; else rm -f "$WORK/$ns.result"; fi
  echo "$prev"
}

say "Namespaces: $HOST (the node), $OUT (a client outside), $C1 and $C2 (containers), $LAN (a LAN host)"
for ns in "$HOST" "$OUT" "$C1" "$C2" "$LAN"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add "$TAG-a" netns "$HOST" type veth peer name "$TAG-b" netns "$OUT"
ip -n "$HOST" link set "$TAG-a" name wan0; ip -n "$OUT" link set "$TAG-b" name eth0
ip -n "$HOST" addr add 192.0.2.1/24 dev wan0; ip -n "$HOST" link set wan0 up
ip -n "$OUT" addr add 192.0.2.2/24 dev eth0; ip -n "$OUT" link set eth0 up
ip link add "$TAG-c" netns "$HOST" type veth peer name "$TAG-d" netns "$LAN"
ip -n "$HOST" link set "$TAG-c" name lan0; ip -n "$LAN" link set "$TAG-d" name eth0
ip -n "$HOST" addr add 192.168.77.1/24 dev lan0; ip -n "$HOST" link set lan0 up
ip -n "$LAN" addr add 192.168.77.10/24 dev eth0; ip -n "$LAN" link set eth0 up
ip -n "$LAN" route add default via 192.168.77.1
# IPv6 on the WAN link (the LAN stays IPv4 only), and the router's second
# public address, its LAN's fixed SNAT address.
ip -n "$HOST" -6 addr add 2001:db8:77::1/64 dev wan0 nodad
ip -n "$OUT" -6 addr add 2001:db8:77::2/64 dev eth0 nodad
ip -n "$HOST" addr add 192.0.2.5/32 dev wan0
in_ns "$HOST" sysctl -qw net.ipv4.ip_forward=1
mkdir -p "$CNI_BIN"
ln -s /usr/lib/cni/bridge /usr/lib/cni/host-local "$CNI_BIN/"
ln -s "$BIN/cni/fabric-nat" "$CNI_BIN/fabric-nat"

# A router's static forwards (one for IPv6 clients to the IPv4-only LAN
# host, through the agent's proxy) and its LAN's fixed SNAT address, kept by
# the agent from a file.
cat > "$WORK/forwards.json" <<'JSON'
{"forwards": [{"name": "lan-web", "protocol": "tcp", "host_port": 8090, "target": "192.168.77.10:80"},
              {"name": "lan-web6", "protocol": "tcp", "host_ip": "2001:db8:77::1", "host_port": 8091,
               "target": "192.168.77.10:80"}],
 "snat": [{"source": "192.168.77.0/24", "to": "192.0.2.5"}]}
JSON

say "Starting fabric-agent in $HOST"
in_ns "$HOST" "$BIN/agent/fabric-agent" --socket "$SOCK" --state_dir "$WORK/state" --run_dir "$WORK/run" \
  --metrics_address 127.0.0.1:9333 --lan_interfaces=lan0 --wan_interface=wan0 --upnp --forwards_file "$WORK/forwards.json" \
  --forward_accept=inet/filter/forward > "$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
run "$BIN/agent/fabricctl" --socket "$SOCK" status
run "$BIN/agent/fabricctl" --socket "$SOCK" health --ready

say "The install step: fabric-agent install-cni chains fabric-nat into a node's network"
mkdir -p "$WORK/node/net.d" "$WORK/node/bin"
cp agent/install/testdata/10-containerd-net.conflist "$WORK/node/net.d/"
echo "the node's network (containerd's default): $(jq -c '[.plugins[].type]' "$WORK/node/net.d/10-containerd-net.conflist")"
echo "$ fabric-agent install-cni --socket $SOCK --plugin .../fabric-nat --cni_bin_dir $WORK/node/bin --cni_conf_dir $WORK/node/net.d"
# (its log lines without their timestamps)
"$BIN/agent/fabric-agent" install-cni --socket "$SOCK" --plugin "$BIN/cni/fabric-nat" \
  --cni_bin_dir "$WORK/node/bin" --cni_conf_dir "$WORK/node/net.d" 2>&1 | sed 's/^[^ ]* //'
echo "written: $(ls "$WORK/node/net.d" | tr '\n' ' ')"
echo "00-fabric-nat.conflist: $(jq -c '{name, plugins: [.plugins[].type]}' "$WORK/node/net.d/00-fabric-nat.conflist")"

say "Two containers with web servers"
for c in "$C1" "$C2" "$LAN"; do
  mkdir -p "$WORK/www-$c"; echo "hello from $c" > "$WORK/www-$c/index.html"
  (cd "$WORK/www-$c" && exec ip netns exec "$c" python3 -m http.server 80 >/dev/null 2>&1) &
  disown
done

say "ADD $C1 with portMappings [8080 -> 80/tcp], as a runtime would"
cni_chain ADD "$C1" '[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]' | jq -c '{cniVersion, ips}'
say "ADD $C2 with portMappings [8081 -> 80/tcp], spelled as containerd 1.6 sends them (Go field names)"
cni_chain ADD "$C2" '[{"HostPort":8081,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]' | jq -c '{cniVersion, ips}'
sleep 0.3

say "From $OUT: curl http://192.0.2.1:8080/ (DNAT to $C1)"
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8080/
say "Hairpin: from $C1, curl http://192.0.2.1:8081/ (the host's address, DNAT to $C2)"
run in_ns "$C1" curl -s --max-time 3 http://192.0.2.1:8081/
say "Masquerade: $C2 reaches $OUT with the host's address"
( ip netns exec "$OUT" python3 -c '
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9999)); s.listen(1); c, a = s.accept(); c.sendall(("you are " + a[0] + "\n").encode())' & disown )
sleep 0.3
run in_ns "$C2" python3 -c 'import socket; s=socket.create_connection(("192.0.2.2", 9999), 3); print(s.recv(100).decode().strip())'

say "A third container asking for host port 8080: refused, naming the holder"
ip netns add "$TAG-c3"
cni_chain ADD "$TAG-c3" '[{"hostPort":8080,"containerPort":80}]' 2>&1 | sed 's/^/  /' || true
cni_chain DEL "$TAG-c3" >/dev/null 2>&1 || true
ip netns del "$TAG-c3"

say "NAT-PMP: the LAN host asks for public port 8088 -> its port 80 (natpmpc, Debian's client)"
run in_ns "$LAN" natpmpc -g 192.168.77.1 -a 8088 80 tcp 3600 | grep -E "Public IP|Mapped"
say "From $OUT: curl http://192.0.2.1:8088/ (DNAT to the LAN host)"
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8088/
say "PCP: the same LAN host maps UDP 5353 for 10 minutes (testing/pmp.py speaks PCP)"
run in_ns "$LAN" python3 testing/pmp.py 192.168.77.1 pcp-map udp 53 5353 600 0102030405060708090a0b0c
say "UPnP IGD: the LAN host finds the gateway by SSDP and maps public 8089 -> its port 80 (upnpc, Debian's miniupnpc)"
# -i: miniupnpc calls 192.0.2.0/24 (TEST-NET-1, this demo's WAN) reserved and
# would otherwise stop at "not connected?".
in_ns "$LAN" upnpc -i -e demo -a 192.168.77.10 80 8089 TCP 3600 2>&1 | grep -E "desc:|Found|is redirected"
say "From $OUT: curl http://192.0.2.1:8089/ (DNAT to the LAN host, by UPnP)"
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8089/
say "upnpc -l: the gateway's mappings as UPnP lists them (NAT-PMP, PCP and UPnP leases)"
in_ns "$LAN" upnpc -i -l 2>&1 | grep -E "^ *[0-9]+ (TCP|UDP)"
say "Router: a static forward from $WORK/forwards.json (public 8090 -> the LAN host's port 80)"
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8090/
say "Router: an IPv6 client reaches the IPv4-only LAN host ([2001:db8:77::1]:8091, the agent's IPv6-to-IPv4 proxy)"
run in_ns "$OUT" curl -s -g --max-time 3 "http://[2001:db8:77::1]:8091/"
say "Router: the LAN leaves with its fixed SNAT address 192.0.2.5 (the file's snat entry)"
( ip netns exec "$OUT" python3 -c '
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9998)); s.listen(1); c, a = s.accept(); c.sendall(("you are " + a[0] + "\n").encode())' & disown )
sleep 0.3
run in_ns "$LAN" python3 -c 'import socket; s=socket.create_connection(("192.0.2.2", 9998), 3); print(s.recv(100).decode().strip())'
grep -o "static forwards from [^<]*" <(in_ns "$HOST" curl -s http://127.0.0.1:9333/) | head -1
say "Router: its own firewall loaded with nft -f, forward policy drop (which would drop every DNAT'd flow)"
printf '%s\n' 'table inet filter {' '  chain forward { type filter hook forward priority 0; policy drop; }' '}' > "$WORK/router.nft"
in_ns "$HOST" nft -f "$WORK/router.nft"
sleep 0.2
say "--forward_accept=inet/filter/forward: the agent saw the table appear and put its accept first"
in_ns "$HOST" nft list chain inet filter forward
grep "forward_accept:" "$WORK/agent.log" | tail -1
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8090/
say "fabricctl diagnose finds no chain that drops DNAT'd flows (without the flag it would name this one)"
"$BIN/agent/fabricctl" --socket "$SOCK" diagnose 2>&1 | grep -c "forward chain" || true
in_ns "$HOST" nft delete table inet filter

say "Upstream: a second node ($NODE2) behind a home router ($UPR, Debian's miniupnpd), with a container ($CTR)"
for ns in "$UPR" "$NODE2" "$CTR" "$OUT2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
link() {  # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$TAG-x" netns "$1" type veth peer name "$TAG-y" netns "$4"
  ip -n "$1" link set "$TAG-x" name "$2"; ip -n "$4" link set "$TAG-y" name "$5"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
}
link "$UPR" lan0 192.168.88.1/24 "$NODE2" eth0 192.168.88.10/24
link "$UPR" wan0 198.51.100.1/24 "$OUT2" eth0 198.51.100.2/24
link "$NODE2" ctr0 10.99.0.1/24 "$CTR" eth0 10.99.0.2/24
ip -n "$NODE2" route add default via 192.168.88.1
ip -n "$CTR" route add default via 10.99.0.1
in_ns "$UPR" sysctl -qw net.ipv4.ip_forward=1
mkdir -p "$WORK/www-ctr"; echo "hello from $CTR, through two NATs" > "$WORK/www-ctr/index.html"
(cd "$WORK/www-ctr" && exec ip netns exec "$CTR" python3 -m http.server 80 >/dev/null 2>&1) & disown
# miniupnpd needs its nft chains hooked, and a STUN server outside that
# shows its WAN address is not behind NAT (198.51.100.0/24 is reserved).
( exec ip netns exec "$OUT2" python3 testing/stun.py 198.51.100.2 3478 >/dev/null 2>&1 ) & disown
in_ns "$UPR" nft -f - <<'NFT'
table inet filter {
  chain miniupnpd { }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
  chain prerouting { type nat hook prerouting priority dstnat; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority srcnat; jump postrouting_miniupnpd; }
  chain forward { type filter hook forward priority filter; jump miniupnpd; }
}
NFT
cat > "$WORK/miniupnpd.conf" <<CONF
ext_ifname=wan0
listening_ip=lan0
enable_natpmp=yes
enable_upnp=yes
http_port=5000
ext_perform_stun=yes
ext_stun_host=198.51.100.2
ext_stun_port=3478
secure_mode=yes
system_uptime=no
lease_file=$WORK/miniupnpd.leases
allow 1024-65535 192.168.88.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
CONF
in_ns "$UPR" miniupnpd -f "$WORK/miniupnpd.conf" -P "$WORK/miniupnpd.pid" >/dev/null 2>&1
for _ in $(seq 50); do in_ns "$NODE2" python3 testing/pmp.py 192.168.88.1 addr 2>/dev/null | grep -q result=0 && break; sleep 0.1; done
say "fabric-agent in $NODE2 with --upstream=auto; an API mapping tcp 8080 -> the container's port 80"
in_ns "$NODE2" "$BIN/agent/fabric-agent" --socket "$WORK/agent2.sock" --state_dir "$WORK/state2" \
  --run_dir "$WORK/run2" --metrics_address= --upstream=auto > "$WORK/agent2.log" 2>&1 &
AGENT2_PID=$!
for _ in $(seq 100); do [ -S "$WORK/agent2.sock" ] && break; sleep 0.05; done
"$BIN/agent/fabricctl" --socket "$WORK/agent2.sock" add tcp 8080 10.99.0.2:80 --owner web >/dev/null
for _ in $(seq 50); do grep -q "upstream: tcp 8080 ->" "$WORK/agent2.log" && break; sleep 0.1; done
run "$BIN/agent/fabricctl" --socket "$WORK/agent2.sock" list
say "From $OUT2 (beyond the home router): curl http://198.51.100.1:8080/"
run in_ns "$OUT2" curl -s --max-time 3 http://198.51.100.1:8080/
say "fabricctl upstream status (from $NODE2, without the agent: what the gateway answers)"
in_ns "$NODE2" "$BIN/agent/fabricctl" upstream status 2>&1 | sed 's/^/  /'
say "Deleting the mapping deletes it on the home router too"
"$BIN/agent/fabricctl" --socket "$WORK/agent2.sock" remove m-1 >/dev/null
for _ in $(seq 50); do grep -q "upstream: tcp 8080 removed" "$WORK/agent2.log" && break; sleep 0.1; done
grep "upstream:" "$WORK/agent2.log" | sed 's/^[^ ]* /  /'
echo "from $OUT2: $(in_ns "$OUT2" curl -s --max-time 1 http://198.51.100.1:8080/ || echo 'no answer (gone upstream too)')"
kill "$(cat "$WORK/miniupnpd.pid")" 2>/dev/null || true

say "A request from the WAN side gets no answer"
run in_ns "$OUT" python3 testing/pmp.py 192.0.2.1 addr || true

say "fabricctl list"
run "$BIN/agent/fabricctl" --socket "$SOCK" list
say "What the kernel holds (nft list table inet fabric_nat, maps only)"
in_ns "$HOST" nft list table inet fabric_nat | sed -n '/map dnat4_any/,/}/p;/set masq4/,/}/p'
say "Someone runs 'nft flush ruleset' on the node: the agent repairs it at once"
in_ns "$HOST" nft flush ruleset
sleep 0.2
run in_ns "$OUT" curl -s --max-time 3 http://192.0.2.1:8080/
grep "repair after" "$WORK/agent.log" | tail -1

say "Metrics (curl 127.0.0.1:9333/metrics in $HOST)"
in_ns "$HOST" curl -s http://127.0.0.1:9333/metrics | grep -E '^nat_(rules|port_mappings|operations_total|repairs_total)[{ ]'
say "Agent log"
cat "$WORK/agent.log"

if [ "$KEEP" = 1 ]; then
  say "Keeping everything. Try: ip netns exec $OUT curl http://192.0.2.1:8080/   (Ctrl-C to clean up)"
  while true; do sleep 3600; done
fi
say "DEL both containers"
cni_chain DEL "$C2" >/dev/null; cni_chain DEL "$C1" >/dev/null
run "$BIN/agent/fabricctl" --socket "$SOCK" list
echo "after DEL, from $OUT: $(in_ns "$OUT" curl -s --max-time 1 http://192.0.2.1:8080/ || echo 'no answer (the mapping is gone)')"
