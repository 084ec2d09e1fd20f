// Helpers for the browser test pages: a WebSocket with an inbox, waiting
// for a message that matches, JSON-RPC calls, and the test server's
// backend stand-in (/publish, /notify), which emits through ringcast's
// backend port as a real application's backend would.
"use strict";
window.__log = [];
function log(...parts) {
  window.__log.push(parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" "));
}
const params = new URLSearchParams(location.search);

function connect(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const c = { ws, inbox: [], wake: null, closed: null };
    const wake = () => { if (c.wake) { const w = c.wake; c.wake = null; w(); } };
    ws.onmessage = (e) => { c.inbox.push(e.data); wake(); };
    ws.onclose = (e) => { c.closed = { code: e.code, reason: e.reason, wasClean: e.wasClean }; wake(); };
    ws.onopen = () => { log("open", url, "extensions:", ws.extensions); resolve(c); };
    ws.onerror = () => reject(new Error("WebSocket error on " + url));
  });
}

// The first inbox message (raw text) for which pred(parsed, raw) holds.
async function take(c, pred, what, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const i = c.inbox.findIndex((raw) => pred(JSON.parse(raw), raw));
    if (i >= 0) return c.inbox.splice(i, 1)[0];
    if (c.closed) throw new Error(`closed ${JSON.stringify(c.closed)} while waiting for ${what}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ${what}; inbox ${JSON.stringify(c.inbox)}`);
    await new Promise((r) => { c.wake = r; setTimeout(r, left); });
  }
}

async function takeN(c, n, pred, what) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(JSON.parse(await take(c, pred, `${what} #${i + 1}`)));
  return out;
}

function closed(c, ms = 5000) {
  return new Promise((resolve, reject) => {
    const check = () => (c.closed ? resolve(c.closed) : null);
    if (check()) return;
    c.ws.addEventListener("close", () => resolve(c.closed));
    setTimeout(() => reject(new Error("no close within " + ms + " ms")), ms);
  });
}

let nextId = 1;
async function rpc(c, method, params) {
  const id = nextId++;
  c.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  const reply = JSON.parse(await take(c, (m) => m.id === id, `reply to ${method}`));
  log(method, "->", reply);
  return reply;
}

async function backend(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

// Runs the scenario; its value (or the error) becomes window.__done.
function scenario(fn) {
  fn().then(
    (v) => { window.__done = v; },
    (e) => { window.__done = { error: String(e && e.stack ? e.stack : e), log: window.__log }; }
  );
}
