import assert from "node:assert/strict";
import { test } from "node:test";
import { fakePage, setup } from "./helpers.mjs";

// The defaults: 1 s, 2 s, then a fifth of the outage so far, at least 2 s, at most 20 s.
const ceiling = (attempt, outage) => Math.min(20000, 1000 * 2 ** attempt, Math.max(2000, outage / 5));

/** A small seeded PRNG (mulberry32): many clients, reproducible. */
function seeded(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

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

/** Fail every attempt until the outage has lasted `ms`; returns the delays drawn. */
function failFor(t, ms) {
  const delays = [];
  const off = t.client.on("budget-ws:closed", ({ delay }) => delays.push(delay));
  if (!t.WS.last) t.client.connect();
  while (t.clock.time < ms) {
    t.ws.serverClose(1006);
    t.clock.advance(delays.at(-1));
  }
  off();
  return delays;
}

/**
 * One open client, a server that restarts (1012) and refuses every attempt for `downFor`
 * ms. Returns how long after the server's return the client connected, and its attempts.
 */
function restart(random, downFor) {
  const t = setup({ random });
  t.open();
  t.ws.serverClose(1012);
  for (let attempts = 1; ; attempts++) {
    t.clock.advance(t.seen("budget-ws:closed").at(-1).delay);
    if (t.clock.time >= downFor) return { back: t.clock.time - downFor, attempts };
    t.ws.serverClose(1006);
  }
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

test("the delay is random() times min(maxDelay, minDelay * 2 ** attempt, the outage's fifth)", () => {
  for (const r of [0, 0.25, 0.999]) {
    const t = setup({ random: () => r });
    const delays = failRepeatedly(t, 60);
    let outage = 0; // the clock starts with the outage, at connect()
    delays.forEach((delay, attempt) => {
      assert.ok(Math.abs(delay - r * ceiling(attempt, outage)) < 1e-6, `attempt ${attempt}: ${delay}`);
      outage += delay;
    });
  }
});

test("jitter survives the cap: no fixed delay at maxDelay", () => {
  const randoms = [0.9, 0.1, 0.5, 0.02, 0.7, 0.3, 0.95, 0.05, 0.6, 0.4, 0.8, 0.15];
  let i = 0;
  const t = setup({ random: () => randoms[i] ?? 0.5 });
  failFor(t, 100000); // after 100 s of outage the range is the cap
  const delays = [];
  t.client.on("budget-ws:closed", ({ delay }) => delays.push(delay));
  for (i = 0; i < randoms.length; i++) {
    t.ws.serverClose(1006);
    t.clock.advance(delays.at(-1));
  }
  assert.deepEqual(delays, randoms.map((r) => r * 20000));
  assert.equal(new Set(delays).size, delays.length);
  assert.ok(Math.min(...delays) < 2000);
});

test("with Math.random, delays at the cap spread over the whole range", () => {
  const t = setup({ random: Math.random });
  failFor(t, 100000);
  const delays = failFor(t, 100000 + 200 * 10000).slice(0, 200);
  for (const delay of delays) assert.ok(delay >= 0 && delay < 20000);
  assert.ok(Math.min(...delays) < 4000, "some retries come early");
  assert.ok(Math.max(...delays) > 16000, "some retries come late");
});

test("the next attempt starts when the delay has passed, not before", () => {
  const t = setup({ random: () => 0.5 });
  t.client.connect();
  t.ws.serverClose(1006);
  assert.equal(t.WS.instances.length, 1);
  t.clock.advance(499);
  assert.equal(t.WS.instances.length, 1);
  assert.equal(t.client.state, "closed");
  t.clock.advance(1);
  assert.equal(t.WS.instances.length, 2);
  assert.equal(t.client.state, "connecting");
  assert.deepEqual(t.seen("budget-ws:connecting"), [{ attempt: 0 }, { attempt: 1 }]);
});

test("a 10 s restart: 1000 clients are back within 2 s of the server, spread, not in lockstep", () => {
  const random = seeded(42);
  const runs = Array.from({ length: 1000 }, () => restart(random, 10000));
  const back = runs.map((run) => run.back);
  // The attempt that finds the server was drawn before its return, from at most 10 s / 5.
  assert.ok(Math.max(...back) < 2000, `max ${Math.max(...back)} ms`);
  assert.ok(median(back) < 700, `median ${median(back)} ms`);
  // Full jitter: arrivals fill the range; no 100 ms slot takes more than a few percent.
  const slots = new Map();
  for (const ms of back) slots.set(Math.floor(ms / 100), (slots.get(Math.floor(ms / 100)) || 0) + 1);
  assert.ok(slots.size >= 15, `${slots.size} slots`);
  assert.ok(Math.max(...slots.values()) < 150, `${Math.max(...slots.values())} in one slot`);
  // The down server sees a bounded number of attempts: about 10 per client in 10 s.
  const attempts = runs.reduce((sum, run) => sum + run.attempts, 0) / runs.length;
  assert.ok(attempts < 13, `${attempts} attempts per client`);
});

test("a long outage thins the attempts out to the cap", () => {
  const random = seeded(7);
  const runs = Array.from({ length: 200 }, () => restart(random, 10 * 60 * 1000));
  const attempts = runs.reduce((sum, run) => sum + run.attempts, 0) / runs.length;
  // One per second for 10 s, fewer and fewer up to 100 s, then one per 10 s on average.
  assert.ok(attempts > 60 && attempts < 100, `${attempts} attempts per client in 10 min`);
  assert.ok(Math.max(...runs.map((run) => run.back)) < 20000);
});

test("a 1012 starts a new outage even after a short connection; other short ones do not", () => {
  const t = setup({ random: () => 1 - Number.EPSILON });
  const ceilings = [];
  t.client.on("budget-ws:closed", ({ delay }) => ceilings.push(delay));
  failFor(t, 30000);
  ceilings.length = 0;
  const expected = [];
  expected.push(Math.round(t.clock.time / 5));
  t.ws.serverClose(1006); // 30 s of outage (and a little more): 0-6 s
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.clock.advance(4999); // open, but not stable yet
  expected.push(Math.round(t.clock.time / 5));
  t.ws.serverClose(1011); // the outage goes on: 0-8.2 s
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.clock.advance(100);
  t.ws.serverClose(1012); // the server restarts: a new outage, whatever the connection lasted
  t.clock.advance(ceilings.at(-1));
  t.ws.serverClose(1006);
  assert.ok(expected[1] > 8000, "the outage went on through the short connection");
  assert.deepEqual(ceilings.map(Math.round), [...expected, 1000, 2000]);
});

test("a connection that stayed open stableAfter ms starts a new outage; one that never opened does not", () => {
  const t = setup({ random: () => 1 - Number.EPSILON, stableAfter: 1000 });
  const ceilings = [];
  t.client.on("budget-ws:closed", ({ delay }) => ceilings.push(delay));
  failFor(t, 20000);
  ceilings.length = 0;
  const expected = [Math.round(t.clock.time / 5)];
  t.ws.serverClose(1006); // 20 s of outage
  t.clock.advance(ceilings.at(-1));
  t.ws.receive({ event: "hello", data: 1 }); // socket open, no welcome: not open
  t.clock.advance(2000);
  expected.push(Math.round(t.clock.time / 5));
  t.ws.serverClose(1011); // 26 s
  t.clock.advance(ceilings.at(-1));
  t.open();
  t.clock.advance(1000); // stable
  t.ws.serverClose(1006);
  assert.ok(expected[1] > 5000);
  assert.deepEqual(ceilings.map(Math.round), [...expected, 1000]);
});

test("connect() after close() and pageshow after pagehide start a new outage", () => {
  const page = fakePage();
  const t = setup({ random: () => 1 - Number.EPSILON, window: page.window, document: page.document });
  const ceilings = [];
  t.client.on("budget-ws:closed", ({ delay }) => ceilings.push(delay));
  failFor(t, 50000);
  t.client.close();
  t.client.connect();
  assert.equal(Math.round(failFor(t, 100000)[0]), 1000, "after close() and connect()");
  page.fire(page.window, "pagehide", { persisted: true });
  t.clock.advance(60000);
  page.fire(page.window, "pageshow", { persisted: true });
  t.ws.serverClose(1006);
  assert.equal(Math.round(ceilings.at(-1)), 1000, "after pagehide and pageshow");
  assert.deepEqual(t.seen("budget-ws:connecting").at(-1), { attempt: 0 });
});
