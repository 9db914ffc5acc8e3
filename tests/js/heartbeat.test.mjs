import assert from "node:assert/strict";
import { test } from "node:test";
import { fakePage, setup } from "./helpers.mjs";

// The server pings every max(interval, timeout) = 2 s; with a slack of 500 ms the client
// tolerates 2500 ms of silence.
const HEARTBEAT = { interval: 1, timeout: 2 };

test("a server ping is answered with a pong", () => {
  const t = setup();
  const ws = t.open();
  ws.receive({ op: "ping" });
  assert.deepEqual(ws.sent, [{ op: "pong" }]);
});

test("silence past the ping period + slack closes the socket and reconnects", () => {
  const t = setup({ heartbeatSlack: 500 });
  const ws = t.open(HEARTBEAT);
  t.clock.advance(2499);
  assert.equal(ws.closedWith, null);
  assert.equal(t.client.state, "open");
  t.clock.advance(1);
  assert.deepEqual(ws.closedWith, { code: 4001, reason: "heartbeat timeout" });
  assert.deepEqual(t.seen("budget-ws:closed"), [{ code: 4001, reason: "heartbeat timeout", reconnect: true, delay: 500 }]);
  t.clock.advance(500);
  assert.equal(t.WS.instances.length, 2);
});

test("every message from the server restarts the silence window", () => {
  const t = setup({ heartbeatSlack: 500 });
  const ws = t.open(HEARTBEAT);
  for (let i = 0; i < 10; i++) {
    t.clock.advance(2400);
    ws.receive({ op: "ping" });
  }
  t.clock.advance(2400);
  ws.receive({ event: "x", data: null });
  t.clock.advance(2499);
  assert.equal(ws.closedWith, null);
  assert.equal(t.client.state, "open");
  t.clock.advance(1);
  assert.equal(ws.closedWith.code, 4001);
});

test("a silently dead link is noticed 25 s after the last frame with the defaults", () => {
  const t = setup(); // heartbeatSlack 5000
  const ws = t.open({ interval: 20, timeout: 20 }); // the server's defaults: a ping every 20 s
  t.clock.advance(20000);
  ws.receive({ op: "ping" });
  t.clock.advance(24999);
  assert.equal(ws.closedWith, null);
  t.clock.advance(1);
  assert.deepEqual(ws.closedWith, { code: 4001, reason: "heartbeat timeout" });
});

test("the ping period is the longer of interval and timeout", () => {
  for (const [heartbeat, period] of [[{ interval: 3, timeout: 1 }, 3000], [{ interval: 1, timeout: 3 }, 3000]]) {
    const t = setup({ heartbeatSlack: 500 });
    const ws = t.open(heartbeat);
    t.clock.advance(period + 499);
    assert.equal(ws.closedWith, null);
    t.clock.advance(1);
    assert.equal(ws.closedWith.code, 4001);
  }
});

test("before the welcome, the server's default heartbeat (a ping every 20 s) applies", () => {
  const t = setup({ heartbeatSlack: 5000 });
  t.client.connect();
  t.clock.advance(24999);
  assert.equal(t.WS.last.closedWith, null);
  t.clock.advance(1);
  assert.equal(t.WS.last.closedWith.code, 4001, "a handshake that hangs is given up");
});

test("wall clock: back in a visible tab whose timers were throttled, the check runs at once", () => {
  const page = fakePage();
  const t = setup({ heartbeatSlack: 500, window: page.window, document: page.document });
  const ws = t.open(HEARTBEAT);
  page.document.visibilityState = "hidden";
  t.clock.jump(60000); // no timer fired meanwhile
  page.fire(page.document, "visibilitychange");
  assert.equal(ws.closedWith, null, "nothing happens while hidden");
  page.document.visibilityState = "visible";
  page.fire(page.document, "visibilitychange");
  assert.equal(ws.closedWith.code, 4001);
  assert.equal(t.seen("budget-ws:closed")[0].reconnect, true);
});

test("wall clock: visible again with a live server keeps the connection", () => {
  const page = fakePage();
  const t = setup({ heartbeatSlack: 500, window: page.window, document: page.document });
  const ws = t.open(HEARTBEAT);
  t.clock.jump(2400);
  page.fire(page.document, "visibilitychange");
  assert.equal(ws.closedWith, null);
  assert.equal(t.client.state, "open");
});

test("wall clock: a late timer judges by the clock, not by its own schedule", () => {
  const t = setup({ heartbeatSlack: 500 });
  const ws = t.open(HEARTBEAT);
  t.clock.advance(2000);
  ws.receive({ op: "ping" }); // the watchdog's timer still fires at 2500 ms
  t.clock.advance(500);
  assert.equal(ws.closedWith, null, "the timer fired early by the clock and re-armed");
  t.clock.advance(1999);
  assert.equal(ws.closedWith, null);
  t.clock.advance(1);
  assert.equal(ws.closedWith.code, 4001);
});

test("wall clock: an overdue reconnect runs as soon as the tab is visible", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  t.open();
  t.ws.serverClose(1006); // retry due in 500 ms
  t.clock.jump(100);
  page.fire(page.document, "visibilitychange");
  assert.equal(t.WS.instances.length, 1, "not due yet");
  t.clock.jump(1000); // throttled: the retry timer did not fire
  page.fire(page.document, "visibilitychange");
  assert.equal(t.WS.instances.length, 2);
});

test("the welcome's heartbeat replaces the default", () => {
  const t = setup({ heartbeatSlack: 0 });
  const ws = t.open({ interval: 60, timeout: 30 });
  t.clock.advance(59999);
  assert.equal(ws.closedWith, null);
  t.clock.advance(1);
  assert.equal(ws.closedWith.code, 4001);
});

test("a welcome without a usable heartbeat keeps the default", () => {
  for (const heartbeat of [undefined, null, { interval: 5 }]) {
    const t = setup({ heartbeatSlack: 0 });
    t.client.connect();
    t.ws.receive({ op: "welcome", heartbeat });
    t.clock.advance(19999);
    assert.equal(t.ws.closedWith, null);
    t.clock.advance(1);
    assert.equal(t.ws.closedWith.code, 4001);
  }
});

test("online while open: a ping that gets no answer within the slack reconnects at once", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document }); // heartbeatSlack 5000
  const ws = t.open({ interval: 20, timeout: 20 });
  t.clock.advance(1000);
  page.fire(page.window, "online"); // the network came back; was the link lost meanwhile?
  assert.deepEqual(ws.sentOps("ping"), [{ op: "ping" }]);
  t.clock.advance(4999);
  assert.equal(ws.closedWith, null);
  t.clock.advance(1);
  assert.deepEqual(ws.closedWith, { code: 4001, reason: "heartbeat timeout" });
  assert.equal(t.seen("budget-ws:closed")[0].reconnect, true);
});

test("online while open: an answered ping keeps the connection and the usual window", () => {
  const page = fakePage();
  const t = setup({ window: page.window, document: page.document });
  const ws = t.open({ interval: 20, timeout: 20 });
  page.fire(page.window, "online");
  t.clock.advance(100);
  ws.receive({ op: "pong" });
  t.clock.advance(24999);
  assert.equal(ws.closedWith, null);
  assert.equal(t.client.state, "open");
  t.clock.advance(1);
  assert.equal(ws.closedWith.code, 4001);
});
