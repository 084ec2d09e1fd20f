"""Memory of parked Engine.IO polling sessions against idle Socket.IO
WebSocket receivers (issue 11), in one server run.
Usage, from the repository root (RINGCAST= the binary, default
target/release/ringcast):
  python3 bench/socketio_poll_memory.py N_POLL N_WS
Starts the server (2 shards, LQDOJ's listener) on free ports, opens
N_POLL polling sessions (each connected, subscribed and with a long GET
parked on its keep-alive connection), measures the server's VmRSS growth
per session, then N_WS WebSocket receivers (connected, subscribed) and
measures again; then one publication, and checks that every parked GET
and every WebSocket receiver got it. Client sockets bind 127.0.0.x source
addresses with ports above the ephemeral range (61001-64999), so that
10,000s of them do not take the ephemeral ports other programs need.
"""
import json, os, resource, socket, subprocess, sys, time

_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))
N_POLL, N_WS = int(sys.argv[1]), int(sys.argv[2])
BIN = os.environ.get("RINGCAST", "target/release/ringcast")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WS_PORT, BACKEND, LQDOJ = free_port(), free_port(), free_port()
env = dict(os.environ, RINGCAST_PROTOCOLS_SOCKETIO_ENABLED="true",
           RINGCAST_PROTOCOLS_SOCKETIO_LISTEN=f"127.0.0.1:{LQDOJ}",
           RINGCAST_PROTOCOLS_SOCKETIO_TOKEN="t", RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS="100000",
           RINGCAST_LIMITS_MAX_CONNECTIONS="19000",
           # No ping while the sessions are being opened (a parked GET
           # would return with it and its session would need a pong).
           RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL="600000")
p = subprocess.Popen([BIN, "serve", "--shards", "2", "--ws-listen", f"127.0.0.1:{WS_PORT}",
                      "--backend-listen", f"127.0.0.1:{BACKEND}"], env=env, stderr=subprocess.DEVNULL)
time.sleep(1.0)
ADDR = ("127.0.0.1", LQDOJ)
Q = "/socket.io/?EIO=4&transport=polling"
_next = [0]


def connect():
    """A client socket from 127.0.0.x:6xxxx (past the ephemeral range)."""
    while True:
        i = _next[0]
        _next[0] += 1
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((f"127.0.0.{2 + i // 4000}", 61001 + i % 4000))
        except OSError:
            s.close()
            continue
        s.connect(ADDR)
        return s


def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])


def response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        body += s.recv(65536)
    return body


def req(s, method, target, body=b""):
    s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return response(s)


def frame(text):
    b = text.encode()
    return bytes([0x81, 0x80 | len(b), 0, 0, 0, 0]) + b


def ws_receiver():
    s = connect()
    s.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.sendall(frame("40") + frame('42["set-filter",{"filter":["idle"]}]'))
    return s


def poll_session():
    s = connect()
    open_ = req(s, "GET", Q)
    if not open_.startswith(b"0{"):
        p.terminate()
        sys.exit(f"handshake refused after {len(conns_so_far)} sessions: {open_!r}")
    sid = json.loads(open_[1:])["sid"]
    req(s, "POST", f"{Q}&sid={sid}", b'40\x1e42["set-filter",{"filter":["idle"]}]')
    got = b""
    while b"status" not in got:
        got += req(s, "GET", f"{Q}&sid={sid}")
    s.sendall(f"GET {Q}&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # parked
    return s


def read_ws_until(s, needle):
    got = b""
    while needle not in got:
        chunk = s.recv(65536)
        if not chunk:
            return False
        got += chunk
    return True


base = rss()
polls = conns_so_far = []
for _ in range(N_POLL):
    polls.append(poll_session())
time.sleep(2)
after_poll = rss()
wss = []
for _ in range(N_WS):
    wss.append(ws_receiver())
for s in wss:
    read_ws_until(s, b"status")
time.sleep(2)
after_ws = rss()
per = lambda kb, n: (kb * 1024 // n) if n else 0
print(f"server VmRSS: base {base} kB; +{N_POLL} parked polling sessions {after_poll} kB "
      f"({per(after_poll - base, N_POLL)} B each); +{N_WS} WebSocket receivers {after_ws} kB "
      f"({per(after_ws - after_poll, N_WS)} B each)")
b = socket.create_connection(("127.0.0.1", BACKEND))
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "emit", "params": {"channel": "idle", "data": "x"}}).encode()
b.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
response(b)
ok = sum(1 for s in polls if b"idle" in response(s))
okw = sum(1 for s in wss if read_ws_until(s, b'"idle"'))
print(f"one publication reached {ok}/{N_POLL} parked GETs and {okw}/{N_WS} WebSocket receivers")
p.terminate()
p.wait()
