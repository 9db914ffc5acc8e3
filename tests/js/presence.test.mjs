import assert from "node:assert/strict";
import { test } from "node:test";
import { setup } from "./helpers.mjs";

const TOPIC = "room:1";
const at = (offset, epoch = "e1") => ({ offset, epoch });
const member = (user, connections = 1, info = {}) => ({ user, connections, info });
const snapshot = (members, count = members.length, truncated = false, topic = TOPIC) => ({
  op: "presence",
  topic,
  count,
  truncated,
  members,
});
const diff = (joins, leaves, count, topic = TOPIC) => ({ op: "presence_diff", topic, count, joins, leaves });
const subscribed = (id, position, recovered = false, topic = TOPIC) => ({ op: "subscribed", topic, id, position, recovered });

/** A client subscribed to TOPIC with presence, answered; `changes` records presence events. */
function present() {
  const t = setup({ onResync: () => {} });
  const ws = t.open();
  const pending = t.client.subscribe(TOPIC, { presence: true });
  ws.receive(subscribed(1, at(0)));
  const changes = [];
  for (const name of ["join", "leave", "presence"]) {
    t.client.on(`budget-ws:${name}`, (data) => changes.push([name, data]));
  }
  return Object.assign(t, { pending, changes }); // keeps the `ws` getter: the latest socket
}

test("subscribe with presence: true asks for it; without, it does not", () => {
  const t = setup();
  const ws = t.open();
  t.client.subscribe(TOPIC, { presence: true });
  t.client.subscribe("budget:42");
  assert.deepEqual(ws.sentOps("subscribe"), [
    { op: "subscribe", topic: TOPIC, id: 1, presence: true },
    { op: "subscribe", topic: "budget:42", id: 2 },
  ]);
});

test("a snapshot sets the list: a join per member, then one presence event", () => {
  const t = present();
  assert.equal(t.client.presence(TOPIC), undefined, "before the first snapshot");
  const alice = member("alice", 2, { name: "Alice" });
  t.ws.receive(snapshot([alice, member("bob")]));
  const list = { members: [alice, member("bob")], count: 2, truncated: false };
  assert.deepEqual(t.client.presence(TOPIC), list);
  assert.deepEqual(t.changes, [
    ["join", { topic: TOPIC, member: alice }],
    ["join", { topic: TOPIC, member: member("bob") }],
    ["presence", { topic: TOPIC, ...list }],
  ]);
});

test("a user in two tabs is present once, with connections 2", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice")]));
  t.changes.length = 0;
  t.ws.receive(diff([member("alice", 2)], [], 1)); // a second tab
  assert.deepEqual(t.client.presence(TOPIC), { members: [member("alice", 2)], count: 1, truncated: false });
  assert.deepEqual(t.changes, [
    ["join", { topic: TOPIC, member: member("alice", 2) }],
    ["presence", { topic: TOPIC, members: [member("alice", 2)], count: 1, truncated: false }],
  ]);
  t.ws.receive(diff([member("alice", 2)], [], 1)); // known, unchanged
  assert.equal(t.changes.length, 2, "nothing changed: no event");
});

test("a diff upserts joins and deletes leaves; unknown leaves are ignored", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice"), member("bob"), member("carol")]));
  t.changes.length = 0;
  t.ws.receive(diff([member("dave"), member("bob", 1, { status: "away" })], ["carol", "zed"], 3));
  const members = [member("alice"), member("bob", 1, { status: "away" }), member("dave")];
  assert.deepEqual(t.client.presence(TOPIC), { members, count: 3, truncated: false });
  assert.deepEqual(t.changes, [
    ["join", { topic: TOPIC, member: member("dave") }],
    ["join", { topic: TOPIC, member: member("bob", 1, { status: "away" }) }],
    ["leave", { topic: TOPIC, user: "carol" }],
    ["presence", { topic: TOPIC, members, count: 3, truncated: false }],
  ]);
});

test("a truncated snapshot: count beyond the members listed; diffs keep the flag", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice")], 250, true));
  assert.deepEqual(t.client.presence(TOPIC), { members: [member("alice")], count: 250, truncated: true });
  t.ws.receive(diff([], ["someone-unlisted"], 249));
  assert.deepEqual(t.client.presence(TOPIC), { members: [member("alice")], count: 249, truncated: true });
  assert.deepEqual(t.changes.at(-1), ["presence", { topic: TOPIC, members: [member("alice")], count: 249, truncated: true }]);
});

test("presence is re-asked after a reconnect; the new snapshot yields leaves for users gone", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice"), member("bob"), member("carol")]));
  t.changes.length = 0;
  t.ws.serverClose(1006);
  assert.equal(t.client.presence(TOPIC).count, 3, "the last list is kept while away");
  t.clock.advance(500);
  const ws = t.open();
  assert.deepEqual(ws.sentOps("subscribe"), [{ op: "subscribe", topic: TOPIC, id: 2, position: at(0), presence: true }]);
  ws.receive(subscribed(2, at(0), true));
  ws.receive(snapshot([member("alice"), member("carol", 2), member("dave")]));
  const members = [member("alice"), member("carol", 2), member("dave")];
  assert.deepEqual(t.client.presence(TOPIC), { members, count: 3, truncated: false });
  assert.deepEqual(t.changes, [
    ["join", { topic: TOPIC, member: member("carol", 2) }],
    ["join", { topic: TOPIC, member: member("dave") }],
    ["leave", { topic: TOPIC, user: "bob" }],
    ["presence", { topic: TOPIC, members, count: 3, truncated: false }],
  ]);
});

test("a snapshot equal to the list emits nothing", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice")]));
  t.changes.length = 0;
  t.ws.receive(snapshot([member("alice")]));
  assert.deepEqual(t.changes, []);
});

test("presence frames of a topic not asked, not held, or a diff before the snapshot are ignored", () => {
  const t = present();
  t.ws.receive(diff([member("alice")], [], 1)); // no snapshot yet
  assert.equal(t.client.presence(TOPIC), undefined);
  t.client.subscribe("budget:42");
  t.ws.receive(subscribed(2, at(0), false, "budget:42"), snapshot([member("bob")], 1, false, "budget:42"));
  assert.equal(t.client.presence("budget:42"), undefined, "not asked");
  t.ws.receive(snapshot([member("carol")], 1, false, "room:9"));
  assert.equal(t.client.presence("room:9"), undefined, "not subscribed");
  assert.deepEqual(t.changes, []);
});

test("unsubscribe drops the list; a later subscribe without presence does not ask", () => {
  const t = present();
  t.ws.receive(snapshot([member("alice")]));
  t.changes.length = 0;
  t.client.unsubscribe(TOPIC);
  assert.equal(t.client.presence(TOPIC), undefined);
  t.ws.receive(diff([member("bob")], [], 2), { op: "unsubscribed", topic: TOPIC, id: 2 });
  assert.deepEqual(t.changes, [], "no leave events for an unsubscribe");
  t.client.subscribe(TOPIC);
  assert.deepEqual(t.ws.sentOps("subscribe").at(-1), { op: "subscribe", topic: TOPIC, id: 3 });
});

test("presence asked for a topic already subscribed sends a new request", () => {
  const t = setup();
  const ws = t.open();
  t.client.subscribe(TOPIC);
  t.client.subscribe(TOPIC, { presence: true }); // before the first answer
  t.client.subscribe(TOPIC, { presence: true }); // already asked: nothing new
  ws.receive(subscribed(1, at(4)), subscribed(2, at(4)));
  assert.equal(t.seen("budget-ws:subscribed").length, 1, "the first answer is superseded");
  assert.deepEqual(ws.sentOps("subscribe"), [
    { op: "subscribe", topic: TOPIC, id: 1 },
    { op: "subscribe", topic: TOPIC, id: 2, presence: true },
  ]);
});

test("presence_unavailable rejects the subscribe; the topic and its presence are forgotten", async () => {
  const t = setup();
  const ws = t.open();
  const pending = t.client.subscribe(TOPIC, { presence: true });
  ws.receive({ op: "error", code: "presence_unavailable", message: "no presence", id: 1, topic: TOPIC });
  await assert.rejects(pending, { code: "presence_unavailable" });
  ws.receive(snapshot([member("alice")]));
  assert.equal(t.client.presence(TOPIC), undefined);
  ws.serverClose(1012);
  t.clock.advance(500);
  assert.deepEqual(t.open().sentOps("subscribe"), []);
});
