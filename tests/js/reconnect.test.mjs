import assert from "node:assert/strict";
import { test } from "node:test";
import { fakePage, flush, setup } from "./helpers.mjs";

const RECONNECT = [1006, 1001, 1005, 1009, 1011, 1012, 1013, 4000, 4001, 4029];
const FINAL = [1000, 1002, 1008, 4003, 4010];

for (const code of RECONNECT) {
  test(`close code ${code}: reconnects with backoff and resumes`, () => {
    const t = setup();
    t.open();
    t.client.subscribe("budget:42");
    t.ws.receive({ op: "subscribed", topic: "budget:42", id: 1, position: { offset: 3, epoch: "e" }, recovered: false });
    t.ws.serverClose(code, "bye");
    assert.deepEqual(t.seen("budget-ws:closed"), [{ code, reason: "bye", reconnect: true, delay: 500 }]);
    assert.equal(t.client.state, "closed");
    t.clock.advance(500);
    assert.equal(t.WS.instances.length, 2);
    t.open();
    assert.deepEqual(t.ws.sentOps("subscribe"), [
      { op: "subscribe", topic: "budget:42", id: 2, position: { offset: 3, epoch: "e" } },
    ]);
  });
}

for (const code of FINAL) {
  test(`close code ${code}: final, no reconnect`, async () => {
    const t = setup();
    t.open();
    const pending = t.client.subscribe("budget:42");
    t.ws.serverClose(code, "no");
    assert.deepEqual(t.seen("budget-ws:closed"), [{ code, reason: "no", reconnect: false, delay: undefined }]);
    t.clock.advance(10 * 60 * 1000);
    assert.equal(t.WS.instances.length, 1);
    assert.equal(t.client.state, "closed");
    await assert.rejects(pending, { code: "closed" });
  });
}

test("close(): closes the socket, never reconnects, rejects unanswered subscribes", async () => {
  const t = setup();
  const ws = t.open();
  const pending = t.client.subscribe("budget:42");
  t.client.close(4321, "done");
  assert.deepEqual(ws.closedWith, { code: 4321, reason: "done" });
  assert.equal(ws.onclose, null, "does not wait for the server's close");
  assert.equal(t.client.state, "closed");
  assert.deepEqual(t.seen("budget-ws:closed"), [{ code: 4321, reason: "done", reconnect: false, delay: undefined }]);
  t.clock.advance(10 * 60 * 1000);
  assert.equal(t.WS.instances.length, 1);
  await assert.rejects(pending, { code: "closed" });
  assert.equal(t.client.send("x", 1), false);
});

test("close() with a code the browser refuses still closes the socket", () => {
  const t = setup();
  const ws = t.open();
  t.client.close(1001);
  assert.deepEqual(ws.closedWith, { code: undefined, reason: undefined });
});

test("close() while waiting to reconnect cancels the retry", () => {
  const t = setup();
  t.open();
  t.ws.serverClose(1012);
  t.client.close();
  assert.equal(t.seen("budget-ws:closed").length, 1);
  t.clock.advance(60000);
  assert.equal(t.WS.instances.length, 1);
  assert.equal(t.clock.timers.size, 0);
});

test("close() while connecting closes the pending socket", () => {
  const t = setup();
  t.client.connect();
  t.client.close();
  assert.equal(t.WS.last.closedWith.code, 1000);
  t.clock.advance(60000);
  assert.equal(t.WS.instances.length, 1);
});

test("connect() after close() starts over and resubscribes", async () => {
  const t = setup();
  t.open();
  const first = t.client.subscribe("a");
  t.client.close();
  await assert.rejects(first, { code: "closed" });
  t.client.connect();
  assert.equal(t.WS.instances.length, 2);
  assert.deepEqual(t.seen("budget-ws:connecting").at(-1), { attempt: 0 });
  t.open();
  assert.deepEqual(t.ws.sentOps("subscribe").map((f) => f.topic), ["a"]);
});

test("connect() is idempotent while connected", () => {
  const t = setup();
  t.open();
  t.client.connect();
  assert.equal(t.WS.instances.length, 1);
});

test("connect(url, options) returns a client that connects in a microtask", async () => {
  const { connect } = await import("../../src/budget_ws/static/budget-ws.js");
  const { fakeWebSocketClass } = await import("./helpers.mjs");
  const WS = fakeWebSocketClass();
  const client = connect("wss://example.test/ws", { WebSocket: WS, window: null });
  assert.equal(client.state, "closed", "not yet");
  assert.equal(WS.instances.length, 0);
  const seen = [];
  client.on("budget-ws:connecting", (data) => seen.push([data, client.state]));
  await null;
  assert.deepEqual(seen, [[{ attempt: 0 }, "connecting"]], "a handler added after connect() sees it");
  assert.equal(WS.instances.length, 1);
  assert.equal(WS.last.url, "wss://example.test/ws");
  assert.deepEqual(WS.last.protocols, ["budget-ws.v1"]);
  client.close();
});

test("connect(url): close() before the microtask cancels the connection; connect() takes over", async () => {
  const { connect } = await import("../../src/budget_ws/static/budget-ws.js");
  const { fakeWebSocketClass } = await import("./helpers.mjs");
  const WS = fakeWebSocketClass();
  const closed = connect("ws://x/ws", { WebSocket: WS, window: null });
  closed.close();
  const started = connect("ws://x/ws", { WebSocket: WS, window: null }).connect();
  assert.equal(started.state, "connecting", "connect() itself is synchronous");
  assert.equal(WS.instances.length, 1);
  await flush();
  assert.equal(closed.state, "closed");
  assert.equal(WS.instances.length, 1, "neither the closed client nor a second socket");
  started.close();
});

test("connect(url): relative URLs follow the page's scheme", async () => {
  const { connect } = await import("../../src/budget_ws/static/budget-ws.js");
  const { fakeWebSocketClass } = await import("./helpers.mjs");
  const WS = fakeWebSocketClass();
  globalThis.location = { href: "https://app.test/budgets/42" };
  try {
    connect("/ws?x=1", { WebSocket: WS, window: null }).connect().close();
    assert.equal(WS.last.url, "wss://app.test/ws?x=1");
    globalThis.location = { href: "http://localhost:8000/" };
    connect("ws", { WebSocket: WS, window: null }).connect().close();
    assert.equal(WS.last.url, "ws://localhost:8000/ws");
  } finally {
    delete globalThis.location;
  }
});

test("page lifecycle: online reconnects now, offline does nothing", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document, random: () => 0.9 });
  t.open();
  t.ws.serverClose(1006);
  page.fire(page.window, "offline");
  assert.equal(t.WS.instances.length, 1);
  page.fire(page.window, "online");
  assert.equal(t.WS.instances.length, 2, "reconnected without waiting for the backoff");
  t.clock.advance(1000); // the retry was due after 450 ms
  assert.equal(t.WS.instances.length, 2, "the cancelled retry does not fire");
});

test("page lifecycle: online while open sends a ping", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  const ws = t.open();
  page.fire(page.window, "online");
  assert.deepEqual(ws.sentOps("ping"), [{ op: "ping" }]);
});

test("page lifecycle: pagehide closes without reconnect; pageshow (persisted) reconnects and resumes", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  const ws = t.open();
  t.client.subscribe("budget:42");
  ws.receive({ op: "subscribed", topic: "budget:42", id: 1, position: { offset: 5, epoch: "e" }, recovered: false });
  page.fire(page.window, "pagehide", { persisted: true });
  assert.equal(ws.closedWith.code, 1000);
  assert.equal(t.client.state, "closed");
  t.clock.advance(60000);
  assert.equal(t.WS.instances.length, 1);
  page.fire(page.window, "pageshow", { persisted: false });
  assert.equal(t.WS.instances.length, 1, "a normal load is not a restore");
  page.fire(page.window, "pageshow", { persisted: true });
  assert.equal(t.WS.instances.length, 2);
  t.open();
  assert.deepEqual(t.ws.sentOps("subscribe")[0].position, { offset: 5, epoch: "e" });
});

test("page lifecycle: pagehide while waiting to reconnect cancels the retry", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  t.open();
  t.ws.serverClose(1012);
  page.fire(page.window, "pagehide", { persisted: true });
  t.clock.advance(60000);
  assert.equal(t.WS.instances.length, 1);
});

test("after close() the page's events are ignored", async () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  t.open();
  t.client.close();
  page.fire(page.window, "online");
  page.fire(page.window, "pageshow", { persisted: true });
  page.fire(page.document, "visibilitychange");
  await flush();
  assert.equal(t.WS.instances.length, 1);
});

test("page lifecycle: pagehide keeps unanswered subscribes pending; pageshow answers them", async () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  const ws = t.open();
  const settled = [];
  const pending = t.client.subscribe("budget:42");
  pending.then(
    (frame) => settled.push(["resolved", frame.topic]),
    (error) => settled.push(["rejected", error.code]),
  );
  const queued = t.client.subscribe("budget:43"); // before the page is hidden, not yet answered
  page.fire(page.window, "pagehide", { persisted: true });
  await flush();
  assert.deepEqual(settled, [], "the page may come back from the back/forward cache");
  assert.equal(ws.closedWith.code, 1000);
  page.fire(page.window, "pageshow", { persisted: true });
  const again = t.open();
  assert.deepEqual(again.sentOps("subscribe").map((f) => f.topic), ["budget:42", "budget:43"]);
  for (const [id, topic] of [[3, "budget:42"], [4, "budget:43"]]) {
    again.receive({ op: "subscribed", topic, id, position: { offset: 0, epoch: "e" }, recovered: false });
  }
  assert.equal((await pending).topic, "budget:42");
  assert.equal((await queued).topic, "budget:43");
});

test("page lifecycle: close() after pagehide rejects the pending subscribes", async () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  t.open();
  const pending = t.client.subscribe("budget:42");
  page.fire(page.window, "pagehide", { persisted: true });
  t.client.close();
  await assert.rejects(pending, { code: "closed" });
});
