// The client's event-stream half: one EventSource for every subscribed
// channel, state then diffs, diffs before their state, gaps, back-off after
// errors, reopening when the subscribed set changes and closing when the last
// handle unsubscribes; against a fake EventSource and mocked timers.

import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { PresenceClient } from "../presence.js";

/** A fake `EventSource` class recording every instance it makes. */
function fakeEventSource() {
  const sources = [];
  class FakeEventSource {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    constructor(url, init) {
      this.url = url;
      this.init = init;
      this.readyState = 0;
      this.closed = false;
      this.openedAt = Date.now();
      this.listeners = new Map();
      sources.push(this);
    }
    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
    }
    removeEventListener(type, fn) {
      this.listeners.get(type)?.delete(fn);
    }
    close() {
      this.readyState = 2;
      this.closed = true;
    }
    #dispatch(type, event = {}) {
      for (const fn of [...(this.listeners.get(type) || [])]) fn({ type, ...event });
    }
    /** The server answered 200 with an event stream. */
    open() {
      this.readyState = 1;
      this.#dispatch("open");
    }
    /** One `event: type` frame; `id:` as a stream of these channels would send. */
    send(type, data) {
      this.#dispatch(type, { data: JSON.stringify(data), lastEventId: data.id ?? "" });
    }
    /** The connection failed: `2` (CLOSED) when refused, `0` while the browser reconnects. */
    fail(readyState = 2) {
      this.readyState = readyState;
      this.#dispatch("error");
    }
    /** The channels and `last_event_id` of the URL. */
    get query() {
      const url = new URL(this.url, "http://test");
      return {
        path: url.pathname,
        channels: url.searchParams.getAll("channel"),
        lastEventId: url.searchParams.get("last_event_id"),
      };
    }
  }
  return { FakeEventSource, sources };
}

function setup() {
  mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const { FakeEventSource, sources } = fakeEventSource();
  const fetches = [];
  const client = new PresenceClient({
    base: "/presence/",
    EventSource: FakeEventSource,
    fetch: async (url) => {
      fetches.push(url);
      return { status: 200, ok: true, headers: new Map(), json: async () => ({}) };
    },
    storage: { getItem: () => "tab-1", setItem: () => {} },
    window: null,
    document: null,
    navigator: null,
  });
  return { client, sources, fetches };
}

const member = (id, joined_at, meta = {}) => ({
  id,
  profile: { name: id.toUpperCase() },
  joined_at,
  connections: [{ meta, joined_at }],
});
const ids = (handle) => handle.members?.map((m) => m.id);
const counting = (handle) => {
  const seen = { n: 0 };
  handle.on("change", () => (seen.n += 1));
  return seen;
};

test("handles of two channels share one stream naming both", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources, fetches } = setup();
  const roomA = client.channel("room/1");
  const roomB = client.channel("room/1");
  const lobby = client.channel("lobby");
  roomA.subscribe();
  roomB.subscribe();
  lobby.subscribe();
  mock.timers.tick(19);
  assert.equal(sources.length, 0, "opened after the subscriptions settle");
  mock.timers.tick(1);
  assert.equal(sources.length, 1, "one stream for three handles");
  assert.deepEqual(sources[0].query, { path: "/presence/events", channels: ["room/1", "lobby"], lastEventId: null });
  assert.equal(sources[0].url, "/presence/events?channel=room%2F1&channel=lobby");
  assert.deepEqual(sources[0].init, { withCredentials: true });

  // Another handle of a followed channel, or one of two handles leaving:
  // the same set, so the same stream.
  const roomC = client.channel("room/1");
  roomC.subscribe();
  roomA.unsubscribe();
  mock.timers.tick(1_000);
  assert.equal(sources.length, 1);
  assert.equal(sources[0].closed, false);
  assert.deepEqual(fetches, [], "following sends no update");
  client.close();
  assert.equal(sources[0].closed, true, "close() closes the stream");
});

test("a state, then diffs, update members and counts and fire change", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const a = client.channel("room");
  const b = client.channel("room");
  const changesA = counting(a);
  const changesB = counting(b);
  a.subscribe();
  b.subscribe();
  mock.timers.tick(20);
  const es = sources[0];
  assert.equal(a.members, undefined, "undefined until the state");
  assert.equal(a.count, undefined);
  es.open();
  es.send("state", {
    channel: "room",
    id: "ep.7",
    count_only: false,
    counts: { members: 2, connections: 2 },
    members: [member("bo", 20), member("ann", 10)],
  });
  assert.deepEqual(ids(a), ["ann", "bo"], "in joined_at order");
  assert.equal(a.count, 2);
  assert.deepEqual(a.counts, { members: 2, connections: 2 });
  assert.equal(a.countOnly, false);
  assert.equal(a.missing, false);
  assert.deepEqual(ids(b), ["ann", "bo"], "every handle sees it");
  assert.equal(changesA.n, 1);
  assert.equal(changesB.n, 1);

  es.send("diff", { channel: "room", id: "ep.8", counts: { members: 3, connections: 3 }, joins: [member("cy", 30)] });
  assert.deepEqual(ids(a), ["ann", "bo", "cy"]);
  assert.equal(a.count, 3);
  es.send("diff", {
    channel: "room",
    id: "ep.9",
    counts: { members: 2, connections: 3 },
    joins: [member("ann", 10, { typing: true }), member("cy", 30, { tab: 2 })],
    leaves: ["bo"],
  });
  assert.deepEqual(ids(a), ["ann", "cy"]);
  assert.deepEqual(a.members[0].connections[0].meta, { typing: true }, "a join replaces the member");
  assert.deepEqual(a.counts, { members: 2, connections: 3 });
  assert.equal(changesA.n, 3);
  assert.equal(changesB.n, 3);

  // A repeat of a diff already applied changes nothing and keeps the stream.
  es.send("diff", { channel: "room", id: "ep.8", counts: { members: 9, connections: 9 }, joins: [member("zed", 1)] });
  assert.deepEqual(ids(a), ["ann", "cy"]);
  assert.equal(a.count, 2);
  mock.timers.tick(60_000);
  assert.equal(sources.length, 1, "no reopen without a gap");
  // Frames of another channel, or not JSON, are ignored.
  es.send("diff", { channel: "other", id: "x.1", counts: { members: 1, connections: 1 } });
  es.listeners.get("diff").forEach((fn) => fn({ data: "not json" }));
  assert.equal(a.count, 2);
  client.close();
});

test("a diff that arrives before its state waits for it", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const room = client.channel("room");
  const changes = counting(room);
  room.subscribe();
  mock.timers.tick(20);
  const es = sources[0];
  es.send("diff", { channel: "room", id: "ep.6", counts: { members: 3, connections: 3 }, leaves: ["bo"], joins: [member("dee", 40)] });
  es.send("diff", { channel: "room", id: "ep.5", counts: { members: 3, connections: 3 }, joins: [member("cy", 30)] });
  assert.equal(room.members, undefined, "still waiting for the state");
  assert.equal(room.count, undefined);
  // The state includes diffs up to 4: 5 and 6 apply on top, in order.
  es.send("state", {
    channel: "room",
    id: "ep.4",
    count_only: false,
    counts: { members: 2, connections: 2 },
    members: [member("ann", 10), member("bo", 20)],
  });
  assert.deepEqual(ids(room), ["ann", "cy", "dee"]);
  assert.equal(room.count, 3);
  assert.equal(changes.n, 3);
  // And it goes on from 6.
  es.send("diff", { channel: "room", id: "ep.7", counts: { members: 2, connections: 2 }, leaves: ["ann"] });
  assert.deepEqual(ids(room), ["cy", "dee"]);
  // A buffered diff the state already includes is dropped, not applied again.
  const other = client.channel("other");
  other.subscribe();
  mock.timers.tick(20);
  const es2 = sources[1];
  es2.send("diff", { channel: "other", id: "q.3", counts: { members: 0, connections: 0 }, leaves: ["eve"] });
  es2.send("state", {
    channel: "other",
    id: "q.3",
    count_only: false,
    counts: { members: 1, connections: 1 },
    members: [member("eve", 5)],
  });
  assert.deepEqual(ids(other), ["eve"]);
  assert.equal(sources.length, 2, "no gap, no reopen");
  client.close();
});

test("a gap in a channel's ids reopens the stream for a fresh state of it", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const room = client.channel("room");
  const lobby = client.channel("lobby");
  const changes = counting(room);
  room.subscribe();
  lobby.subscribe();
  mock.timers.tick(20);
  const first = sources[0];
  first.open();
  first.send("state", { channel: "room", id: "r.1", count_only: false, counts: { members: 1, connections: 1 }, members: [member("ann", 10)] });
  first.send("state", { channel: "lobby", id: "l.7", count_only: true, counts: { members: 5, connections: 6 } });
  first.send("diff", { channel: "room", id: "r.2", counts: { members: 2, connections: 2 }, joins: [member("bo", 20)] });
  assert.deepEqual(ids(room), ["ann", "bo"]);
  assert.equal(changes.n, 2);

  // 3 never came: the list can no longer be trusted.
  first.send("diff", { channel: "room", id: "r.4", counts: { members: 3, connections: 3 }, joins: [member("dee", 40)] });
  assert.equal(room.members, undefined, "not shown while it resyncs");
  assert.equal(changes.n, 3, "listeners hear of it");
  assert.equal(lobby.count, 5, "the other channel keeps its list");
  mock.timers.tick(0);
  assert.equal(sources.length, 2, "a new stream");
  assert.equal(first.closed, true, "the old one closed");
  const second = sources[1];
  assert.deepEqual(second.query.channels, ["room", "lobby"]);
  // The room starts again with a state; the lobby continues where it was.
  assert.equal(second.query.lastEventId, ",l.7");

  // A late frame of the old stream changes nothing.
  first.send("diff", { channel: "room", id: "r.5", counts: { members: 9, connections: 9 }, joins: [member("zed", 1)] });
  assert.equal(room.members, undefined);
  second.open();
  second.send("state", {
    channel: "room",
    id: "r.4",
    count_only: false,
    counts: { members: 3, connections: 3 },
    members: [member("ann", 10), member("bo", 20), member("dee", 40)],
  });
  assert.deepEqual(ids(room), ["ann", "bo", "dee"]);
  assert.equal(room.count, 3);
  second.send("diff", { channel: "room", id: "r.5", counts: { members: 2, connections: 2 }, leaves: ["bo"] });
  assert.deepEqual(ids(room), ["ann", "dee"]);
  mock.timers.tick(60_000);
  assert.equal(sources.length, 2, "one reopen per gap");

  // A diff of another epoch (the server's feed restarted) is a gap too,
  // and with one channel the new stream carries no position at all.
  lobby.unsubscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 3);
  assert.deepEqual(sources[2].query, { path: "/presence/events", channels: ["room"], lastEventId: "r.5" });
  sources[2].send("diff", { channel: "room", id: "r2.1", counts: { members: 0, connections: 0 }, leaves: ["ann", "dee"] });
  mock.timers.tick(0);
  assert.equal(sources.length, 4);
  assert.deepEqual(sources[3].query, { path: "/presence/events", channels: ["room"], lastEventId: null });
  client.close();
});

test("a refused stream backs off, growing, and a successful open resets it", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const room = client.channel("room");
  room.subscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 1);

  // The browser reconnecting by itself (CONNECTING) is left to it.
  sources[0].fail(0);
  mock.timers.tick(60_000);
  assert.equal(sources.length, 1);

  // Refused (CLOSED): again after 1 s, 2 s, 4 s ... at most 30 s.
  const delays = [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
  for (const delay of delays) {
    const n = sources.length;
    sources[n - 1].fail();
    mock.timers.tick(delay - 1);
    assert.equal(sources.length, n, `not before ${delay} ms`);
    mock.timers.tick(1);
    assert.equal(sources.length, n + 1, `after ${delay} ms`);
  }
  const gaps = sources.slice(2).map((s, i) => s.openedAt - sources[i + 1].openedAt);
  assert.deepEqual(gaps, delays.slice(1));
  for (const s of sources.slice(0, -1)) assert.equal(s.closed, true, "each failed stream is closed");
  assert.deepEqual(sources.at(-1).query.channels, ["room"]);

  // Opened: the next refusal waits 1 s again.
  let n = sources.length;
  sources[n - 1].open();
  sources[n - 1].fail();
  mock.timers.tick(999);
  assert.equal(sources.length, n);
  mock.timers.tick(1);
  assert.equal(sources.length, n + 1);
  // Twice refused, then a state: reset too.
  sources.at(-1).fail();
  mock.timers.tick(2_000);
  n = sources.length;
  sources[n - 1].send("state", { channel: "room", id: "e.1", count_only: false, counts: { members: 0, connections: 0 }, members: [] });
  assert.deepEqual(room.members, []);
  sources[n - 1].fail();
  mock.timers.tick(999);
  assert.equal(sources.length, n);
  mock.timers.tick(1);
  assert.equal(sources.length, n + 1);
  // It continues where it was.
  assert.equal(sources.at(-1).query.lastEventId, "e.1");

  // Unsubscribed during a back-off: nothing is opened again.
  sources.at(-1).fail();
  room.unsubscribe();
  mock.timers.tick(60_000);
  assert.equal(sources.length, n + 1);
  client.close();
});

test("a missing channel is empty; a count-only one has counts and no members", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const secret = client.channel("secret");
  const lobby = client.channel("lobby");
  const secretChanges = counting(secret);
  secret.subscribe();
  lobby.subscribe();
  mock.timers.tick(20);
  const es = sources[0];
  es.send("state", { channel: "secret", missing: true });
  es.send("state", { channel: "lobby", id: "l.3", count_only: true, counts: { members: 2, connections: 3 } });
  assert.equal(secret.missing, true);
  assert.deepEqual(secret.members, []);
  assert.equal(secret.count, 0);
  assert.deepEqual(secret.counts, { members: 0, connections: 0 });
  assert.equal(secretChanges.n, 1);
  assert.equal(lobby.missing, false);
  assert.equal(lobby.countOnly, true);
  assert.equal(lobby.count, 2);
  assert.deepEqual(lobby.counts, { members: 2, connections: 3 });
  assert.deepEqual(lobby.members, []);
  es.send("diff", { channel: "lobby", id: "l.4", counts: { members: 3, connections: 4 } });
  assert.equal(lobby.count, 3);
  assert.deepEqual(lobby.members, []);
  assert.equal(sources.length, 1);

  // Reopened for a third channel: the missing one asks for a state again,
  // the count-only one continues.
  client.channel("third").subscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 2);
  assert.equal(es.closed, true);
  assert.deepEqual(sources[1].query.channels, ["secret", "lobby", "third"]);
  assert.equal(sources[1].query.lastEventId, ",l.4,");
  assert.equal(secret.missing, true, "kept until the new stream says otherwise");
  client.close();
});

test("the stream follows the subscribed set and closes with the last handle", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const a = client.channel("room");
  const b = client.channel("room");
  const lobby = client.channel("lobby");
  a.subscribe();
  b.subscribe();
  mock.timers.tick(20);
  sources[0].send("state", { channel: "room", id: "r.2", count_only: false, counts: { members: 1, connections: 1 }, members: [member("ann", 1)] });

  lobby.subscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 2);
  assert.equal(sources[0].closed, true);
  assert.deepEqual(sources[1].query.channels, ["room", "lobby"]);
  assert.equal(sources[1].query.lastEventId, "r.2,", "the room continues");
  assert.deepEqual(ids(a), ["ann"], "the list is kept across the reopen");

  lobby.unsubscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 3);
  assert.deepEqual(sources[2].query, { path: "/presence/events", channels: ["room"], lastEventId: "r.2" });
  assert.equal(lobby.members, undefined);

  a.unsubscribe();
  mock.timers.tick(1_000);
  assert.equal(sources.length, 3, "b still follows");
  assert.equal(sources[2].closed, false);
  assert.deepEqual(ids(b), ["ann"]);
  assert.equal(a.members, undefined, "an unsubscribed handle shows nothing");

  b.unsubscribe();
  mock.timers.tick(20);
  assert.equal(sources[2].closed, true, "closed with the last handle");
  mock.timers.tick(120_000);
  assert.equal(sources.length, 3, "and not opened again");
  assert.equal(b.members, undefined);

  // Subscribing again starts over with a state.
  b.subscribe();
  mock.timers.tick(20);
  assert.equal(sources.length, 4);
  assert.deepEqual(sources[3].query, { path: "/presence/events", channels: ["room"], lastEventId: null });
  client.close();
  assert.equal(sources[3].closed, true);
});

test("unsubscribing the last handle while a gap reopens closes the stream", (t) => {
  t.after(() => mock.timers.reset());
  const { client, sources } = setup();
  const room = client.channel("room");
  room.subscribe();
  mock.timers.tick(20);
  const es = sources[0];
  es.send("state", { channel: "room", id: "r.1", count_only: false, counts: { members: 0, connections: 0 }, members: [] });
  // A component that goes away on the change the gap causes.
  room.on("change", () => {
    if (room.members === undefined) room.unsubscribe();
  });
  es.send("diff", { channel: "room", id: "r.3", counts: { members: 0, connections: 0 } });
  mock.timers.tick(1_000);
  assert.equal(es.closed, true, "no handle follows the channel");
  assert.equal(sources.length, 1);
  client.close();
});
