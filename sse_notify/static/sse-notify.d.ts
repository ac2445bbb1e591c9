/**
 * Types of sse-notify.js, the browser client of sse_notify (docs/CLIENT.md).
 *
 * As an ES module:  import SSENotify, { connect } from "/sse-notify.mjs";
 * From a script tag: the global `SSENotify` (this file declares it too).
 */

export as namespace SSENotify;

/** The JSON data of a notice: whatever the publisher sent (an object). */
export type NoticeData = { [key: string]: unknown };

/** Notices to one user with the same `group` key, folded into one entry. */
export interface Group {
  key: string;
  count: number;
  first_at?: string;
  last_at?: string;
  /** The newest data items, newest first (at most 5). */
  recent?: NoticeData[];
  /** The id of the entry this one replaces. */
  replaces?: number;
}

/** A stored notice, as the stream and the inbox give it. */
export interface Notice {
  id: number;
  /** `null` for a broadcast or a topic's notice. */
  user_id: string | null;
  /** Set on a topic's notice (`topic` events). */
  topic?: string;
  created_at: string;
  data: NoticeData;
  category?: string;
  critical?: true;
  scheduled_id?: string;
  group?: Group;
  /** A snoozed notice back at its time (no new id). */
  returned?: "snooze";
}

/** A notice in the inbox, with its flags. */
export interface InboxItem extends Notice {
  read: boolean;
  archived: boolean;
}

export type Channel = "in_app" | "email" | "push" | "webhook";

export interface QuietHours {
  /** "22:00" */
  start: string;
  /** "07:00" */
  end: string;
  /** An IANA zone, e.g. "Europe/Berlin". */
  timezone: string;
}

export interface Preferences {
  categories: { [category: string]: Partial<Record<Channel, boolean>> };
  default: Partial<Record<Channel, boolean>>;
  quiet_hours: QuietHours | null;
}

export type Status = "connecting" | "live" | "reconnecting" | "closed";

export interface State {
  unread: number;
  notices: InboxItem[];
  status: Status;
  reason: "kicked" | "replaced" | null;
  preferences: Preferences | null;
}

export interface ConnectOptions {
  /** The user id whose inbox this is. */
  user: string;
  /** A connection token for `user` (called before every connect, and on expiry). */
  getToken?: () => string | Promise<string>;
  /** Where the server's routes are: "" (same origin), "/notify", or "https://notify.example.com". */
  baseUrl?: string;
  /** Topics to follow as well (`?topics=`): the token must grant them. Their notices are `topic` events. */
  topics?: string[];
  /** `false`: one connection per tab, no leader election. */
  shareTabs?: boolean;
  /** Send cookies cross-origin. */
  withCredentials?: boolean;
  /** Most notices kept in the local list (100). */
  keep?: number;
}

export interface ClientError extends Error {
  /** What failed: getting a token, or reloading the list. */
  during?: "token" | "list";
  status?: number;
}

/** The `data` of `read`, `archive`, `remove` and `snooze` events. */
export interface StateChange {
  ids: number[];
  unread: number;
  read?: boolean;
  archived?: boolean;
  removed?: boolean;
  snoozed?: boolean;
  until?: string;
  all?: true;
  through?: number;
}

export interface Events {
  change: State;
  notice: InboxItem;
  /** A notice of a followed topic (no inbox item), live or replayed after a reconnect. */
  topic: Notice;
  status: Status;
  read: StateChange;
  archive: StateChange;
  remove: StateChange;
  snooze: StateChange;
  preferences: Preferences;
  reset: { reason: string; last_event_id: string | null; id: number };
  error: ClientError;
  leader: true;
}

export interface InboxPage {
  notices: InboxItem[];
  unread: number;
  next: number | null;
}

export interface ListParams {
  limit?: number;
  before?: number;
  unread?: boolean;
  archived?: boolean;
  snoozed?: boolean;
}

export interface Inbox {
  readonly user: string;
  readonly baseUrl: string;
  readonly mode: "shared" | "solo";
  readonly status: Status;
  readonly unread: number;
  readonly notices: InboxItem[];
  readonly isLeader: boolean;
  readonly closeReason: "kicked" | "replaced" | null;
  /** Where a new connection resumes: a notice id, or on Redis Cluster a position per audience ("1052.1040"). */
  readonly lastEventId: string | null;
  readonly preferences: Preferences | null;
  readonly state: State;
  /** Returns a function that removes the handler. */
  on<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): void;
  markRead(id: number): Promise<{ id: number; read: boolean; unread: number }>;
  markUnread(id: number): Promise<{ id: number; read: boolean; unread: number }>;
  archive(id: number): Promise<{ id: number; archived: boolean; unread: number }>;
  unarchive(id: number): Promise<{ id: number; archived: boolean; unread: number }>;
  markAllRead(): Promise<{ read: true; through: number; unread: number }>;
  remove(id: number | string): Promise<unknown>;
  snooze(id: number, seconds: number | Date): Promise<{ id: number; snoozed_until: string; unread: number }>;
  setPreferences(preferences: Preferences): Promise<Preferences>;
  setCategory(category: string, wanted: boolean, channel?: Channel): Promise<Preferences>;
  enablePush(options?: { serviceWorker?: string }): Promise<PushSubscription>;
  disablePush(options?: { serviceWorker?: string }): Promise<boolean>;
  list(params?: ListParams): Promise<InboxPage>;
  reconnect(): void;
  close(): void;
}

/** An error answer of the server: its status, its `error` code, its `detail` as the message. */
export declare class HttpError extends Error {
  constructor(status: number, body: { error?: string; detail?: string } | null);
  readonly status: number;
  readonly error: string | null;
}

export declare const version: string;
export declare function connect(options: ConnectOptions): Inbox;
/** "Ana and 19 others", from a function that names one data item. */
export declare function groupLabel(item: InboxItem, name: (data: NoticeData) => string): string;

declare const SSENotify: {
  version: typeof version;
  connect: typeof connect;
  groupLabel: typeof groupLabel;
  HttpError: typeof HttpError;
};
export default SSENotify;
