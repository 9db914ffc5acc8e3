// Test doubles for the browser client: a fake WebSocket, a fake clock and a fake page.
import { BudgetWS } from "../../src/budget_ws/static/budget-ws.js";

export { BudgetWS };

/** A clock whose timers run only when the test advances it. */
export class FakeClock {
  constructor() {
    this.time = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.time;
    this.setTimeout = (callback, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + Math.max(0, ms), callback });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Move time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const until = this.time + ms;
    for (;;) {
      let next;
      for (const [id, timer] of this.timers) {
        if (timer.at <= until && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].callback();
    }
    this.time = until;
  }

  /** Move the wall clock only, as in a background tab whose timers are throttled. */
  jump(ms) {
    this.time += ms;
  }
}

/** A WebSocket class of its own for each test, recording its instances. */
export function fakeWebSocketClass() {
  return class FakeWebSocket {
    static instances = [];

    static get last() {
      return FakeWebSocket.instances.at(-1);
    }

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onmessage = null;
      this.onclose = null;
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error(`send in readyState ${this.readyState}`);
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      if (code !== undefined && code !== 1000 && (code < 3000 || code > 4999)) {
        throw new DOMException("invalid code", "InvalidAccessError");
      }
      this.closedWith = { code, reason };
      this.readyState = 2;
    }

    // What the server does:

    /** One message made of these frames (objects or raw strings), joined by "\n". */
    receive(...frames) {
      if (this.readyState === 0) this.readyState = 1;
      const text = frames.map((f) => (typeof f === "string" ? f : JSON.stringify(f))).join("\n");
      this.onmessage?.({ data: text });
    }

    welcome(heartbeat = { interval: 20, timeout: 20 }) {
      this.receive({ op: "welcome", protocol: "budget-ws.v1", connection_id: "c1", heartbeat, limits: {} });
    }

    serverClose(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** The frames sent with this op. */
    sentOps(op) {
      return this.sent.filter((f) => f.op === op);
    }
  };
}

/** A fake page: `window` and `document` as event targets. */
export function fakePage() {
  const window = new EventTarget();
  const document = new EventTarget();
  document.visibilityState = "visible";
  const fire = (target, type, props = {}) => target.dispatchEvent(Object.assign(new Event(type), props));
  return { window, document, fire };
}

/** A client wired to a fake clock and a fake WebSocket; `random` is 0.5 unless given. */
export function setup(options = {}) {
  const clock = new FakeClock();
  const WS = fakeWebSocketClass();
  const client = new BudgetWS("ws://test/ws", {
    WebSocket: WS,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    window: null,
    document: null,
    ...options,
  });
  const events = [];
  client.on("*", (data, frame) => events.push([frame.event, data]));
  return {
    clock,
    WS,
    client,
    events,
    get ws() {
      return WS.last;
    },
    /** Connect (if not yet) and let the server welcome the client. */
    open(heartbeat) {
      if (client.state === "closed" && !WS.last) client.connect();
      WS.last.welcome(heartbeat);
      return WS.last;
    },
    /** The events named `name` seen so far: their data. */
    seen(name) {
      return events.filter(([event]) => event === name).map(([, data]) => data);
    },
  };
}

/** Let promise callbacks run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));
