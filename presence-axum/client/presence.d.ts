// Types of presence.js, the browser client of presence-axum.

/** Members and connections of a channel. */
export interface Counts {
  members: number;
  connections: number;
}

/** One connection (a tab) of a member, as viewers see it: no id. */
export interface Connection {
  meta: Record<string, unknown>;
  /** Milliseconds since the Unix epoch. */
  joined_at: number;
}

/** A member of a channel with the app's record (`profile`). */
export interface Member {
  id: string;
  profile: unknown;
  joined_at: number;
  connections: Connection[];
}

export interface EnterOptions {
  /** The meta of this tab's connection (typing, away); merged across handles. */
  meta?: Record<string, unknown>;
  /** Leave while the tab is hidden or idle, enter again after. */
  onlyWhileActive?: boolean;
}

export interface PresenceClientOptions {
  /** Where the router is nested. Default "/presence". */
  base?: string;
  /** A token the `/leave` beacon sends in its body (`token=`). */
  token?: () => string | undefined;
  /** Heartbeat until the server says otherwise. Default 30000. */
  heartbeatMs?: number;
  /** Changes within this are sent in one request. Default 500. */
  debounceMs?: number;
  /** At most one request per this. Default 1000. */
  throttleMs?: number;
  /** No input for this long makes the tab idle. Default 120000. */
  idleMs?: number;
  fetch?: typeof fetch;
  EventSource?: typeof EventSource;
  storage?: Storage;
  window?: Window;
  document?: Document;
  navigator?: Navigator;
}

/** One component's handle of a channel. */
export class PresenceChannel {
  readonly name: string;
  readonly entered: boolean;
  readonly subscribed: boolean;
  /** Resolves with the server's answer: false for missing, hidden, not allowed, full. */
  enter(options?: EnterOptions): Promise<boolean>;
  leave(): Promise<boolean>;
  subscribe(): void;
  unsubscribe(): void;
  /** Undefined until subscribed and the state arrived; empty when count-only. */
  readonly members: Member[] | undefined;
  readonly count: number | undefined;
  readonly counts: Counts | undefined;
  readonly countOnly: boolean | undefined;
  /** The channel does not exist or may not be seen (indistinguishable). */
  readonly missing: boolean | undefined;
  /** The server has this tab present in the channel. */
  readonly present: boolean;
  on(event: "change", fn: (channel: PresenceChannel) => void): () => void;
  off(event: "change", fn: (channel: PresenceChannel) => void): void;
}

export class PresenceClient {
  constructor(options?: PresenceClientOptions);
  /** This tab's connection id (kept in sessionStorage). */
  readonly clientId: string;
  /** The tab is visible and not idle. */
  readonly active: boolean;
  heartbeatMs: number;
  debounceMs: number;
  throttleMs: number;
  idleMs: number;
  channel(name: string): PresenceChannel;
  /** Leaves everything (with a beacon) and stops. */
  close(): void;
}

/** The pure merge of `state` and `diff` events, exported for tests. */
export interface View {
  ready: boolean;
  missing: boolean;
  countOnly: boolean;
  epoch: string | null;
  seq: number;
  members: Map<string, Member>;
  counts: Counts;
  pending: { epoch: string; seq: number; data: unknown }[];
}
export function createView(): View;
export function parseId(id: unknown): [string, number] | null;
export function receive(view: View, type: "state" | "diff", data: unknown): "ok" | "resync";
export function listMembers(view: View): Member[];
