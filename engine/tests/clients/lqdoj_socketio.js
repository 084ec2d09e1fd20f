// LQDOJ's two sides over Socket.IO, with the stock socket.io-client 4.x:
// the sender (Django's poster: auth {role:'sender', token}, `post` and
// `last-msg` with acks) and the browser receiver (resources/event.js:
// auth {role:'client'}, `start-msg` then `set-filter` on every connect,
// `message` events, remembering the last id to catch up after a
// reconnect), plus the refusals LQDOJ's clients may meet.
// Usage: node lqdoj_socketio.js URL TOKEN TRANSPORTS(comma)
// Prints one JSON object with what each step saw; exits 1 on a timeout.
'use strict';
const { io } = require('socket.io-client');

const [url, token, transportsArg] = process.argv.slice(2);
const transports = transportsArg.split(',');
const out = {};
const opts = (auth) => ({ transports, auth, reconnection: false, forceNew: true, timeout: 5000 });

setTimeout(() => {
  out.timeout = true;
  console.log(JSON.stringify(out));
  process.exit(1);
}, 20000);

const connected = (s) =>
  new Promise((resolve, reject) => {
    s.once('connect', resolve);
    s.once('connect_error', reject);
  });
const next = (s, event) => new Promise((resolve) => s.once(event, resolve));
const collect = (s, event, n) =>
  new Promise((resolve) => {
    const got = [];
    const on = (d) => {
      got.push(d);
      if (got.length === n) {
        s.off(event, on);
        resolve(got);
      }
    };
    s.on(event, on);
  });

// A receiver as event.js opens one: start-msg, then set-filter, on connect.
// `expect`: how many messages to collect, listened for from the start.
async function receiver(start, channels, expect) {
  const r = io(url, opts({ role: 'client' }));
  const statuses = collect(r, 'status', 2);
  r.messages = collect(r, 'message', expect);
  r.on('connect', () => {
    r.emit('start-msg', { start });
    r.emit('set-filter', { filter: channels });
  });
  await connected(r);
  out.receiverStatuses = await statuses;
  return r;
}

async function main() {
  const sender = io(url, opts({ role: 'sender', token }));
  await connected(sender);
  out.senderTransport = sender.io.engine.transport.name;
  const before = await sender.emitWithAck('last-msg');
  out.lastBefore = before;
  // Posted before the receiver connects: caught up on set-filter.
  out.early = [];
  for (let i = 0; i < 3; i++) {
    out.early.push(await sender.emitWithAck('post', { channel: 'lq_catch', message: { type: 'processing', n: i } }));
  }
  const r = await receiver(before.id, ['lq_catch', 'lq_live'], 5);
  await new Promise((res) => setTimeout(res, 100));
  out.live = [];
  for (let i = 0; i < 2; i++) {
    out.live.push(await sender.emitWithAck('post', { channel: 'lq_live', message: { type: 'grading-end', n: i } }));
  }
  out.received = await r.messages;
  out.lastAfter = await sender.emitWithAck('last-msg');
  // Without an ack: the answer comes as an event.
  const postResponse = next(sender, 'post-response');
  sender.emit('post', { channel: 'lq_other', message: 1 });
  out.postResponse = await postResponse;
  const lastResponse = next(sender, 'last-response');
  sender.emit('last-msg');
  out.lastResponse = await lastResponse;
  out.badChannelAck = await sender.emitWithAck('post', { channel: null, message: 'x' });

  // Refusals to a client; the connection carries on.
  const errors = collect(r, 'error', 3);
  r.emit('post', { channel: 'lq_live', message: 'forged' });
  r.emit('set-filter', { filter: [] });
  r.emit('set-filter');
  out.clientErrors = await errors;
  const lastResp = next(r, 'last-response');
  r.emit('last-msg');
  out.clientLast = await lastResp;

  // A page reload: the receiver leaves, two messages go out, and the new
  // connection catches up from the last id it saw, in order.
  const lastSeen = out.received[out.received.length - 1].id;
  r.disconnect();
  out.missed = [];
  for (let i = 0; i < 2; i++) {
    out.missed.push(await sender.emitWithAck('post', { channel: 'lq_live', message: { type: 'missed', n: i } }));
  }
  const r2 = await receiver(lastSeen, ['lq_live'], 2);
  out.caughtUp = await r2.messages;
  r2.disconnect();

  // Publications while a receiver switches from polling to WebSocket (with
  // both transports): its catch-up and live messages are under way as the
  // transports change, and each arrives once, in order.
  const switchStart = (await sender.emitWithAck('last-msg')).id;
  out.switchPosted = [];
  for (let i = 0; i < 20; i++) {
    out.switchPosted.push((await sender.emitWithAck('post', { channel: 'lq_switch', message: i })).id);
  }
  const r3 = io(url, opts({ role: 'client' }));
  out.r3Upgrades = [];
  r3.io.on('open', () => {
    out.r3FirstTransport = r3.io.engine.transport.name;
    r3.io.engine.on('upgrade', (t) => out.r3Upgrades.push(t.name));
  });
  const switched = collect(r3, 'message', 40);
  r3.on('connect', () => {
    r3.emit('start-msg', { start: switchStart });
    r3.emit('set-filter', { filter: ['lq_switch'] });
  });
  const live = [];
  for (let i = 20; i < 40; i++) {
    live.push(sender.emitWithAck('post', { channel: 'lq_switch', message: i }));
    await new Promise((res) => setTimeout(res, 2));
  }
  for (const p of await Promise.all(live)) out.switchPosted.push(p.id);
  out.switchReceived = (await switched).map((m) => m.id);
  const extra = collect(r3, 'message', 1);
  out.switchExtra = await Promise.race([extra, new Promise((res) => setTimeout(() => res(null), 300))]);
  out.r3LastTransport = r3.io.engine.transport.name;
  r3.disconnect();

  // A wrong token.
  const bad = io(url, opts({ role: 'sender', token: 'wrong-' + token }));
  try {
    await connected(bad);
    out.badToken = 'connected';
  } catch (e) {
    out.badToken = e.message;
  }
  bad.disconnect();
  out.senderTransportEnd = sender.io.engine.transport.name;
  sender.disconnect();
  console.log(JSON.stringify(out));
  process.exit(0);
}

main().catch((e) => {
  out.error = String(e && e.stack ? e.stack : e);
  console.log(JSON.stringify(out));
  process.exit(1);
});
