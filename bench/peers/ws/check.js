// Protocol check for any server in the comparison (ringcast or a peer):
// two clients subscribe to a fresh channel, the backend emits three
// publications, and both clients must get all three, in offset order, with
// the ids and offsets the backend returned.
//
// Usage: node check.js WS_HOST:PORT BACKEND_HOST:PORT   (exit 0 = ok)
'use strict';

const http = require('http');
const WebSocket = require('ws');

const [wsAddr = '127.0.0.1:58000', beAddr = '127.0.0.1:59999'] = process.argv.slice(2);
const channel = `check-${process.pid}-${Date.now()}`;
const timer = setTimeout(() => fail('timed out after 10 s'), 10000);

function fail(msg) {
  console.error(`check ${wsAddr}: FAIL: ${msg}`);
  process.exit(1);
}

function assert(cond, msg) {
  if (!cond) fail(msg);
}

function post(body) {
  const [host, port] = [beAddr.slice(0, beAddr.lastIndexOf(':')), Number(beAddr.slice(beAddr.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({ host, port, method: 'POST', path: '/', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString())); } catch (e) { reject(e); }
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}

function client(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${wsAddr}/`);
    const got = [];
    ws.on('error', reject);
    ws.on('open', () => ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'subscribe', params: { channel } })));
    ws.on('message', (m) => {
      const msg = JSON.parse(m.toString());
      if (msg.id === 1) {
        assert(msg.jsonrpc === '2.0' && msg.result, `client ${i}: bad subscribe reply ${m}`);
        assert(msg.result.channel === channel, `client ${i}: subscribe result channel ${m}`);
        assert(msg.result.offset === 0, `client ${i}: fresh channel should be at offset 0: ${m}`);
        assert(typeof msg.result.epoch === 'string', `client ${i}: epoch must be a string: ${m}`);
        resolve({ ws, got });
      } else if (msg.method === 'message') {
        got.push(msg.params);
      } else {
        fail(`client ${i}: unexpected frame ${m}`);
      }
    });
  });
}

(async () => {
  const clients = [await client(0), await client(1)];
  const emitted = [];
  for (let n = 1; n <= 3; n++) {
    const r = await post({ jsonrpc: '2.0', id: n, method: 'emit', params: { channel, data: { n, text: 'hello' } } });
    assert(r.jsonrpc === '2.0' && r.id === n && r.result, `emit ${n}: bad reply ${JSON.stringify(r)}`);
    assert(r.result.offset === n, `emit ${n}: offset ${r.result.offset}`);
    assert(r.result.subscribers === 2, `emit ${n}: subscribers ${r.result.subscribers}`);
    assert(typeof r.result.id === 'number' && (n === 1 || r.result.id > emitted[n - 2].id), `emit ${n}: id ${r.result.id}`);
    emitted.push(r.result);
  }
  const deadline = Date.now() + 5000;
  while (clients.some((c) => c.got.length < 3) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  clients.forEach((c, i) => {
    assert(c.got.length === 3, `client ${i}: got ${c.got.length} of 3 publications`);
    c.got.forEach((p, k) => {
      assert(p.channel === channel, `client ${i}: channel ${p.channel}`);
      assert(p.offset === k + 1 && p.id === emitted[k].id, `client ${i}: publication ${k}: ${JSON.stringify(p)}`);
      assert(p.data && p.data.n === k + 1 && p.data.text === 'hello', `client ${i}: data ${JSON.stringify(p.data)}`);
    });
    c.ws.close();
  });
  const unknown = await post({ jsonrpc: '2.0', id: 9, method: 'no_such_method' });
  assert(unknown.error && unknown.error.code === -32601, `unknown method: ${JSON.stringify(unknown)}`);
  clearTimeout(timer);
  console.log(`check ${wsAddr}: ok (subscribe, 3 emits, 2 subscribers, offsets 1..3 in order)`);
  process.exit(0);
})().catch((e) => fail(e.stack || String(e)));
