/* sse_notify's service worker: shows each Web Push message of sse_notify as a notification.
 *
 * Registered by SSENotify's enablePush() from <base>/sse-notify-sw.js. A message is small
 * (at most 3 KB): {user_id, count, id, title, text, url, ids}. A newer one replaces the
 * notification an older one showed (same tag); a click focuses a tab on its url, or opens one.
 */
/* eslint-env serviceworker */
"use strict";

const safeUrl = (url) => (typeof url === "string" && /^https?:\/\//.test(url) ? url : self.registration.scope);

// A new version takes over at once (it controls no page: pushes and clicks are all it handles).
self.addEventListener("install", () => self.skipWaiting());

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch (e) {
    data = { title: event.data ? event.data.text() : "" };
  }
  const count = Number(data.count) || 1;
  const title = count > 1 ? count + " unread notices" : data.title || "New notice";
  const body = count > 1 ? (data.title ? "Newest: " + data.title : "") : data.text || "";
  event.waitUntil(
    self.registration.showNotification(title, {
      body,
      tag: "sse-notify:" + (data.user_id || ""),
      renotify: true,
      data: { url: safeUrl(data.url), id: data.id, ids: data.ids || [], count },
    })
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = safeUrl(event.notification.data && event.notification.data.url);
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((tabs) => {
      for (const tab of tabs) if (tab.url === url && "focus" in tab) return tab.focus();
      return self.clients.openWindow ? self.clients.openWindow(url) : undefined;
    })
  );
});
