"""Memory of parked DMOJ long-polls against idle DMOJ receivers (issue 10).
Usage, from the repository root after `cargo build --release`:
  python3 bench/dmoj_poll_memory.py 10000 ws    # N idle receivers (set-filter [idle])
  python3 bench/dmoj_poll_memory.py 10000 poll  # N parked GET /channels/idle?last=0
Prints the server's VmRSS growth per connection, then answers every poll
with one post. Needs 2N+ open files (ulimit -n).
"""
import os, socket, subprocess, sys, time, resource, base64, json
_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))
N = int(sys.argv[1])
env = dict(os.environ, RINGCAST_PROTOCOLS_DMOJ_ENABLED="true",
           RINGCAST_PROTOCOLS_DMOJ_RECEIVERS="127.0.0.1:25100", RINGCAST_PROTOCOLS_DMOJ_SENDERS="127.0.0.1:25101",
           RINGCAST_PROTOCOLS_DMOJ_LONG_POLL="127.0.0.1:25102", RINGCAST_PROTOCOLS_DMOJ_LONG_POLL_TIMEOUT="600")
p = subprocess.Popen(["target/release/ringcast", "serve", "--shards", "2", "--ws-listen", "127.0.0.1:25000",
                      "--backend-listen", "127.0.0.1:25001"], env=env, stderr=subprocess.DEVNULL, )
time.sleep(1.0)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def frame(text):
    b = text.encode(); mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(b)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b))
def receiver():
    s = socket.create_connection(("127.0.0.1", 25100))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(1024)
    s.sendall(frame(json.dumps({"command": "set-filter", "filter": ["idle"]})))
    return s
base = rss()
ws = [receiver() for _ in range(N if sys.argv[2] == "ws" else 0)]
time.sleep(2); a = rss()
polls = []
for _ in range(N if sys.argv[2] == "poll" else 0):
    s = socket.create_connection(("127.0.0.1", 25102))
    s.sendall(b"GET /channels/idle?last=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    polls.append(s)
time.sleep(2); b = rss()
print(f"N={N} base={base} kB; +{N} idle DMOJ receivers: {a} kB ({(a-base)*1024//N} B each); +{N} parked long-polls: {b} kB ({(b-a)*1024//N} B each)")
# one post answers them all
t = socket.create_connection(("127.0.0.1", 25101))
t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
buf=b""
while b"\r\n\r\n" not in buf: buf += t.recv(1024)
t0=time.time(); t.sendall(frame('{"command": "post", "channel": "idle", "message": 1}'))
ok = 0
for s in polls:
    d = s.recv(4096)
    ok += d.startswith(b"HTTP/1.1 200")
print(f"answered 200: {ok}/{len(polls)} in {time.time()-t0:.2f}s")
p.terminate(); p.wait()
