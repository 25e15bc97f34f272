// Generated from client.js by build.mjs: edit client.js, then run `node build.mjs`.
//
// redis-ws-bridge browser client, served by the bridge as GET /client.js.
//
//   <script src="/client.js"></script>
//   const bridge = new RedisWsBridge('wss://ws.example.com/ws', { token: () => fetchToken() });
//   bridge.on('message', (frame) => render(frame));
//   bridge.on('gap', ({ topics }) => refetch(topics));
//   bridge.connect();
//   await bridge.subscribe(['job:42'], { status: ['running', 'failed'] });
//
// This file is the source of the package `redis-ws-bridge-client` (clients/js/): a classic
// script that defines the global `RedisWsBridge`, and a CommonJS module; `client.mjs`, the ES
// module, is generated from it by `node build.mjs`. `client.d.ts` types every method, event
// and frame. In Node (18 or later), pass a WebSocket class: { WebSocket: require('ws') }.
//
// Options:
//   token          a JWT, or a function returning one (or a promise of one). A function is
//                  called before every connection, so a reconnect never reuses a stale token.
//   WebSocket      the WebSocket class (default: the browser's).
//   minDelay       first reconnect delay in ms (500); it doubles with every failed attempt...
//   maxDelay       ...up to this many ms (30000). Each delay is randomised between half of it
//                  and all of it, so that the clients of a restarted bridge do not come back
//                  all at once.
//   refreshBefore  with a token function: send `refresh` this many ms before the token's
//                  `exp` (30000); 0 turns automatic refreshes off.
//   requestTimeout a request not answered within this many ms (10000) is rejected with an
//                  Error whose `code` is 'timeout'; 0 waits for ever. A subscribe made while
//                  disconnected counts from the call.
//
// Resume: the client keeps the `epoch` of the welcome (the `connected` frame's, or the `epoch`
// member of a configured welcome that has one: `epoch: "{epoch}"`) and the last `seq` of every
// topic (subscribed and `auto`). After any reconnect it asks the bridge for what it missed:
// `since` on the upgrade URL for the `auto` topics of the previous connection (those its
// welcome named, and those of a route that makes its topics from the message, `user:{1}`,
// on which a frame arrived: the 100 most recently active of them, the older ones reported as
// a `reconnected` gap), `since` on the subscribe that restores the subscriptions. The missed
// frames then arrive as `message` events, oldest first, before the live ones, none twice;
// what cannot be replayed arrives as a `gap` event instead. A topic on which no frame came
// yet resumes from where its subscription started (the `position` of the `subscribed`
// answer), or, `auto`, from where the connection did (the `position` of the `connected`
// frame). Positions live in memory: a page that (re)loads starts afresh, and gets the latest
// state of its topics with `last`: subscribe(['job:42'], null, { last: 1 }) replays the
// newest retained frame of each topic (oldest first when more), as `message` events before
// the live ones; a reconnect then resumes from the frames received, and replays none of them
// again (a topic that got none of them before a cut resumes from its oldest retained frame:
// more than `last`, nothing lost).
//
// Methods: connect() (returns the client); close() for good: no reconnect, and no timer,
// socket handler or pending request left behind; subscribe(topics, filter?, { last }?),
// unsubscribe(topics), ping() and refresh(token?) return promises of their answers; `state`
// (idle, connecting, open, reconnecting, closed), `welcome` (the connection's first frame),
// `subscriptions` and lastSeq(topic) tell where the client is.
//
// Events (`on(name, fn)` returns a function that removes the listener):
//   open          the connection is up; fn(welcome frame). Subscriptions are already being
//                 restored.
//   close         fn({code, reason, reconnect}): whether a reconnect follows.
//   reconnecting  fn({attempt, delay}): the next attempt, in `delay` ms.
//   message       a route frame: the parsed JSON, else the text, else an ArrayBuffer.
//   gap           frames were or may have been missed; refetch the state of `topics`:
//                 {reason: 'redis_reconnected', since, topics}  the bridge lost Redis;
//                 {reason: 'epoch_changed', topics}  after a reconnect, the bridge is
//                   another process (a restart, or another bridge behind the load
//                   balancer): what was published meanwhile cannot be replayed, and `seq`
//                   numbers start again;
//                 {reason: 'history_exhausted', topics}  after a reconnect, the bridge no
//                   longer holds every frame missed (or the route keeps no history);
//                 {reason: 'reconnected', topics}  this client was disconnected from a
//                   bridge whose welcome frame names no epoch (a configured welcome without
//                   `{epoch}`), so nothing could be resumed: `topics` are the subscriptions
//                   held before; or, after any reconnect, the `auto` topics its welcome did
//                   not name beyond the 100 most recently active, which were not asked for.
//                 {reason: 'seq', topics: [topic], missing: [from, to]}  a jump in an
//                   envelope's `seq` on an unfiltered subscription or an auto route. `seq`
//                   counts every frame of the topic, including those the route's audience
//                   sends to others, so on a per-user audience a jump is expected.
//   unsubscribed  fn({topics, reason}): the server dropped subscriptions (route_removed).
//   error         an `error` frame that answers no pending request, or a failed automatic
//                 refresh or token function; an Error with `code`, `topic` and `frame`.
//   frame         every frame received, parsed as for `message` (for logs and consoles).
// Closes after which the bridge expects the client back: 1001 shutdown or idle timeout,
// 1005 and 1006 connection lost (a refused handshake, 401 and 503 included, is a 1006),
// 1011 internal error, 1012 restart, 1013 try again later, 4000 too slow (a new
// connection starts with an empty queue). Other codes report a client bug (1008 rate
// limit, 1009 frame too big): reconnecting would repeat it.
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 4000]);
const PROTOCOL_TYPES = new Set([
  'subscribed', 'unsubscribed', 'pong', 'refreshed', 'gap', 'error',
]);
// setTimeout's limit: a longer delay fires at once.
const MAX_TIMER = 2 ** 31 - 1;
// The most `auto` topics not named by the welcome that a reconnect resumes: their
// positions go on the upgrade URL, which proxies cap (nginx: 8 KiB for the request line).
const MAX_UNNAMED_AUTO = 100;

class RedisWsBridge {
  #url;
  #token;
  #options;
  #WebSocket;
  #ws = null;
  #state = 'idle';
  #stopped = true;
  #welcome = null;
  #welcomed = false;
  #everOpened = false;
  #attempt = 0;
  #timer = null;
  #refreshTimer = null;
  #expiresAt = null;
  #nextId = 1;
  #opening = null; // the #open() in progress: a close() or a newer connect() outdates it
  // id -> {command, resolve, reject, keep, restore, sent, settled, timer}
  #pending = new Map();
  #topics = new Map(); // topic -> filter or null: what a reconnect restores
  // topic -> last envelope seq seen: the position a resume starts from
  #lastSeq = new Map();
  // The epoch those positions belong to (the last welcome's); undefined when the welcome
  // names none, and nothing can be resumed.
  #epoch;
  // Topics whose jump in `seq` a gap notice already reported: the next frame is not one.
  #gapped = new Set();
  // `auto` topics the welcome does not name (made from the message) on which frames
  // arrived, the most recently active last.
  #unnamedAuto = new Set();
  // topic -> unsubscribes sent and not yet answered: frames of these topics already on
  // their way arrive meanwhile, and are neither an unnamed `auto` topic's nor resumed.
  #leaving = new Map();
  #listeners = new Map();

  constructor(url, options = {}) {
    this.#url = url;
    this.#token = options.token;
    this.#options = {
      minDelay: 500, maxDelay: 30000, refreshBefore: 30000, requestTimeout: 10000, ...options,
    };
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket class: pass one as options.WebSocket');
    }
  }

  // idle, connecting, open, reconnecting or closed.
  get state() {
    return this.#state;
  }

  // The first frame of the current (or last) connection: `connected` (user, roles, auto
  // topics, epoch) or the configured welcome; null before the first.
  get welcome() {
    return this.#welcome;
  }

  // The subscriptions a reconnect restores: [[topic, filter or null], ...].
  get subscriptions() {
    return [...this.#topics];
  }

  lastSeq(topic) {
    return this.#lastSeq.get(topic);
  }

  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  connect() {
    if (!this.#stopped) return this;
    this.#stopped = false;
    this.#attempt = 0;
    this.#open();
    return this;
  }

  // Closes for good (a later connect() starts again with the same subscriptions).
  close() {
    if (this.#state === 'closed') return;
    const ws = this.#ws;
    this.#detach();
    if (ws) ws.close(1000);
    this.#finish({ code: 1000, reason: 'closed by the client', reconnect: false });
  }

  // Resolves with the topics subscribed; rejects with the first `error` answer (topics of
  // the same command that were admitted are subscribed all the same). Made while
  // disconnected, it is sent once connected. `last`: also replay up to that many of each
  // topic's retained frames (routes with `history`).
  subscribe(topics, filter, { last } = {}) {
    const command = { type: 'subscribe', topics: [].concat(topics) };
    if (filter) command.filter = filter;
    if (last !== undefined) command.last = last;
    return this.#request(command, true).then((frame) => frame.topics);
  }

  unsubscribe(topics) {
    topics = [].concat(topics);
    for (const topic of topics) {
      this.#topics.delete(topic);
      // Frames published after an unsubscribe are none of ours: nothing to resume.
      this.#lastSeq.delete(topic);
      this.#leaving.set(topic, (this.#leaving.get(topic) || 0) + 1);
    }
    const answered = () => {
      for (const topic of topics) {
        const pending = this.#leaving.get(topic) - 1;
        if (pending > 0) this.#leaving.set(topic, pending);
        else this.#leaving.delete(topic);
      }
    };
    return this.#request({ type: 'unsubscribe', topics }, true)
      .finally(answered)
      .then((frame) => frame.topics);
  }

  ping() {
    return this.#request({ type: 'ping' }).then(() => undefined);
  }

  // Sends `refresh` with `token`, or with a new one from the token function; resolves with
  // the new expiry (Unix seconds).
  async refresh(token) {
    if (token === undefined) {
      if (typeof this.#token !== 'function') throw new TypeError('refresh() needs a token');
      token = await this.#token();
    }
    const frame = await this.#request({ type: 'refresh', token });
    if (typeof this.#token !== 'function') this.#token = token;
    return frame.expires_at;
  }

  async #open() {
    const opening = {};
    this.#opening = opening;
    this.#state = 'connecting';
    let token;
    try {
      token = typeof this.#token === 'function' ? await this.#token() : this.#token;
    } catch (err) {
      if (this.#stopped || this.#opening !== opening) return;
      this.#emit('error', err);
      this.#retry();
      return;
    }
    if (this.#stopped || this.#opening !== opening) return;
    let ws;
    try {
      ws = new this.#WebSocket(this.#address(token));
    } catch (err) {
      this.#finish({ code: 1006, reason: String(err.message || err), reconnect: false });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    this.#welcomed = false;
    this.#expiresAt = token ? expiry(token) : null;
    ws.onmessage = (event) => this.#receive(event.data);
    // The close event that follows tells what happened; browsers say nothing more.
    ws.onerror = ignore;
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason);
  }

  #address(token) {
    let url = this.#url;
    if (url.startsWith('/')) {
      const { protocol, host } = globalThis.location;
      url = `${protocol === 'https:' ? 'wss:' : 'ws:'}//${host}${url}`;
    }
    const address = new URL(url);
    if (token) address.searchParams.set('token', token);
    // `auto` frames flow from the first moment: their missed frames are asked for at the
    // upgrade, so that the bridge sends them before any live one.
    const auto = this.#everOpened && this.#epoch !== undefined
      ? [...new Set([...autoTopics(this.#welcome), ...this.#unnamedSplit().resumed])]
      : [];
    if (auto.length > 0) {
      address.searchParams.set('since', JSON.stringify(this.#since(auto)));
    }
    return address.href;
  }

  // Lets go of the socket: none of its events reaches the client any more.
  #detach() {
    const ws = this.#ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = null;
    // A socket closed while connecting still reports an error, which Node's `ws` would
    // throw if nothing listened.
    ws.onerror = ignore;
    this.#ws = null;
    this.#welcomed = false;
  }

  #retry() {
    this.#attempt += 1;
    const { minDelay, maxDelay } = this.#options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** (this.#attempt - 1));
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    this.#state = 'reconnecting';
    this.#emit('reconnecting', { attempt: this.#attempt, delay });
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#open();
    }, delay);
  }

  #closed(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#detach();
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    // A token that ran out is replaced by the token function's next one.
    const expired =
      code === 1008 && reason === 'token expired' && typeof this.#token === 'function';
    const reconnect = !this.#stopped && (RECONNECT_CODES.has(code) || expired);
    for (const [id, entry] of this.#pending) {
      if (reconnect && entry.keep && !entry.settled) {
        entry.sent = false;
      } else {
        this.#drop(id, entry, new Error(`connection closed (${code})`));
      }
    }
    if (reconnect) {
      this.#emit('close', { code, reason, reconnect });
      this.#retry();
    } else {
      this.#finish({ code, reason, reconnect });
    }
  }

  #finish(event) {
    this.#stopped = true;
    this.#opening = null;
    this.#state = 'closed';
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    this.#timer = this.#refreshTimer = null;
    for (const [id, entry] of this.#pending) {
      this.#drop(id, entry, new Error('connection closed'));
    }
    this.#emit('close', event);
  }

  #receive(data) {
    let frame = data;
    if (typeof data === 'string') {
      try {
        frame = JSON.parse(data);
      } catch {
        // A `raw` route's payload need not be JSON.
      }
    }
    this.#emit('frame', frame);
    if (!this.#welcomed) {
      this.#opened(frame);
    } else if (frame && PROTOCOL_TYPES.has(frame.type)) {
      this.#answer(frame);
    } else {
      this.#message(frame);
    }
  }

  // The first frame of a connection: the `connected` frame or the configured welcome.
  #opened(frame) {
    const reconnected = this.#everOpened;
    // Positions of the previous connection's process, if it named one: the bridge resumes
    // from them, or answers a gap (`epoch_changed` when it is another process).
    const resumable = reconnected && this.#epoch !== undefined;
    const held = [...this.#topics.keys()];
    const since = resumable && held.length > 0 ? this.#since(held) : undefined;
    // Those the upgrade URL (`#address`) left out: told as a gap.
    const unresumed = resumable ? this.#unnamedSplit().left : [];
    const previous = this.#welcome;
    this.#welcome = frame;
    this.#welcomed = true;
    this.#everOpened = true;
    this.#attempt = 0;
    this.#state = 'open';
    const epoch = epochOf(frame);
    // The `auto` topics this connection resumes on its upgrade URL (`#address`): their
    // replayed frames follow and move their positions.
    const replaying = new Set(resumable && epoch === this.#epoch ? autoTopics(previous) : []);
    // Another process numbers its frames from 1 again.
    if (epoch !== this.#epoch) {
      this.#lastSeq.clear();
      this.#gapped.clear();
      this.#unnamedAuto.clear();
    }
    this.#epoch = epoch;
    // Where the retained `auto` topics start for this connection.
    this.#startAt(frame.position, replaying);
    this.#restore(since);
    for (const entry of this.#pending.values()) {
      if (!entry.sent && !entry.settled) this.#send(entry);
    }
    this.#scheduleRefresh();
    this.#emit('open', frame);
    if (reconnected && !resumable) {
      const topics = [...new Set([...held, ...autoTopics(frame), ...this.#unnamedAuto])];
      this.#reportGap({ reason: 'reconnected', topics });
    } else if (unresumed.length > 0) {
      this.#reportGap({ reason: 'reconnected', topics: unresumed });
    }
  }

  // The unnamed `auto` topics a reconnect resumes on its upgrade URL (the most recently
  // active MAX_UNNAMED_AUTO), and those it leaves out.
  #unnamedSplit() {
    const unnamed = [...this.#unnamedAuto];
    const cut = Math.max(0, unnamed.length - MAX_UNNAMED_AUTO);
    return { resumed: unnamed.slice(cut), left: unnamed.slice(0, cut) };
  }

  // Tells the application of a gap; the jump in `seq` that the next frames of its topics
  // show is this gap, not another one.
  #reportGap(gap) {
    for (const topic of gap.topics) {
      if (this.#lastSeq.has(topic)) this.#gapped.add(topic);
    }
    this.#emit('gap', gap);
  }

  // Records a `position` (of a `connected` frame or a `subscribed` answer) of this epoch for
  // the topics with no frame received yet, but those in `replaying`: they resume from
  // there, not from frames routed before it.
  #startAt(position, replaying) {
    if (!position || position.epoch !== this.#epoch) return;
    for (const [topic, seq] of Object.entries(position.seq)) {
      if (!replaying.has(topic) && !this.#lastSeq.has(topic)) this.#lastSeq.set(topic, seq);
    }
  }

  // `since` for `topics`: the epoch and each topic's last seq (0: none seen yet).
  #since(topics) {
    const seq = {};
    for (const topic of topics) seq[topic] = this.#lastSeq.get(topic) ?? 0;
    return { epoch: this.#epoch, seq };
  }

  // Re-subscribes to every topic held, one command per distinct filter, each resuming its
  // topics from `since`'s positions when there are any.
  #restore(since) {
    const groups = new Map();
    for (const [topic, filter] of this.#topics) {
      const key = JSON.stringify(filter);
      if (!groups.has(key)) groups.set(key, { type: 'subscribe', topics: [] });
      groups.get(key).topics.push(topic);
      if (filter) groups.get(key).filter = filter;
    }
    for (const command of groups.values()) {
      if (since) {
        const seq = {};
        for (const topic of command.topics) seq[topic] = since.seq[topic];
        command.since = { epoch: since.epoch, seq };
      }
      this.#request(command, false, true).catch(() => {});
    }
  }

  #request(command, keep = false, restore = false) {
    return new Promise((resolve, reject) => {
      if (this.#state !== 'open' && !keep) {
        reject(new Error('not connected'));
        return;
      }
      const id = this.#nextId++;
      const entry = {
        command: { ...command, id }, resolve, reject, keep, restore,
        sent: false, settled: false, timer: null,
      };
      this.#pending.set(id, entry);
      const { requestTimeout } = this.#options;
      if (requestTimeout > 0) {
        entry.timer = setTimeout(() => this.#timedOut(id, entry), requestTimeout);
      }
      if (this.#state === 'open') this.#send(entry);
    });
  }

  #timedOut(id, entry) {
    entry.timer = null;
    const err = Object.assign(new Error(`no answer to ${entry.command.type} in time`), {
      code: 'timeout',
    });
    // A late answer to a command sent is still read (a `subscribed` records its topics);
    // one never sent is not sent any more.
    if (entry.sent) {
      entry.settled = true;
      entry.reject(err);
    } else {
      this.#drop(id, entry, err);
    }
  }

  // Forgets a request, rejecting it with `err` if it is still waiting.
  #drop(id, entry, err) {
    clearTimeout(entry.timer);
    entry.timer = null;
    this.#pending.delete(id);
    if (!entry.settled) {
      entry.settled = true;
      entry.reject(err);
    }
  }

  #send(entry) {
    this.#ws.send(JSON.stringify(entry.command));
    entry.sent = true;
  }

  #answer(frame) {
    const entry = frame.id === undefined ? undefined : this.#pending.get(frame.id);
    switch (frame.type) {
      case 'subscribed': {
        if (!entry) break;
        const { filter = null, topics, since, last } = entry.command;
        for (const topic of frame.topics) this.#topics.set(topic, filter);
        // Where the live stream starts. Not for a subscribe that replays (`since`, `last`):
        // its replayed frames follow this answer and move the positions, and a cut before
        // they arrive must not skip them.
        if (!since && !(last > 0)) this.#startAt(frame.position, new Set());
        // Refused on restore (listed in `refused`): not ours any more.
        if (entry.restore) {
          for (const topic of topics) {
            if (!frame.topics.includes(topic)) this.#topics.delete(topic);
          }
        }
        this.#settle(frame, entry);
        break;
      }
      case 'error': {
        const err = Object.assign(new Error(frame.message || frame.code), {
          code: frame.code,
          topic: frame.topic,
          frame,
        });
        // A subscribe answered with an error took none of its topics: on restore, none
        // of them is ours any more.
        if (entry?.restore) for (const topic of entry.command.topics) this.#topics.delete(topic);
        if (!entry || entry.settled) {
          this.#emit('error', err);
          break;
        }
        clearTimeout(entry.timer);
        entry.timer = null;
        entry.settled = true;
        entry.reject(err);
        // Every command gets exactly one answer.
        this.#pending.delete(frame.id);
        break;
      }
      case 'unsubscribed':
        if (entry) {
          this.#settle(frame, entry);
        } else {
          for (const topic of frame.topics) this.#topics.delete(topic);
          this.#emit('unsubscribed', { topics: frame.topics, reason: frame.reason });
        }
        break;
      case 'refreshed':
        if (frame.expires_at > this.#expiresAt) {
          this.#expiresAt = frame.expires_at;
          this.#scheduleRefresh();
        }
        if (entry) this.#settle(frame, entry);
        break;
      case 'gap': {
        const topics = Array.isArray(frame.topics) ? frame.topics : [];
        const gap = { reason: frame.reason, topics };
        if (frame.since !== undefined) gap.since = frame.since;
        this.#reportGap(gap);
        break;
      }
      default:
        if (entry) this.#settle(frame, entry);
    }
  }

  #settle(frame, entry) {
    clearTimeout(entry.timer);
    entry.timer = null;
    this.#pending.delete(frame.id);
    if (!entry.settled) {
      entry.settled = true;
      entry.resolve(frame);
    }
  }

  #message(frame) {
    const tracked = frame && typeof frame.topic === 'string' && Number.isInteger(frame.seq);
    if (tracked && !this.#stillArriving(frame.topic)) {
      const last = this.#lastSeq.get(frame.topic);
      const reported = this.#gapped.delete(frame.topic);
      const unfiltered = !this.#topics.get(frame.topic);
      if (last !== undefined && frame.seq > last + 1 && !reported && unfiltered) {
        const missing = [last + 1, frame.seq - 1];
        this.#emit('gap', { reason: 'seq', topics: [frame.topic], missing });
      }
      this.#lastSeq.set(frame.topic, frame.seq);
      if (!this.#topics.has(frame.topic) && !autoTopics(this.#welcome).includes(frame.topic)) {
        this.#unnamedAuto.delete(frame.topic);
        this.#unnamedAuto.add(frame.topic);
      }
    }
    this.#emit('message', frame);
  }

  // A topic being unsubscribed whose frames, sent before the unsubscribe took effect,
  // still arrive, and which no other way delivers.
  #stillArriving(topic) {
    return this.#leaving.has(topic) && !this.#topics.has(topic)
      && !autoTopics(this.#welcome).includes(topic);
  }

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const lead = this.#options.refreshBefore;
    if (typeof this.#token !== 'function' || !this.#expiresAt || !lead) return;
    const delay = Math.max(0, this.#expiresAt * 1000 - Date.now() - lead);
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      this.refresh().catch((err) => this.#emit('error', err));
    }, Math.min(delay, MAX_TIMER));
  }

  #emit(event, value) {
    for (const fn of this.#listeners.get(event) || []) {
      try {
        fn(value);
      } catch (err) {
        // A listener's bug is reported, and does not break the connection.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

function ignore() {}

// The epoch a welcome names: the `connected` frame's, or the `epoch` member of a configured
// welcome (`{epoch}`); undefined when it names none.
function epochOf(frame) {
  return frame && typeof frame.epoch === 'string' ? frame.epoch : undefined;
}

// The `auto` topics a `connected` frame names.
function autoTopics(frame) {
  return frame && frame.type === 'connected' && Array.isArray(frame.topics) ? frame.topics : [];
}

// The `exp` claim of a JWT (Unix seconds), or null.
function expiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload)).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

export { RedisWsBridge };
export default RedisWsBridge;
