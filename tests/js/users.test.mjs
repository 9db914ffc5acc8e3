// The user stream (`~user:<id>`), resuming server-side subscriptions, and revocation.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setup } from "./helpers.mjs";

const USER = "~user:alice";
const at = (offset, epoch = "e1") => ({ offset, epoch });
const event = (offset, topic = USER, epoch = "e1") => ({ event: "notice", data: { offset }, topic, offset, epoch });
/** A `subscribed` frame the server sends on its own: no id. */
const byServer = (position, topic = USER) => ({ op: "subscribed", topic, position, recovered: false });
const welcome = (user) => ({
  op: "welcome",
  protocol: "budget-ws.v1",
  connection_id: "c1",
  heartbeat: { interval: 20, timeout: 20 },
  limits: {},
  ...(user != null && { user }), // absent for an anonymous connection
});

/** A client welcomed as alice, holding her user stream at offset 6; `handled` records notices. */
function alice(options) {
  const t = setup({ onResync: (topic, position) => resyncs.push([topic, position]), ...options });
  const resyncs = [];
  const handled = [];
  t.client.on("notice", (data) => handled.push(data.offset));
  t.client.connect();
  t.ws.receive(welcome("alice"), byServer(at(5)), event(6));
  return Object.assign(t, { handled, resyncs }); // keeps the `ws` getter: the latest socket
}

/** Lose the connection and let the server welcome the client (as `user`) again. */
function reconnect(t, user = "alice") {
  t.ws.serverClose(1006);
  t.clock.advance(t.seen("budget-ws:closed").at(-1).delay);
  t.ws.receive(welcome(user));
  return t.ws;
}

// The user stream ------------------------------------------------------------------------------

test("welcome.user is the client's user; null when the connection is anonymous", () => {
  const t = alice();
  assert.equal(t.client.user, "alice");
  reconnect(t, null);
  assert.equal(t.client.user, null);
  assert.equal(setup().client.user, null, "before any welcome");
});

test("user-stream events reach on(name) and onUser; their position is tracked and stored", () => {
  const saved = new Map();
  const storage = { getItem: (k) => saved.get(k) ?? null, setItem: (k, v) => saved.set(k, v) };
  const t = alice({ storage });
  const mine = [];
  const stop = t.client.onUser((data, frame) => mine.push([frame.topic, data.offset]));
  t.client.subscribe("budget:42");
  t.ws.receive({ op: "subscribed", topic: "budget:42", id: 1, position: at(0), recovered: false });
  t.ws.receive(event(7), event(1, "budget:42"), { event: "notice", data: { offset: "direct" } });
  assert.deepEqual(t.handled, [6, 7, 1, "direct"]);
  assert.deepEqual(mine, [[USER, 7]], "only the user stream");
  assert.deepEqual(t.client.positions.get(USER), at(7));
  assert.deepEqual(JSON.parse(saved.get("budget-ws:ws://test/ws"))[USER], at(7));
  stop();
  t.ws.receive(event(8));
  assert.equal(mine.length, 1);
});

// Resuming server-side subscriptions -----------------------------------------------------------

test("server-side resume: a subscribed past our position sends subscribe with it; live events wait", () => {
  const t = alice();
  const ws = reconnect(t);
  assert.deepEqual(ws.sentOps("subscribe"), [], "the server subscribes the user stream itself");
  ws.receive(byServer(at(9)), event(10)); // the server's own subscription, and a live event
  assert.deepEqual(ws.sentOps("subscribe"), [{ op: "subscribe", topic: USER, id: 1, position: at(6) }]);
  assert.deepEqual(t.handled, [6], "dropped until the answer: its replay includes it");
  assert.deepEqual(t.client.positions.get(USER), at(6));
  ws.receive({ op: "subscribed", topic: USER, id: 1, position: at(10), recovered: true });
  ws.receive(event(7), event(8), event(9), event(10)); // the replay
  ws.receive(event(11)); // live
  assert.deepEqual(t.handled, [6, 7, 8, 9, 10, 11]);
  assert.deepEqual(t.resyncs, []);
  assert.deepEqual(t.seen("budget-ws:subscribed"), [
    { topic: USER, position: at(5), recovered: false },
    { topic: USER, position: at(10), recovered: true },
  ]);
});

test("server-side resume answered recovered: false: the usual resync", () => {
  const t = alice();
  const ws = reconnect(t);
  ws.receive(byServer(at(9)));
  ws.receive({ op: "subscribed", topic: USER, id: 1, position: at(2000), recovered: false });
  assert.deepEqual(t.resyncs, [[USER, at(2000)]]);
  ws.receive(event(2001));
  assert.deepEqual(t.handled, [6, 2001]);
});

test("server-side subscribe at our position: nothing to do; in another epoch: resync", () => {
  const t = alice();
  let ws = reconnect(t);
  ws.receive(byServer(at(6)), event(7));
  assert.deepEqual(ws.sentOps("subscribe"), []);
  assert.deepEqual(t.handled, [6, 7]);
  ws = reconnect(t);
  ws.receive(byServer(at(3, "e2")), event(4, USER, "e2"));
  assert.deepEqual(ws.sentOps("subscribe"), []);
  assert.deepEqual(t.resyncs, [[USER, at(3, "e2")]]);
  assert.deepEqual(t.handled, [6, 7, 4]);
});

test("server-side resume from a stored position after a page reload", () => {
  const saved = new Map([["budget-ws:ws://test/ws", JSON.stringify({ [USER]: at(6) })]]);
  const storage = { getItem: (k) => saved.get(k) ?? null, setItem: (k, v) => saved.set(k, v) };
  const t = setup({ storage });
  t.client.connect();
  t.ws.receive(welcome("alice"), byServer(at(8)));
  assert.deepEqual(t.ws.sentOps("subscribe"), [{ op: "subscribe", topic: USER, id: 1, position: at(6) }]);
});

test("server-side resume during a connection: the server subscribed again past our position", () => {
  const t = alice();
  t.ws.receive(byServer(at(9)), event(10));
  assert.deepEqual(t.ws.sentOps("subscribe"), [{ op: "subscribe", topic: USER, id: 1, position: at(6) }]);
  t.ws.receive({ op: "subscribed", topic: USER, id: 1, position: at(10), recovered: true });
  t.ws.receive(event(7), event(8), event(9), event(10));
  assert.deepEqual(t.handled, [6, 7, 8, 9, 10]);
  assert.deepEqual(t.resyncs, []);
});

test("a server-side subscribe of a topic we subscribed ourselves waits for our own answer", () => {
  const t = setup({ onResync: () => assert.fail("no resync") });
  const ws = t.open();
  t.client.subscribe("budget:42");
  ws.receive({ op: "subscribed", topic: "budget:42", id: 1, position: at(3), recovered: false });
  ws.serverClose(1012);
  t.clock.advance(500);
  const again = t.open();
  again.receive(byServer(at(9), "budget:42")); // before the answer to our resubscribe
  assert.deepEqual(again.sentOps("subscribe"), [{ op: "subscribe", topic: "budget:42", id: 2, position: at(3) }]);
  again.receive({ op: "subscribed", topic: "budget:42", id: 2, position: at(9), recovered: true });
  assert.deepEqual(t.seen("budget-ws:recovered"), [{ topic: "budget:42", position: at(9) }]);
});

// Revocation -------------------------------------------------------------------------------------

test("unsubscribed revoked: forgotten, presence dropped, events, not resubscribed after reconnect", () => {
  const t = setup();
  const ws = t.open();
  t.client.subscribe("room:1", { presence: true });
  ws.receive({ op: "subscribed", topic: "room:1", id: 1, position: at(3), recovered: false });
  ws.receive({ op: "presence", topic: "room:1", count: 1, truncated: false, members: [{ user: "bob", connections: 1, info: {} }] });
  const got = [];
  t.client.on("notice", (data) => got.push(data.offset));
  ws.receive({ op: "unsubscribed", topic: "room:1", reason: "revoked" }, event(4, "room:1"));
  assert.deepEqual(got, [], "its events are dropped");
  assert.deepEqual(t.seen("budget-ws:unsubscribed"), [{ topic: "room:1", reason: "revoked" }]);
  assert.deepEqual(t.seen("budget-ws:revoked"), [{ topic: "room:1" }]);
  assert.deepEqual(t.seen("budget-ws:leave"), [], "the list is dropped, not emptied");
  assert.equal(t.client.presence("room:1"), undefined);
  assert.equal(t.client.positions.has("room:1"), false);
  ws.serverClose(1012);
  t.clock.advance(500);
  assert.deepEqual(t.open().sentOps("subscribe"), []);
});

test("a pending subscribe of a revoked topic rejects with code revoked", async () => {
  const t = setup();
  const ws = t.open();
  const pending = t.client.subscribe("room:1");
  ws.receive({ op: "unsubscribed", topic: "room:1", reason: "revoked" });
  await assert.rejects(pending, { code: "revoked" });
  ws.receive({ op: "subscribed", topic: "room:1", id: 1, position: at(0), recovered: false });
  assert.equal(t.client.positions.has("room:1"), false, "a late answer does not bring it back");
});

test("a server-side unsubscribe without a reason rejects a pending subscribe with unsubscribed", async () => {
  const t = setup();
  const ws = t.open();
  const pending = t.client.subscribe("room:1");
  ws.receive({ op: "unsubscribed", topic: "room:1" });
  await assert.rejects(pending, { code: "unsubscribed" });
  assert.deepEqual(t.seen("budget-ws:revoked"), []);
});

// Close code 4010 --------------------------------------------------------------------------------

test("close code 4010 (the app disconnected the user): final, no reconnect", () => {
  const t = alice();
  t.ws.serverClose(4010, "logged out");
  assert.deepEqual(t.seen("budget-ws:closed"), [{ code: 4010, reason: "logged out", reconnect: false, delay: undefined }]);
  t.clock.advance(10 * 60 * 1000);
  assert.equal(t.WS.instances.length, 1);
  assert.equal(t.client.state, "closed");
});
