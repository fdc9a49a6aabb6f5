#!/usr/bin/python3
"""Tiny traffic tool for kernel tests (Debian's python3, standard library only).

  nettool.py serve tcp|udp|sctp PORT TOKEN [ADDR]
      Answers every connection or datagram with "TOKEN <peer address>\n".
  nettool.py ask tcp|udp|sctp HOST PORT [--timeout S] [--source ADDR]
      Sends one request, prints the answer, exits 1 when none comes in time.
  nettool.py udpstream HOST PORT COUNT INTERVAL SOURCEPORT
      Sends COUNT datagrams from one source port, one every INTERVAL seconds,
      printing "<n> <answer>" or "<n> -" for each.
  nettool.py count PORT [ADDR]
      A TCP server that reads each connection to its end and answers with
      the number of bytes it got.
  nettool.py send HOST PORT BYTES
      Sends BYTES bytes over TCP, half-closes, prints the answer (count's).
"""
import socket
import sys
import threading


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(proto, port, token, addr):
    fam = family(addr)
    if proto == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((addr, port))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(f"{token} {peer[0].removeprefix('::ffff:')}\n".encode(), peer)
    kind = socket.IPPROTO_SCTP if proto == "sctp" else 0
    s = socket.socket(fam, socket.SOCK_STREAM, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    while True:
        conn, peer = s.accept()
        def answer(c=conn, p=peer):
            try:
                c.sendall(f"{token} {p[0].removeprefix('::ffff:')}\n".encode())
            finally:
                c.close()
        threading.Thread(target=answer, daemon=True).start()


def ask(proto, host, port, timeout, source):
    fam = family(host)
    if proto == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
    else:
        kind = socket.IPPROTO_SCTP if proto == "sctp" else 0
        s = socket.socket(fam, socket.SOCK_STREAM, kind)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    try:
        if proto == "udp":
            s.sendto(b"ping\n", (host, port))
            data, _ = s.recvfrom(2048)
        else:
            s.connect((host, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(2048)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        print(f"no answer from {host}:{port}/{proto}: {e}", file=sys.stderr)
        return 1
    if not data:
        print(f"empty answer from {host}:{port}/{proto}", file=sys.stderr)
        return 1
    sys.stdout.write(data.decode())
    return 0


def udpstream(host, port, count, interval, source_port):
    """Sends `count` datagrams from one source port, printing each answer."""
    import time
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind(("::" if family(host) == socket.AF_INET6 else "0.0.0.0", source_port))
    s.settimeout(interval)
    for i in range(count):
        s.sendto(f"ping {i}\n".encode(), (host, port))
        start = time.monotonic()
        try:
            data, _ = s.recvfrom(2048)
            sys.stdout.write(f"{i} {data.decode()}")
        except OSError:
            sys.stdout.write(f"{i} -\n")
        sys.stdout.flush()
        left = interval - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)
    return 0


def count(port, addr):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        n = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            n += len(d)
        c.sendall(str(n).encode())
        c.close()


def send(host, port, n):
    s = socket.create_connection((host, port), 5)
    s.sendall(b"x" * n)
    s.shutdown(socket.SHUT_WR)
    sys.stdout.write(s.recv(100).decode() + "\n")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "count":
        count(int(argv[1]), argv[2] if len(argv) > 2 else "0.0.0.0")
        return 0
    if len(argv) == 4 and argv[0] == "send":
        return send(argv[1], int(argv[2]), int(argv[3]))
    if len(argv) >= 4 and argv[0] == "serve":
        addr = argv[4] if len(argv) > 4 else "::"
        serve(argv[1], int(argv[2]), argv[3], addr)
        return 0
    if len(argv) >= 4 and argv[0] == "ask":
        timeout, source = 2.0, None
        rest = argv[4:]
        while rest:
            if rest[0] == "--timeout":
                timeout = float(rest[1])
            elif rest[0] == "--source":
                source = rest[1]
            rest = rest[2:]
        return ask(argv[1], argv[2], int(argv[3]), timeout, source)
    if len(argv) >= 6 and argv[0] == "udpstream":
        return udpstream(argv[1], int(argv[2]), int(argv[3]), float(argv[4]),
                         int(argv[5]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
