"""100,000 concurrent timed jobs over 1,000 connections (issue 13).

Usage, from the repository root after `cargo build --release`:
  python3 bench/jobs_timers.py [CONNS] [JOBS_PER_CONN] [BINARY]
  (defaults: 1000 100 target/release/ringcast)

For each scope (`connection`, then `global`) it starts the engine with
`--shards 2`, opens CONNS jobs connections, then sends JOBS_PER_CONN
`request`s on each (times from 20 s to 30 s, spread evenly, so every job is
running at once and they fall due over 10 s). It reports the server's
VmRSS and CPU time (utime + stime from /proc) with the connections alone,
with every job running, after 5 s of waiting with every job running, and
after every job answered `{"status":"Ok"}`, plus how late the answers came
(client receive time minus the time the connection's requests were
written plus `time`; the Python client's own event-loop lag is in it).
"""
import asyncio
import base64
import os
import resource
import subprocess
import sys
import time

CONNS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
PER = int(sys.argv[2]) if len(sys.argv) > 2 else 100
BIN = sys.argv[3] if len(sys.argv) > 3 else "target/release/ringcast"
BASE, SPREAD = 20.0, 10.0
TICK = os.sysconf("SC_CLK_TCK")

_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))


def frame(payload: bytes, opcode=0x1) -> bytes:
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def proc(pid):
    rss = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(f[11]) + int(f[12])) / TICK
    return rss, cpu


class Conn:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.texts = asyncio.Queue()

    async def run(self):
        try:
            while True:
                h = await self.r.readexactly(2)
                n = h[1] & 0x7F
                if n == 126:
                    n = int.from_bytes(await self.r.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await self.r.readexactly(8), "big")
                data = await self.r.readexactly(n)
                op = h[0] & 0x0F
                if op == 0x9:
                    self.w.write(frame(data, 0xA))
                elif op == 0x1:
                    self.texts.put_nowait((time.monotonic(), data))
                elif op == 0x8:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


async def connect(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(
        (
            f"GET /jobs HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    c = Conn(r, w)
    asyncio.ensure_future(c.run())
    return c


async def one_scope(scope, port):
    env = dict(os.environ, RINGCAST_PROTOCOLS_JOBS_SCOPE=scope)
    p = subprocess.Popen(
        [BIN, "serve", "--shards", "2", "--ws-listen", f"127.0.0.1:{port}",
         "--backend-listen", f"127.0.0.1:{port + 1}"],
        env=env, stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(1.0)
    conns = []
    for _ in range(CONNS):
        conns.append(await connect(port))
    await asyncio.sleep(2.0)
    rss0, cpu0 = proc(p.pid)
    t_send = time.monotonic()
    sent = []
    for i, c in enumerate(conns):
        msgs = []
        for j in range(PER):
            t = BASE + SPREAD * j / PER
            msgs.append(frame(f'{{"connid":"c{i}-{j}","time":"{t:.2f}","route":"request"}}'.encode()))
        c.w.write(b"".join(msgs))
        await c.w.drain()
        sent.append(time.monotonic())
    # Every job is running: each connection's status lists its own (or, in
    # global scope, one connection's lists everyone's).
    checks = conns if scope == "connection" else conns[:1]
    want = PER if scope == "connection" else min(PER * CONNS, 5000)  # status lists at most 5000
    for c in checks:
        c.w.write(frame(b'{"route":"status"}'))
    for c in checks:
        _, text = await c.texts.get()
        got = text.count(b":")
        assert got == want, (scope, got, want)
    t_running = time.monotonic()
    rss1, cpu1 = proc(p.pid)
    await asyncio.sleep(5.0)
    rss2, cpu2 = proc(p.pid)
    # Replies come in due order per connection, so a connection's k-th
    # reply answers its job with the k-th smallest time.
    slots = sorted(BASE + SPREAD * j / PER for j in range(PER))
    late = []
    for i, c in enumerate(conns):
        for k in range(PER):
            at, text = await c.texts.get()
            assert text == b'{"status":"Ok"}', text
            late.append(at - (sent[i] + slots[k]))
    rss3, cpu3 = proc(p.pid)
    late.sort()
    n = len(late)
    p.terminate()
    p.wait()
    for c in conns:
        c.w.close()
    jobs = CONNS * PER
    print(f"scope={scope}: {CONNS} connections, {jobs} jobs ({BASE:.0f}-{BASE + SPREAD:.0f} s), 2 shards")
    print(f"  VmRSS: connections only {rss0} kB; all jobs running {rss1} kB "
          f"(+{(rss1 - rss0) * 1024 / jobs:.0f} B per job); after 5 s waiting {rss2} kB; "
          f"all answered {rss3} kB")
    print(f"  server CPU: accepting {jobs} requests {cpu1 - cpu0:.2f} s "
          f"(in {t_running - t_send:.2f} s wall); 5 s of waiting {cpu2 - cpu1:.2f} s; "
          f"answering all {cpu3 - cpu2:.2f} s; whole run {cpu3 - cpu0:.2f} s")
    pct = lambda q: late[min(n - 1, int(q * n))] * 1000
    print(f"  answer after due time (client clock, from when the connection's requests were written): "
          f"p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {late[-1] * 1000:.0f} ms")


async def main():
    for k, scope in enumerate(["connection", "global"]):
        await one_scope(scope, 26000 + 10 * k)


asyncio.run(main())
