"""Publishes events the way DMOJ's and LQDOJ's judge/event_poster_amqp.py
do: pika BlockingConnection on URLParameters(EVENT_DAEMON_AMQP), then per
event basic_publish(exchange, routing_key, json.dumps({"id": id,
"channel": channel, "message": message})) with id = int(time() * 1000000).
DMOJ uses routing key '', LQDOJ "#".

Usage:
  dmoj_amqp_poster.py URL EXCHANGE ROUTING_KEY CHANNEL MESSAGE_JSON [COUNT]
      prints each id it published, one per line
  dmoj_amqp_poster.py --bench URL EXCHANGE CHANNEL COUNT SIZE
      publishes COUNT events whose message is {"ts": NANOS, "seq": K,
      "pad": "x" * SIZE} (K from 1, what ringcast-loadgen checks), prints
      the seconds it took
"""
import json
import sys
import time

import pika


def connect(url):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def post(chan, exchange, routing_key, channel, message):
    id = int(time.time() * 1000000)
    chan.basic_publish(exchange, routing_key,
                       json.dumps({"id": id, "channel": channel, "message": message}))
    return id


def main(argv):
    if argv[0] == "--bench":
        url, exchange, channel, count, size = argv[1:6]
        conn, chan = connect(url)
        pad = "x" * int(size)
        start = time.time()
        for k in range(1, int(count) + 1):
            post(chan, exchange, "", channel, {"ts": time.time_ns(), "seq": k, "pad": pad})
        print("%.3f" % (time.time() - start))
        conn.close()
        return
    url, exchange, routing_key, channel, message = argv[:5]
    count = int(argv[5]) if len(argv) > 5 else 1
    conn, chan = connect(url)
    for _ in range(count):
        print(post(chan, exchange, routing_key, channel, json.loads(message)), flush=True)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
