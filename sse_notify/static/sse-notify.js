/*! sse-notify.js: the browser client of sse_notify (docs/CLIENT.md). No build step, no dependencies.
 *
 *   const inbox = SSENotify.connect({ user: "alice", getToken: async () => token });
 *   inbox.on("change", (state) => render(state));
 *
 * However many tabs a user has open, one of them (the leader, elected with the Web Locks API)
 * holds the EventSource and relays every event to the others over a BroadcastChannel. Every tab
 * applies the same events in the same order to the same model, so every tab shows the same
 * inbox. When the leader closes, a waiting tab gets the lock and resumes from the last event id.
 * Without Web Locks or BroadcastChannel, every tab keeps its own connection.
 */
(function (root, exports) {
  "use strict";

  const VERSION = "1.0.0";
  const STREAM_EVENTS = ["snapshot", "notice", "read", "archive", "remove", "snooze", "preferences", "reset"];
  const BACKOFF_MIN = 500;    // ms before the first reconnect after a failure (doubling, with jitter)
  const BACKOFF_MAX = 15000;
  const KEEP = 100;           // notices kept in the local list (the server's largest page)
  const PAGE = 20;            // notices fetched when the list is reloaded

  class HttpError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || "HTTP " + status);
      this.name = "HttpError";
      this.status = status;
      this.error = (body && body.error) || null;
    }
  }

  function asItem(notice, read, archived) {  // a notice as the list keeps it: with its flags
    const item = {
      id: notice.id, user_id: notice.user_id, created_at: notice.created_at, data: notice.data,
      read: notice.read === undefined ? read : Boolean(notice.read),
      archived: notice.archived === undefined ? archived : Boolean(notice.archived),
    };
    // Delivery fields, when the notice has them: category, critical, group, scheduled_id.
    for (const name of ["category", "critical", "group", "scheduled_id"]) {
      if (notice[name] !== undefined) item[name] = notice[name];
    }
    return item;
  }

  // The bytes of URL-safe base64 text (a VAPID public key).
  function base64UrlBytes(text) {
    const plain = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4));
    return Uint8Array.from(plain, (c) => c.charCodeAt(0));
  }

  // Of a grouped entry: "Ana and 19 others", from a function that names one data item.
  function groupLabel(item, name) {
    const group = item.group;
    const first = name(item.data);
    if (!group || group.count <= 1) return first;
    const others = group.count - 1;
    return first + " and " + others + (others === 1 ? " other" : " others");
  }

  const newestFirst = (a, b) => b.id - a.id;

  /* The inbox as one tab knows it. Pure: no I/O, no timers. The leader applies its stream's
   * events; followers apply the same events, relayed, so all tabs hold equal models. Items are
   * replaced, never changed in place, so an app may compare them by identity. */
  class Model {
    constructor(keep) {
      this.keep = keep;
      this.notices = [];      // not archived, newest first
      this.unread = 0;        // the server's count (the list may hold only part of the inbox)
      this.lastId = null;     // the newest notice id seen
      // The id of the newest event seen, where a new connection resumes: the notice id, or on
      // Redis Cluster a position per audience ("1052.1040": user, broadcasts, then topics).
      this.position = null;
      this.covered = -Infinity;  // notice ids up to this existed when the last snapshot was taken
      this.preferences = null;   // the user's preferences, from the snapshot and `preferences` events
    }

    save() {
      return {
        notices: this.notices, unread: this.unread, lastId: this.lastId, position: this.position,
        covered: this.covered, preferences: this.preferences,
      };
    }

    load(saved) {
      Object.assign(this, saved);
      // Structured clone keeps -Infinity, but a hand-made state may use null.
      if (typeof this.covered !== "number") this.covered = -Infinity;
    }

    find(id) {
      return this.notices.find((n) => n.id === id);
    }

    // Whether a notice event (its id, and the event's SSE id) is one this tab never saw; if so it
    // moves the resume point. Events come in id order, so a higher id is a new one; on Redis
    // Cluster (an SSE id of positions, "12.9") a broadcast may come after a user's later notice,
    // and there each new position is a new event (the server never sends one twice).
    advance(id, eventId) {
      const positional = typeof eventId === "string" && eventId.indexOf(".") >= 0;
      const fresh = positional ? eventId !== this.position : this.lastId === null || id > this.lastId;
      if (fresh) {
        if (this.lastId === null || id > this.lastId) this.lastId = id;
        if (eventId) this.position = eventId;
      }
      return fresh;
    }

    // Returns what the caller must do: emit `change`, emit a fresh `notice`, reload the list.
    apply(name, data, eventId) {
      const out = { changed: true, fresh: null, refetch: false, topic: null };
      if (name === "notice" && data.topic != null) {
        // A topic's notice: no inbox item, but its id moves the resume point like any other.
        out.changed = false;
        if (this.advance(Number(data.id), eventId)) out.topic = data;
        return out;
      }
      if (name === "notice" && data.returned) {
        // A snoozed notice is back, unread (an event without an id: it is no new notice).
        const item = asItem(data, false, false);
        this.notices = [item, ...this.notices.filter((n) => n.id !== item.id)].sort(newestFirst).slice(0, this.keep);
        this.unread = data.unread;
        out.fresh = item;
        return out;
      }
      if (name === "snapshot") {
        const listed = data.notices.filter((n) => !n.archived).map((n) => asItem(n, false, false));
        // The snapshot holds only the newest few. On a reconnect (a token renewal, say), older
        // notices this tab already lists stay, so the list does not shrink to the snapshot's
        // size; a reload of the list then confirms them (their marks may have changed meanwhile).
        const oldest = listed.length ? listed[listed.length - 1].id : -Infinity;
        const older = listed.length ? this.notices.filter((n) => n.id < oldest) : [];
        this.notices = [...listed, ...older].slice(0, this.keep);
        out.refetch = older.length > 0;
        this.unread = data.unread;
        if (data.preferences) this.preferences = data.preferences;
        // `cursor`: the newest id in the inbox when the snapshot was taken (archived ones
        // too), so a replayed notice at or below it is already counted. A fresh connection's
        // first id (the store's head) rides on the snapshot event as well.
        const bounds = [data.cursor, eventId ? Number(eventId) : NaN].filter(Number.isFinite);
        this.covered = Math.max(-Infinity, ...bounds, ...this.notices.map((n) => n.id));
        if (this.lastId === null && this.covered > -Infinity) this.lastId = this.covered;
        if (this.position === null && eventId) this.position = eventId;
      } else if (name === "notice") {
        const id = Number(data.id);
        let item = this.find(id);
        if (!item && !(id <= this.covered)) {
          // Published after the snapshot: a new, unread notice. A grouped one that `replaces`
          // the group's unread entry takes its place: the count stays, and the entry this tab
          // lists for that group goes (it may be an older one, if a fold was not streamed here).
          item = asItem(data, false, false);
          const key = data.group && data.group.replaces !== undefined ? data.group.key : null;
          const kept = key === null ? this.notices
            : this.notices.filter((n) => !(n.group && n.group.key === key && !n.read && n.id < id));
          this.notices = [item, ...kept].sort(newestFirst).slice(0, this.keep);
          if (key === null) this.unread += 1;
        } else if (!item) {
          // Replayed, but it existed at the snapshot and was not in it: archived, or older
          // than the snapshot's window. The snapshot's count already includes it.
          out.changed = false;
        }
        if (this.advance(id, eventId) && item && !item.read) out.fresh = item;
      } else if (name === "read") {
        const ids = new Set(data.ids);
        const hit = data.all ? (n) => n.id <= data.through : (n) => ids.has(n.id);
        this.notices = this.notices.map((n) => (hit(n) && n.read !== data.read ? { ...n, read: data.read } : n));
        this.unread = data.unread;
      } else if (name === "archive") {
        const ids = new Set(data.ids);
        if (data.archived) this.notices = this.notices.filter((n) => !ids.has(n.id));
        else out.refetch = true;  // back in the inbox: its data may not be here, reload the list
        this.unread = data.unread;
      } else if (name === "snooze") {
        const ids = new Set(data.ids);
        this.notices = this.notices.filter((n) => !ids.has(n.id));
        this.unread = data.unread;
      } else if (name === "remove") {
        const ids = new Set(data.ids);
        this.notices = this.notices.filter((n) => !ids.has(n.id));
        this.unread = data.unread;
      } else if (name === "preferences") {
        this.preferences = data;
      } else if (name === "reset") {
        // The server could not resume from lastId (expired, or unknown to the store: even a
        // higher one). Its new cursor is where to resume from now; the list is reloaded.
        this.lastId = Number(data.id);
        this.position = eventId || String(this.lastId);
        out.refetch = true;
      } else if (name === "list") {
        // A reloaded first page, kept with whatever arrived live while it was being fetched
        // (newer than the page, and than the last id seen when the fetch started).
        const page = data.notices.map((n) => asItem(n, false, false));
        const floor = Math.max(page.length ? page[0].id : -Infinity,
                               typeof data.since === "number" ? data.since : -Infinity);
        const newer = this.notices.filter((n) => n.id > floor);
        this.notices = [...newer, ...page].sort(newestFirst).slice(0, this.keep);
        this.unread = data.unread + newer.filter((n) => !n.read).length;
      } else {
        out.changed = false;
      }
      return out;
    }
  }

  class Inbox {
    constructor(options) {
      const opts = options || {};
      if (typeof opts.user !== "string" || !opts.user) throw new TypeError("SSENotify.connect: `user` is required");
      if (opts.getToken != null && typeof opts.getToken !== "function") {
        throw new TypeError("SSENotify.connect: `getToken` must be a function returning a token (or a Promise of one)");
      }
      if (opts.topics != null && !(Array.isArray(opts.topics) && opts.topics.every((t) => typeof t === "string" && t))) {
        throw new TypeError("SSENotify.connect: `topics` must be an array of topic names");
      }
      this.user = opts.user;
      this.topics = opts.topics ? [...new Set(opts.topics)].sort() : [];
      this.baseUrl = String(opts.baseUrl || "").replace(/\/+$/, "");
      this._getToken = opts.getToken || null;
      this._credentials = opts.withCredentials ? "include" : "same-origin";
      this._withCredentials = Boolean(opts.withCredentials);
      this._model = new Model(opts.keep > 0 ? Math.min(opts.keep, KEEP) : KEEP);
      this._handlers = Object.create(null);
      this._status = "connecting";
      this._reason = null;      // why the server closed the stream for good: "kicked" | "replaced"
      this._everLive = false;
      this._isLeader = false;
      this._synced = false;     // a follower applies relayed events once it has the leader's model
      this._closed = false;
      this._source = null;
      this._token = null;
      this._backoff = BACKOFF_MIN;
      this._timer = 0;
      this._liveTimer = 0;
      this._attempt = 0;        // bumped by every (re)connect: a late answer of an older one is dropped
      this._refetches = 0;
      this._channel = null;
      const shared = opts.shareTabs !== false && typeof BroadcastChannel === "function" &&
        Boolean(root.navigator && root.navigator.locks && root.navigator.locks.request);
      // Tabs share one connection per user and set of topics.
      this.lockName = "sse-notify:" + this.baseUrl + ":" + this.user + (this.topics.length ? "#" + this.topics.join(",") : "");
      this.mode = shared ? "shared" : "solo";
      // Start after the caller's synchronous code, so handlers attached right after
      // connect() see the first status.
      Promise.resolve().then(() => (shared ? this._elect() : this._lead()));
    }

    // -- public ----------------------------------------------------------

    get status() { return this._status; }
    get unread() { return this._model.unread; }
    get notices() { return this._model.notices.slice(); }
    get isLeader() { return this._isLeader; }
    get closeReason() { return this._reason; }
    get lastEventId() {
      const model = this._model;
      return model.position !== null ? model.position : model.lastId === null ? null : String(model.lastId);
    }
    get preferences() { return this._model.preferences; }
    get state() {
      return {
        unread: this.unread, notices: this.notices, status: this._status, reason: this._reason,
        preferences: this.preferences,
      };
    }

    on(type, fn) {
      (this._handlers[type] = this._handlers[type] || []).push(fn);
      return () => this.off(type, fn);
    }

    off(type, fn) {
      const list = this._handlers[type];
      if (list) this._handlers[type] = list.filter((f) => f !== fn);
    }

    markRead(id) { return this._mark(id, "read"); }
    markUnread(id) { return this._mark(id, "unread"); }
    archive(id) { return this._mark(id, "archive"); }
    unarchive(id) { return this._mark(id, "unarchive"); }
    markAllRead() { return this._request("POST", this._userPath("/notices/read-all")); }

    // Remove a notice from the inbox (by id), or cancel one that waits (by its scheduled_id).
    remove(id) {
      const text = String(id);
      if (!/^[A-Za-z0-9_-]+$/.test(text)) return Promise.reject(new TypeError("not a notice id: " + id));
      return this._request("DELETE", this._userPath("/notices/" + text));
    }

    // Hide a notice for `seconds` (or until a Date): it comes back unread, in every tab.
    snooze(id, seconds) {
      const n = Number(id);
      if (!Number.isSafeInteger(n) || n < 1) return Promise.reject(new TypeError("not a notice id: " + id));
      const query = new URLSearchParams();
      if (seconds instanceof Date) query.set("until", seconds.toISOString());
      else query.set("seconds", String(seconds));
      return this._request("POST", this._userPath("/notices/" + n + "/snooze"), query);
    }

    // Replace the user's preferences ({categories, default, quiet_hours}); every tab gets them.
    setPreferences(preferences) {
      return this._request("PUT", this._userPath("/preferences"), null, preferences);
    }

    // Mute or unmute one category on a channel (in-app by default), keeping the rest of the preferences.
    async setCategory(category, wanted, channel) {
      const current = this.preferences || await this._request("GET", this._userPath("/preferences"));
      const on = { [channel || "in_app"]: Boolean(wanted) };
      const categories = { ...current.categories, [category]: { ...(current.categories[category] || {}), ...on } };
      return this.setPreferences({ ...current, categories });
    }

    // Web Push (the server has SSE_NOTIFY_PUSH on): ask to show notifications, register the
    // service worker, subscribe with the server's key and give the subscription to the server,
    // so notices this user leaves unread reach the device. Resolves to the PushSubscription.
    async enablePush(options) {
      const opts = options || {};
      const nav = root.navigator;
      if (!nav || !nav.serviceWorker || typeof root.PushManager !== "function") {
        throw new Error("this browser cannot receive Web Push (or the page is not on https)");
      }
      if (typeof Notification === "function" && Notification.permission !== "granted") {
        if (await Notification.requestPermission() !== "granted") throw new Error("notifications are not allowed");
      }
      const registration = await nav.serviceWorker.register(opts.serviceWorker || this.baseUrl + "/sse-notify-sw.js");
      const { public_key: key } = await this._request("GET", "/push/public-key");
      let subscription = await registration.pushManager.getSubscription();
      if (!subscription) {
        subscription = await registration.pushManager.subscribe({
          userVisibleOnly: true, applicationServerKey: base64UrlBytes(key),
        });
      }
      await this._request("POST", this._userPath("/push-subscriptions"), null, subscription.toJSON());
      return subscription;
    }

    // Stop Web Push on this device: the server forgets the subscription, the browser drops it.
    async disablePush(options) {
      const opts = options || {};
      const nav = root.navigator;
      if (!nav || !nav.serviceWorker) return false;
      const registration = await nav.serviceWorker.getRegistration(opts.serviceWorker || this.baseUrl + "/sse-notify-sw.js");
      const subscription = registration && await registration.pushManager.getSubscription();
      if (!subscription) return false;
      await this._request("DELETE", this._userPath("/push-subscriptions"), null, { endpoint: subscription.endpoint });
      await subscription.unsubscribe();
      return true;
    }

    // One page of the inbox from the server: {notices, unread, next}.
    list(params) {
      const query = new URLSearchParams();
      for (const [name, value] of Object.entries(params || {})) {
        if (value !== undefined && value !== null && value !== false) query.set(name, String(value));
      }
      return this._request("GET", this._userPath("/notices"), query);
    }

    // Connect again now: after a kick, or to skip the wait of a backoff. Any tab may call it.
    reconnect() {
      if (this._closed) return;
      if (!this._isLeader) { this._post({ type: "reconnect" }); return; }
      this._reason = null;
      this._backoff = BACKOFF_MIN;
      this._connect(false);
    }

    // Stop for good in this tab; if it led, another tab takes over.
    close() {
      if (this._closed) return;
      this._closed = true;
      this._attempt++;
      clearTimeout(this._timer);
      this._dropSource();
      this._isLeader = false;  // before the status below: a closing tab tells no one
      if (this._abort) this._abort.abort();
      if (this._release) this._release();
      if (this._channel) this._channel.close();
      this._setStatus("closed");
    }

    // -- events for the app ----------------------------------------------

    _emit(type, value) {
      for (const fn of this._handlers[type] || []) {
        try {
          fn(value);
        } catch (err) {
          setTimeout(() => { throw err; });  // the app's bug shows in the console; this client goes on
        }
      }
    }

    _setStatus(status) {
      if (status === this._status) return;
      if (this._isLeader) this._post({ type: "status", status, reason: this._reason, everLive: this._everLive });
      this._status = status;
      this._emit("status", status);
      this._emit("change", this.state);
    }

    // Apply one event to the model and tell the app (leader and followers alike).
    _apply(name, data, eventId) {
      const out = this._model.apply(name, data, eventId);
      if (out.changed) this._emit("change", this.state);
      if (out.fresh) this._emit("notice", out.fresh);
      if (out.topic) this._emit("topic", out.topic);
      if (["read", "archive", "remove", "snooze", "preferences", "reset"].includes(name)) this._emit(name, data);
      return out;
    }

    _fail(err, during) {
      err.during = during;
      if (this._isLeader) this._post({ type: "error", message: err.message, status: err.status, during });
      this._emit("error", err);
    }

    // -- tabs ------------------------------------------------------------

    _elect() {
      if (this._closed) return;
      this._channel = new BroadcastChannel(this.lockName);
      this._channel.onmessage = (event) => this._receive(event.data);
      this._abort = new AbortController();
      root.navigator.locks.request(this.lockName, { signal: this._abort.signal }, () => {
        if (this._closed) return undefined;
        // Hold the lock until close() (or until the tab goes away: the browser releases it).
        return new Promise((release) => {
          this._release = release;
          this._lead();
        });
      }).catch((err) => {
        if (err && err.name === "AbortError") return;  // close() while waiting
        this._fail(err, "lock");
      });
      this._post({ type: "hello" });  // the leader, if there is one, answers with its model
    }

    _lead() {
      if (this._closed) return;
      this._isLeader = true;
      this._emit("leader", true);
      // Followers that asked before there was a leader (or of the one that left) get the model.
      this._post({ type: "state", state: this._shared() });
      if (this._reason) this._setStatus("closed");  // closed by the server: wait for reconnect()
      else this._connect(false);
    }

    _shared() {
      return { model: this._model.save(), status: this._status, reason: this._reason, everLive: this._everLive };
    }

    _post(message) {
      if (this._channel && !this._closed) this._channel.postMessage(message);
    }

    _receive(msg) {
      if (this._closed || !msg) return;
      if (this._isLeader) {
        if (msg.type === "hello") this._post({ type: "state", state: this._shared() });
        else if (msg.type === "reconnect") this.reconnect();
        return;
      }
      if (msg.type === "state") {
        this._model.load(msg.state.model);
        this._synced = true;
        this._reason = msg.state.reason;
        this._everLive = msg.state.everLive;
        this._emit("change", this.state);
        this._setStatus(msg.state.status);
      } else if (msg.type === "event") {
        // Events the leader sent before its model reached this tab are in that model already.
        if (this._synced) this._apply(msg.name, msg.data, msg.eventId);
      } else if (msg.type === "status") {
        this._reason = msg.reason;
        this._everLive = msg.everLive;
        this._setStatus(msg.status);
      } else if (msg.type === "error") {
        const err = new Error(msg.message);
        err.status = msg.status;
        this._fail(err, msg.during);
      }
    }

    // -- the stream (leader only) -----------------------------------------

    _dispatch(name, data, eventId) {
      this._post({ type: "event", name, data, eventId });
      if (this._apply(name, data, eventId).refetch) this._refetch();
    }

    _dropSource() {
      clearTimeout(this._liveTimer);
      if (this._source) this._source.close();
      this._source = null;
    }

    _live() {
      clearTimeout(this._liveTimer);
      // Only a stream that works ends the backoff: a full or stopping server must not be asked
      // again every half second.
      this._backoff = BACKOFF_MIN;
      this._everLive = true;
      this._setStatus("live");
    }

    // quiet: keep showing "live" (a token renewal, not an outage).
    async _connect(quiet) {
      clearTimeout(this._timer);
      this._dropSource();
      const attempt = ++this._attempt;
      if (!quiet) this._setStatus(this._everLive ? "reconnecting" : "connecting");
      let token = null;
      if (this._getToken) {
        try {
          token = await this._getToken();
        } catch (err) {
          if (attempt !== this._attempt) return;
          this._fail(err instanceof Error ? err : new Error(String(err)), "token");
          if (attempt !== this._attempt || this._closed) return;  // the app closed or reconnected us
          this._setStatus(this._everLive ? "reconnecting" : "connecting");
          this._retry();
          return;
        }
        if (attempt !== this._attempt) return;
        this._token = token;
      }
      const query = new URLSearchParams();
      if (token) query.set("token", token);
      if (this.topics.length) query.set("topics", this.topics.join(","));
      if (this.lastEventId !== null) query.set("last_event_id", this.lastEventId);
      const source = new EventSource(this._url(this._path("/connection/"), query),
                                     { withCredentials: this._withCredentials });
      this._source = source;
      const mine = () => source === this._source;
      source.onopen = () => {
        // Not "live" yet: a stopping or full server also answers 200, then closes at once. The
        // first event (the snapshot) says the stream works; a server without snapshots, that
        // the stream stayed open a moment.
        if (mine()) this._liveTimer = setTimeout(() => mine() && this._live(), 1000);
      };
      source.onerror = () => {
        // Handled here rather than by EventSource's own retry: a new token each time (the old
        // one may be what failed: a 401 ends an EventSource), and a backoff while the server is down.
        if (!mine()) return;
        this._dropSource();
        this._setStatus(this._everLive ? "reconnecting" : "connecting");
        this._retry();
      };
      for (const name of STREAM_EVENTS) {
        source.addEventListener(name, (event) => {
          if (!mine()) return;
          this._live();
          let data;
          try {
            data = JSON.parse(event.data);
          } catch (err) {
            return;  // not ours to understand
          }
          this._dispatch(name, data, event.lastEventId);
        });
      }
      source.addEventListener("close", (event) => {
        if (!mine()) return;
        let reason = "";
        try { reason = JSON.parse(event.data).reason; } catch (err) { /* an unknown reason */ }
        this._dropSource();
        if (reason === "token_expired") {
          this._connect(true);
        } else if (reason === "kicked" || reason === "replaced") {
          this._reason = reason;  // not coming back by itself: the person decides (reconnect())
          this._setStatus("closed");
        } else {
          this._setStatus(this._everLive ? "reconnecting" : "connecting");
          this._retry();
        }
      });
    }

    _retry() {
      clearTimeout(this._timer);
      const delay = this._backoff * (0.75 + Math.random() / 2);
      this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX);
      this._timer = setTimeout(() => this._connect(false), delay);
    }

    async _refetch() {
      const mine = ++this._refetches;
      const limit = Math.min(KEEP, Math.max(PAGE, this._model.notices.length));
      const since = this._model.lastId;
      try {
        const page = await this.list({ limit });
        if (mine === this._refetches && this._isLeader && !this._closed) {
          this._dispatch("list", { ...page, since }, "");
        }
      } catch (err) {
        if (!this._closed) this._fail(err, "list");
      }
    }

    // -- HTTP --------------------------------------------------------------

    _path(prefix) { return prefix + encodeURIComponent(this.user); }
    _userPath(rest) { return this._path("/users/") + rest; }

    _url(path, query) {
      const qs = query && query.toString();
      return this.baseUrl + path + (qs ? "?" + qs : "");
    }

    _mark(id, action) {
      const n = Number(id);
      if (!Number.isSafeInteger(n) || n < 1) return Promise.reject(new TypeError("not a notice id: " + id));
      return this._request("POST", this._userPath("/notices/" + n + "/" + action));
    }

    // With this tab's token; on a 401 (expired), once more with a new one.
    async _request(method, path, query, payload) {
      for (let tries = 0; ; tries++) {
        if (this._getToken && (!this._token || tries > 0)) this._token = await this._getToken();
        const headers = { Accept: "application/json" };
        if (this._token) headers.Authorization = "Bearer " + this._token;
        const init = { method, headers, credentials: this._credentials };
        if (payload !== undefined) {
          headers["Content-Type"] = "application/json";
          init.body = JSON.stringify(payload);
        }
        const response = await fetch(this._url(path, query), init);
        const body = await response.json().catch(() => null);
        if (response.ok) return body;
        if (response.status !== 401 || !this._getToken || tries > 0) throw new HttpError(response.status, body);
      }
    }
  }

  const api = {
    version: VERSION,
    connect: (options) => new Inbox(options),
    groupLabel,
    HttpError,
  };
  exports.SSENotify = api;  // a script tag: the global SSENotify (the ES module, /sse-notify.mjs, exports it)
  return api;
})(typeof self !== "undefined" ? self : this, typeof self !== "undefined" ? self : this);
