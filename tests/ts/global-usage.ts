// The client from a script tag: the global SSENotify, typed by the same declarations.
/// <reference path="../../sse_notify/static/sse-notify.d.ts" />

const tab = SSENotify.connect({ user: "bob", shareTabs: false });
tab.on("status", (status) => document.title = status);
tab.close();
