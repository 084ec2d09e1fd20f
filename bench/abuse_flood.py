#!/usr/bin/env python3
"""Abusive WebSocket clients against a running ringcast, for the "Bounded
under abuse" figures in bench/RESULTS.md.

usage: abuse_flood.py WS_PORT SERVER_PID CLIENTS [batch|ping]

CLIENTS connections upgrade, shrink their receive buffer, then never read:
each sends `[1,1,...]` batches of 100 invalid calls (batch) or 125-byte
pings (ping) until the server stops taking them. The server's RSS is
printed after connecting, after the flood, and 1/5/15/30 s after every
client closed.
"""
import socket
import sys
import time

ws_port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
kind = sys.argv[4] if len(sys.argv) > 4 else "batch"


def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024


def frame(opcode, payload):
    mask = b"\x01\x02\x03\x04"
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


if kind == "batch":
    unit = frame(1, ("[" + ",".join(["1"] * 100) + "]").encode())
else:
    unit = frame(9, b"p" * 125)
chunk = unit * max(1, (64 << 10) // len(unit))
upgrade = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

print(f"start: {rss()} MiB")
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", ws_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(upgrade)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(1)
    s.setblocking(False)
    socks.append(s)
print(f"{n} connected: {rss()} MiB")
sent = 0
for _ in range(200):
    progress = 0
    for s in socks:
        try:
            progress += s.send(chunk)
        except OSError:
            pass
    sent += progress
    if progress == 0:
        break
print(f"flooded {sent >> 20} MiB: {rss()} MiB")
time.sleep(1)
print(f"held 1 s: {rss()} MiB")
for s in socks:
    s.close()
prev = 0
for t in (1, 5, 15, 30):
    time.sleep(t - prev)
    prev = t
    print(f"closed +{t} s: {rss()} MiB")
