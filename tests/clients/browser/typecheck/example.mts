// Every option, method, event and frame of the client's declarations, as an application
// written in TypeScript uses them, importing the package as an ES module. `tsc --noEmit`
// checks it (tests/it/browser.rs); the @ts-expect-error lines must stay errors.
import RedisWsBridge from 'redis-ws-bridge-client';

interface Job {
  status: 'running' | 'failed';
  progress: number;
}

const options: RedisWsBridge.Options = {
  token: async () => 'a.jwt.token',
  minDelay: 250,
  maxDelay: 10_000,
  refreshBefore: 20_000,
  requestTimeout: 5_000,
};
const bridge = new RedisWsBridge('wss://ws.example.com/ws', options);
new RedisWsBridge('/ws', { token: 'a.jwt.token' });
new RedisWsBridge('/ws', { token: () => undefined });

const state: RedisWsBridge.State = bridge.state;
const welcome: RedisWsBridge.WelcomeFrame | null = bridge.welcome;
const subscriptions: Array<[string, RedisWsBridge.Filter | null]> = bridge.subscriptions;
const last: number | undefined = bridge.lastSeq('job:42');
console.log(state, welcome, subscriptions, last);

bridge.on('open', (frame) => {
  if ('type' in frame && frame.type === 'connected') {
    const connected = frame as RedisWsBridge.ConnectedFrame;
    const who: string | null = connected.user;
    const roles: string[] = connected.roles;
    const auto: string[] = connected.topics;
    const epoch: string = connected.epoch;
    console.log(who, roles, auto, epoch, connected.connection_id);
  }
});
bridge.on('close', ({ code, reason, reconnect }) => console.log(code, reason, reconnect));
bridge.on('reconnecting', ({ attempt, delay }) => console.log(attempt, delay));
bridge.on('message', (frame) => {
  if (typeof frame === 'object' && frame !== null && 'seq' in frame) {
    const envelope = frame as RedisWsBridge.Envelope<Job>;
    const topic: string = envelope.topic;
    const seq: number = envelope.seq;
    const ts: string = envelope.ts;
    const status: Job['status'] = envelope.data.status;
    console.log(envelope.type, topic, seq, ts, status, envelope.data.progress);
  } else if (typeof frame === 'string') {
    console.log(frame.length);
  } else if (frame instanceof ArrayBuffer) {
    console.log(frame.byteLength);
  }
});
const stopGaps = bridge.on('gap', (gap) => {
  switch (gap.reason) {
    case 'redis_reconnected':
      console.log(gap.since, gap.topics);
      break;
    case 'reconnected':
      console.log(gap.topics);
      break;
    case 'epoch_changed':
    case 'history_exhausted':
      console.log(gap.reason, gap.topics);
      break;
    case 'seq': {
      const [from, to]: [number, number] = gap.missing;
      console.log(gap.topics[0], from, to);
      break;
    }
  }
});
bridge.on('unsubscribed', ({ topics, reason }) => console.log(topics, reason));
const onError = (err: RedisWsBridge.BridgeError) => {
  const code: RedisWsBridge.ErrorCode | 'timeout' | undefined = err.code;
  console.log(code, err.topic, err.frame?.message, err.message);
};
bridge.on('error', onError);
bridge.off('error', onError);
bridge.on('frame', (frame: RedisWsBridge.Frame) => {
  if (typeof frame === 'object' && frame !== null && 'type' in frame) {
    const protocol = frame as RedisWsBridge.ProtocolFrame;
    switch (protocol.type) {
      case 'subscribed':
        console.log(protocol.id, protocol.topics);
        break;
      case 'unsubscribed':
        console.log(protocol.id, protocol.topics, protocol.reason);
        break;
      case 'pong':
        console.log(protocol.id);
        break;
      case 'refreshed':
        console.log(protocol.id, protocol.expires_at);
        break;
      case 'gap':
        if (protocol.reason === 'redis_reconnected') console.log(protocol.since);
        else console.log(protocol.id);
        console.log(protocol.reason, protocol.topics);
        break;
      case 'error':
        console.log(protocol.id, protocol.code, protocol.message, protocol.topic);
        break;
      case 'connected':
        console.log(protocol.epoch);
        break;
    }
  }
});
stopGaps();

const same: RedisWsBridge = bridge.connect();
const filter: RedisWsBridge.Filter = { status: ['running', 'failed'], 'data.kind': 'x', n: 1 };
const topics: string[] = await same.subscribe(['job:42', 'job:43'], filter);
await bridge.subscribe('jobs');
const latest: RedisWsBridge.SubscribeOptions = { last: 1 };
await bridge.subscribe('job:44', null, latest);
const dropped: string[] = await bridge.unsubscribe('job:43');
const pong: void = await bridge.ping();
const expiresAt: number | null = await bridge.refresh();
await bridge.refresh('another.jwt.token');
const command: RedisWsBridge.Command = { type: 'subscribe', id: 1, topics, filter };
const resume: RedisWsBridge.Command = {
  type: 'subscribe',
  topics: ['job:42'],
  last: 1,
  since: { epoch: 'e', seq: { 'job:42': 17 } },
};
const lastSeen: number | undefined = bridge.lastSeq('job:42');
console.log(resume, lastSeen);
console.log(dropped, pong, expiresAt, command);
bridge.close();

// In Node, with the `ws` package's class (any class of this shape).
declare const NodeWebSocket: RedisWsBridge.WebSocketClass;
new RedisWsBridge('ws://127.0.0.1:8080/ws', { WebSocket: NodeWebSocket });

// @ts-expect-error: topics are strings
bridge.subscribe([42]);
// @ts-expect-error: no such event
bridge.on('opened', () => {});
// @ts-expect-error: a close event is no frame
bridge.on('close', (frame: RedisWsBridge.Envelope) => frame);
// @ts-expect-error: a filter's values are JSON scalars
bridge.subscribe('jobs', { status: { nested: true } });
// @ts-expect-error: no such option
new RedisWsBridge('/ws', { reconnectDelay: 5 });
// @ts-expect-error: `last` is a number
bridge.subscribe('jobs', null, { last: '1' });
