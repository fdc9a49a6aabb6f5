#!/usr/bin/python3
"""A small NAT-PMP / PCP client for tests, printing what the server said.

  pmp.py GATEWAY addr                                  NAT-PMP external address
  pmp.py GATEWAY map tcp|udp INTERNAL SUGGESTED LIFETIME
  pmp.py GATEWAY raw HEX                               send bytes, print the reply
  pmp.py GATEWAY pcp-map tcp|udp INTERNAL SUGGESTED LIFETIME NONCEHEX
         [--client IP] [--version N] [--prefer-failure] [--third-party]
         [--option CODE] [--protocol NUM]
  pmp.py GATEWAY flood N                               N address requests at once; prints replies=K
  pmp.py listen GROUPPORT SECONDS                      print announcements received
  pmp.py --source IP GATEWAY ...                       send from IP (an address of this host)

Replies are printed as "key=value" words; no reply within the timeout
prints "timeout" and exits 2.
"""
import socket
import struct
import sys
import time

TIMEOUT = 1.0
SOURCE = None  # --source: the address requests are sent from


def send(gateway, payload, timeout=TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if SOURCE:
        s.bind((SOURCE, 0))
    s.connect((gateway, 5351))
    s.send(payload)
    try:
        return s.recv(2048), s.getsockname()[0]
    except OSError:
        return None, s.getsockname()[0]


def show_pmp(data):
    if len(data) < 4:
        return f"short={data.hex()}"
    version, op, result = struct.unpack("!BBH", data[:4])
    words = [f"version={version}", f"op={op}", f"result={result}"]
    if len(data) >= 8:
        words.append(f"epoch={struct.unpack('!I', data[4:8])[0]}")
    if op == 128 and len(data) >= 12:
        words.append(f"address={socket.inet_ntoa(data[8:12])}")
    if op in (129, 130) and len(data) >= 16:
        internal, external, lifetime = struct.unpack("!HHI", data[8:16])
        words += [f"internal={internal}", f"external={external}", f"lifetime={lifetime}"]
    words.append(f"len={len(data)}")
    return " ".join(words)


def show_pcp(data):
    if len(data) < 24:
        return f"short={data.hex()}"
    version, op, _, result, lifetime, epoch = struct.unpack("!BBBBII", data[:12])
    words = [f"version={version}", f"op={op}", f"result={result}",
             f"lifetime={lifetime}", f"epoch={epoch}"]
    if op & 0x7f == 1 and len(data) >= 60:
        nonce = data[24:36].hex()
        proto = data[36]
        internal, external = struct.unpack("!HH", data[40:44])
        ext_ip = socket.inet_ntoa(data[56:60])
        words += [f"nonce={nonce}", f"protocol={proto}", f"internal={internal}",
                  f"external={external}", f"external_ip={ext_ip}"]
    words.append(f"len={len(data)}")
    return " ".join(words)


def main(argv):
    global SOURCE
    if argv[0] == "--source":
        SOURCE, argv = argv[1], argv[2:]
    if argv[0] == "listen":
        port, seconds = int(argv[1]), float(argv[2])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        mreq = struct.pack("4s4s", socket.inet_aton("224.0.0.1"), socket.inet_aton("0.0.0.0"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                break
            kind = "pcp" if data and data[0] == 2 else "natpmp"
            show = show_pcp if kind == "pcp" else show_pmp
            print(f"from={peer[0]} kind={kind} {show(data)}", flush=True)
        return 0
    gateway, cmd = argv[0], argv[1]
    if cmd == "flood":
        n = int(argv[2])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((gateway, 5351))
        for _ in range(n):
            s.send(b"\x00\x00")
        s.settimeout(0.5)
        replies = 0
        try:
            while True:
                s.recv(64)
                replies += 1
        except OSError:
            pass
        print(f"replies={replies}")
        return 0
    if cmd == "addr":
        reply, _ = send(gateway, b"\x00\x00")
        show = show_pmp
    elif cmd == "map":
        op = 1 if argv[2] == "udp" else 2
        payload = struct.pack("!BBHHHI", 0, op, 0, int(argv[3]), int(argv[4]), int(argv[5]))
        reply, _ = send(gateway, payload)
        show = show_pmp
    elif cmd == "raw":
        reply, _ = send(gateway, bytes.fromhex(argv[2]))
        show = show_pcp if reply and reply[0] == 2 else show_pmp
    elif cmd == "pcp-map":
        proto = 6 if argv[2] == "tcp" else 17
        internal, suggested, lifetime = int(argv[3]), int(argv[4]), int(argv[5])
        nonce = bytes.fromhex(argv[6])
        rest = argv[7:]
        version, client, options = 2, None, b""
        while rest:
            flag = rest.pop(0)
            if flag == "--client":
                client = rest.pop(0)
            elif flag == "--version":
                version = int(rest.pop(0))
            elif flag == "--prefer-failure":
                options += struct.pack("!BBH", 2, 0, 0)
            elif flag == "--third-party":
                options += struct.pack("!BBH", 1, 0, 16) + b"\x00" * 10 + b"\xff\xff" + socket.inet_aton("192.168.77.99")
            elif flag == "--option":
                options += struct.pack("!BBH", int(rest.pop(0)), 0, 0)
            elif flag == "--protocol":
                proto = int(rest.pop(0))
        # The client address: the one this socket will use unless given.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect((gateway, 5351))
        src = client or SOURCE or probe.getsockname()[0]
        probe.close()
        mapped = b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(src)
        header = struct.pack("!BBHI", version, 1, 0, lifetime) + mapped
        body = nonce + struct.pack("!B3xHH", proto, internal, suggested) + b"\x00" * 16
        reply, _ = send(gateway, header + body + options)
        show = show_pcp
    else:
        print(__doc__, file=sys.stderr)
        return 1
    if reply is None:
        print("timeout")
        return 2
    print(show(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
