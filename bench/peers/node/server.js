// A plain Node Redis → WebSocket bridge, the way the existing backends wrote theirs:
// `ws` + `ioredis`, one PSUBSCRIBE, JSON.parse of the payload and JSON.stringify of the
// frame, sent to the clients subscribed to the channel. It speaks the same subscribe frame
// as redis-ws-bridge ({"type":"subscribe","topics":[...]}, answered with "subscribed") so the
// same load tool measures both. With JWT_SECRET set, ?token= must be a valid HS256 JWT.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');
const jwt = require('jsonwebtoken');

const port = Number(process.env.PORT || 18081);
const pattern = process.env.PATTERN || 'job:*';
const secret = process.env.JWT_SECRET || '';
const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:16379');

const topics = new Map(); // topic -> Set of sockets

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
// DEFLATE=1: permessage-deflate as ws offers it (a zlib stream per connection, each frame
// compressed for each recipient), with the bridge's threshold and level for comparison.
const deflate = process.env.DEFLATE === '1';
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: deflate
    ? { threshold: 512, zlibDeflateOptions: { level: 1 }, serverNoContextTakeover: true, clientNoContextTakeover: true }
    : false,
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  let user = null;
  if (secret) {
    try {
      user = jwt.verify(url.searchParams.get('token') || '', secret, { algorithms: ['HS256'] }).sub;
    } catch (err) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n');
      return;
    }
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, user));
});

wss.on('connection', (ws, user) => {
  ws.topics = new Set();
  ws.send(JSON.stringify({ type: 'connected', user }));
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data); } catch (err) { return; }
    if (msg.type === 'subscribe' && Array.isArray(msg.topics)) {
      for (const topic of msg.topics) {
        let set = topics.get(topic);
        if (!set) { set = new Set(); topics.set(topic, set); }
        set.add(ws);
        ws.topics.add(topic);
      }
      ws.send(JSON.stringify({ type: 'subscribed', id: msg.id, topics: msg.topics }));
    } else if (msg.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong', id: msg.id }));
    }
  });
  ws.on('close', () => {
    for (const topic of ws.topics) {
      const set = topics.get(topic);
      if (set) { set.delete(ws); if (set.size === 0) topics.delete(topic); }
    }
  });
  ws.on('error', () => {});
});

redis.psubscribe(pattern);
redis.on('pmessage', (_pattern, channel, message) => {
  const set = topics.get(channel);
  if (!set) return;
  let data;
  try { data = JSON.parse(message); } catch (err) { data = message; }
  const frame = JSON.stringify({ type: 'message', topic: channel, ts: new Date().toISOString(), data });
  for (const ws of set) {
    if (ws.readyState === 1) ws.send(frame);
  }
});

server.listen(port, '127.0.0.1', () => console.log(`node peer on 127.0.0.1:${port}`));
