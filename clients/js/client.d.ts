// Types of the redis-ws-bridge client (client.js, client.mjs): every option, method, event
// and frame. One declaration for the three ways to load it: `import RedisWsBridge from
// 'redis-ws-bridge-client'`, `require('redis-ws-bridge-client')`, and the global
// `RedisWsBridge` of <script src="https://bridge/client.js">.

export = RedisWsBridge;
export as namespace RedisWsBridge;

declare class RedisWsBridge {
  /** `url`: `wss://host/ws`, or a path such as `/ws` on the page's own host. */
  constructor(url: string, options?: RedisWsBridge.Options);

  readonly state: RedisWsBridge.State;
  /** The first frame of the current (or last) connection; null before the first. */
  readonly welcome: RedisWsBridge.WelcomeFrame | null;
  /** What a reconnect restores: [topic, filter or null] pairs. */
  readonly subscriptions: Array<[string, RedisWsBridge.Filter | null]>;
  /** The last envelope `seq` seen on `topic` (before any, where its subscription or the
   * connection started): where a reconnect resumes it from. */
  lastSeq(topic: string): number | undefined;

  /** Returns a function that removes the listener. */
  on<E extends keyof RedisWsBridge.Events>(
    event: E,
    listener: (value: RedisWsBridge.Events[E]) => void,
  ): () => void;
  off<E extends keyof RedisWsBridge.Events>(
    event: E,
    listener: (value: RedisWsBridge.Events[E]) => void,
  ): void;

  connect(): this;
  /** For good: no reconnect, no timer, no socket handler, every pending request rejected. */
  close(): void;

  /** Resolves with the topics subscribed; rejects with a {@link RedisWsBridge.BridgeError}.
   * `last`: up to that many of each topic's retained frames first, as `message` events (the
   * latest state of a page that just loaded). */
  subscribe(
    topics: string | string[],
    filter?: RedisWsBridge.Filter | null,
    options?: RedisWsBridge.SubscribeOptions,
  ): Promise<string[]>;
  unsubscribe(topics: string | string[]): Promise<string[]>;
  ping(): Promise<void>;
  /** Resolves with the new expiry (Unix seconds), null for a credential without one. */
  refresh(token?: string): Promise<number | null>;
}

declare namespace RedisWsBridge {
  type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

  type TokenSource = string | (() => string | undefined | Promise<string | undefined>);

  interface WebSocketClass {
    new (url: string): WebSocketLike;
  }

  /** What the client uses of a WebSocket: the browser's, or `ws` in Node. */
  interface WebSocketLike {
    binaryType: string;
    onmessage: ((event: { data: unknown }) => void) | null;
    onerror: ((event: unknown) => void) | null;
    onclose: ((event: { code: number; reason: string }) => void) | null;
    send(data: string): void;
    close(code?: number): void;
  }

  interface Options {
    /** A JWT, or a function called before every connection that returns one. */
    token?: TokenSource;
    /** Default: the global `WebSocket`. */
    WebSocket?: WebSocketClass;
    /** First reconnect delay in ms (500), doubling with every failed attempt. */
    minDelay?: number;
    /** Largest reconnect delay in ms (30000). */
    maxDelay?: number;
    /** With a token function: refresh this many ms before `exp` (30000); 0 turns it off. */
    refreshBefore?: number;
    /** Rejects a request not answered within this many ms (10000); 0 waits for ever. */
    requestTimeout?: number;
  }

  type FilterValue = string | number | boolean | null;
  /** Payload paths (`status`, `data.kind`) to the values a frame's payload may have there. */
  type Filter = Record<string, FilterValue | FilterValue[]>;

  type ErrorCode =
    | 'bad_request'
    | 'unknown_topic'
    | 'forbidden'
    | 'rate_limited'
    | 'token_expired'
    | 'too_many_subscriptions';

  // Server → client frames.

  interface ConnectedFrame {
    type: 'connected';
    connection_id: string;
    user: string | null;
    roles: string[];
    /** The topics of `auto` routes this connection receives without subscribing. */
    topics: string[];
    /** Changes when the bridge restarts. */
    epoch: string;
    /** For the `topics` a route retains: the `since` that resumes them from this connection
     * (absent when none). */
    position?: Since;
  }
  /** The `connected` frame, or the welcome template the routing file configures (whose
   * `epoch` member, when it has one, lets the client resume). */
  type WelcomeFrame = ConnectedFrame | { [key: string]: unknown };
  /** A topic a subscribe did not take, and why. */
  interface Refusal {
    topic: string;
    code: 'forbidden' | 'unknown_topic' | 'too_many_subscriptions';
  }
  interface SubscribedFrame {
    type: 'subscribed';
    id?: number;
    /** The topics taken. */
    topics: string[];
    /** The topics of the same command that were not taken (absent when none). */
    refused?: Refusal[];
    /** For the topics taken that a route retains: the `since` that resumes them from this
     * subscription (absent when none). */
    position?: Since;
  }
  interface UnsubscribedFrame {
    type: 'unsubscribed';
    id?: number;
    topics: string[];
    /** `route_removed` when the server dropped them. */
    reason?: string;
  }
  interface PongFrame {
    type: 'pong';
    id?: number;
  }
  interface RefreshedFrame {
    type: 'refreshed';
    id?: number;
    expires_at: number | null;
  }
  type GapFrame =
    | {
        type: 'gap';
        reason: 'redis_reconnected';
        /** RFC 3339. */
        since: string;
        topics: string[];
      }
    | {
        type: 'gap';
        /** The subscribe's, for a gap answering its `since`; none for the upgrade's. */
        id?: number;
        reason: 'epoch_changed' | 'history_exhausted';
        topics: string[];
      };
  /** Where to resume from: the epoch of a `connected` frame and, per topic, the last `seq`
   * received there (0: none). */
  interface Since {
    epoch: string;
    seq: Record<string, number>;
  }
  interface ErrorFrame {
    type: 'error';
    id?: number;
    code: ErrorCode;
    message: string;
    /** The (first) topic refused, for a subscribe that took none. */
    topic?: string;
    /** Every topic refused, when a subscribe took none and refused several. */
    refused?: Refusal[];
  }
  /** A route frame in the `envelope` format. */
  interface Envelope<T = unknown> {
    type: string;
    topic: string;
    seq: number;
    /** RFC 3339 with milliseconds. */
    ts: string;
    data: T;
  }
  type ProtocolFrame =
    | ConnectedFrame
    | SubscribedFrame
    | UnsubscribedFrame
    | PongFrame
    | RefreshedFrame
    | GapFrame
    | ErrorFrame;
  /** A route frame: an envelope, a template's JSON, a `raw` payload's text, or binary. */
  type RouteFrame =
    | Envelope
    | { [key: string]: unknown }
    | unknown[]
    | string
    | number
    | boolean
    | null
    | ArrayBuffer;
  type Frame = ProtocolFrame | RouteFrame;

  interface SubscribeOptions {
    /** Up to this many retained frames of each topic first (0 to 10000). */
    last?: number;
  }

  // Client → server commands.

  type Command =
    | {
        type: 'subscribe';
        id?: number;
        topics: string[];
        filter?: Filter;
        /** Up to this many retained frames of each topic first (0 to 10000). */
        last?: number;
        /** The frames after these positions first, or a gap. */
        since?: Since;
      }
    | { type: 'unsubscribe'; id?: number; topics: string[] }
    | { type: 'ping'; id?: number }
    | { type: 'refresh'; id?: number; token: string };

  // Events.

  interface CloseInfo {
    code: number;
    reason: string;
    /** Whether a reconnect follows. */
    reconnect: boolean;
  }
  interface ReconnectingInfo {
    attempt: number;
    /** ms until the attempt. */
    delay: number;
  }
  /** Frames were or may have been missed: refetch the state of `topics`. After a
   * reconnect, the client resumes what it can; these name what it could not. */
  type Gap =
    | { reason: 'redis_reconnected'; since: string; topics: string[] }
    /** A reconnect to another bridge process: nothing of the old one is replayed. */
    | { reason: 'epoch_changed'; topics: string[] }
    /** A reconnect after which the bridge no longer held every frame missed. */
    | { reason: 'history_exhausted'; topics: string[] }
    /** A reconnect to a bridge whose welcome names no epoch (a configured welcome without
     * `{epoch}`): nothing was resumed. Or, after any reconnect, the `auto` topics the welcome
     * did not name beyond the 100 most recently active: they were not asked for. */
    | { reason: 'reconnected'; topics: string[] }
    | { reason: 'seq'; topics: [string]; missing: [number, number] };
  interface UnsubscribedInfo {
    topics: string[];
    reason?: string;
  }
  interface BridgeError extends Error {
    /** An `error` frame's code, or 'timeout' for a request not answered in time. */
    code?: ErrorCode | 'timeout';
    topic?: string;
    frame?: ErrorFrame;
  }
  interface Events {
    open: WelcomeFrame;
    close: CloseInfo;
    reconnecting: ReconnectingInfo;
    message: RouteFrame;
    gap: Gap;
    unsubscribed: UnsubscribedInfo;
    error: BridgeError;
    frame: Frame;
  }
}
