// The signed-in user's live inbox, with sse_notify's browser client (/notify/sse-notify.js).
//
// No token: the stream and the inbox requests (mark read) carry this site's session
// cookie, and the app's authorize hook lets in the signed-in user, and nobody else.
(() => {
  "use strict";
  const root = document.getElementById("inbox");
  const list = document.getElementById("notices");
  const empty = document.getElementById("empty");
  const badge = document.getElementById("unread");
  const pill = document.getElementById("status");

  const inbox = SSENotify.connect({ user: root.dataset.user, baseUrl: root.dataset.notify });

  inbox.on("change", ({ unread, notices }) => {
    badge.textContent = String(unread);
    badge.hidden = unread === 0;
    empty.hidden = notices.length > 0;
    list.replaceChildren(...notices.map(item));
  });

  inbox.on("status", (status) => {
    pill.textContent = status;
    pill.dataset.status = status;
    // Signed out in another tab: logging out kicked this user's streams, so go to the
    // sign-in page as well (if this browser is still signed in, it comes straight back).
    if (status === "closed" && inbox.closeReason === "kicked") location.assign(root.dataset.login);
  });

  document.getElementById("read-all").addEventListener("click", () => {
    inbox.markAllRead().catch((err) => console.error("mark all read:", err));
  });

  function item(notice) {
    const data = notice.data || {};
    const li = document.createElement("li");
    li.className = notice.read ? "read" : "unread";
    li.dataset.id = String(notice.id);
    const title = document.createElement("b");
    title.className = "title";
    title.textContent = String(data.title || "(no title)");
    const meta = document.createElement("small");
    const when = new Date(notice.created_at).toLocaleString();
    meta.textContent = (data.from ? `from ${data.from}` : "to everyone") + " · " + when;
    li.append(title, " ", meta);
    if (data.text) {
      const text = document.createElement("p");
      text.textContent = String(data.text);
      li.append(text);
    }
    if (!notice.read) {
      const button = document.createElement("button");
      button.className = "ghost";
      button.textContent = "Mark read";
      button.addEventListener("click", () => {
        inbox.markRead(notice.id).catch((err) => console.error("mark read:", err));
      });
      li.append(button);
    }
    return li;
  }
})();
