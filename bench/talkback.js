// The client side of bench/talkback.py (BENCHMARKS.md, "Clients talk back"), with Node's `ws`
// (tests/clients/node): many JWT connections (sub = user{i}, HS256 with SECRET) that either
// send inbound frames, a window of them awaiting their `published` at a time, or subscribe and
// unsubscribe in turn.
//
//   node bench/talkback.js inbound URL SECRET CLIENTS FRAMES_PER_CLIENT
//   node bench/talkback.js churn URL SECRET CLIENTS ROUNDS ROOMS
//
// Prints one JSON line: what was done and how long it took (from the last connection open).
'use strict';

const crypto = require('crypto');
const path = require('path');
const WebSocket = require(path.join(__dirname, '../tests/clients/node/node_modules/ws'));

const [mode, url, secret, clientsText, countText, roomsText] = process.argv.slice(2);
const clients = Number(clientsText);
const count = Number(countText);
const rooms = Number(roomsText || 100);
let retried = 0;

function token(user) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  const signature = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${signature}`;
}

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token(`user${i}`)}`, { perMessageDeflate: false });
    ws.once('message', () => resolve(ws));
    ws.once('error', reject);
  });
}

// Sends `count` frames, at most WINDOW of them waiting for their `published` at once (the
// route has `ack`): the bridge is kept busy without overflowing its queue to Redis.
const WINDOW = 32;
function flood(ws, i) {
  const room = `room:${i % rooms}`;
  return new Promise((resolve, reject) => {
    let sent = 0;
    let acked = 0;
    const frame = (n) => `{"type":"chat","id":${n},"room":"${room}","n":${n},"text":"hello from the benchmark"}`;
    const send = () => {
      while (sent < count && sent - acked < WINDOW) {
        ws.send(frame(sent));
        sent++;
      }
    };
    ws.on('message', (data) => {
      const answer = JSON.parse(data);
      if (answer.type === 'published') {
        acked++;
        if (acked === count) resolve();
        else send();
      } else if (answer.type === 'error' && answer.code === 'unavailable') {
        // Redis did not take it in time (a loaded machine): sent again, and counted.
        retried++;
        ws.send(frame(answer.id));
      } else if (answer.type === 'error') reject(new Error(JSON.stringify(answer)));
    });
    send();
  });
}

// `count` rounds of subscribe then unsubscribe, each waiting for its answer.
function churn(ws, i) {
  const topic = `room:${i % rooms}`;
  return new Promise((resolve, reject) => {
    let round = 0;
    const next = () => {
      if (round === count) return resolve();
      round++;
      ws.send(JSON.stringify({ type: 'subscribe', id: round, topics: [topic] }));
    };
    ws.on('message', (data) => {
      const frame = JSON.parse(data);
      if (frame.type === 'subscribed') ws.send(JSON.stringify({ type: 'unsubscribe', id: round, topics: [topic] }));
      else if (frame.type === 'unsubscribed') next();
      else if (frame.type === 'error') reject(new Error(JSON.stringify(frame)));
    });
    next();
  });
}

(async () => {
  const sockets = [];
  for (let i = 0; i < clients; i += 64) {
    const batch = [];
    for (let j = i; j < Math.min(clients, i + 64); j++) batch.push(open(j));
    sockets.push(...(await Promise.all(batch)));
  }
  const started = process.hrtime.bigint();
  await Promise.all(sockets.map((ws, i) => (mode === 'inbound' ? flood(ws, i) : churn(ws, i))));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const done = mode === 'inbound' ? { frames: clients * count, retried } : { pairs: clients * count };
  console.log(JSON.stringify({ mode, clients, ...done, seconds }));
  for (const ws of sockets) ws.terminate();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
