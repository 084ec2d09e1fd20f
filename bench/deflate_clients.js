// Clients for bench/deflate.sh: N WebSocket connections (Node's `ws`,
// from engine/tests/browser/node_modules), all subscribed to one channel,
// offering permessage-deflate (`deflate`) or not (`plain`).
//
//   node bench/deflate_clients.js ws://HOST:PORT/ N deflate|plain CHANNEL EXPECTED
//
// Prints "ready" once every connection is subscribed, then "done R B" once
// EXPECTED publications reached every connection (R = messages received,
// B = bytes read from the sockets since "ready": the bytes on the wire),
// and exits. ws inflates what arrives compressed, as a browser would.
'use strict';
const WebSocket = require('ws');

const [url, n, mode, channel, expected] = process.argv.slice(2);
const total = Number(n);
const perDeflate = mode === 'deflate' ? { threshold: 1 << 20 } : false;
let subscribed = 0;
let received = 0;
const goal = total * Number(expected);
let opened = 0;
const sockets = [];
const bytesRead = () => sockets.reduce((sum, ws) => sum + ws._socket.bytesRead, 0);
let readyBytes = 0;

function open() {
  if (opened >= total) return;
  opened++;
  const ws = new WebSocket(url, { perMessageDeflate: perDeflate });
  sockets.push(ws);
  ws.on('open', () => {
    ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'subscribe', params: { channel } }));
    open();
  });
  ws.on('message', (data) => {
    if (data[0] === 0x7b && data.includes('"id":1,"result"')) {
      if (++subscribed === total) {
        readyBytes = bytesRead();
        console.log('ready');
      }
      return;
    }
    if (++received === goal) {
      console.log(`done ${received} ${bytesRead() - readyBytes}`);
      process.exit(0);
    }
  });
  ws.on('error', (e) => {
    console.error(`ws error: ${e.message}`);
    process.exit(1);
  });
}
// 64 handshakes in flight at a time.
for (let i = 0; i < 64; i++) open();
