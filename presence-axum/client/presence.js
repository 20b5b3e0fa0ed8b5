// The browser client of presence-axum: one dependency-free ES module.
//
//   import { PresenceClient } from "/presence/client.js";
//   const presence = new PresenceClient({ base: "/presence" });
//   const room = presence.channel("room/42");
//   room.on("change", () => render(room.members, room.count));
//   room.subscribe();
//   room.enter({ meta: { typing: false }, onlyWhileActive: true });
//
// One client id per tab (sessionStorage, so a reload is the same
// connection); a channel is entered while any handle entered it and
// subscribed while any handle subscribed. Enters, meta changes and leaves
// are batched into one POST /update; heartbeats follow the server's
// interval; a 429 waits as told, other failures back off; the page leaves
// with a beacon when it goes away.

/** The member list of one channel as the events build it (pure). */
export function createView() {
  return {
    ready: false,
    missing: false,
    countOnly: false,
    epoch: null,
    seq: -1,
    members: new Map(),
    counts: { members: 0, connections: 0 },
    pending: [],
  };
}

/** `"epoch.seq"` as `[epoch, seq]`, or `null`. */
export function parseId(id) {
  if (typeof id !== "string") return null;
  const dot = id.lastIndexOf(".");
  if (dot <= 0) return null;
  const seq = Number(id.slice(dot + 1));
  if (!Number.isSafeInteger(seq) || seq < 0) return null;
  return [id.slice(0, dot), seq];
}

function applyDiff(view, data, seq) {
  for (const id of data.leaves || []) view.members.delete(id);
  for (const member of data.joins || []) view.members.set(member.id, member);
  view.counts = data.counts;
  view.seq = seq;
}

/**
 * Applies one event's data to a view: `"ok"`, or `"resync"` when the view
 * can no longer be trusted (a gap in the ids, another epoch) and must be
 * fetched again. Diffs that come before their state wait for it.
 */
export function receive(view, type, data) {
  if (type === "state") {
    view.pending.sort((a, b) => a.seq - b.seq);
    const pending = view.pending;
    view.pending = [];
    if (data.missing) {
      Object.assign(view, createView(), { ready: true, missing: true });
      return "ok";
    }
    const id = parseId(data.id);
    if (!id) return "resync";
    view.ready = true;
    view.missing = false;
    view.countOnly = !!data.count_only;
    view.epoch = id[0];
    view.seq = id[1];
    view.counts = data.counts;
    view.members = new Map((data.members || []).map((m) => [m.id, m]));
    for (const diff of pending) {
      if (diff.epoch !== view.epoch || diff.seq <= view.seq) continue;
      if (diff.seq !== view.seq + 1) return "resync";
      applyDiff(view, diff.data, diff.seq);
    }
    return "ok";
  }
  if (type === "diff") {
    const id = parseId(data.id);
    if (!id) return "resync";
    const [epoch, seq] = id;
    if (!view.ready) {
      view.pending.push({ epoch, seq, data });
      return "ok";
    }
    if (view.missing || epoch !== view.epoch) return "resync";
    if (seq <= view.seq) return "ok";
    if (seq !== view.seq + 1) return "resync";
    applyDiff(view, data, seq);
    return "ok";
  }
  return "ok";
}

/** The view's members in the server's order (by `joined_at`, then id). */
export function listMembers(view) {
  return [...view.members.values()].sort(
    (a, b) => a.joined_at - b.joined_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

const CLIENT_ID_KEY = "presence-client-id";
const ACTIVITY_EVENTS = ["pointerdown", "pointermove", "keydown", "wheel", "touchstart", "scroll"];

function randomId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One channel as a component sees it; see `PresenceClient.channel`. */
export class PresenceChannel {
  #client;
  #listeners = new Set();
  /** The name. */
  name;
  /** Whether this handle entered / subscribed. */
  entered = false;
  subscribed = false;
  meta = undefined;
  onlyWhileActive = false;

  constructor(client, name) {
    this.#client = client;
    this.name = name;
  }

  /**
   * Be present (and heartbeat) with `meta` until `leave()`; again to
   * change the meta. Resolves with the server's answer: `false` for a
   * channel that is missing, hidden, not allowed or full.
   */
  enter({ meta, onlyWhileActive = false } = {}) {
    this.entered = true;
    this.meta = meta;
    this.onlyWhileActive = onlyWhileActive;
    return this.#client._changed(this.name, true);
  }

  /** Stop being present (once no other handle is). */
  leave() {
    if (!this.entered) return Promise.resolve(false);
    this.entered = false;
    this.meta = undefined;
    return this.#client._changed(this.name, false);
  }

  /** Follow the members (state, then diffs) until `unsubscribe()`. */
  subscribe() {
    if (!this.subscribed) {
      this.subscribed = true;
      this.#client._subscriptionsChanged();
    }
  }

  unsubscribe() {
    if (this.subscribed) {
      this.subscribed = false;
      this.#client._subscriptionsChanged();
    }
  }

  #view() {
    return this.subscribed ? this.#client._view(this.name) : undefined;
  }

  /** The members (undefined until subscribed and the state arrived). */
  get members() {
    const view = this.#view();
    if (!view || !view.ready) return undefined;
    return listMembers(view);
  }

  /** How many members (undefined until known). */
  get count() {
    const view = this.#view();
    return view && view.ready ? view.counts.members : undefined;
  }

  /** Members and connections (undefined until known). */
  get counts() {
    const view = this.#view();
    return view && view.ready ? { ...view.counts } : undefined;
  }

  /** Whether the channel shows counts only. */
  get countOnly() {
    const view = this.#view();
    return view && view.ready ? view.countOnly : undefined;
  }

  /** Whether it does not exist or may not be seen (the same to us). */
  get missing() {
    const view = this.#view();
    return view && view.ready ? view.missing : undefined;
  }

  /** Whether the server has this tab present in it now. */
  get present() {
    return this.#client._isPresent(this.name);
  }

  /** `on("change", fn)`: called after every change; returns an unsubscribe. */
  on(event, fn) {
    if (event !== "change") throw new TypeError(`unknown event ${event}`);
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  off(event, fn) {
    this.#listeners.delete(fn);
  }

  _emit() {
    for (const fn of [...this.#listeners]) {
      try {
        fn(this);
      } catch (error) {
        console.error("presence: a change listener threw", error);
      }
    }
  }
}

/** The presence of this tab; one per page. */
export class PresenceClient {
  #base;
  #fetch;
  #EventSource;
  #window;
  #document;
  #navigator;
  #token;
  #handles = new Map(); // name -> Set<PresenceChannel>
  #views = new Map(); // name -> view
  #sentPresent = new Set(); // channels the server has us in
  #answers = new Map(); // name -> true/false, last answer
  #waiters = new Map(); // name -> resolve[]
  #timer = null;
  #inFlight = false;
  #again = false;
  #lastSend = -Infinity;
  #retryAt = 0;
  #failures = 0;
  #idle = false;
  #idleTimer = null;
  #source = null;
  #sourceChannels = [];
  #reopenTimer = null;
  #sourceFailures = 0;
  #closed = false;
  #cleanup = [];
  /** The tab's connection id. */
  clientId;
  /** Settings in milliseconds. */
  heartbeatMs;
  debounceMs;
  throttleMs;
  idleMs;

  /**
   * @param {object} options
   * @param {string} [options.base="/presence"] where the router is nested
   * @param {() => string} [options.token] a token the `/leave` beacon sends
   *   in its body (beacons cannot send headers)
   */
  constructor({
    base = "/presence",
    token,
    heartbeatMs = 30_000,
    debounceMs = 500,
    throttleMs = 1_000,
    idleMs = 120_000,
    fetch = globalThis.fetch?.bind(globalThis),
    EventSource = globalThis.EventSource,
    storage = globalThis.sessionStorage,
    window = globalThis.window,
    document = globalThis.document,
    navigator = globalThis.navigator,
  } = {}) {
    this.#base = base.replace(/\/$/, "");
    this.#fetch = fetch;
    this.#EventSource = EventSource;
    this.#window = window;
    this.#document = document;
    this.#navigator = navigator;
    this.#token = token;
    Object.assign(this, { heartbeatMs, debounceMs, throttleMs, idleMs });
    let id = null;
    try {
      id = storage?.getItem(CLIENT_ID_KEY);
      if (!id) {
        id = randomId();
        storage?.setItem(CLIENT_ID_KEY, id);
      }
    } catch {
      id = id || randomId(); // storage refused (privacy mode): one per page
    }
    this.clientId = id;
    this.#listen();
  }

  #on(target, event, fn, options) {
    if (!target?.addEventListener) return;
    target.addEventListener(event, fn, options);
    this.#cleanup.push(() => target.removeEventListener(event, fn, options));
  }

  #listen() {
    this.#on(this.#window, "pagehide", () => this.#beacon());
    this.#on(this.#window, "pageshow", (event) => {
      if (event.persisted) {
        // Back from the back-forward cache: enter again, follow again.
        this.#sentPresent.clear();
        this.#schedule(0);
        this.#reopen(0);
      }
    });
    this.#on(this.#document, "visibilitychange", () => this.#activityChanged());
    const active = () => {
      if (this.#idle) {
        this.#idle = false;
        this.#activityChanged();
      }
      this.#armIdle();
    };
    for (const event of ACTIVITY_EVENTS) this.#on(this.#window, event, active, { passive: true });
    this.#armIdle();
  }

  #armIdle() {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      this.#idle = true;
      this.#activityChanged();
    }, this.idleMs);
  }

  /** Whether the person is here: the tab is visible and not idle. */
  get active() {
    const hidden = this.#document?.visibilityState === "hidden";
    return !hidden && !this.#idle;
  }

  #activityChanged() {
    for (const [name, handles] of this.#handles) {
      if ([...handles].some((h) => h.entered && h.onlyWhileActive)) {
        this.#schedule();
        this._emitChannel(name);
      }
    }
  }

  /** The handle of `name` for one component (each call a new handle). */
  channel(name) {
    if (typeof name !== "string" || name === "") throw new TypeError("a channel name");
    const handle = new PresenceChannel(this, name);
    if (!this.#handles.has(name)) this.#handles.set(name, new Set());
    this.#handles.get(name).add(handle);
    return handle;
  }

  /** The channels to be present in now, with their merged meta. */
  #wanted() {
    const wanted = new Map();
    for (const [name, handles] of this.#handles) {
      let meta;
      let want = false;
      for (const h of handles) {
        if (!h.entered || (h.onlyWhileActive && !this.active)) continue;
        want = true;
        if (h.meta && typeof h.meta === "object") meta = { ...(meta || {}), ...h.meta };
      }
      if (want) wanted.set(name, meta);
    }
    return wanted;
  }

  _changed(name, entering) {
    const done = new Promise((resolve) => {
      if (!this.#waiters.has(name)) this.#waiters.set(name, []);
      this.#waiters.get(name).push(resolve);
    });
    this.#schedule();
    return done;
  }

  _isPresent(name) {
    return this.#answers.get(name) === true;
  }

  /** Sends an update after the debounce (or `delay`), once at a time. */
  #schedule(delay = this.debounceMs) {
    if (this.#closed) return;
    if (this.#inFlight) {
      this.#again = true;
      return;
    }
    const now = Date.now();
    const at = Math.max(now + delay, this.#lastSend + this.throttleMs, this.#retryAt);
    if (this.#timer && this.#timer.at <= at) return;
    clearTimeout(this.#timer?.id);
    this.#timer = { at, id: setTimeout(() => this.#send(), Math.max(0, at - now)) };
  }

  async #send() {
    this.#timer = null;
    if (this.#closed) return;
    const wanted = this.#wanted();
    const leave = [...this.#sentPresent].filter((name) => !wanted.has(name));
    if (wanted.size === 0 && leave.length === 0) {
      this.#resolveAll(new Map());
      return;
    }
    const meta = {};
    for (const [name, m] of wanted) if (m) meta[name] = m;
    const body = { client_id: this.clientId, present: [...wanted.keys()], leave, meta };
    this.#inFlight = true;
    this.#lastSend = Date.now();
    let next = null;
    try {
      const response = await this.#fetch(`${this.#base}/update`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
      if (response.status === 429) {
        const answer = await response.json().catch(() => ({}));
        const wait = Number(answer.wait_seconds ?? response.headers.get("retry-after") ?? 1);
        this.#retryAt = Date.now() + Math.max(1, wait) * 1000;
        next = 0;
      } else if (!response.ok) {
        throw new Error(`presence update: ${response.status}`);
      } else {
        const answer = await response.json();
        const heartbeat = Number(response.headers.get("x-presence-heartbeat-ms"));
        if (heartbeat > 0) this.heartbeatMs = heartbeat;
        this.#failures = 0;
        this.#retryAt = 0;
        for (const name of leave) this.#sentPresent.delete(name);
        const answers = new Map();
        for (const [name, present] of Object.entries(answer)) {
          answers.set(name, present === true);
          if (present === true) this.#sentPresent.add(name);
          else this.#sentPresent.delete(name);
        }
        this.#resolveAll(answers);
        next = this.#sentPresent.size > 0 || this.#wanted().size > 0 ? this.heartbeatMs : null;
      }
    } catch (error) {
      // Offline, a server error: try again later, backing off.
      this.#failures += 1;
      const backoff = Math.min(30_000, 1_000 * 2 ** (this.#failures - 1));
      this.#retryAt = Date.now() + backoff * (0.75 + Math.random() * 0.5);
      next = 0;
    } finally {
      this.#inFlight = false;
    }
    if (this.#again) {
      this.#again = false;
      next = next === null ? this.debounceMs : Math.min(next, this.debounceMs);
    }
    if (next !== null) this.#schedule(next);
  }

  #resolveAll(answers) {
    for (const [name, present] of answers) {
      const before = this.#answers.get(name);
      this.#answers.set(name, present);
      if (before !== present) this._emitChannel(name);
    }
    for (const [name, waiting] of [...this.#waiters]) {
      if (answers.has(name) || !this.#wanted().has(name)) {
        this.#waiters.delete(name);
        const present = answers.get(name) === true;
        for (const resolve of waiting) resolve(present);
      }
    }
  }

  /** The page goes away: leave everything at once with a beacon. */
  #beacon() {
    if (this.#sentPresent.size === 0 || !this.#navigator?.sendBeacon) return;
    const form = new URLSearchParams();
    form.append("client_id", this.clientId);
    for (const name of this.#sentPresent) form.append("leave", name);
    const token = this.#token?.();
    if (token) form.append("token", token);
    this.#navigator.sendBeacon(`${this.#base}/leave`, form);
    this.#sentPresent.clear();
    this.#answers.clear();
    clearTimeout(this.#timer?.id);
    this.#timer = null;
  }

  // ---- subscriptions ----

  _view(name) {
    return this.#views.get(name);
  }

  #subscribedNames() {
    const names = [];
    for (const [name, handles] of this.#handles) {
      if ([...handles].some((h) => h.subscribed)) names.push(name);
    }
    return names;
  }

  _subscriptionsChanged() {
    this.#reopen(20);
  }

  _emitChannel(name) {
    for (const h of this.#handles.get(name) || []) h._emit();
  }

  /** Opens the event stream for the subscribed channels after `delay`. */
  #reopen(delay) {
    if (this.#closed) return;
    clearTimeout(this.#reopenTimer);
    this.#reopenTimer = setTimeout(() => this.#open(), delay);
  }

  #open() {
    const names = this.#subscribedNames();
    const same =
      this.#source &&
      names.length > 0 &&
      names.length === this.#sourceChannels.length &&
      names.every((n, i) => n === this.#sourceChannels[i]);
    if (same) return;
    this.#source?.close();
    this.#source = null;
    for (const name of this.#views.keys()) {
      if (!names.includes(name)) this.#views.delete(name);
    }
    this.#sourceChannels = names;
    if (names.length === 0 || !this.#EventSource) return;
    // Continue the channels already followed; the others start with a state.
    const positions = names.map((name) => {
      const view = this.#views.get(name);
      return view && view.ready && !view.missing ? `${view.epoch}.${view.seq}` : "";
    });
    const query = new URLSearchParams();
    for (const name of names) query.append("channel", name);
    if (positions.some((p) => p)) query.append("last_event_id", positions.join(","));
    for (const name of names) if (!this.#views.has(name)) this.#views.set(name, createView());
    const source = new this.#EventSource(`${this.#base}/events?${query}`, { withCredentials: true });
    this.#source = source;
    const handle = (type) => (event) => {
      if (this.#source !== source) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      const view = this.#views.get(data.channel);
      if (!view) return;
      this.#sourceFailures = 0;
      if (receive(view, type, data) === "resync") {
        // A gap: follow it again from a fresh state.
        this.#views.set(data.channel, createView());
        this.#sourceChannels = [];
        this.#reopen(0);
      }
      this._emitChannel(data.channel);
    };
    source.addEventListener("open", () => {
      if (this.#source === source) this.#sourceFailures = 0;
    });
    source.addEventListener("state", handle("state"));
    source.addEventListener("diff", handle("diff"));
    source.addEventListener("error", () => {
      if (this.#source !== source) return;
      // CONNECTING: the browser reconnects with Last-Event-ID by itself.
      // CLOSED: the server refused (503, 401...): try again, backing off.
      if (source.readyState === 2) {
        this.#sourceFailures += 1;
        this.#sourceChannels = [];
        this.#reopen(Math.min(30_000, 1_000 * 2 ** (this.#sourceFailures - 1)));
      }
    });
  }

  /** Leaves everything (with a beacon) and stops. */
  close() {
    this.#beacon();
    this.#closed = true;
    this.#source?.close();
    this.#source = null;
    clearTimeout(this.#timer?.id);
    clearTimeout(this.#reopenTimer);
    clearTimeout(this.#idleTimer);
    for (const undo of this.#cleanup) undo();
  }
}
