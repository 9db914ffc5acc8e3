import assert from "node:assert/strict";
import { test } from "node:test";
import { setup } from "./helpers.mjs";

const ceiling = (attempt) => Math.min(20000, 500 * 2 ** attempt);

/** Fail `count` connection attempts in a row; returns the delay of each retry. */
function failRepeatedly(t, count) {
  const delays = [];
  t.client.on("budget-ws:closed", ({ delay }) => delays.push(delay));
  t.client.connect();
  for (let i = 0; i < count; i++) {
    t.ws.serverClose(1006);
    t.clock.advance(delays.at(-1));
  }
  return delays;
}

test("the delay is random() times the capped exponential, at every attempt", () => {
  for (const r of [0, 0.25, 0.999]) {
    const t = setup({ random: () => r });
    const delays = failRepeatedly(t, 12);
    delays.forEach((delay, attempt) => assert.equal(delay, r * ceiling(attempt), `attempt ${attempt}`));
  }
});

test("jitter survives the cap: no fixed delay at maxDelay", () => {
  const randoms = [0.9, 0.1, 0.5, 0.02, 0.7, 0.3, 0.95, 0.05, 0.6, 0.4, 0.8, 0.15];
  let i = 0;
  const t = setup({ random: () => randoms[i++] });
  const delays = failRepeatedly(t, randoms.length);
  // From attempt 6 on the ceiling is the cap (500 * 64 > 20000) and every delay differs.
  const atCap = delays.slice(6);
  assert.deepEqual(atCap, randoms.slice(6).map((r) => r * 20000));
  assert.equal(new Set(atCap).size, atCap.length);
  assert.ok(Math.min(...atCap) < 2000);
});

test("with Math.random, delays at the cap spread over the whole range", () => {
  const t = setup({ random: Math.random });
  const delays = failRepeatedly(t, 200).slice(10);
  for (const delay of delays) assert.ok(delay >= 0 && delay < 20000);
  assert.ok(Math.min(...delays) < 4000, "some retries come early");
  assert.ok(Math.max(...delays) > 16000, "some retries come late");
});

test("the next attempt starts when the delay has passed, not before", () => {
  const t = setup({ random: () => 0.5 });
  t.client.connect();
  t.ws.serverClose(1006);
  assert.equal(t.WS.instances.length, 1);
  t.clock.advance(249);
  assert.equal(t.WS.instances.length, 1);
  assert.equal(t.client.state, "closed");
  t.clock.advance(1);
  assert.equal(t.WS.instances.length, 2);
  assert.equal(t.client.state, "connecting");
  assert.deepEqual(t.seen("budget-ws:connecting"), [{ attempt: 0 }, { attempt: 1 }]);
});

test("the attempt counter resets only after a connection stayed open stableAfter ms", () => {
  const t = setup({ random: () => 1 - Number.EPSILON });
  const ceilings = [];
  t.client.on("budget-ws:closed", ({ delay }) => ceilings.push(Math.round(delay)));
  t.client.connect();
  t.ws.serverClose(1006); // attempt 0
  t.clock.advance(ceilings.at(-1));
  t.ws.serverClose(1006); // attempt 1
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.clock.advance(4999); // open, but not stable yet
  t.ws.serverClose(1012); // attempt 2
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.clock.advance(5000); // stable
  t.ws.serverClose(1012); // attempt 0 again
  t.clock.advance(ceilings.at(-1));
  t.ws.serverClose(1006); // attempt 1: a connection that never opened does not reset
  assert.deepEqual(ceilings, [500, 1000, 2000, 500, 1000]);
});

test("time before the welcome frame does not count as open, nor does a short open", () => {
  const t = setup({ random: () => 1 - Number.EPSILON, stableAfter: 1000 });
  const ceilings = [];
  t.client.on("budget-ws:closed", ({ delay }) => ceilings.push(Math.round(delay)));
  t.client.connect();
  t.ws.receive({ event: "hello", data: 1 }); // socket open, no welcome
  t.clock.advance(2000);
  t.ws.serverClose(1011);
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.ws.serverClose(1011);
  assert.deepEqual(ceilings, [500, 1000]);
});
