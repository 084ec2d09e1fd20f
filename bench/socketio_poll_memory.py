"""Memory of parked Engine.IO polling sessions against idle Socket.IO
WebSocket receivers (issue 11, step 2).
Usage, from the repository root (RINGCAST= the binary, default
target/release/ringcast):
  python3 bench/socketio_poll_memory.py 1000 ws    # N WebSocket receivers (40, set-filter)
  python3 bench/socketio_poll_memory.py 1000 poll  # N polling sessions, each with a parked GET
Prints the server's VmRSS growth per session, then one post and checks
that every parked GET got it.
"""
import json, os, resource, socket, subprocess, sys, time

_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))
N, MODE = int(sys.argv[1]), sys.argv[2]
BIN = os.environ.get("RINGCAST", "target/release/ringcast")
env = dict(os.environ, RINGCAST_PROTOCOLS_SOCKETIO_ENABLED="true",
           RINGCAST_PROTOCOLS_SOCKETIO_LISTEN="127.0.0.1:25110",
           RINGCAST_PROTOCOLS_SOCKETIO_TOKEN="t", RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS="100000",
           RINGCAST_LIMITS_MAX_CONNECTIONS="5000")
p = subprocess.Popen([BIN, "serve", "--shards", "2", "--ws-listen", "127.0.0.1:25010",
                      "--backend-listen", "127.0.0.1:25011"], env=env, stderr=subprocess.DEVNULL)
time.sleep(1.0)
ADDR = ("127.0.0.1", 25110)
Q = "/socket.io/?EIO=4&transport=polling"


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
    s = socket.create_connection(ADDR)
    s.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.sendall(frame("40") + frame('42["set-filter",{"filter":["idle"]}]'))
    return s


def poll_session():
    s = socket.create_connection(ADDR)
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


base = rss()
conns_so_far = conns = []
for _ in range(N):
    conns.append(ws_receiver() if MODE == "ws" else poll_session())
time.sleep(2)
after = rss()
print(f"N={N} {MODE}: base {base} kB, with {N} sessions {after} kB: {(after - base) * 1024 // N} B per session")
if MODE == "poll":
    b = socket.create_connection(("127.0.0.1", 25011))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "emit", "params": {"channel": "idle", "data": "x"}}).encode()
    b.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    response(b)
    ok = sum(1 for s in conns if b"idle" in response(s))
    print(f"parked GETs answered with the publication: {ok}/{N}")
p.terminate()
p.wait()
