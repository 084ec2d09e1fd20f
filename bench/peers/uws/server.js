// uWebSockets.js peer for ringcast's end-to-end comparison.
//
// Speaks the subset of ringcast's native protocol the load generator uses:
// WebSocket JSON-RPC `subscribe`/`unsubscribe`, and `emit` on an HTTP
// backend port, delivering `{"jsonrpc":"2.0","method":"message",...}` with
// per-channel offsets from 1. Written the uWS way: each channel is a uWS
// pub/sub topic, a publication is one `app.publish` (uWS keeps the topic
// tree and batches the writes itself).
//
// Usage: node server.js [--ws-listen HOST:PORT] [--backend-listen HOST:PORT]
// (or WS_LISTEN / BACKEND_LISTEN; defaults 0.0.0.0:58000 / 127.0.0.1:59999)
'use strict';

const uWS = require('@trufflesuite/uws-js-unofficial');

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

const epoch = Math.random().toString(36).slice(2, 10);
const offsets = new Map(); // channel -> last offset
let nextId = Date.now();

function reply(id, result) {
  return JSON.stringify({ jsonrpc: '2.0', id, result });
}

function error(id, code, message) {
  return JSON.stringify({ jsonrpc: '2.0', id: id === undefined ? null : id, error: { code, message } });
}

function validChannel(c) {
  return typeof c === 'string' && c.length > 0 && c.length <= 255;
}

const app = uWS.App();

app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 1024 * 1024,
  closeOnBackpressureLimit: true,
  idleTimeout: 0,
  sendPingsAutomatically: false,
  message: (ws, message) => {
    let req;
    try {
      req = JSON.parse(Buffer.from(message).toString());
    } catch (e) {
      ws.send(error(null, -32700, 'parse error'));
      return;
    }
    const p = req.params || {};
    let out;
    switch (req.method) {
      case 'subscribe':
        if (!validChannel(p.channel)) { out = error(req.id, -32602, 'invalid params'); break; }
        ws.subscribe(p.channel);
        out = reply(req.id, { channel: p.channel, offset: offsets.get(p.channel) || 0, epoch });
        break;
      case 'unsubscribe':
        if (!validChannel(p.channel)) { out = error(req.id, -32602, 'invalid params'); break; }
        ws.unsubscribe(p.channel);
        out = reply(req.id, { channel: p.channel });
        break;
      case 'heartbeat':
        out = reply(req.id, { heartbeat: 'ok' });
        break;
      default:
        out = error(req.id, -32601, 'method not found');
    }
    if (req.id !== undefined) ws.send(out);
  },
});

function emit(channel, data) {
  const offset = (offsets.get(channel) || 0) + 1;
  offsets.set(channel, offset);
  const id = ++nextId;
  const frame = '{"jsonrpc":"2.0","method":"message","params":{"channel":' + JSON.stringify(channel) +
    ',"offset":' + offset + ',"id":' + id + ',"data":' + JSON.stringify(data === undefined ? null : data) + '}}';
  const subscribers = app.numSubscribers(channel);
  app.publish(channel, frame, false);
  return { offset, id, subscribers };
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
    case 'total_subscribers':
      return reply(req.id, { total: validChannel(p.channel) ? app.numSubscribers(p.channel) : 0 });
    case 'ping':
      return reply(req.id, { ping: 'ok' });
    default:
      return error(req.id, -32601, 'method not found');
  }
}

app.post('/', (res) => {
  const chunks = [];
  res.onAborted(() => { res.aborted = true; });
  res.onData((chunk, isLast) => {
    chunks.push(Buffer.from(new Uint8Array(chunk))); // copy: uWS reuses (and detaches) the chunk
    if (!isLast || res.aborted) return;
    const out = backend(Buffer.concat(chunks).toString());
    res.cork(() => res.writeHeader('Content-Type', 'application/json').end(out));
  });
});

app.get('/health', (res) => { res.end('ok'); });

app.listen(wsHost, wsPort, (sock) => {
  if (!sock) { console.error(`uws peer: cannot listen on ${wsHost}:${wsPort}`); process.exit(1); }
  app.listen(beHost, bePort, (sock2) => {
    if (!sock2) { console.error(`uws peer: cannot listen on ${beHost}:${bePort}`); process.exit(1); }
    console.log(`uws peer: ws ${wsHost}:${wsPort} backend ${beHost}:${bePort}`);
  });
});
