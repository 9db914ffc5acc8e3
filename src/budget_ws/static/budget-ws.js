/**
 * The browser client of budget_ws: one ES module, no dependencies, shipped as-is.
 *
 * It speaks the `budget-ws.v1` wire protocol described in `docs/protocol.md` (the single
 * source of truth): it reconnects with fully jittered backoff, watches the server's
 * heartbeat, re-subscribes with the last processed position of every topic so missed
 * events are replayed (and resumes the subscriptions the server makes itself, such as the
 * user stream `~user:<id>`), drops duplicates and events of topics it does not hold, and
 * reports gaps (`budget-ws:resync-needed`). It keeps the list of users present on the
 * topics subscribed with `presence: true`, and forgets topics the app revoked.
 *
 * @example
 * import { connect } from "/budget-ws.js";
 * const ws = connect("/ws");
 * ws.on("budget_fact_created", (data, frame) => console.log(data, frame.offset));
 * await ws.subscribe("budget:42", { position: renderedPosition }); // position: optional
 * ws.on("budget-ws:presence", ({ topic, members }) => render(topic, members));
 * await ws.subscribe("room:1", { presence: true });
 *
 * @module budget-ws
 */

/** The WebSocket subprotocol this client speaks. */
export const PROTOCOL = "budget-ws.v1";

const PREFIX = "budget-ws:";
/** The topic name prefix of user streams, which no app topic can have. */
const USER_TOPIC = "~user:";
/**
 * Close codes after which the client must not reconnect on its own (protocol.md); 4010:
 * the app ended the user's connections (logout, removal).
 */
const FINAL_CODES = [1000, 1002, 1008, 4003, 4010];
/**
 * Longest server silence (ms) between pings before the welcome frame tells the real
 * heartbeat: the server's default pings every 20 s.
 */
const DEFAULT_SILENCE = 20000;
/**
 * Past its first attempts the backoff's range follows the outage, not the attempt count:
 * at most this share of the time since the last good connection ended (but 2 x minDelay).
 * A client is then back within a fifth of the outage (2 s after a 10 s restart, where
 * doubling would have reached 8-16 s), and its attempts on a server that stays away still
 * thin out, as 1/t.
 */
const OUTAGE_SHARE = 0.2;

/** Report a handler's exception without stopping the frames that follow. */
const report = (error) => (globalThis.reportError || console.error)(error);

/** An Error with the protocol's `code` (and the error frame, when there is one). */
const failure = (code, message, frame) => Object.assign(new Error(message), { code, frame });

/** Whether two presence members are alike (JSON from the same server: same key order). */
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/**
 * A budget-ws connection: topics, events and connection state, surviving reconnects.
 *
 * Delivery: events published to a topic reach handlers at most once and in offset order;
 * after a reconnect the server replays what was missed when it still can, otherwise the
 * client emits `budget-ws:resync-needed` and the app reloads its state.
 */
export class BudgetWS {
  /**
   * @param {string} url `ws(s)://` URL; in a page, a relative or `http(s)://` URL is
   *   resolved against `location` and given the matching `ws(s)://` scheme.
   * @param {object} [options] See `BudgetWSOptions` in `budget-ws.d.ts`.
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      protocols: [PROTOCOL],
      minDelay: 1000,
      maxDelay: 20000,
      stableAfter: 5000,
      heartbeatSlack: 5000,
      WebSocket: globalThis.WebSocket,
      random: Math.random,
      now: Date.now,
      setTimeout: (callback, ms) => setTimeout(callback, ms),
      clearTimeout: (timer) => clearTimeout(timer),
      window: globalThis.window,
      document: globalThis.document,
      storageKey: PREFIX + url,
      ...options,
    };
    /** @type {"connecting" | "open" | "closed"} */
    this.state = "closed";
    /** Last processed position per topic. @type {Map<string, {offset: number, epoch: string}>} */
    this.positions = new Map();
    /** The user the server identified the connection as (`welcome.user`), or null. */
    this.user = null;
    this._handlers = new Map(); // event name -> Set of handlers
    this._subs = new Map(); // remembered topic -> [resolve, reject] of unanswered subscribe()s
    this._retries = new Map(); // topic -> timer of its subscribe retry after a backend_error
    this._requests = new Map(); // subscribe id -> {topic, position sent}; the latest per topic
    this._held = new Set(); // topics with a `subscribed` answer on this connection
    // Topic subscribed with presence -> its {members: Map user -> member, count, truncated},
    // null until the first snapshot. Kept across reconnects: the next snapshot is diffed.
    this._presence = new Map();
    this._id = 0;
    this._attempt = 0;
    this._stopped = true;
    const { storage, storageKey } = this.options;
    try {
      const saved = JSON.parse(storage.getItem(storageKey)) || {};
      for (const topic in saved) this.positions.set(topic, saved[topic]);
    } catch {} // no storage, nothing saved, or garbage: start afresh
  }

  /** Open the connection (again, after `close()`); returns `this`. */
  connect() {
    this._auto = 0; // connect(url) no longer needs to start it
    if (this._stopped || this._paused) this._restart();
    this._stopped = this._paused = false;
    this._listen();
    if (!this._ws) this._open();
    return this;
  }

  /**
   * Close for good: no reconnect until `connect()` is called again. Unanswered
   * `subscribe()` promises reject with code `"closed"`; topics stay remembered.
   * @param {number} [code] 1000 or 3000-4999.
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    this._stopped = true;
    this._auto = 0;
    this._lifecycle?.abort();
    this._lifecycle = null;
    this._clear();
    this._close(code, reason);
    this._failAll(code);
  }

  /**
   * Subscribe to a topic; remembered and re-sent with its last position on every reconnect.
   * @param {string} topic
   * @param {{position?: {offset: number, epoch: string} | null, presence?: boolean}}
   *   [options] `position`: resume after it (e.g. rendered into the page with
   *   `await manager.position(topic)`), unless the client knows a newer position of the
   *   same epoch. `presence: true`: also follow who is present (`presence(topic)`), until
   *   the topic is left.
   * @returns {Promise<object>} The `subscribed` frame. Rejects with an Error carrying the
   *   `code` of an error frame answering it (`"backend_error"` is retried all the same),
   *   or `"revoked"` when the app removes the user from the topic first.
   */
  subscribe(topic, { position, presence } = {}) {
    const known = this.positions.get(topic);
    const adopt = position && !(known?.epoch === position.epoch && known.offset >= position.offset);
    if (adopt) this._store(topic, position);
    const ask = presence && !this._presence.has(topic);
    if (ask) this._presence.set(topic, null);
    return new Promise((resolve, reject) => {
      const waiting = this._subs.get(topic) || [];
      this._subs.set(topic, [...waiting, [resolve, reject]]);
      // A new position or presence needs a new request; the server restarts the
      // subscription from it.
      if (!waiting.length || adopt || ask) this._subscribe(topic);
    });
  }

  /**
   * Leave a topic and forget its position. Events of the topic still on the way are
   * dropped.
   * @param {string} topic
   */
  unsubscribe(topic) {
    this._settle(topic, 1, failure("unsubscribed", `unsubscribed from ${topic}`));
    this._leave(topic);
    this._send({ op: "unsubscribe", topic, id: ++this._id });
  }

  /**
   * Send a client event. Not queued: while the connection is not open it is dropped.
   * @param {string} event
   * @param {unknown} data
   * @param {{topic?: string, id?: string}} [options] `id` comes back in an error frame;
   *   use strings, the client numbers its own requests.
   * @returns {boolean} Whether the frame was handed to the socket.
   */
  send(event, data, options) {
    return this._send({ event, data, ...options });
  }

  /**
   * Call `handler(data, frame)` for each event `name`; `"*"` receives every event, the
   * `budget-ws:` connection events included (their frame is `{event, data}`).
   * @param {string} name
   * @param {(data: any, frame: any) => void} handler
   * @returns {() => void} Removes the handler.
   */
  on(name, handler) {
    const handlers = this._handlers.get(name) || new Set();
    this._handlers.set(name, handlers.add(handler));
    return () => this.off(name, handler);
  }

  /**
   * Call `handler(data, frame)` for each event of the user stream (`~user:<id>`): what the
   * app sends to every connection of the user (`manager.publish_to_user`).
   * @param {(data: any, frame: any) => void} handler
   * @returns {() => void} Removes the handler.
   */
  onUser(handler) {
    return this.on("*", (data, frame) => {
      if (frame.topic?.startsWith(USER_TOPIC)) handler(data, frame);
    });
  }

  /**
   * Who is present on a topic subscribed with `presence: true`: a user once, however many
   * tabs (`connections`). Stale while disconnected, until the next snapshot.
   * @param {string} topic
   * @returns {{members: object[], count: number, truncated: boolean} | undefined} Undefined
   *   before the first snapshot. `count` may exceed the members listed when `truncated`.
   */
  presence(topic) {
    const roster = this._presence.get(topic);
    if (!roster) return undefined;
    const { members, count, truncated } = roster;
    return { members: [...members.values()], count, truncated };
  }

  /** Remove a handler added with `on` or `once`. */
  off(name, handler) {
    for (const h of this._handlers.get(name) || []) {
      if (h === handler || h.handler === handler) this._handlers.get(name).delete(h);
    }
  }

  /** Like `on`, for the next event only. */
  once(name, handler) {
    const wrapper = (data, frame) => {
      this.off(name, wrapper);
      handler(data, frame);
    };
    wrapper.handler = handler;
    return this.on(name, wrapper);
  }

  _emit(name, data, frame = { event: name, data }) {
    for (const key of [name, "*"]) {
      for (const handler of [...(this._handlers.get(key) || [])]) {
        try {
          handler(data, frame);
        } catch (error) {
          report(error);
        }
      }
    }
  }

  _now() {
    const { now } = this.options; // called unbound: `performance.now` would throw otherwise
    return now();
  }

  _timer(callback, ms) {
    const { setTimeout } = this.options;
    return setTimeout(callback, ms);
  }

  _clear() {
    const { clearTimeout } = this.options;
    clearTimeout(this._watchdog);
    clearTimeout(this._retry);
    this._retry = null;
    // A new connection subscribes every remembered topic on its welcome: retries are moot.
    for (const timer of this._retries.values()) clearTimeout(timer);
    this._retries.clear();
  }

  /** A new outage: the backoff starts over from `minDelay`. */
  _restart() {
    this._attempt = 0;
    this._downSince = this._now();
  }

  _url() {
    const { location } = globalThis;
    if (!location || /^wss?:/i.test(this.url)) return this.url;
    const url = new URL(this.url, location.href);
    url.protocol = url.protocol == "https:" ? "wss:" : "ws:";
    return url.href;
  }

  _open() {
    this._clear();
    const { WebSocket, protocols } = this.options;
    const ws = (this._ws = new WebSocket(this._url(), protocols));
    ws.onmessage = (message) => this._receive(ws, message.data);
    ws.onclose = (event) => this._close(event.code, event.reason);
    this.state = "connecting";
    this._requests.clear();
    this._held.clear(); // the new connection holds a topic once it is subscribed again
    this._silence = DEFAULT_SILENCE;
    this._seen = this._now();
    this._emit(PREFIX + "connecting", { attempt: this._attempt });
    this._watch();
  }

  /** Tear the socket down and, unless the close is final, schedule the next attempt. */
  _close(code, reason = "") {
    const ws = this._ws;
    if (!ws) return;
    this._ws = ws.onmessage = ws.onclose = null;
    // Closed by us (heartbeat, pagehide, close()): don't wait for a dead server's answer.
    if (ws.readyState < 2) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close(); // a code or reason the browser refuses
      }
    }
    this._clear();
    const { random, minDelay, maxDelay, stableAfter } = this.options;
    const now = this._now();
    // A server restarting (1012) or a connection that had lasted: not our failure, so a
    // new outage starts; a connection that keeps failing quickly keeps the old one going.
    if (this.state == "open" && (code == 1012 || now - this._openedAt >= stableAfter)) {
      this._restart();
    }
    this.state = "closed";
    const reconnect = !this._stopped && !this._paused && !FINAL_CODES.includes(code);
    let delay;
    if (reconnect) {
      // Full jitter over the whole range, at the cap too: clients that lost the same
      // server must not come back in lockstep.
      const outage = now - this._downSince;
      const grown = Math.max(2 * minDelay, outage * OUTAGE_SHARE);
      delay = random() * Math.min(maxDelay, minDelay * 2 ** this._attempt++, grown);
      this._retryAt = now + delay;
      this._retry = this._timer(() => this._open(), delay);
    } else if (!this._paused) {
      // After pagehide the promises wait: pageshow (back/forward cache) resubscribes.
      this._failAll(code);
    }
    this._emit(PREFIX + "closed", { code, reason, reconnect, delay });
  }

  /** No reconnect is coming: reject the unanswered `subscribe()` calls. */
  _failAll(code) {
    for (const topic of this._subs.keys()) {
      this._settle(topic, 1, failure("closed", `connection closed (${code})`));
    }
  }

  /**
   * Close and reconnect when the server has been silent too long. Judged by the clock,
   * not by the timer alone: background tabs fire timers late.
   */
  _watch() {
    const { clearTimeout, heartbeatSlack } = this.options;
    clearTimeout(this._watchdog);
    if (!this._ws) return;
    const now = this._now();
    let left = this._silence + heartbeatSlack - (now - this._seen);
    // An unanswered probe (`online`) gets only the slack: the link may have died meanwhile.
    if (this._probeAt > this._seen) left = Math.min(left, heartbeatSlack - (now - this._probeAt));
    if (left <= 0) this._close(4001, "heartbeat timeout");
    else this._watchdog = this._timer(() => this._watch(), left);
  }

  /** Follow the page's lifecycle, when there is a page. */
  _listen() {
    const { window, document } = this.options;
    if (this._lifecycle || !window?.addEventListener) return;
    this._lifecycle = new AbortController();
    const on = (target, type, listener) =>
      target?.addEventListener(type, listener, { signal: this._lifecycle.signal });
    on(window, "online", () => (this._ws ? this._probe() : this._retry && this._open()));
    on(window, "pagehide", () => {
      this._paused = true; // the page may come back from the back/forward cache
      this._clear();
      this._close(1000, "pagehide");
    });
    on(window, "pageshow", (event) => {
      if (event.persisted && this._paused) this.connect();
    });
    on(document, "visibilitychange", () => {
      if (document.visibilityState != "visible") return;
      if (this._ws) this._watch();
      else if (this._retry && this._now() >= this._retryAt) this._open();
    });
  }

  /**
   * The network is back: a connection that lived through the change may be dead without
   * a close. The server answers a ping at once, so no answer within `heartbeatSlack`
   * means reconnect now rather than after a whole heartbeat of silence.
   */
  _probe() {
    if (!this._send({ op: "ping" })) return;
    this._probeAt = this._now();
    this._watch();
  }

  _send(frame) {
    if (this.state != "open") return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  _subscribe(topic) {
    this._cancelRetry(topic); // this request replaces it
    if (this.state != "open") return; // sent on the next welcome
    const id = ++this._id;
    const position = this.positions.get(topic);
    this._drop(topic);
    this._requests.set(id, { topic, position });
    const presence = this._presence.has(topic) || undefined; // remembered across reconnects
    this._send({ op: "subscribe", topic, id, position, presence });
  }

  _cancelRetry(topic) {
    const { clearTimeout } = this.options;
    clearTimeout(this._retries.get(topic));
    this._retries.delete(topic);
  }

  /** Whether a request for the topic awaits its answer. */
  _pending(topic) {
    return [...this._requests.values()].some((request) => request.topic == topic);
  }

  /** Ignore the answers to the topic's requests sent so far. */
  _drop(topic) {
    for (const [id, request] of this._requests) {
      if (request.topic == topic) this._requests.delete(id);
    }
  }

  /**
   * Forget a topic: no resubscribe, no position, no presence, and its events are dropped
   * from now on.
   */
  _leave(topic) {
    this._cancelRetry(topic);
    this._subs.delete(topic);
    this._presence.delete(topic);
    this._drop(topic);
    this._held.delete(topic);
    this._forget(topic);
  }

  /** Resolve (`i` = 0) or reject (`i` = 1) the unanswered `subscribe()` calls of a topic. */
  _settle(topic, i, value) {
    const waiting = this._subs.get(topic);
    if (!waiting) return;
    this._subs.set(topic, []);
    for (const callbacks of waiting) callbacks[i](value);
  }

  _store(topic, { offset, epoch }) {
    this.positions.set(topic, { offset, epoch });
    this._save();
  }

  _forget(topic) {
    this.positions.delete(topic);
    this._save();
  }

  _save() {
    const { storage, storageKey } = this.options;
    try {
      storage?.setItem(storageKey, JSON.stringify(Object.fromEntries(this.positions)));
    } catch {} // quota or privacy mode: positions then live as long as the page
  }

  _resync(topic, position) {
    this._store(topic, position);
    try {
      this.options.onResync?.(topic, position);
    } catch (error) {
      report(error);
    }
    this._emit(PREFIX + "resync-needed", { topic, position });
  }

  /** One server message: one or more frames separated by "\n". */
  _receive(ws, message) {
    this._seen = this._now();
    for (const line of String(message).split("\n")) {
      if (this._ws !== ws) return; // a handler closed the connection
      if (!line) continue;
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {}
      if (frame instanceof Object) this._frame(frame);
      else this._emit(PREFIX + "error", { op: "error", code: "bad_frame", message: line });
    }
  }

  _frame(frame) {
    const { op, topic, position, id } = frame;
    if (frame.event != null) return this._event(frame);
    const request = this._requests.get(id);
    this._requests.delete(id);
    switch (op) {
      case "ping":
        this._send({ op: "pong" });
        break;
      case "welcome": {
        const { interval, timeout } = frame.heartbeat || {};
        // The server pings every max(interval, timeout) s whether we answer or not
        // (protocol.md): silence beyond that, plus the slack, is a dead link.
        this._silence = Math.max(interval, timeout) * 1000 || DEFAULT_SILENCE;
        this.state = "open";
        this.user = frame.user ?? null;
        this._openedAt = this._now();
        for (const topic of this._subs.keys()) this._subscribe(topic);
        this._emit(PREFIX + "open", frame);
        this._watch();
        break;
      }
      case "subscribed": {
        if (id != null && !request) break; // answers a request superseded or unsubscribed since
        const last = this.positions.get(topic);
        if (id == null) {
          // Subscribed by the server: our own request for the topic, if any, decides.
          if (this._pending(topic)) break;
          if (last?.epoch === position.epoch && last.offset < position.offset) {
            // We missed events of this history: resume from our position. The answer
            // replays them, so the topic's events are dropped until it comes.
            this._held.delete(topic);
            this._subscribe(topic);
            break;
          }
        }
        this._held.add(topic);
        const { recovered } = frame;
        if (recovered) {
          this._emit(PREFIX + "recovered", { topic, position });
        } else if (
          // Asked to resume and could not, or subscribed by the server past our position.
          request
            ? request.position
            : last && (last.epoch !== position.epoch || last.offset !== position.offset)
        ) {
          this._resync(topic, position);
        } else {
          this._store(topic, position);
        }
        this._emit(PREFIX + "subscribed", { topic, position, recovered });
        this._settle(topic, 0, frame);
        break;
      }
      case "unsubscribed": {
        const { reason } = frame; // "revoked": the app removed the user from the topic
        this._held.delete(topic);
        // The server's decision (no id): forget the topic, don't resubscribe.
        if (id == null || !this._subs.has(topic)) {
          this._settle(topic, 1, failure(reason || "unsubscribed", `unsubscribed from ${topic}`));
          this._leave(topic);
        }
        this._emit(PREFIX + "unsubscribed", reason ? { topic, reason } : { topic });
        if (reason == "revoked") this._emit(PREFIX + "revoked", { topic });
        break;
      }
      case "presence":
      case "presence_diff":
        this._roster(frame);
        break;
      case "resync":
        this._resync(topic, position);
        break;
      case "error":
        if (request) {
          const { topic } = request;
          this._settle(topic, 1, failure(frame.code, frame.message, frame));
          if (frame.code == "backend_error") {
            // Tracked: close(), a reconnect, unsubscribe() or a newer request cancels it,
            // so it never sends a second subscribe for the topic.
            const { random, maxDelay } = this.options;
            this._retries.set(topic, this._timer(() => this._subscribe(topic), random() * maxDelay));
          } else {
            this._leave(topic);
          }
        }
        this._emit(PREFIX + "error", frame);
    }
  }

  /**
   * Apply a `presence` snapshot (it replaces the list) or a `presence_diff` (joins upsert,
   * leaves delete), then report what changed.
   */
  _roster(frame) {
    const { op, topic } = frame;
    const snapshot = op == "presence";
    const roster = this._presence.get(topic);
    // Not held (frames of a subscription left), not asked, or a diff before its snapshot.
    if (!this._held.has(topic) || roster === undefined || (!roster && !snapshot)) return;
    const before = roster?.members || new Map();
    const members = new Map(snapshot ? [] : before);
    for (const user of snapshot ? [] : frame.leaves || []) members.delete(user);
    const arrived = (snapshot ? frame.members : frame.joins) || [];
    for (const member of arrived) members.set(member.user, member);
    const { count = members.size, truncated = !snapshot && roster.truncated } = frame;
    this._presence.set(topic, { members, count, truncated });
    const joins = arrived.filter((member) => !same(member, before.get(member.user)));
    const leaves = [...before.keys()].filter((user) => !members.has(user));
    for (const member of joins) this._emit(PREFIX + "join", { topic, member });
    for (const user of leaves) this._emit(PREFIX + "leave", { topic, user });
    const recounted = !roster || count != roster.count || truncated != roster.truncated;
    if (recounted || joins.length || leaves.length) {
      this._emit(PREFIX + "presence", { topic, ...this.presence(topic) });
    }
  }

  _event(frame) {
    const { topic, offset, epoch } = frame;
    // Not held (e.g. unsubscribed, with events of the topic still on the way): dropped.
    if (topic != null && !this._held.has(topic)) return;
    if (topic != null && offset != null) {
      const last = this.positions.get(topic);
      const sameEpoch = last && last.epoch === epoch;
      if (sameEpoch && offset <= last.offset) return; // a duplicate: already processed
      if (last && (!sameEpoch || offset > last.offset + 1)) {
        this._resync(topic, { offset, epoch }); // a gap: state is stale
      } else {
        this._store(topic, { offset, epoch });
      }
    }
    this._emit(frame.event, frame.data, frame);
  }
}

/**
 * Create a client and connect it in a microtask, so that handlers added right after this
 * call see the first `budget-ws:connecting` too. `close()` before then cancels it.
 * @param {string} url
 * @param {object} [options]
 * @returns {BudgetWS}
 */
export const connect = (url, options) => {
  const client = new BudgetWS(url, options);
  client._auto = 1;
  queueMicrotask(() => client._auto && client.connect());
  return client;
};

/**
 * Turn budget-ws events into htmx events: for `{eventName: target}`, each event calls
 * `htmx.trigger(target, eventName, data)`; `htmxTrigger(client, [eventName, ...], target,
 * options)` maps several events to one target. When a topic needs a resync, `resyncEvent`
 * (default `"budget-ws:resync"`, detail `{topic, position}`) is triggered once on every
 * mapped target, so fragments can re-fetch: `hx-trigger="budget-ws:resync from:body"`
 * or filtered, `budget-ws:resync[detail.topic=='budget:42']`.
 * @param {BudgetWS} client
 * @param {Record<string, string | Element> | string[]} mapping `{eventName: target}`, or
 *   event names followed by their one `target`.
 * @param {string | Element | object} [target] After an array, the target of its events;
 *   after a mapping, the options.
 * @param {{htmx?: object, resyncEvent?: string | null}} [options]
 * @returns {() => void} Stops triggering.
 */
export function htmxTrigger(client, mapping, target, options) {
  if (Array.isArray(mapping)) mapping = Object.fromEntries(mapping.map((name) => [name, target]));
  else options = target;
  const { htmx, resyncEvent = PREFIX + "resync" } = options || {};
  const trigger = (target, name, detail) => (htmx || globalThis.htmx).trigger(target, name, detail);
  const offs = Object.entries(mapping).map(([name, target]) =>
    client.on(name, (data) => trigger(target, name, data)),
  );
  if (resyncEvent) {
    offs.push(
      client.on(PREFIX + "resync-needed", (detail) => {
        for (const target of new Set(Object.values(mapping))) trigger(target, resyncEvent, detail);
      }),
    );
  }
  return () => offs.forEach((off) => off());
}
