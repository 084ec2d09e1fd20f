// Node `ws` peer for ringcast's end-to-end comparison.
//
// Speaks the subset of ringcast's native protocol the load generator uses:
// WebSocket JSON-RPC `subscribe`/`unsubscribe`, and `emit` on an HTTP
// backend port, delivering `{"jsonrpc":"2.0","method":"message",...}` with
// per-channel offsets from 1. Written as a `ws` user would: a Map of
// channel -> Set of sockets, the notification serialized once to a Buffer
// and `send` to each subscriber.
//
// Usage: node server.js [--ws-listen HOST:PORT] [--backend-listen HOST:PORT]
// (or WS_LISTEN / BACKEND_LISTEN; defaults 0.0.0.0:58000 / 127.0.0.1:59999)
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

function arg(name, env, dflt) {
  const i = process.argv.indexOf(name);
  if (i > 0 && process.argv[i + 1]) return process.argv[i + 1];
  return process.env[env] || dflt;
}

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
}

const [wsHost, wsPort] = hostPort(arg('--ws-listen', 'WS_LISTEN', '0.0.0.0:58000'));
const [beHost, bePort] = hostPort(arg('--backend-listen', 'BACKEND_LISTEN', '127.0.0.1:59999'));

const MAX_OUTBOUND = 1024 * 1024;
const epoch = Math.random().toString(36).slice(2, 10);
const channels = new Map(); // channel -> { offset, subs: Set<WebSocket> }
let nextId = Date.now();

function channel(name) {
  let ch = channels.get(name);
  if (!ch) {
    ch = { offset: 0, subs: new Set() };
    channels.set(name, ch);
  }
  return ch;
}

function reply(id, result) {
  return JSON.stringify({ jsonrpc: '2.0', id, result });
}

function error(id, code, message) {
  return JSON.stringify({ jsonrpc: '2.0', id: id === undefined ? null : id, error: { code, message } });
}

function validChannel(c) {
  return typeof c === 'string' && c.length > 0 && c.length <= 255;
}

const wss = new WebSocketServer({ host: wsHost, port: wsPort, maxPayload: 64 * 1024, perMessageDeflate: false });

wss.on('connection', (ws) => {
  const mine = new Set();
  ws.on('message', (message) => {
    let req;
    try {
      req = JSON.parse(message.toString());
    } catch (e) {
      ws.send(error(null, -32700, 'parse error'));
      return;
    }
    const p = req.params || {};
    let out;
    switch (req.method) {
      case 'subscribe': {
        if (!validChannel(p.channel)) { out = error(req.id, -32602, 'invalid params'); break; }
        const ch = channel(p.channel);
        ch.subs.add(ws);
        mine.add(p.channel);
        out = reply(req.id, { channel: p.channel, offset: ch.offset, epoch });
        break;
      }
      case 'unsubscribe': {
        if (!validChannel(p.channel)) { out = error(req.id, -32602, 'invalid params'); break; }
        const ch = channels.get(p.channel);
        if (ch) ch.subs.delete(ws);
        mine.delete(p.channel);
        out = reply(req.id, { channel: p.channel });
        break;
      }
      case 'heartbeat':
        out = reply(req.id, { heartbeat: 'ok' });
        break;
      default:
        out = error(req.id, -32601, 'method not found');
    }
    if (req.id !== undefined) ws.send(out);
  });
  ws.on('close', () => {
    for (const name of mine) {
      const ch = channels.get(name);
      if (ch) ch.subs.delete(ws);
    }
  });
  ws.on('error', () => {});
});

function emit(name, data) {
  const ch = channel(name);
  ch.offset += 1;
  const id = ++nextId;
  const frame = Buffer.from('{"jsonrpc":"2.0","method":"message","params":{"channel":' + JSON.stringify(name) +
    ',"offset":' + ch.offset + ',"id":' + id + ',"data":' + JSON.stringify(data === undefined ? null : data) + '}}');
  for (const ws of ch.subs) {
    if (ws.bufferedAmount > MAX_OUTBOUND) {
      ws.close(1008, 'slow consumer');
      continue;
    }
    ws.send(frame);
  }
  return { offset: ch.offset, id, subscribers: ch.subs.size };
}

function backend(body) {
  let req;
  try {
    req = JSON.parse(body);
  } catch (e) {
    return error(null, -32700, 'parse error');
  }
  const p = req.params || {};
  switch (req.method) {
    case 'emit':
      if (!validChannel(p.channel)) return error(req.id, -32602, 'invalid params');
      return reply(req.id, emit(p.channel, p.data));
    case 'total_subscribers': {
      const ch = validChannel(p.channel) && channels.get(p.channel);
      return reply(req.id, { total: ch ? ch.subs.size : 0 });
    }
    case 'ping':
      return reply(req.id, { ping: 'ok' });
    default:
      return error(req.id, -32601, 'method not found');
  }
}

const server = http.createServer({ keepAlive: true }, (req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.end('ok');
    return;
  }
  if (req.method !== 'POST' || req.url !== '/') {
    res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"not found"}');
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(backend(Buffer.concat(chunks).toString()));
  });
});
server.keepAliveTimeout = 0;
server.listen(bePort, beHost, () => {
  console.log(`ws peer: ws ${wsHost}:${wsPort} backend ${beHost}:${bePort}`);
});
