import assert from "node:assert/strict";
import { test } from "node:test";
import { htmxTrigger } from "../../src/budget_ws/static/budget-ws.js";
import { setup } from "./helpers.mjs";

const fakeHtmx = () => {
  const calls = [];
  return { calls, trigger: (target, name, detail) => calls.push([target, name, detail]) };
};

test("each mapped event triggers htmx on its target with the event's data", () => {
  const htmx = fakeHtmx();
  const t = setup();
  const element = { id: "total" };
  htmxTrigger(t.client, { budget_fact_created: "#facts", budget_total_changed: element }, { htmx });
  const ws = t.open();
  ws.receive(
    { event: "budget_fact_created", data: { id: 7 } },
    { event: "budget_total_changed", data: { total: "1.00" } },
    { event: "unmapped", data: 0 },
  );
  assert.deepEqual(htmx.calls, [
    ["#facts", "budget_fact_created", { id: 7 }],
    [element, "budget_total_changed", { total: "1.00" }],
  ]);
});

test("a resync triggers budget-ws:resync once on every mapped target", () => {
  const htmx = fakeHtmx();
  const t = setup();
  htmxTrigger(t.client, { a: "#facts", b: "#facts", c: "#total" }, { htmx });
  const ws = t.open();
  ws.receive({ op: "resync", topic: "budget:42", position: { offset: 9, epoch: "e" } });
  const detail = { topic: "budget:42", position: { offset: 9, epoch: "e" } };
  assert.deepEqual(htmx.calls, [
    ["#facts", "budget-ws:resync", detail],
    ["#total", "budget-ws:resync", detail],
  ]);
});

test("the resync event is configurable, or off", () => {
  const htmx = fakeHtmx();
  const t = setup();
  htmxTrigger(t.client, { a: "#a" }, { htmx, resyncEvent: "reload" });
  htmxTrigger(t.client, { b: "#b" }, { htmx, resyncEvent: null });
  const ws = t.open();
  ws.receive({ op: "resync", topic: "x", position: { offset: 1, epoch: "e" } });
  assert.deepEqual(htmx.calls.map(([target, name]) => [target, name]), [["#a", "reload"]]);
});

test("htmx is taken from globalThis when not given, at trigger time", () => {
  const t = setup();
  htmxTrigger(t.client, { a: "#a" });
  const ws = t.open();
  globalThis.htmx = fakeHtmx();
  try {
    ws.receive({ event: "a", data: 1 });
    assert.deepEqual(globalThis.htmx.calls, [["#a", "a", 1]]);
  } finally {
    delete globalThis.htmx;
  }
});

test("the returned function stops the triggering", () => {
  const htmx = fakeHtmx();
  const t = setup();
  const stop = htmxTrigger(t.client, { a: "#a" }, { htmx });
  const ws = t.open();
  stop();
  ws.receive({ event: "a", data: 1 }, { op: "resync", topic: "x", position: { offset: 1, epoch: "e" } });
  assert.deepEqual(htmx.calls, []);
});

test("an array of event names with one target", () => {
  const htmx = fakeHtmx();
  const t = setup();
  const stop = htmxTrigger(t.client, ["budget_fact_created", "budget_fact_updated"], "#ledger", { htmx });
  const ws = t.open();
  ws.receive(
    { event: "budget_fact_created", data: { id: 7 } },
    { event: "budget_fact_updated", data: { id: 8 } },
    { event: "unmapped", data: 0 },
    { op: "resync", topic: "budget:42", position: { offset: 9, epoch: "e" } },
  );
  assert.deepEqual(htmx.calls, [
    ["#ledger", "budget_fact_created", { id: 7 }],
    ["#ledger", "budget_fact_updated", { id: 8 }],
    ["#ledger", "budget-ws:resync", { topic: "budget:42", position: { offset: 9, epoch: "e" } }],
  ]);
  stop();
  ws.receive({ event: "budget_fact_created", data: { id: 9 } });
  assert.equal(htmx.calls.length, 3);
});

test("an array of event names takes its options after the target", () => {
  const htmx = fakeHtmx();
  const t = setup();
  htmxTrigger(t.client, ["a"], "#a", { htmx, resyncEvent: "reload" });
  htmxTrigger(t.client, ["b"], "#b", { htmx, resyncEvent: null });
  const ws = t.open();
  ws.receive({ event: "b", data: 1 }, { op: "resync", topic: "x", position: { offset: 1, epoch: "e" } });
  assert.deepEqual(htmx.calls.map(([target, name]) => [target, name]), [["#b", "b"], ["#a", "reload"]]);
});

test("an array of event names without options uses globalThis.htmx", () => {
  const t = setup();
  htmxTrigger(t.client, ["a", "b"], "body");
  const ws = t.open();
  globalThis.htmx = fakeHtmx();
  try {
    ws.receive({ event: "b", data: 2 });
    assert.deepEqual(globalThis.htmx.calls, [["body", "b", 2]]);
  } finally {
    delete globalThis.htmx;
  }
});
