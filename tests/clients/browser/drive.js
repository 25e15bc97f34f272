// Drives Debian's Chromium with playwright-core for tests/it/browser.rs: the console page as
// a user would use it, and the client library (the bridge's /client.js, loaded by a page) in
// a real browser. The same line protocol as tests/clients/node/drive.js, so that the Rust
// side drives both the same way.
//
// Usage: node drive.js, then one JSON command per stdin line:
//   {"op": "launch", "profile": DIR, "spki": BASE64?, "width": W?, "height": H?}
//       Chromium with its profile in the empty directory DIR (the test owns it); `spki`
//       (the SHA-256 of a certificate's public key) is the one test certificate it trusts.
//   {"op": "goto", "url"}                       opens a page
//   {"op": "fill", "selector", "value"}, {"op": "click", "selector"},
//   {"op": "text", "selector"}                  its textContent
//   {"op": "wait_text", "selector", "text"}     until its textContent contains `text`
//   {"op": "count", "selector"}                 how many visible elements match
//   {"op": "layout"}                            {width, scrollWidth}: horizontal overflow
//   {"op": "viewport", "width", "height"}, {"op": "screenshot", "path", "full"?}
//   {"op": "harness", "origin"}
//       opens ORIGIN/harness.html (answered here), which loads ORIGIN/client.js with a
//       classic script tag, as an application page would; timers and sockets are counted.
//       Resolves with {type: typeof RedisWsBridge, globals: the names the script added}.
//   {"op": "esm", "url", "token"}               in the harness: imports client.mjs (answered
//       here from clients/js/), connects a client with it and closes it; resolves with its
//       welcome
//   {"op": "connect", "url", "options", "mint": {"secret", "user", "ttls"}}
//   {"op": "subscribe", "topics", "filter", "options"}, {"op": "unsubscribe", "topics"},
//   {"op": "ping"}, {"op": "refresh"}, {"op": "close"}
//                                               the harness's client, as in the Node driver
//   {"op": "extensions"}                        the extensions each of the harness's sockets
//       negotiated (WebSocket.extensions)
//   {"op": "leftovers"}                         after close(): {timers, sockets: [{readyState,
//       handlers}]}: what the client still holds (`handlers`: whether a message or close
//       event of the socket would still reach it)
// Output lines: {"event": NAME, "value", "t"} for the client's events, each token minted
// ("token"), and the page's errors ("pageerror", "console" errors, "csp" violations);
// {"reply": OP, "ok", "value" | "message"} for every command. Commands run one at a time, in
// order. The process exits once stdin is closed and the browser is shut.
'use strict';

const crypto = require('crypto');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const CLIENT_MJS = path.join(__dirname, '../../../clients/js/client.mjs');
const EVENTS = [
  'open', 'close', 'reconnecting', 'message', 'gap', 'unsubscribed', 'error', 'frame',
];

let context = null;
let page = null;
let mint = null;
let calls = 0;

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function event(name, value) {
  print({ event: name, value, t: Math.round(performance.now()) });
}

function sign({ secret, user, ttls }, call) {
  const ttl = ttls[Math.min(call, ttls.length) - 1];
  const exp = Math.floor(Date.now() / 1000) + ttl;
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: user, exp, jti: call })}`;
  const signature = crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
  return { token: `${unsigned}.${signature}`, exp };
}

async function launch({ profile, spki, width = 1000, height = 800 }) {
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ];
  if (spki) args.push(`--ignore-certificate-errors-spki-list=${spki}`);
  // The harness page is answered by this driver, not by a server, so Chromium does not know
  // it is a loopback page and its local network access checks would refuse its connections
  // to 127.0.0.1.
  args.push('--disable-features=LocalNetworkAccessChecks');
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args,
    viewport: { width, height },
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (err) => event('pageerror', { message: err.message }));
  page.on('console', (message) => {
    if (message.type() === 'error') event('console', { text: message.text() });
  });
  await context.exposeFunction('bridgeReport', (name, value) => event(name, value));
  await context.exposeFunction('bridgeMint', () => {
    calls += 1;
    const { token, exp } = sign(mint, calls);
    event('token', { call: calls, exp, token });
    return token;
  });
  // Every page reports what its CSP refused.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.bridgeReport('csp', { directive: e.violatedDirective, blocked: e.blockedURI });
    });
  });
}

// The application page of the client tests: nothing but the bridge's /client.js and a
// count of the timers the page holds.
const HARNESS = `<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title>
<script src="/harness-timers.js"></script>
<script src="/client.js"></script>
</head><body>harness</body></html>`;

// Loaded before the client: setTimeout/clearTimeout that remember which timers are pending.
const TIMERS = `(() => {
  const pending = new Set();
  const set = window.setTimeout.bind(window);
  const clear = window.clearTimeout.bind(window);
  window.setTimeout = (fn, delay, ...args) => {
    const id = set((...a) => { pending.delete(id); fn(...a); }, delay, ...args);
    pending.add(id);
    return id;
  };
  window.clearTimeout = (id) => { pending.delete(id); clear(id); };
  window.pendingTimers = () => pending.size;
  window.sockets = [];
  window.TrackedWebSocket = class extends WebSocket {
    constructor(url) { super(url); window.sockets.push(this); }
  };
  // What the page defines before the client's script: the globals that script adds are the
  // others.
  window.globalsBefore = new Set([...Object.getOwnPropertyNames(window), 'globalsBefore']);
})();`;

async function harness({ origin }) {
  const answer = (body, contentType) => (route) =>
    route.fulfill({ status: 200, contentType, body });
  await page.route(`${origin}/harness.html`, answer(HARNESS, 'text/html; charset=utf-8'));
  await page.route(`${origin}/harness-timers.js`, answer(TIMERS, 'text/javascript'));
  await page.route(`${origin}/client.mjs`, (route) =>
    route.fulfill({ status: 200, contentType: 'text/javascript', path: CLIENT_MJS }));
  await page.goto(`${origin}/harness.html`);
  return page.evaluate(() => ({
    type: typeof RedisWsBridge,
    globals: Object.getOwnPropertyNames(window).filter((name) => !globalsBefore.has(name)),
  }));
}

async function connect({ url, options, mint: minting }) {
  mint = minting;
  calls = 0;
  await page.evaluate(([url, options, events]) => {
    const client = new RedisWsBridge(url, {
      ...options,
      token: () => window.bridgeMint(),
      WebSocket: window.TrackedWebSocket,
    });
    for (const name of events) {
      client.on(name, (value) => {
        if (value instanceof Error) value = { message: value.message, code: value.code };
        window.bridgeReport(name, value);
      });
    }
    window.client = client;
    client.connect();
  }, [url, options || {}, EVENTS]);
}

function request(op, args) {
  return page.evaluate(async ([op, args]) => {
    try {
      const value = await window.client[op](...args);
      return { ok: true, value };
    } catch (err) {
      return { ok: false, code: err.code, message: err.message };
    }
  }, [op, args]);
}

async function run(command) {
  switch (command.op) {
    case 'launch':
      return launch(command);
    case 'goto':
      await page.goto(command.url);
      return page.url().replace(/token=[^&]*/, 'token=…');
    case 'fill':
      return page.fill(command.selector, command.value);
    case 'click':
      return page.click(command.selector);
    case 'text':
      return page.textContent(command.selector);
    case 'wait_text':
      await page.waitForFunction(
        ([selector, text]) => document.querySelector(selector)?.textContent.includes(text),
        [command.selector, command.text],
        { timeout: 10000 },
      );
      return page.textContent(command.selector);
    case 'count':
      return page.locator(`${command.selector} >> visible=true`).count();
    case 'layout':
      return page.evaluate(() => ({
        width: window.innerWidth,
        scrollWidth: document.documentElement.scrollWidth,
      }));
    case 'viewport':
      return page.setViewportSize({ width: command.width, height: command.height });
    case 'screenshot':
      await page.screenshot({ path: command.path, fullPage: Boolean(command.full) });
      return command.path;
    case 'harness':
      return harness(command);
    case 'esm':
      return page.evaluate(async ([url, token]) => {
        const { default: Client } = await import('/client.mjs');
        const client = new Client(url, { token });
        const welcome = await new Promise((resolve) => {
          client.on('open', resolve);
          client.connect();
        });
        client.close();
        return { welcome, state: client.state, sameClass: Client === window.RedisWsBridge };
      }, [command.url, command.token]);
    case 'connect':
      return connect(command);
    case 'close':
      return page.evaluate(() => window.client.close());
    case 'extensions':
      return page.evaluate(() => window.sockets.map((ws) => ws.extensions));
    case 'leftovers':
      return page.evaluate(() => ({
        timers: window.pendingTimers(),
        sockets: window.sockets.map((ws) => ({
          readyState: ws.readyState,
          handlers: Boolean(ws.onmessage || ws.onclose),
        })),
      }));
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

const ARGS = {
  subscribe: (c) => [c.topics, c.filter, c.options],
  unsubscribe: (c) => [c.topics],
  ping: () => [],
  refresh: (c) => (c.token === undefined ? [] : [c.token]),
};

// One command at a time: a test's steps happen in the order it sent them.
let queue = Promise.resolve();
const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  queue = queue.then(async () => {
    try {
      if (ARGS[command.op]) {
        const outcome = await request(command.op, ARGS[command.op](command));
        print({ reply: command.op, ...outcome });
      } else {
        print({ reply: command.op, ok: true, value: (await run(command)) ?? null });
      }
    } catch (err) {
      print({ reply: command.op, ok: false, message: String(err.message || err) });
    }
  });
});
input.on('close', () => {
  queue.then(async () => {
    if (context) await context.close();
  });
});
