// The client's state and diff merging: random histories of a channel, as
// a server sends them (a state, then numbered diffs of whole member
// views), delivered with diffs before their state, repeats and gaps; the
// client must end with the server's list, asking for a state on a gap.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createView, listMembers, parseId, receive } from "../presence.js";

/** A small seeded generator (mulberry32), so a failure can be replayed. */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The server side: members, numbered diffs, states on demand. */
class Server {
  constructor(random, epoch) {
    this.random = random;
    this.epoch = epoch;
    this.seq = 0;
    this.clock = 1000;
    this.members = new Map();
    this.diffs = [];
  }

  member(id) {
    const connections = 1 + Math.floor(this.random() * 3);
    return {
      id,
      profile: { name: id.toUpperCase() },
      joined_at: this.members.get(id)?.joined_at ?? this.clock++,
      connections: Array.from({ length: connections }, (_, i) => ({
        meta: { typing: this.random() < 0.5, tab: i },
        joined_at: this.clock,
      })),
    };
  }

  counts() {
    let connections = 0;
    for (const m of this.members.values()) connections += m.connections.length;
    return { members: this.members.size, connections };
  }

  /** A change of a few members, as one (coalesced) diff. */
  change() {
    const touched = new Set();
    const n = 1 + Math.floor(this.random() * 3);
    for (let i = 0; i < n; i++) {
      // Ids that could trip a plain object: the client must use a Map.
      const pool = ["ann", "bo", "cy", "__proto__", "constructor", "toString", "dee", "éa"];
      const id = pool[Math.floor(this.random() * pool.length)];
      if (this.members.has(id) && this.random() < 0.5) this.members.delete(id);
      else this.members.set(id, this.member(id));
      touched.add(id);
    }
    this.seq += 1;
    const joins = [...touched].filter((id) => this.members.has(id)).map((id) => this.members.get(id));
    const leaves = [...touched].filter((id) => !this.members.has(id));
    const diff = {
      channel: "room",
      id: `${this.epoch}.${this.seq}`,
      counts: this.counts(),
      joins,
      leaves,
    };
    this.diffs.push(diff);
    return diff;
  }

  state() {
    return {
      channel: "room",
      id: `${this.epoch}.${this.seq}`,
      count_only: false,
      counts: this.counts(),
      members: [...this.members.values()],
    };
  }

  list() {
    return [...this.members.values()].sort(
      (a, b) => a.joined_at - b.joined_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
  }
}

function run(seed) {
  const random = generator(seed);
  const server = new Server(random, `e${seed}`);
  for (let i = 0; i < 5; i++) server.change();
  const view = createView();
  let stateTaken = server.state();
  // Diffs that happen after the state was taken may overtake it.
  const early = [];
  for (let i = 0; i < Math.floor(random() * 4); i++) early.push(server.change());
  for (const diff of early) assert.equal(receive(view, "diff", diff), "ok");
  let result = receive(view, "state", stateTaken);
  let resyncs = 0;
  for (let step = 0; step < 60; step++) {
    if (result === "resync") {
      // What the client does: reopen the stream, which starts with a state.
      resyncs += 1;
      Object.assign(view, createView());
      result = receive(view, "state", server.state());
      continue;
    }
    const diff = server.change();
    const roll = random();
    if (roll < 0.1) {
      // Lost on the way (the ids show a gap at the next one).
      continue;
    } else if (roll < 0.2) {
      // Delivered twice.
      result = receive(view, "diff", diff);
      if (result === "ok") result = receive(view, "diff", diff);
    } else if (roll < 0.25) {
      // From another epoch (the server restarted): resync.
      result = receive(view, "diff", { ...diff, id: `other.${server.seq}` });
      assert.equal(result, "resync");
    } else {
      result = receive(view, "diff", diff);
    }
  }
  if (result === "resync") {
    Object.assign(view, createView());
    result = receive(view, "state", server.state());
  }
  // Whatever was lost last is noticed at the next diff.
  const last = server.change();
  result = receive(view, "diff", last);
  if (result === "resync") {
    Object.assign(view, createView());
    receive(view, "state", server.state());
  }
  assert.deepEqual(listMembers(view), server.list(), `seed ${seed}`);
  assert.deepEqual(view.counts, server.counts(), `seed ${seed}`);
  return resyncs;
}

test("random histories end equal to the server's list", () => {
  let resyncs = 0;
  for (let seed = 1; seed <= 500; seed++) resyncs += run(seed);
  assert.ok(resyncs > 0, "the histories had gaps to recover from");
});

test("diffs before their state wait for it, in order", () => {
  const view = createView();
  const ann = { id: "ann", profile: null, joined_at: 1, connections: [{ meta: {}, joined_at: 1 }] };
  const bo = { id: "bo", profile: null, joined_at: 2, connections: [{ meta: {}, joined_at: 2 }] };
  const counts = (n) => ({ members: n, connections: n });
  assert.equal(receive(view, "diff", { id: "e.7", counts: counts(1), joins: [], leaves: ["ann"] }), "ok");
  assert.equal(receive(view, "diff", { id: "e.6", counts: counts(2), joins: [bo], leaves: [] }), "ok");
  assert.equal(view.ready, false);
  // The state includes diffs up to 5; 6 and 7 apply on top, in order.
  receive(view, "state", { id: "e.5", count_only: false, counts: counts(1), members: [ann] });
  assert.deepEqual(listMembers(view).map((m) => m.id), ["bo"]);
  assert.equal(view.seq, 7);
  // A state that already includes them: they are dropped.
  const again = createView();
  receive(again, "diff", { id: "e.3", counts: counts(0), joins: [], leaves: ["ann"] });
  receive(again, "state", { id: "e.3", count_only: false, counts: counts(0), members: [] });
  assert.equal(again.members.size, 0);
  // A gap between the state and the first early diff: resync.
  const gap = createView();
  receive(gap, "diff", { id: "e.9", counts: counts(0), joins: [], leaves: [] });
  assert.equal(receive(gap, "state", { id: "e.5", count_only: false, counts: counts(0), members: [] }), "resync");
});

test("count-only and missing channels", () => {
  const view = createView();
  receive(view, "state", { channel: "lobby", id: "e.0", count_only: true, counts: { members: 3, connections: 4 } });
  assert.equal(view.countOnly, true);
  receive(view, "diff", { channel: "lobby", id: "e.1", counts: { members: 2, connections: 2 } });
  assert.deepEqual(view.counts, { members: 2, connections: 2 });
  assert.equal(view.members.size, 0);
  const missing = createView();
  receive(missing, "state", { channel: "staff", missing: true });
  assert.equal(missing.ready && missing.missing, true);
  assert.equal(receive(missing, "diff", { id: "e.1", counts: {} }), "resync");
});

test("ids", () => {
  assert.deepEqual(parseId("a.b.12"), ["a.b", 12]);
  assert.equal(parseId("12"), null);
  assert.equal(parseId(".3"), null);
  assert.equal(parseId("e.-1"), null);
  assert.equal(parseId(null), null);
});
