"""DMOJ's judge/event_poster_ws.py, as it uses websocket-client, against a
ringcast senders listener. Usage: dmoj_poster.py URL KEY|- CHANNEL COUNT
Prints one JSON line: {"posted": [ids], "last": id}."""
import json
import sys

from websocket import create_connection


class EventPostingError(RuntimeError):
    pass


class EventPoster(object):
    # The class of judge/event_poster_ws.py, with settings as arguments.
    def __init__(self, url, key):
        self._url = url
        self._key = key
        self._connect()

    def _connect(self):
        self._conn = create_connection(self._url)
        if self._key is not None:
            self._conn.send(json.dumps({'command': 'auth', 'key': self._key}))
            resp = json.loads(self._conn.recv())
            if resp['status'] == 'error':
                raise EventPostingError(resp['code'])

    def post(self, channel, message, tries=0):
        self._conn.send(json.dumps({'command': 'post', 'channel': channel, 'message': message}))
        resp = json.loads(self._conn.recv())
        if resp['status'] == 'error':
            raise EventPostingError(resp['code'])
        else:
            return resp['id']

    def last(self, tries=0):
        self._conn.send('{"command": "last-msg"}')
        resp = json.loads(self._conn.recv())
        if resp['status'] == 'error':
            raise EventPostingError(resp['code'])
        else:
            return resp['id']


def main():
    url, key, channel, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    try:
        poster = EventPoster(url, None if key == '-' else key)
    except EventPostingError as e:
        print(json.dumps({'error': str(e)}))
        return
    ids = [poster.post(channel, {'type': 'processing', 'n': i, 'text': 'caf\u00e9 "q"'}) for i in range(count)]
    print(json.dumps({'posted': ids, 'last': poster.last()}))


main()
