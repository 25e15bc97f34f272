// A Node worker's publisher, for the compatibility tests (tests/it/compat/).
//
// Publishes with the `redis` package (node-redis), as mangamotion's worker does.
//
// Usage: node publish.js REDIS_URL < messages
//
// Each stdin line is one JSON object:
//   {"channel": "...", "json": "<JSON text>"}   the worker's message: parsed into an object
//       (key order kept) and published as JSON.stringify of it, as the worker does
//   {"progress": {"jobId", "userId", "status", "progress", "stage", "message"}}
//       published by publishJobProgress below: the worker's own message, built and
//       serialised as the worker builds it, on job:{jobId}
// Messages go out in order on one connection. Each is answered on stdout by one line
//   {"channel": "...", "payload": "<the exact text published>", "receivers": N}
'use strict';

const { createClient } = require('redis');

// mangamotion's publishJobProgress(jobId, userId, status, progress, stage, message): the
// fields in the worker's order and an ISO timestamp.
async function publishJobProgress(client, jobId, userId, status, progress, stage, message) {
  const channel = `job:${jobId}`;
  const payload = JSON.stringify({
    type: 'progress',
    jobId,
    userId,
    status,
    progress,
    stage,
    message,
    timestamp: new Date().toISOString(),
  });
  const receivers = await client.publish(channel, payload);
  return { channel, payload, receivers };
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function main() {
  if (process.argv.length !== 3) {
    process.stderr.write('usage: node publish.js REDIS_URL < messages\n');
    return 2;
  }
  const client = createClient({ url: process.argv[2] });
  client.on('error', (err) => process.stderr.write(`redis: ${err}\n`));
  await client.connect();
  try {
    for (const line of (await readStdin()).split('\n')) {
      if (!line.trim()) continue;
      const message = JSON.parse(line);
      let result;
      if (message.progress) {
        const p = message.progress;
        result = await publishJobProgress(
          client, p.jobId, p.userId, p.status, p.progress, p.stage, p.message);
      } else {
        const payload = JSON.stringify(JSON.parse(message.json));
        const receivers = await client.publish(message.channel, payload);
        result = { channel: message.channel, payload, receivers };
      }
      process.stdout.write(`${JSON.stringify(result)}\n`);
    }
  } finally {
    await client.quit();
  }
  return 0;
}

main().then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`${err.stack || err}\n`); process.exitCode = 1; },
);
