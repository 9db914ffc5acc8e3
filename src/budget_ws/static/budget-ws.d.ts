/**
 * Type declarations of the budget-ws browser client (`budget-ws.js`), protocol
 * `budget-ws.v1` (see docs/protocol.md).
 *
 * The client is generic over an event map, server event name -> its `data`:
 *
 * ```ts
 * type Events = { budget_fact_created: { id: number; amount: string } };
 * const ws = connect<Events>("/ws");
 * ws.on("budget_fact_created", (data) => data.amount);
 * ```
 *
 * Events the app sends to a user (`manager.publish_to_user`) arrive on the user stream,
 * topic `~user:<id>`, as ordinary event frames of the same map.
 */

/** The WebSocket subprotocol this client speaks. */
export declare const PROTOCOL: "budget-ws.v1";

/** Where a topic's history stands: `offset` 0 means "before the first event". */
export interface Position {
  offset: number;
  epoch: string;
}

export type ConnectionState = "connecting" | "open" | "closed";

export type RequestId = string | number;

/** An event frame from the server; `topic`, `offset`, `epoch` only for topic events. */
export interface EventFrame<Name extends string = string, Data = unknown> {
  event: Name;
  data: Data;
  topic?: string;
  offset?: number;
  epoch?: string;
  /**
   * The W3C trace context of the event's publish span, to link the page's own spans to
   * it: only when the server passes contexts to clients
   * (`OpenTelemetryTracer(context_to_clients=True)`) and the event was traced.
   */
  traceparent?: string;
  [field: string]: unknown;
}

export interface WelcomeFrame {
  op: "welcome";
  protocol: string;
  connection_id: string;
  /** Seconds. */
  heartbeat: { interval: number; timeout: number };
  limits: Record<string, number>;
  /** The user the server identified the connection as; absent when anonymous. */
  user?: string;
  [field: string]: unknown;
}

export interface SubscribedFrame {
  op: "subscribed";
  topic: string;
  id?: RequestId;
  position: Position;
  recovered: boolean;
  [field: string]: unknown;
}

/** A user present on a topic: once, however many tabs and workers (`connections`). */
export interface Member {
  user: string;
  connections: number;
  /** What the app's `identify` hook gave for the user (`User.info`). */
  info: Record<string, unknown>;
}

/** Who is present on a topic. */
export interface Presence {
  members: Member[];
  /** Users present; more than `members.length` when `truncated`. */
  count: number;
  /** The server lists at most `max_members` users. */
  truncated: boolean;
}

/** The server's full list for a topic subscribed with `presence: true`. */
export interface PresenceFrame extends Presence {
  op: "presence";
  topic: string;
  [field: string]: unknown;
}

/** What changed on a topic since the last presence frame. */
export interface PresenceDiffFrame {
  op: "presence_diff";
  topic: string;
  count: number;
  /** Users new, or whose `connections` or `info` changed. */
  joins: Member[];
  /** Users gone. */
  leaves: string[];
  [field: string]: unknown;
}

export type ErrorCode =
  | "bad_frame"
  | "unknown_op"
  | "invalid_topic"
  | "too_many_topics"
  | "forbidden"
  | "unknown_event"
  | "invalid_event"
  | "handler_error"
  | "backend_error"
  | "presence_unavailable";

export interface ErrorFrame {
  op: "error";
  code: ErrorCode | (string & {});
  message: string;
  id?: RequestId;
  topic?: string;
  details?: Array<{ loc: unknown[]; msg: string; type: string }>;
  [field: string]: unknown;
}

/** Any frame: an event frame or a control frame (`op`). */
export type Frame = EventFrame | { op: string; [field: string]: unknown };

/** The rejection of `subscribe()`: an error frame's code, or `"closed"`, `"unsubscribed"`,
 * `"revoked"` (the app removed the user from the topic). */
export interface SubscribeError extends Error {
  code: ErrorCode | "closed" | "unsubscribed" | "revoked" | (string & {});
  frame?: ErrorFrame;
}

/** The client's own events, all prefixed `budget-ws:`. */
export interface ConnectionEvents {
  "budget-ws:connecting": { attempt: number };
  /** The welcome frame arrived: subscriptions have been re-sent. */
  "budget-ws:open": WelcomeFrame;
  /** `delay` (ms) until the next attempt when `reconnect` is true. */
  "budget-ws:closed": { code: number; reason: string; reconnect: boolean; delay?: number };
  /** Every event missed since `position` was sent is replayed next. */
  "budget-ws:recovered": { topic: string; position: Position };
  /** Every `subscribed` frame: answers to `subscribe()`, resubscribes after a reconnect,
   * and subscriptions made by the server. `position` is the topic's latest position. */
  "budget-ws:subscribed": { topic: string; position: Position; recovered: boolean };
  /** The topic's state is stale: reload it; the client continues from `position`. */
  "budget-ws:resync-needed": { topic: string; position: Position };
  /** The server unsubscribed the connection (or confirmed `unsubscribe()`); `reason`
   * `"revoked"`: the app removed the user from the topic. */
  "budget-ws:unsubscribed": { topic: string; reason?: "revoked" | (string & {}) };
  /** The app removed the user from the topic: it is forgotten, not resubscribed. */
  "budget-ws:revoked": { topic: string };
  /** Who is present changed on a topic subscribed with `presence: true` (first list too). */
  "budget-ws:presence": { topic: string } & Presence;
  /** A user arrived, or their `connections` or `info` changed. */
  "budget-ws:join": { topic: string; member: Member };
  /** A user is gone (also when a new list after a reconnect lacks them). */
  "budget-ws:leave": { topic: string; user: string };
  "budget-ws:error": ErrorFrame;
}

/** The frame handed to handlers of `budget-ws:` events (and to `"*"` handlers for them). */
export interface ConnectionFrame<K extends keyof ConnectionEvents = keyof ConnectionEvents> {
  event: K;
  data: ConnectionEvents[K];
}

export interface TimerFunctions {
  setTimeout?: (callback: () => void, ms: number) => unknown;
  clearTimeout?: (timer: any) => void;
}

export interface BudgetWSOptions extends TimerFunctions {
  /** Default `["budget-ws.v1"]`. */
  protocols?: string | string[];
  /** Base of the backoff, ms: the range of the first attempt of an outage, doubled for the
   * second; later ranges follow the outage (a fifth of it, at least 2 x minDelay). Default 1000. */
  minDelay?: number;
  /** Cap of the backoff range, ms. Default 20000. */
  maxDelay?: number;
  /** How long (ms) a connection must stay open for its end to start a new outage (the
   * backoff starts over); a 1012 always does. Default 5000. */
  stableAfter?: number;
  /** Server silence (ms) tolerated beyond its ping period, max(interval, timeout); also how
   * long a ping sent on `online` may go unanswered. Default 5000. */
  heartbeatSlack?: number;
  /** Where to keep positions across page reloads (e.g. `sessionStorage`). Off by default. */
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
  /** Storage key; default `"budget-ws:" + url`. */
  storageKey?: string;
  /** Called when a topic's state is stale and must be reloaded. */
  onResync?: (topic: string, position: Position) => void;
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Returns a number in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Wall clock in ms. Default `Date.now`. */
  now?: () => number;
  /** Lifecycle event sources; default the page's `window` and `document`, if any. */
  window?: EventTarget | null;
  document?: (EventTarget & { visibilityState?: string }) | null;
}

export type Unsubscribe = () => void;

export interface SubscribeOptions {
  /** Resume after this position, e.g. rendered into the page with
   * `await manager.position(topic)`: the server replays what was published since. A
   * position the client already knows for the topic wins if it is newer in the same epoch. */
  position?: Position | null;
  /** Also follow who is present: `presence(topic)`, events `budget-ws:presence`, `join`,
   * `leave`. Remembered until the topic is left. */
  presence?: boolean;
}

/** An event frame of any event of the map, narrowed by its `event`. */
export type AnyEventFrame<Events extends Record<string, unknown>> = {
  [K in keyof Events & string]: EventFrame<K, Events[K]>;
}[keyof Events & string];

export declare class BudgetWS<Events extends Record<string, unknown> = Record<string, any>> {
  constructor(url: string, options?: BudgetWSOptions);
  readonly url: string;
  readonly options: Readonly<Required<Omit<BudgetWSOptions, "storage" | "onResync">>> &
    BudgetWSOptions;
  readonly state: ConnectionState;
  /** Last processed position per topic. */
  readonly positions: Map<string, Position>;
  /** The user the server identified the connection as (`welcome.user`), or null. */
  readonly user: string | null;

  /** Open the connection (again, after `close()`). */
  connect(): this;
  /** Close for good: no reconnect until `connect()`. */
  close(code?: number, reason?: string): void;
  /** Subscribe; remembered and resumed on every reconnect. Rejects when no reconnect is
   * coming (not on `pagehide`: `pageshow` may resume the page), or when the app revokes
   * the topic first (`"revoked"`). */
  subscribe(topic: string, options?: SubscribeOptions): Promise<SubscribedFrame>;
  /** Leave the topic; its events still on the way are dropped. */
  unsubscribe(topic: string): void;
  /** Send a client event; `false` when not open (events are not queued). */
  send<K extends string>(
    event: K,
    data: K extends keyof Events ? Events[K] : unknown,
    options?: { topic?: string; id?: string },
  ): boolean;

  on<K extends keyof ConnectionEvents>(
    event: K,
    handler: (data: ConnectionEvents[K], frame: ConnectionFrame<K>) => void,
  ): Unsubscribe;
  /** Every event: the server's (`frame` is the event frame) and the client's own. */
  on(event: "*", handler: (data: any, frame: EventFrame | ConnectionFrame) => void): Unsubscribe;
  on<K extends keyof Events & string>(
    event: K,
    handler: (data: Events[K], frame: EventFrame<K, Events[K]>) => void,
  ): Unsubscribe;

  once<K extends keyof ConnectionEvents>(
    event: K,
    handler: (data: ConnectionEvents[K], frame: ConnectionFrame<K>) => void,
  ): Unsubscribe;
  once(event: "*", handler: (data: any, frame: EventFrame | ConnectionFrame) => void): Unsubscribe;
  once<K extends keyof Events & string>(
    event: K,
    handler: (data: Events[K], frame: EventFrame<K, Events[K]>) => void,
  ): Unsubscribe;

  off(event: string, handler: (...args: any[]) => void): void;

  /** Every event of the user stream (`~user:<id>`). */
  onUser(
    handler: (data: Events[keyof Events & string], frame: AnyEventFrame<Events>) => void,
  ): Unsubscribe;
  /** Who is present on a topic subscribed with `presence: true`; undefined before its
   * first list. Stale while disconnected. */
  presence(topic: string): Presence | undefined;
}

/** Create a client and connect it in a microtask: handlers added right after the call see
 * the first `budget-ws:connecting`. Until then `state` is `"closed"`. */
export declare function connect<Events extends Record<string, unknown> = Record<string, any>>(
  url: string,
  options?: BudgetWSOptions,
): BudgetWS<Events>;

/** The part of htmx that `htmxTrigger` uses. */
export interface HtmxLike {
  trigger(target: string | Element, eventName: string, detail?: unknown): void;
}

export interface HtmxTriggerOptions {
  /** Default `globalThis.htmx`, looked up at each trigger. */
  htmx?: HtmxLike;
  /** Triggered on every mapped target when a topic needs a resync; `null` turns it off.
   * Default `"budget-ws:resync"`, detail `{topic, position}`. */
  resyncEvent?: string | null;
}

/** For `{eventName: target}`, call `htmx.trigger(target, eventName, data)` on each event. */
export declare function htmxTrigger<Events extends Record<string, unknown>>(
  client: BudgetWS<Events>,
  mapping: Partial<Record<(keyof Events & string) | (string & {}), string | Element>>,
  options?: HtmxTriggerOptions,
): Unsubscribe;
/** For each of `events`, call `htmx.trigger(target, eventName, data)` on each event. */
export declare function htmxTrigger<Events extends Record<string, unknown>>(
  client: BudgetWS<Events>,
  events: ReadonlyArray<(keyof Events & string) | (string & {})>,
  target: string | Element,
  options?: HtmxTriggerOptions,
): Unsubscribe;
