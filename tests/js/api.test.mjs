import assert from "node:assert/strict";
import { mock, test } from "node:test";
import { flush, setup } from "./helpers.mjs";

const at = (offset, epoch = "e1") => ({ offset, epoch });

test("state and connection events: connecting, open (with the welcome), closed", () => {
  const t = setup();
  assert.equal(t.client.state, "closed");
  t.client.connect();
  assert.equal(t.client.state, "connecting");
  t.ws.welcome();
  assert.equal(t.client.state, "open");
  const [welcome] = t.seen("budget-ws:open");
  assert.equal(welcome.op, "welcome");
  assert.equal(welcome.connection_id, "c1");
  t.ws.serverClose(1000, "bye");
  assert.equal(t.client.state, "closed");
  assert.deepEqual(
    t.events.map(([name]) => name),
    ["budget-ws:connecting", "budget-ws:open", "budget-ws:closed"],
  );
});

test("subscribe resolves with the subscribed frame of the same id", async () => {
  const t = setup();
  const ws = t.open();
  const a = t.client.subscribe("a");
  const b = t.client.subscribe("b");
  assert.deepEqual(ws.sentOps("subscribe"), [
    { op: "subscribe", topic: "a", id: 1 },
    { op: "subscribe", topic: "b", id: 2 },
  ]);
  const frameB = { op: "subscribed", topic: "b", id: 2, position: at(0), recovered: false };
  const frameA = { op: "subscribed", topic: "a", id: 1, position: at(7), recovered: false };
  ws.receive(frameB, frameA);
  assert.deepEqual(await a, frameA);
  assert.deepEqual(await b, frameB);
});

test("subscribe rejects with the error frame's code; the topic is forgotten", async () => {
  const t = setup();
  const ws = t.open();
  const ok = t.client.subscribe("budget:1");
  const denied = t.client.subscribe("budget:7");
  const error = { op: "error", code: "forbidden", message: "not allowed to subscribe to 'budget:7'", id: 2, topic: "budget:7" };
  ws.receive(error);
  await assert.rejects(denied, (err) => {
    assert.ok(err instanceof Error);
    assert.equal(err.code, "forbidden");
    assert.equal(err.message, "not allowed to subscribe to 'budget:7'");
    assert.deepEqual(err.frame, error);
    return true;
  });
  assert.deepEqual(t.seen("budget-ws:error"), [error]);
  ws.receive({ op: "subscribed", topic: "budget:1", id: 1, position: at(0), recovered: false });
  await ok;
  ws.serverClose(1012);
  t.clock.advance(500);
  assert.deepEqual(t.open().sentOps("subscribe").map((f) => f.topic), ["budget:1"]);
});

test("backend_error rejects, and the subscription is retried later", async () => {
  const t = setup({ random: () => 0.5 });
  const ws = t.open();
  const pending = t.client.subscribe("a");
  ws.receive({ op: "error", code: "backend_error", message: "retry later", id: 1, topic: "a" });
  await assert.rejects(pending, { code: "backend_error" });
  t.clock.advance(9999);
  assert.equal(ws.sentOps("subscribe").length, 1);
  t.clock.advance(1); // random() * maxDelay
  assert.deepEqual(ws.sentOps("subscribe").at(-1), { op: "subscribe", topic: "a", id: 2 });
});

test("an error frame for another request only emits budget-ws:error", () => {
  const t = setup();
  const ws = t.open();
  t.client.send("chat_message", { text: "hi" }, { topic: "room:1", id: "m1" });
  ws.receive({ op: "error", code: "invalid_event", message: "bad", id: "m1", details: [] });
  assert.equal(t.seen("budget-ws:error").length, 1);
});

test("subscribe before connecting is sent on the welcome; twice is sent once", async () => {
  const t = setup();
  const first = t.client.subscribe("a");
  const second = t.client.subscribe("a");
  t.client.connect();
  assert.deepEqual(t.ws.sent, [], "nothing before the welcome");
  const ws = t.open();
  assert.deepEqual(ws.sentOps("subscribe"), [{ op: "subscribe", topic: "a", id: 1 }]);
  ws.receive({ op: "subscribed", topic: "a", id: 1, position: at(0), recovered: false });
  assert.equal((await first).id, 1);
  assert.equal((await second).id, 1);
});

test("a subscribe answered after a reconnect resolves the original promise", async () => {
  const t = setup();
  t.open();
  const pending = t.client.subscribe("a");
  t.ws.serverClose(1006);
  t.clock.advance(500);
  const ws = t.open();
  ws.receive({ op: "subscribed", topic: "a", id: 2, position: at(0), recovered: false });
  assert.equal((await pending).id, 2);
});

test("unsubscribe before the answer rejects the pending subscribe", async () => {
  const t = setup();
  const ws = t.open();
  const pending = t.client.subscribe("a");
  t.client.unsubscribe("a");
  await assert.rejects(pending, { code: "unsubscribed" });
  ws.receive({ op: "subscribed", topic: "a", id: 1, position: at(4), recovered: false });
  assert.equal(t.client.positions.has("a"), false, "a late answer does not bring the topic back");
});

test("send: an event frame when open, false when not", () => {
  const t = setup();
  assert.equal(t.client.send("chat_message", { text: "hi" }), false);
  const ws = t.open();
  assert.equal(t.client.send("chat_message", { text: "hi" }, { topic: "room:1" }), true);
  assert.equal(t.client.send("typing", null), true);
  assert.deepEqual(ws.sent, [
    { event: "chat_message", data: { text: "hi" }, topic: "room:1" },
    { event: "typing", data: null },
  ]);
});

test("on returns an unsubscribe function; off removes; once fires once", () => {
  const t = setup();
  const ws = t.open();
  const calls = [];
  const a = (data) => calls.push(["a", data]);
  const b = (data) => calls.push(["b", data]);
  const stop = t.client.on("x", a);
  t.client.on("x", b);
  t.client.once("x", (data, frame) => calls.push(["once", data, frame.event]));
  ws.receive({ event: "x", data: 1 });
  stop();
  ws.receive({ event: "x", data: 2 });
  t.client.off("x", b);
  ws.receive({ event: "x", data: 3 });
  assert.deepEqual(calls, [["a", 1], ["b", 1], ["once", 1, "x"], ["b", 2]]);
});

test("off removes a handler added with once", () => {
  const t = setup();
  const ws = t.open();
  const calls = [];
  const handler = (data) => calls.push(data);
  t.client.once("x", handler);
  t.client.off("x", handler);
  ws.receive({ event: "x", data: 1 });
  assert.deepEqual(calls, []);
});

test("handlers receive (data, frame); '*' receives every event", () => {
  const t = setup();
  const ws = t.open();
  const frame = { event: "budget_fact_created", data: { id: 7 }, topic: "t", offset: 1, epoch: "e" };
  let got;
  t.client.on("budget_fact_created", (data, f) => (got = [data, f]));
  ws.receive({ op: "subscribed", topic: "t", position: at(0, "e"), recovered: false }); // by the server
  ws.receive(frame);
  assert.deepEqual(got, [{ id: 7 }, frame]);
  assert.deepEqual(t.events.at(-1), ["budget_fact_created", { id: 7 }]);
  assert.deepEqual(t.events.map(([name]) => name), [
    "budget-ws:connecting",
    "budget-ws:open",
    "budget-ws:subscribed",
    "budget_fact_created",
  ]);
});

test("a frame's traceparent reaches handlers with the frame, for the app's own spans", () => {
  const t = setup();
  const ws = t.open();
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const frame = { event: "x", data: 1, topic: "t", offset: 1, epoch: "e", traceparent };
  const seen = [];
  t.client.on("x", (data, f) => seen.push(f.traceparent));
  t.client.on("*", (data, f) => f.event === "x" && seen.push(f.traceparent));
  ws.receive({ op: "subscribed", topic: "t", position: at(0, "e"), recovered: false });
  ws.receive(frame, { event: "x", data: 2, topic: "t", offset: 2, epoch: "e" });
  assert.deepEqual(seen, [traceparent, traceparent, undefined, undefined]);
});

test("a throwing handler is reported and does not stop the others", () => {
  const t = setup();
  const ws = t.open();
  const reported = mock.method(console, "error", () => {});
  try {
    const calls = [];
    t.client.on("x", () => {
      throw new Error("boom");
    });
    t.client.on("x", (data) => calls.push(data));
    ws.receive({ event: "x", data: 1 }, { event: "x", data: 2 });
    assert.deepEqual(calls, [1, 2]);
    assert.equal(reported.mock.callCount(), 2);
    assert.equal(reported.mock.calls[0].arguments[0].message, "boom");
  } finally {
    reported.mock.restore();
  }
});

test("timer and clock functions are called unbound (window.setTimeout, performance.now)", async () => {
  const { fakeWebSocketClass, BudgetWS } = await import("./helpers.mjs");
  const strict = (fn) =>
    function (...args) {
      assert.equal(this, undefined, "called as a method");
      return fn(...args);
    };
  const WS = fakeWebSocketClass();
  const client = new BudgetWS("ws://x", {
    WebSocket: WS,
    now: strict(() => 0),
    setTimeout: strict(() => 1),
    clearTimeout: strict(() => {}),
    window: null,
  });
  client.connect();
  WS.last.welcome();
  WS.last.serverClose(1006);
  client.close();
  await flush();
});

/** Open, subscribe to "a" and answer with backend_error: a retry is due in 10 s. */
function backendError() {
  const t = setup({ random: () => 0.5 });
  const ws = t.open();
  t.client.subscribe("a").catch(() => {});
  ws.receive({ op: "error", code: "backend_error", message: "retry later", id: 1, topic: "a" });
  return t;
}

test("backend_error: close() cancels the retry", () => {
  const t = backendError();
  t.client.close();
  assert.equal(t.clock.timers.size, 0, "no timer survives close()");
  t.client.connect();
  const ws = t.open();
  t.clock.advance(60000);
  assert.deepEqual(ws.sentOps("subscribe").map((f) => f.topic), ["a"], "one subscribe, from the welcome");
});

test("backend_error: a reconnect meanwhile subscribes once, the retry does not send a duplicate", () => {
  const t = backendError();
  t.clock.advance(1000);
  t.ws.serverClose(1006);
  t.clock.advance(500);
  const ws = t.open();
  assert.equal(ws.sentOps("subscribe").length, 1);
  t.clock.advance(60000);
  assert.equal(ws.sentOps("subscribe").length, 1);
});

test("backend_error: a new subscribe() or unsubscribe() replaces the retry", () => {
  const t = backendError();
  const ws = t.ws;
  t.client.subscribe("a").catch(() => {});
  t.clock.advance(15000); // the retry was due after 10 s; within the heartbeat window
  assert.deepEqual(ws.sentOps("subscribe").map((f) => f.id), [1, 2]);
  ws.receive({ op: "error", code: "backend_error", message: "retry later", id: 2, topic: "a" });
  t.client.unsubscribe("a");
  t.clock.advance(15000);
  assert.deepEqual(ws.sentOps("subscribe").map((f) => f.id), [1, 2]);
  assert.equal(t.client.state, "open");
});
