"""LQDOJ's Django poster (judge/event_poster_ws.py) as it talks to the event
daemon: python-socketio's Client, auth {role: sender, token}, `post` and
`last-msg` answered through acks, with a 5 s wait. TRANSPORTS is
`websocket`, `polling`, or `default` (python-socketio's own: polling,
then the upgrade to WebSocket). Then a receiver (role client) that comes
back after the posts: `start-msg` from before them and `set-filter`, and
catches up on what it missed.

Usage: python3 lqdoj_poster.py URL TOKEN CHANNEL COUNT [TRANSPORTS]
Prints one JSON object: {"posted": [ids], "last": id, "no_ack": reply,
"bad_channel": ack, "transport": name, "caught_up": [messages],
"receiver_transport": name} or {"error": message} when the connection is
refused.
"""
import json
import sys
import threading

import socketio

url, token, channel, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mode = sys.argv[5] if len(sys.argv) > 5 else "websocket"
transports = None if mode == "default" else mode.split(",")
client = socketio.Client(reconnection=False, request_timeout=5)
responses = []
got_response = threading.Event()


@client.on("post-response")
def on_post_response(data):
    responses.append(data)
    got_response.set()


connect_errors = []


@client.on("connect_error")
def on_connect_error(data):
    connect_errors.append(data)


try:
    client.connect(
        url,
        auth={"role": "sender", "token": token},
        namespaces=["/"],
        transports=transports,
        wait_timeout=5,
    )
except socketio.exceptions.ConnectionError as e:
    print(json.dumps({"error": str(e), "connect_error": connect_errors}))
    sys.exit(0)

out = {"posted": []}
start = client.call("last-msg", timeout=5)["id"]
for n in range(count):
    reply = client.call(
        "post",
        {"channel": channel, "message": {"type": "processing", "n": n, "text": "caf\u00e9 \"q\""}},
        timeout=5,
    )
    if reply.get("status") != "success":
        print(json.dumps({"error": "post failed", "reply": reply}))
        sys.exit(1)
    out["posted"].append(reply["id"])
out["last"] = client.call("last-msg", timeout=5)["id"]
# Without a callback the answer is a `post-response` event.
client.emit("post", {"channel": channel + "_noack", "message": None})
got_response.wait(5)
out["no_ack"] = responses[0] if responses else None
out["bad_channel"] = client.call("post", {"channel": "", "message": 1}, timeout=5)
out["transport"] = client.transport()
client.disconnect()

# A receiver coming back: it catches up from the id before the posts.
receiver = socketio.Client(reconnection=False, request_timeout=5)
caught = []
done = threading.Event()


@receiver.on("message")
def on_message(data):
    caught.append(data)
    if len(caught) == count:
        done.set()


@receiver.on("connect")
def on_connect():
    receiver.emit("start-msg", {"start": start})
    receiver.emit("set-filter", {"filter": [channel]})


receiver.connect(url, auth={"role": "client"}, transports=transports, wait_timeout=5)
done.wait(5)
out["caught_up"] = caught
out["receiver_transport"] = receiver.transport()
receiver.disconnect()
print(json.dumps(out))
