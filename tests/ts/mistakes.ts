// What the declarations must refuse: each line below is an error tsc has to report.
import { connect } from "/sse-notify.mjs";

// @ts-expect-error: `user` is required
connect({ baseUrl: "" });
const inbox = connect({ user: "carol" });
// @ts-expect-error: there is no such event
inbox.on("notices", () => undefined);
// @ts-expect-error: a status is not a number
inbox.on("status", (status: number) => status);
// @ts-expect-error: channels are in_app, email, push, webhook
void inbox.setCategory("promo", false, "sms");
// @ts-expect-error: a notice id is a number
void inbox.markRead("7");
// @ts-expect-error: topics are a list of names
connect({ user: "carol", topics: "match-42" });
