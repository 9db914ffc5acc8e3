// Compile-time checks of budget-ws.d.ts; not run by `node --test`. Check with:
//   npx -p typescript@5 tsc --noEmit --strict --target es2022 --module esnext \
//     --moduleResolution bundler --lib es2022,dom tests/js/typecheck.ts
import {
  BudgetWS,
  connect,
  htmxTrigger,
  type Member,
  type Position,
  type Presence,
  type SubscribeError,
} from "../../src/budget_ws/static/budget-ws.js";

type Events = {
  budget_fact_created: { id: number; amount: string };
  budget_total_changed: { total: string };
};

const ws = connect<Events>("/ws", { storage: sessionStorage, onResync: (topic: string, p: Position) => {} });

ws.on("budget_fact_created", (data, frame) => {
  const amount: string = data.amount;
  const name: "budget_fact_created" = frame.event;
  const offset: number | undefined = frame.offset;
  const traceparent: string | undefined = frame.traceparent;
});
ws.on<"budget_fact_created">("budget_fact_created", (data) => data.id.toFixed());
// @ts-expect-error: not an event of the map
ws.on("budget_fact_deleted", () => {});
// @ts-expect-error: wrong data type
ws.on("budget_total_changed", (data: { total: number }) => {});

ws.on("budget-ws:closed", ({ code, reconnect, delay }) => [code.toFixed(), reconnect, delay]);
ws.on("budget-ws:resync-needed", ({ topic, position }) => [topic.length, position.epoch]);
ws.on("budget-ws:open", (welcome) => welcome.heartbeat.interval);
ws.on("budget-ws:error", (error) => error.code);
ws.on("*", (data, frame) => frame.event);
const off: () => void = ws.once("budget_total_changed", (data) => data.total);
off();

const state: "connecting" | "open" | "closed" = ws.state;
const last: Position | undefined = ws.positions.get("budget:42");
ws.subscribe("budget:42").then((frame) => frame.recovered && frame.position.offset);
ws.subscribe("budget:42", { position: { offset: 16, epoch: "9f2c4a1b" } });
ws.subscribe("budget:42", { position: null });
ws.subscribe("budget:42", {});
// @ts-expect-error: a position has an epoch
ws.subscribe("budget:42", { position: { offset: 16 } });
ws.on("budget-ws:subscribed", ({ topic, position, recovered }) => [topic.length, position.offset, recovered]);
ws.send("budget_total_changed", { total: "1" });
ws.send("chat_message", { text: "hi" }, { topic: "room:1" });
// @ts-expect-error: wrong data for a known event
ws.send("budget_total_changed", { total: 1 });
ws.close(4000, "bye");

// Presence, the user stream, revocation
ws.subscribe("room:1", { presence: true });
// @ts-expect-error: presence is a flag
ws.subscribe("room:1", { presence: "yes" });
const present: Presence | undefined = ws.presence("room:1");
const firstMember: Member | undefined = present?.members[0];
const tabs: number | undefined = firstMember?.connections;
ws.on("budget-ws:presence", ({ topic, members, count, truncated }) => [topic, members[0].info, count, truncated]);
ws.on("budget-ws:join", ({ topic, member }) => [topic, member.user, member.connections]);
ws.on("budget-ws:leave", ({ topic, user }) => [topic.length, user.length]);
ws.on("budget-ws:revoked", ({ topic }) => topic.length);
ws.on("budget-ws:unsubscribed", ({ topic, reason }) => reason === "revoked" && topic);
const me: string | null = ws.user;
ws.onUser((data, frame) => {
  if (frame.event === "budget_total_changed") frame.data.total.length;
  const topic: string | undefined = frame.topic;
})();
ws.subscribe("room:1").catch((error: SubscribeError) => error.code === "revoked" || error.code === "presence_unavailable");
// @ts-expect-error: the user is read-only
ws.user = "bob";

const untyped = new BudgetWS("ws://x");
untyped.on("anything", (data) => data.whatever);
htmxTrigger(ws, { budget_fact_created: "#facts", custom: document.body }, { resyncEvent: null })();
htmxTrigger(ws, ["budget_fact_created", "budget_total_changed"], document.body)();
htmxTrigger(ws, ["budget_fact_created", "custom"], "#ledger", { resyncEvent: "reload" })();
// @ts-expect-error: an array of event names needs its target
htmxTrigger(ws, ["budget_fact_created"], { resyncEvent: null });
