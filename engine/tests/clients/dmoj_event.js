// What DMOJ's resources/event.js EventReceiver does over its WebSocket:
// on open send start-msg with the last id it knows (first the page's),
// then set-filter; on each message remember data.id. This client also
// drops its connection once after `reconnectAfter` messages and comes
// back the way a reloaded page would, with the last id it saw.
// Usage: node dmoj_event.js URL CHANNELS(comma) LAST_ID COUNT RECONNECT_AFTER
// Prints one JSON line: {"messages": [{id, channel, message}, ...]}.
'use strict';
const WebSocket = require('ws');

const [url, channels, lastArg, countArg, reconnectArg] = process.argv.slice(2);
let lastMsg = Number(lastArg);
const want = Number(countArg);
const reconnectAfter = Number(reconnectArg);
const got = [];
let reconnected = false;

function connect() {
  const ws = new WebSocket(url);
  ws.onopen = () => {
    ws.send(JSON.stringify({ command: 'start-msg', start: lastMsg }));
    ws.send(JSON.stringify({ command: 'set-filter', filter: channels.split(',') }));
  };
  ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    got.push(data);
    lastMsg = data.id;
    if (got.length >= want) {
      ws.close();
      console.log(JSON.stringify({ messages: got }));
      process.exit(0);
    }
    if (!reconnected && got.length === reconnectAfter) {
      reconnected = true;
      ws.onmessage = null;
      ws.close();
      setTimeout(connect, 400);
    }
  };
  ws.onerror = (e) => {
    console.error('websocket error: ' + e.message);
    process.exit(2);
  };
}

setTimeout(() => {
  console.log(JSON.stringify({ messages: got, timeout: true }));
  process.exit(1);
}, 15000);
connect();
