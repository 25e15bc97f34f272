// Drives the bridge's browser client (clients/js/client.js) under Node, with the `ws` package,
// for tests/it/console.rs.
//
// Usage: node drive.js, then one JSON command per stdin line:
//   {"op": "connect", "url": "ws://…/ws", "options": {…}, and either
//     "tokens": [JWT, …]                        the token function returns them in turn, or
//     "mint": {"secret", "user", "ttls": [s, …]}  it signs a new HS256 token for `user`
//                                                 that expires `ttls[n]` seconds from now}
//       In both, the last entry is repeated once they run out, and each call is reported as
//       {"event": "token", "value": {"call": N, "exp": …, "token": …}} ("tokens" report the
//       call only).
//   {"op": "subscribe", "topics": […], "filter": {…}, "options": {"last": N}},
//   {"op": "unsubscribe", "topics": […], "when": {"topic", "n"}}: with `when`, the client
//     unsubscribes from within its `message` event of that topic's frame whose `data.n` is
//     `n`, while the frames after it are on their way,
//   {"op": "refresh"}, {"op": "ping"}, {"op": "close"},
//   {"op": "drop"}: the client's socket is destroyed under it, as a network loss would (the
//     client sees 1006; the server, a connection reset)
// Every event of the client is one stdout line {"event": NAME, "value": …, "t": ms}, and so
// is every socket it opens ({"event": "socket", "value": URL}); every
// command's outcome is {"reply": OP, "ok": true, "value": …} or {"reply": OP, "ok": false,
// "code": …, "message": …}. The process exits by itself once stdin is closed and the client
// has nothing left to do (no socket, no timer): a pending reconnect keeps it running.
'use strict';

const crypto = require('crypto');
const path = require('path');
const readline = require('readline');
const WebSocket = require('ws');
const RedisWsBridge = require(path.join(__dirname, '../../../clients/js/client.js'));

const EVENTS = [
  'open', 'close', 'reconnecting', 'message', 'gap', 'unsubscribed', 'error', 'frame',
];
let client = null;
// Every socket the client opened, so that `drop` can cut the newest.
const sockets = [];
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets.push(this);
    event('socket', args[0]);
  }
}

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function event(name, value) {
  if (value instanceof Error) value = { message: value.message, code: value.code };
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

function connect({ url, tokens, mint, options }) {
  let calls = 0;
  const token = () => {
    calls += 1;
    if (mint) {
      const { token, exp } = sign(mint, calls);
      event('token', { call: calls, exp, token });
      return token;
    }
    event('token', { call: calls });
    return tokens[Math.min(calls, tokens.length) - 1];
  };
  client = new RedisWsBridge(url, { ...options, token, WebSocket: TrackedWebSocket });
  for (const name of EVENTS) client.on(name, (value) => event(name, value));
  client.connect();
}

function reply(op, promise) {
  promise.then(
    (value) => print({ reply: op, ok: true, value }),
    (err) => print({ reply: op, ok: false, code: err.code, message: err.message }),
  );
}

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  switch (command.op) {
    case 'connect':
      connect(command);
      break;
    case 'subscribe':
      reply('subscribe', client.subscribe(command.topics, command.filter, command.options));
      break;
    case 'unsubscribe': {
      const { when } = command;
      if (!when) {
        reply('unsubscribe', client.unsubscribe(command.topics));
        break;
      }
      const at = (frame) => {
        if (frame.topic !== when.topic || !frame.data || frame.data.n !== when.n) return;
        client.off('message', at);
        reply('unsubscribe', client.unsubscribe(command.topics));
      };
      client.on('message', at);
      break;
    }
    case 'refresh':
      reply('refresh', client.refresh(command.token));
      break;
    case 'ping':
      reply('ping', client.ping());
      break;
    case 'close':
      client.close();
      break;
    case 'drop':
      sockets[sockets.length - 1].terminate();
      break;
    default:
      throw new Error(`unknown op ${command.op}`);
  }
});
