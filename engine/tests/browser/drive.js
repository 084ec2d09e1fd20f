// Opens one page in Debian's headless Chromium through puppeteer-core and
// prints, as one JSON line on stdout, what the page reported plus every
// WebSocket handshake the browser made (from the DevTools protocol):
//
//   {"result": <value of --result>, "handshakes": [{url, request, status, response}],
//    "errors": ["uncaught page errors"]}
//
// Usage: node drive.js URL [--wait EXPR] [--result EXPR] [--screenshot FILE]
//                          [--timeout MS] [--viewport WxH]
//
// --wait is a page expression polled until truthy (default: the page's
// `window.__done !== undefined`), --result is evaluated once it is
// (default `window.__done`). Used by engine/tests/browser.rs.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const puppeteer = require("puppeteer-core");

function parseArgs(argv) {
  const opts = {
    url: null,
    wait: "window.__done !== undefined",
    result: "window.__done",
    screenshot: null,
    timeout: 30000,
    viewport: { width: 1280, height: 900 },
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--wait") opts.wait = next();
    else if (a === "--result") opts.result = next();
    else if (a === "--screenshot") opts.screenshot = next();
    else if (a === "--timeout") opts.timeout = Number(next());
    else if (a === "--viewport") {
      const [w, h] = next().split("x").map(Number);
      opts.viewport = { width: w, height: h };
    } else if (!opts.url) opts.url = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!opts.url) throw new Error("usage: node drive.js URL [options]");
  return opts;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "ringcast-chromium-"));
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const handshakes = new Map();
  const errors = [];
  try {
    const page = await browser.newPage();
    await page.setViewport(opts.viewport);
    page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
    page.on("pageerror", (e) => errors.push(String(e && e.message ? e.message : e)));
    const cdp = await page.createCDPSession();
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketCreated", (e) => {
      handshakes.set(e.requestId, { url: e.url, request: null, status: null, response: null });
    });
    cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => {
      const h = handshakes.get(e.requestId) || { url: null };
      h.request = e.request.headers;
      handshakes.set(e.requestId, h);
    });
    cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
      const h = handshakes.get(e.requestId) || { url: null };
      h.status = e.response.status;
      h.response = e.response.headers;
      handshakes.set(e.requestId, h);
    });
    await page.goto(opts.url, { waitUntil: "load", timeout: opts.timeout });
    try {
      await page.waitForFunction(opts.wait, { timeout: opts.timeout, polling: 100 });
    } catch (e) {
      const partial = await page.evaluate(opts.result).catch(() => null);
      const log = await page.evaluate("window.__log").catch(() => null);
      throw new Error(
        `page never satisfied ${opts.wait} within ${opts.timeout} ms; ` +
          `result so far ${JSON.stringify(partial)}, page log ${JSON.stringify(log)}`
      );
    }
    const result = await page.evaluate(opts.result);
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ result, handshakes: [...handshakes.values()], errors }) + "\n");
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`drive.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
