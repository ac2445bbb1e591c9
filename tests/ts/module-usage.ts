// The client as an ES module, typed by sse-notify.d.ts (make test type-checks this with tsc).
import SSENotify, { connect, groupLabel, HttpError, type Inbox, type InboxItem, type Preferences } from "/sse-notify.mjs";

const inbox: Inbox = connect({ user: "alice", getToken: async () => "token", baseUrl: "/notify", keep: 50 });
const off: () => void = inbox.on("change", (state) => {
  const unread: number = state.unread;
  const first: InboxItem | undefined = state.notices[0];
  const title = first?.data["title"];
  console.log(unread, title, state.status === "live", first?.group?.count);
});
off();
inbox.on("notice", (notice) => console.log(notice.id, notice.user_id ?? "everyone", notice.read));
inbox.on("error", (err) => console.log(err.during, err.status));
inbox.on("reset", (reset) => console.log(reset.reason, reset.last_event_id));
const board: Inbox = connect({ user: "viewer-1", topics: ["match-42"], getToken: () => "token" });
board.on("topic", (notice) => console.log(notice.topic ?? "", notice.data["home"], notice.id));

async function use(): Promise<void> {
  const marked = await inbox.markRead(7);
  console.log(marked.unread);
  const page = await inbox.list({ limit: 20, unread: true });
  console.log(page.next ?? "last page", page.notices.length);
  const preferences: Preferences = await inbox.setCategory("promo", false, "email");
  console.log(preferences.quiet_hours?.timezone);
  await inbox.snooze(7, new Date());
  await inbox.setPreferences({ categories: { news: { in_app: true, push: false } }, default: {}, quiet_hours: null });
  const subscription: PushSubscription = await inbox.enablePush({ serviceWorker: "/notify/sse-notify-sw.js" });
  console.log(subscription.endpoint, await inbox.disablePush());
  try {
    await inbox.remove("s3f00");
  } catch (err) {
    if (err instanceof HttpError) console.log(err.status, err.error);
  }
}
void use();
console.log(groupLabel(inbox.notices[0], (data) => String(data["actor"])), SSENotify.version);
