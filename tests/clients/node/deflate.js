// A plain `ws` client that offers permessage-deflate, for tests/it/compression.rs: it
// compresses every message it sends (threshold 0) and inflates what comes compressed.
//
// Usage: node deflate.js URL [CA_FILE], then one JSON command per stdin line:
//   {"op": "send", "text": …}, {"op": "close"}
// Output lines: {"event": "open", "value": {"extensions": the 101's Sec-WebSocket-Extensions}},
// {"event": "message", "value": {"data": text}}, {"event": "close", "value": {"code", "reason"}},
// {"event": "error", "value": {"message"}}. It exits once the socket is closed.
'use strict';

const fs = require('fs');
const readline = require('readline');
const WebSocket = require('ws');

const [url, caFile] = process.argv.slice(2);

function event(name, value) {
  process.stdout.write(`${JSON.stringify({ event: name, value })}\n`);
}

let extensions = null;
const ws = new WebSocket(url, {
  perMessageDeflate: { threshold: 0 },
  ca: caFile ? fs.readFileSync(caFile) : undefined,
});
ws.on('upgrade', (response) => {
  extensions = response.headers['sec-websocket-extensions'] ?? null;
});
ws.on('open', () => event('open', { extensions }));
ws.on('message', (data, isBinary) => {
  event('message', { data: isBinary ? null : data.toString('utf8') });
});
ws.on('close', (code, reason) => {
  event('close', { code, reason: reason.toString('utf8') });
  process.exit(0);
});
ws.on('error', (err) => event('error', { message: err.message }));

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  if (command.op === 'send') ws.send(command.text);
  else if (command.op === 'close') ws.close(1000);
  else throw new Error(`unknown op ${command.op}`);
});
