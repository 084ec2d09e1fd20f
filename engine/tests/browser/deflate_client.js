// A real permessage-deflate client (the `ws` package) for
// engine/tests/permessage_deflate.rs.
//
//   node deflate_client.js ws://HOST:PORT/ CHANNEL PUBLICATIONS BIG_DATA_LEN
//
// Connects offering permessage-deflate (ws's default offer,
// `permessage-deflate; client_max_window_bits`), compresses everything it
// sends (threshold 0), subscribes to CHANNEL and prints one line
// {"ready":true,"extensions":...}. Then it reads PUBLICATIONS publications
// (which the test emits), sends a compressed `send_data` of BIG_DATA_LEN
// bytes of JSON to CHANNEL and a compressed heartbeat, waits for both
// replies, and prints one line with what it saw: the negotiated
// extensions, every server frame's RSV1 bit, opcode and wire length (read
// from the raw socket beside ws's own parser), the messages ws decoded,
// and the replies. Exits non-zero on any error.
'use strict';

const WebSocket = require('ws');

const [url, channel, pubCount, bigLen] = process.argv.slice(2);
const wanted = Number(pubCount);

const frames = [];
let raw = Buffer.alloc(0);
function tap(chunk) {
  raw = Buffer.concat([raw, chunk]);
  for (;;) {
    if (raw.length < 2) return;
    let len = raw[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      if (raw.length < 4) return;
      len = raw.readUInt16BE(2);
      at = 4;
    } else if (len === 127) {
      if (raw.length < 10) return;
      len = Number(raw.readBigUInt64BE(2));
      at = 10;
    }
    if (raw.length < at + len) return;
    frames.push({ rsv1: (raw[0] & 0x40) !== 0, opcode: raw[0] & 0x0f, wire: at + len });
    raw = raw.subarray(at + len);
  }
}

const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
let extensions = null;
ws.on('upgrade', (res) => {
  extensions = res.headers['sec-websocket-extensions'] || null;
  res.socket.on('data', tap);
});

const publications = [];
const replies = {};
const fail = (why) => {
  console.error(why);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 20000).unref();

function call(id, method, params) {
  ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }), { compress: true });
}

ws.on('open', () => call(1, 'subscribe', { channel }));
ws.on('error', (e) => fail(`ws error: ${e.message}`));
ws.on('close', (code) => fail(`closed early: ${code}`));
ws.on('message', (data, isBinary) => {
  const msg = JSON.parse(data.toString());
  if (msg.id !== undefined) {
    replies[msg.id] = msg;
    if (msg.id === 1) {
      console.log(JSON.stringify({ ready: true, extensions }));
    }
  } else if (msg.method === 'message') {
    publications.push({ isBinary, data: msg.params.data, length: data.length });
    if (publications.length === wanted) {
      const filler = 'x'.repeat(Math.max(0, Number(bigLen) - 12));
      call(2, 'send_data', { channel, data: { filler } });
      call(3, 'heartbeat', {});
    }
  }
  if (replies[2] && replies[3]) {
    console.log(JSON.stringify({ extensions, frames, publications, replies }));
    ws.removeAllListeners('close');
    ws.close(1000);
    process.exit(0);
  }
});
