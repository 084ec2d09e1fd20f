import socket, subprocess, time, sys, os
bin_ = sys.argv[1]
p = subprocess.Popen([bin_, "serve", "--ws-listen", "127.0.0.1:48100", "--backend-listen", "127.0.0.1:48101", "--api-token", "s3cret", "--shards", "2"], stderr=subprocess.DEVNULL)
time.sleep(1)
def rss(): 
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1])//1024
r0 = rss()
socks = []
statuses = {}
for i in range(200):
    s = socket.create_connection(("127.0.0.1", 48101))
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    s.setblocking(False)
    sent = 0
    chunk = b"x" * 65536
    for _ in range(15):
        try: sent += s.send(chunk)
        except (BlockingIOError, ConnectionResetError, BrokenPipeError): break
    socks.append(s)
time.sleep(1)
for s in socks:
    s.setblocking(True); s.settimeout(3)
    try:
        d = s.recv(100)
        k = d.split(b"\r\n")[0].decode() if d else "EOF"
    except Exception as e:
        k = type(e).__name__
    statuses[k] = statuses.get(k, 0) + 1
r1 = rss()
print(f"RSS before {r0} MiB, with 200 unauthorized partial 1 MB bodies {r1} MiB; first line read: {statuses}")
p.terminate(); p.wait()
