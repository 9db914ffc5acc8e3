import assert from "node:assert/strict";
import { test } from "node:test";
import { BudgetWS, setup } from "./helpers.mjs";

const TOPIC = "budget:42";
const at = (offset, epoch = "e1") => ({ offset, epoch });
const event = (offset, epoch = "e1", topic = TOPIC) => ({
  event: "budget_fact_created",
  data: { offset },
  topic,
  offset,
  epoch,
});
const subscribed = (id, position, recovered, topic = TOPIC) => ({ op: "subscribed", topic, id, position, recovered });

/** A client subscribed to TOPIC at `position`, recording handled offsets and resyncs. */
function subscribedClient(position = at(16), options = {}) {
  const resyncs = [];
  const t = setup({ onResync: (topic, p) => resyncs.push([topic, p]), ...options });
  const handled = [];
  t.client.on("budget_fact_created", (data) => handled.push(data.offset));
  const ws = t.open();
  t.client.subscribe(TOPIC);
  ws.receive(subscribed(1, position, false));
  return { ...t, handled, resyncs };
}

test("a fresh subscribe sends no position and stores the one it gets, without resync", () => {
  const t = subscribedClient(at(16));
  assert.deepEqual(t.ws.sentOps("subscribe"), [{ op: "subscribe", topic: TOPIC, id: 1 }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(16));
  assert.deepEqual(t.resyncs, []);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), []);
});

test("events advance the position; duplicates are dropped", () => {
  const t = subscribedClient(at(16));
  t.ws.receive(event(17));
  t.ws.receive(event(17));
  t.ws.receive(event(18), event(16), event(18));
  t.ws.receive(event(19));
  assert.deepEqual(t.handled, [17, 18, 19]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(19));
  assert.deepEqual(t.resyncs, []);
});

test("an offset jump is a gap: onResync, resync-needed, then the event is still handled", () => {
  const t = subscribedClient(at(16));
  const order = [];
  t.client.on("budget-ws:resync-needed", (data) => order.push(["resync-needed", data]));
  t.client.on("budget_fact_created", (data) => order.push(["event", data.offset]));
  t.ws.receive(event(17));
  t.ws.receive(event(20));
  assert.deepEqual(t.resyncs, [[TOPIC, at(20)]]);
  assert.deepEqual(order, [
    ["event", 17],
    ["resync-needed", { topic: TOPIC, position: at(20) }],
    ["event", 20],
  ]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(20));
  t.ws.receive(event(21));
  assert.deepEqual(t.handled, [17, 20, 21]);
  assert.equal(t.resyncs.length, 1);
});

test("another epoch is a gap, even with a lower offset", () => {
  const t = subscribedClient(at(16));
  t.ws.receive(event(1, "e2"));
  assert.deepEqual(t.resyncs, [[TOPIC, at(1, "e2")]]);
  assert.deepEqual(t.handled, [1]);
  t.ws.receive(event(2, "e2"));
  assert.deepEqual(t.handled, [1, 2]);
  assert.equal(t.resyncs.length, 1);
});

test("reconnect resubscribes with the last processed position; recovered: true replays", () => {
  const t = subscribedClient(at(16));
  t.ws.receive(event(17));
  t.ws.serverClose(1012);
  t.clock.advance(500);
  const ws = t.open();
  assert.deepEqual(ws.sentOps("subscribe"), [{ op: "subscribe", topic: TOPIC, id: 2, position: at(17) }]);
  ws.receive(subscribed(2, at(19), true));
  assert.deepEqual(t.seen("budget-ws:recovered"), [{ topic: TOPIC, position: at(19) }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(17), "the replay moves the position, not the frame");
  ws.receive(event(18), event(19)); // the replay: one message, two frames
  ws.receive(event(20)); // live
  assert.deepEqual(t.handled, [17, 18, 19, 20]);
  assert.deepEqual(t.resyncs, []);
});

test("recovered: false after asking to resume: onResync and continue from the frame's position", () => {
  const t = subscribedClient(at(16));
  t.ws.receive(event(17));
  t.ws.serverClose(1006);
  t.clock.advance(500);
  const ws = t.open();
  ws.receive(subscribed(2, at(90, "e2"), false));
  assert.deepEqual(t.resyncs, [[TOPIC, at(90, "e2")]]);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), [{ topic: TOPIC, position: at(90, "e2") }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(90, "e2"));
  ws.receive(event(91, "e2"));
  assert.deepEqual(t.handled, [17, 91]);
  assert.equal(t.resyncs.length, 1);
});

test("a resync frame: onResync, resync-needed, and the new position", () => {
  const t = subscribedClient(at(16));
  t.ws.receive({ op: "resync", topic: TOPIC, position: at(90, "77aa01c3") });
  assert.deepEqual(t.resyncs, [[TOPIC, at(90, "77aa01c3")]]);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), [{ topic: TOPIC, position: at(90, "77aa01c3") }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(90, "77aa01c3"));
  t.ws.receive(event(91, "77aa01c3"));
  assert.deepEqual(t.handled, [91]);
});

test("a message of several frames is split on \\n and handled in order", () => {
  const t = subscribedClient(at(0));
  const all = [];
  t.client.on("*", (data, frame) => all.push(frame.event ?? frame.op));
  t.ws.receive(event(1), "", { op: "ping" }, { event: "notice", data: "hi" }, event(2), event(2), "");
  assert.deepEqual(t.handled, [1, 2]);
  assert.deepEqual(all, ["budget_fact_created", "notice", "budget_fact_created"]);
  assert.deepEqual(t.ws.sent.at(-1), { op: "pong" });
});

test("a frame that is not JSON is reported; the others are still handled", () => {
  const t = subscribedClient(at(0));
  t.ws.receive(event(1), "{nope", event(2));
  assert.deepEqual(t.handled, [1, 2]);
  assert.deepEqual(t.seen("budget-ws:error"), [{ op: "error", code: "bad_frame", message: "{nope" }]);
});

test("a handler that closes the client stops the rest of the message", () => {
  const t = subscribedClient(at(0));
  t.client.on("budget_fact_created", (data) => data.offset === 1 && t.client.close());
  t.ws.receive(event(1), event(2));
  assert.deepEqual(t.handled, [1]);
});

test("events without a topic are dispatched and not tracked", () => {
  const t = subscribedClient(at(0));
  const got = [];
  t.client.on("hello", (data) => got.push(data));
  t.ws.receive({ event: "hello", data: 1 }, { event: "hello", data: 1 });
  assert.deepEqual(got, [1, 1]);
  assert.deepEqual([...t.client.positions.keys()], [TOPIC]);
});

test("unsubscribe forgets the topic and its position", () => {
  const t = subscribedClient(at(3));
  t.client.unsubscribe(TOPIC);
  assert.deepEqual(t.ws.sent.at(-1), { op: "unsubscribe", topic: TOPIC, id: 2 });
  assert.equal(t.client.positions.has(TOPIC), false);
  t.ws.receive(event(4)); // still on the way
  t.ws.receive({ op: "unsubscribed", topic: TOPIC, id: 2 });
  assert.equal(t.client.positions.has(TOPIC), false);
  assert.deepEqual(t.handled, []);
  t.ws.serverClose(1012);
  t.clock.advance(500);
  assert.deepEqual(t.open().sentOps("subscribe"), []);
});

test("a server-side unsubscribe is not undone on reconnect", () => {
  const t = subscribedClient(at(3));
  t.ws.receive({ op: "unsubscribed", topic: TOPIC });
  assert.deepEqual(t.seen("budget-ws:unsubscribed"), [{ topic: TOPIC }]);
  t.ws.serverClose(1012);
  t.clock.advance(500);
  assert.deepEqual(t.open().sentOps("subscribe"), []);
});

test("a server-side subscribe is tracked; a later one in another epoch is a gap", () => {
  const t = setup({ onResync: () => {} });
  const ws = t.open();
  ws.receive({ op: "subscribed", topic: "user:1", position: at(5), recovered: false });
  assert.deepEqual(t.client.positions.get("user:1"), at(5));
  ws.receive(event(6, "e1", "user:1"));
  ws.receive({ op: "subscribed", topic: "user:1", position: at(6), recovered: false });
  assert.deepEqual(t.seen("budget-ws:resync-needed"), []);
  ws.receive({ op: "subscribed", topic: "user:1", position: at(9, "e2"), recovered: false });
  assert.deepEqual(t.seen("budget-ws:resync-needed"), [{ topic: "user:1", position: at(9, "e2") }]);
  assert.deepEqual(ws.sentOps("subscribe"), [], "nothing to resume in another history");
});

test("positions persist in storage and resume after a page reload", () => {
  const saved = new Map();
  const storage = { getItem: (k) => saved.get(k) ?? null, setItem: (k, v) => saved.set(k, v) };
  const t = subscribedClient(at(16), { storage });
  t.ws.receive(event(17));
  assert.deepEqual(JSON.parse(saved.get("budget-ws:ws://test/ws")), { [TOPIC]: at(17) });

  const reloaded = setup({ storage });
  assert.deepEqual(reloaded.client.positions.get(TOPIC), at(17));
  const ws = reloaded.open();
  reloaded.client.subscribe(TOPIC);
  assert.deepEqual(ws.sentOps("subscribe")[0].position, at(17));
});

test("storage that throws or holds garbage is survived", () => {
  const broken = {
    getItem: () => "{not json",
    setItem: () => {
      throw new Error("QuotaExceededError");
    },
  };
  const t = subscribedClient(at(1), { storage: broken });
  t.ws.receive(event(2));
  assert.deepEqual(t.handled, [2]);
});

test("without storage, nothing is persisted", () => {
  assert.equal(new BudgetWS("ws://x").positions.size, 0);
});

// Events of topics the client does not hold -------------------------------------------------

test("events still queued after unsubscribe are dropped: no handler, no position, no storage", () => {
  const saved = new Map();
  const storage = { getItem: (k) => saved.get(k) ?? null, setItem: (k, v) => saved.set(k, v) };
  const t = subscribedClient(at(3), { storage });
  t.ws.receive(event(4));
  t.client.unsubscribe(TOPIC);
  // The server's answer overtakes the events that were queued before it.
  t.ws.receive({ op: "unsubscribed", topic: TOPIC, id: 2 }, event(5), event(6));
  t.ws.receive(event(7, "e2")); // not even a gap: nothing is held
  assert.deepEqual(t.handled, [4]);
  assert.equal(t.client.positions.has(TOPIC), false);
  assert.deepEqual(JSON.parse(saved.get("budget-ws:ws://test/ws")), {});
  assert.deepEqual(t.resyncs, []);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), []);
});

test("events of a topic never subscribed are dropped; events without a topic are not", () => {
  const t = setup();
  const ws = t.open();
  const got = [];
  t.client.on("budget_fact_created", (data) => got.push(data.offset));
  t.client.on("hello", (data) => got.push(data));
  ws.receive(event(1, "e1", "budget:7"), { event: "hello", data: "direct" });
  assert.deepEqual(got, ["direct"]);
  assert.equal(t.client.positions.size, 0);
});

test("a topic subscribed by the server is held until the server unsubscribes it", () => {
  const t = setup();
  const ws = t.open();
  const got = [];
  t.client.on("budget_fact_created", (data, frame) => got.push([frame.topic, data.offset]));
  ws.receive({ op: "subscribed", topic: "user:1", position: at(5), recovered: false });
  ws.receive(event(6, "e1", "user:1"));
  ws.receive({ op: "unsubscribed", topic: "user:1" }, event(7, "e1", "user:1"));
  assert.deepEqual(got, [["user:1", 6]]);
  assert.equal(t.client.positions.has("user:1"), false);
});

test("unsubscribe also drops the events of a topic the server subscribed", () => {
  const t = setup();
  const ws = t.open();
  const got = [];
  t.client.on("budget_fact_created", (data) => got.push(data.offset));
  ws.receive({ op: "subscribed", topic: TOPIC, position: at(5), recovered: false });
  t.client.unsubscribe(TOPIC);
  ws.receive(event(6));
  assert.deepEqual(got, []);
});

test("after a reconnect a topic is held again from its subscribed answer on", () => {
  const t = subscribedClient(at(3));
  t.ws.serverClose(1012);
  t.clock.advance(500);
  const ws = t.open();
  ws.receive(event(4)); // out of protocol: before the answer
  ws.receive(subscribed(2, at(4), true), event(4));
  assert.deepEqual(t.handled, [4]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(4));
});

test("unsubscribe then subscribe again: the old subscription's answers and events are ignored", async () => {
  const t = setup({ onResync: () => {} });
  const handled = [];
  t.client.on("budget_fact_created", (data) => handled.push(data.offset));
  const ws = t.open();
  const first = t.client.subscribe(TOPIC); // id 1
  t.client.unsubscribe(TOPIC); // id 2
  const second = t.client.subscribe(TOPIC); // id 3
  await assert.rejects(first, { code: "unsubscribed" });
  assert.deepEqual(ws.sentOps("subscribe").at(-1), { op: "subscribe", topic: TOPIC, id: 3 });
  ws.receive(subscribed(1, at(3), false), event(4)); // the first subscription, cancelled
  ws.receive({ op: "unsubscribed", topic: TOPIC, id: 2 }, event(5));
  assert.deepEqual(handled, []);
  assert.equal(t.client.positions.has(TOPIC), false);
  ws.receive(subscribed(3, at(6), false), event(5), event(6), event(7));
  assert.deepEqual(handled, [7], "older events of the first subscription are duplicates");
  assert.deepEqual((await second).id, 3);
  assert.deepEqual(t.seen("budget-ws:subscribed"), [{ topic: TOPIC, position: at(6), recovered: false }]);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), []);
});

// subscribe(topic, {position}) ---------------------------------------------------------------

test("subscribe with a position sends it in the first subscribe frame; the replay is handled", async () => {
  const t = setup({ onResync: () => assert.fail("no resync") });
  const handled = [];
  t.client.on("budget_fact_created", (data) => handled.push(data.offset));
  const pending = t.client.subscribe(TOPIC, { position: at(16) }); // rendered into the page
  assert.deepEqual(t.client.positions.get(TOPIC), at(16));
  const ws = t.open();
  assert.deepEqual(ws.sentOps("subscribe"), [{ op: "subscribe", topic: TOPIC, id: 1, position: at(16) }]);
  ws.receive(subscribed(1, at(18), true), event(17), event(18));
  ws.receive(event(19));
  assert.equal((await pending).recovered, true);
  assert.deepEqual(handled, [17, 18, 19]);
  assert.deepEqual(t.seen("budget-ws:recovered"), [{ topic: TOPIC, position: at(18) }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(19));
});

test("subscribe with a position that cannot be recovered: onResync and resync-needed", () => {
  const resyncs = [];
  const t = setup({ onResync: (topic, p) => resyncs.push([topic, p]) });
  const ws = t.open();
  t.client.subscribe(TOPIC, { position: at(16) });
  assert.deepEqual(ws.sentOps("subscribe")[0].position, at(16));
  ws.receive(subscribed(1, at(40, "e2"), false));
  assert.deepEqual(resyncs, [[TOPIC, at(40, "e2")]]);
  assert.deepEqual(t.seen("budget-ws:resync-needed"), [{ topic: TOPIC, position: at(40, "e2") }]);
  assert.deepEqual(t.client.positions.get(TOPIC), at(40, "e2"));
});

test("a known position takes precedence only if it is newer in the same epoch", () => {
  const cases = [
    // known, given, sent
    [at(20), at(16), at(20)], // newer, same epoch: the known one
    [at(16), at(16), at(16)],
    [at(10), at(16), at(16)], // older: the given one
    [at(90, "e0"), at(16), at(16)], // another epoch: the given one
    [undefined, at(0), at(0)],
    [at(20), null, at(20)], // no position given
  ];
  for (const [known, position, sent] of cases) {
    const t = setup();
    if (known) t.client.positions.set(TOPIC, known);
    const ws = t.open();
    t.client.subscribe(TOPIC, { position });
    assert.deepEqual(ws.sentOps("subscribe")[0].position, sent, JSON.stringify([known, position]));
  }
});

test("a stored position newer than the rendered one wins; the given one is stored", () => {
  const saved = new Map([["budget-ws:ws://test/ws", JSON.stringify({ [TOPIC]: at(17), other: at(2) })]]);
  const storage = { getItem: (k) => saved.get(k) ?? null, setItem: (k, v) => saved.set(k, v) };
  const t = setup({ storage });
  const ws = t.open();
  t.client.subscribe(TOPIC, { position: at(16) });
  t.client.subscribe("other", { position: at(5) });
  assert.deepEqual(ws.sentOps("subscribe").map((f) => f.position), [at(17), at(5)]);
  assert.deepEqual(JSON.parse(saved.get("budget-ws:ws://test/ws")), { [TOPIC]: at(17), other: at(5) });
});

test("a position given while a subscribe is pending sends a new request; the old answer is ignored", async () => {
  const t = setup({ onResync: () => assert.fail("no resync") });
  const handled = [];
  t.client.on("budget_fact_created", (data) => handled.push(data.offset));
  const ws = t.open();
  const plain = t.client.subscribe(TOPIC);
  const same = t.client.subscribe(TOPIC);
  const from16 = t.client.subscribe(TOPIC, { position: at(16) });
  assert.deepEqual(ws.sentOps("subscribe"), [
    { op: "subscribe", topic: TOPIC, id: 1 },
    { op: "subscribe", topic: TOPIC, id: 2, position: at(16) },
  ]);
  ws.receive(subscribed(1, at(18), false)); // superseded: must not move the position to 18
  ws.receive(subscribed(2, at(18), true), event(17), event(18));
  assert.deepEqual(handled, [17, 18]);
  for (const pending of [plain, same, from16]) assert.equal((await pending).id, 2);
  assert.equal(t.seen("budget-ws:subscribed").length, 1);
});

test("a position given for a held topic is sent only if it is adopted", () => {
  const t = subscribedClient(at(16));
  t.client.subscribe(TOPIC, { position: at(10) }); // known is newer: resumes from it
  t.client.subscribe(TOPIC, { position: at(3, "e2") }); // another epoch: adopted
  assert.deepEqual(t.ws.sentOps("subscribe").slice(1), [
    { op: "subscribe", topic: TOPIC, id: 2, position: at(16) },
    { op: "subscribe", topic: TOPIC, id: 3, position: at(3, "e2") },
  ]);
});

// budget-ws:subscribed ---------------------------------------------------------------------

test("budget-ws:subscribed is emitted for every subscribed frame, after the position is set", () => {
  const t = setup({ onResync: () => {} });
  const order = [];
  t.client.on("budget-ws:recovered", () => order.push("recovered"));
  t.client.on("budget-ws:subscribed", ({ topic }) => order.push([topic, t.client.positions.get(topic)]));
  const ws = t.open();
  t.client.subscribe(TOPIC);
  ws.receive(subscribed(1, at(16), false)); // fresh
  ws.receive({ op: "subscribed", topic: "user:1", position: at(3), recovered: false }); // by the server
  ws.receive(event(17));
  ws.serverClose(1012);
  t.clock.advance(500);
  const again = t.open();
  again.receive(subscribed(2, at(20), true)); // resumed after the reconnect
  again.receive({ op: "subscribed", topic: "user:1", position: at(3), recovered: false });
  assert.deepEqual(t.seen("budget-ws:subscribed"), [
    { topic: TOPIC, position: at(16), recovered: false },
    { topic: "user:1", position: at(3), recovered: false },
    { topic: TOPIC, position: at(20), recovered: true },
    { topic: "user:1", position: at(3), recovered: false },
  ]);
  assert.deepEqual(order, [
    [TOPIC, at(16)],
    ["user:1", at(3)],
    "recovered",
    [TOPIC, at(17)], // the replay that follows moves it
    ["user:1", at(3)],
  ]);
});

test("budget-ws:subscribed follows the resync of a subscription that could not resume", () => {
  const t = setup({ onResync: () => {} });
  const ws = t.open();
  const order = [];
  t.client.on("budget-ws:resync-needed", () => order.push("resync-needed"));
  t.client.on("budget-ws:subscribed", (data) => order.push(data));
  t.client.subscribe(TOPIC, { position: at(1) });
  ws.receive(subscribed(1, at(9, "e2"), false));
  assert.deepEqual(order, ["resync-needed", { topic: TOPIC, position: at(9, "e2"), recovered: false }]);
});
