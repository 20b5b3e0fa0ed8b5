// The client's batching, heartbeats, back-off, beacon and activity rules,
// against a recording fetch and mocked timers.

import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { PresenceClient } from "../presence.js";

class FakeTarget {
  listeners = new Map();
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
  }
  removeEventListener(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }
  dispatch(type, event = {}) {
    for (const fn of this.listeners.get(type) || []) fn({ type, ...event });
  }
}

function setup({ answers = [] } = {}) {
  mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const requests = [];
  const beacons = [];
  const queue = [...answers];
  const fetch = async (url, init) => {
    const body = JSON.parse(init.body);
    requests.push({ url, body });
    const next = queue.shift() ?? { status: 200 };
    const status = next.status;
    const answer = next.body ?? Object.fromEntries([...body.present.map((c) => [c, true]), ...body.leave.map((c) => [c, false])]);
    return {
      status,
      ok: status >= 200 && status < 300,
      headers: new Map(Object.entries(next.headers ?? { "x-presence-heartbeat-ms": "30000" })),
      json: async () => answer,
    };
  };
  const storage = new Map();
  const window = new FakeTarget();
  const document = new FakeTarget();
  document.visibilityState = "visible";
  const navigator = { sendBeacon: (url, form) => beacons.push({ url, form: form.toString() }) };
  const client = new PresenceClient({
    base: "/presence/",
    fetch,
    storage: { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) },
    window,
    document,
    navigator,
    token: () => "tok",
  });
  return { client, requests, beacons, storage, window, document };
}

/** Lets the fetch promise chain run, then moves the clock. */
async function advance(ms) {
  for (let i = 0; i < 10; i++) await Promise.resolve();
  mock.timers.tick(ms);
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

test("enters once however many handles, leaves when the last one does", async (t) => {
  t.after(() => mock.timers.reset());
  const { client, requests } = setup();
  const a = client.channel("room");
  const b = client.channel("room");
  const entered = a.enter({ meta: { typing: false } });
  b.enter();
  client.channel("other").enter();
  await advance(499);
  assert.equal(requests.length, 0, "debounced");
  await advance(1);
  assert.equal(requests.length, 1, "one request for three enters");
  assert.deepEqual(requests[0].body.present, ["room", "other"]);
  assert.deepEqual(requests[0].body.meta, { room: { typing: false } });
  assert.equal(requests[0].url, "/presence/update");
  assert.equal(await entered, true);
  assert.equal(a.present, true);

  a.leave();
  await advance(1000);
  assert.equal(requests.length, 2);
  assert.deepEqual(requests[1].body.leave, [], "b is still in");
  b.leave();
  await advance(1000);
  assert.deepEqual(requests[2].body.leave, ["room"]);
  assert.deepEqual(requests[2].body.present, ["other"]);
  // Heartbeats every 30 s while anything is entered.
  await advance(30_000);
  assert.equal(requests.length, 4);
  assert.deepEqual(requests[3].body.present, ["other"]);
  assert.deepEqual(requests[3].body.leave, []);
  client.close();
});

test("a 429 waits as told; failures back off", async (t) => {
  t.after(() => mock.timers.reset());
  const { client, requests } = setup({
    answers: [{ status: 429, body: { wait_seconds: 7 } }, { status: 503, body: {} }, { status: 503, body: {} }],
  });
  client.channel("room").enter();
  await advance(500);
  assert.equal(requests.length, 1);
  await advance(6_900);
  assert.equal(requests.length, 1, "waits the 7 s it was told");
  await advance(200);
  assert.equal(requests.length, 2);
  // 503: about 1 s (±25%), then about 2 s.
  await advance(700);
  assert.equal(requests.length, 2);
  await advance(600);
  assert.equal(requests.length, 3);
  await advance(1_400);
  assert.equal(requests.length, 3);
  await advance(1_200);
  assert.equal(requests.length, 4, "the fourth succeeds");
  client.close();
});

test("the page going away leaves with a beacon", async (t) => {
  t.after(() => mock.timers.reset());
  const { client, requests, beacons, window, storage } = setup();
  client.channel("room").enter();
  client.channel("lobby").enter();
  await advance(500);
  window.dispatch("pagehide", { persisted: false });
  assert.equal(beacons.length, 1);
  assert.equal(beacons[0].url, "/presence/leave");
  const form = new URLSearchParams(beacons[0].form);
  assert.equal(form.get("client_id"), client.clientId);
  assert.deepEqual(form.getAll("leave"), ["room", "lobby"]);
  assert.equal(form.get("token"), "tok");
  // Restored from the back-forward cache: present again.
  window.dispatch("pageshow", { persisted: true });
  await advance(1_000);
  assert.deepEqual(requests.at(-1).body.present, ["room", "lobby"]);
  // One id per tab: a reload reads it back.
  assert.equal(storage.get("presence-client-id"), client.clientId);
  const again = new PresenceClient({
    fetch: async () => ({}),
    storage: { getItem: (k) => storage.get(k) ?? null, setItem: () => {} },
  });
  assert.equal(again.clientId, client.clientId);
  again.close();
  client.close();
});

test("onlyWhileActive leaves while hidden or idle and comes back", async (t) => {
  t.after(() => mock.timers.reset());
  const { client, requests, document, window } = setup();
  client.channel("room").enter({ onlyWhileActive: true });
  client.channel("always").enter();
  await advance(500);
  assert.deepEqual(requests[0].body.present, ["room", "always"]);
  document.visibilityState = "hidden";
  document.dispatch("visibilitychange");
  await advance(1_000);
  assert.deepEqual(requests[1].body.present, ["always"]);
  assert.deepEqual(requests[1].body.leave, ["room"]);
  document.visibilityState = "visible";
  document.dispatch("visibilitychange");
  await advance(1_000);
  assert.deepEqual(requests[2].body.present, ["room", "always"]);
  // Two minutes without input: idle, so it leaves; input brings it back.
  for (let i = 0; i < 125; i++) await advance(1_000);
  const idle = requests.filter((r) => r.body.leave.includes("room"));
  assert.equal(idle.length, 2);
  window.dispatch("pointermove");
  await advance(1_000);
  assert.deepEqual(requests.at(-1).body.present, ["room", "always"]);
  client.close();
});
