#!/usr/bin/python3
"""A minimal STUN binding server (RFC 5389) for tests and benchmarks.

  stun.py ADDRESS PORT

Answers every Binding Request from the socket it arrived on, with
MAPPED-ADDRESS and XOR-MAPPED-ADDRESS set to the source it saw; ignores
CHANGE-REQUEST (so a client behind no NAT sees itself as unrestricted).
"""
import socket
import struct
import sys

MAGIC = 0x2112A442


def answer(request, peer):
    if len(request) < 20:
        return None
    msg_type, _, cookie = struct.unpack("!HHI", request[:8])
    if msg_type != 0x0001:
        return None
    txid = request[8:20]
    ip = socket.inet_aton(peer[0])
    port = peer[1]
    mapped = struct.pack("!HHBBH", 0x0001, 8, 0, 1, port) + ip
    xport = port ^ (MAGIC >> 16)
    xip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC)))
    xor_mapped = struct.pack("!HHBBH", 0x0020, 8, 0, 1, xport) + xip
    attrs = mapped + xor_mapped
    return struct.pack("!HHI", 0x0101, len(attrs), cookie) + txid + attrs


def main(argv):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((argv[0], int(argv[1])))
    while True:
        data, peer = s.recvfrom(2048)
        reply = answer(data, peer)
        if reply:
            s.sendto(reply, peer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
