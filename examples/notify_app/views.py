"""The host app's own pages: sign in and out, the live inbox, and a form to send a notice."""

from __future__ import annotations

import functools
import hmac
import secrets
import typing as t

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response

from sse_notify import kick, notify

__all__ = ["USERS", "bp"]

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

#: DEMO USERS (the password of each is its name + "-demo"): a real app has a user table.
#: Made with werkzeug.security.generate_password_hash.
USERS: dict[str, str] = {
    "alice": (
        "scrypt:32768:8:1$WpATQD9z1CN1Gzg5$"
        "73d2fae72ddf8aa2474f87e1fb17a8207fc8748438e5ccb9aac545840f5ae57f"
        "3f83d01c81d386e87d1ab77da6862df1b4ae3b9885a1b58b1496eb05307e5553"
    ),
    "bob": (
        "scrypt:32768:8:1$Bi0wNQwkixgm7bdn$"
        "cc991a2d7060241834a7370e234245fae15893e3094876e233fa5778d71a7250"
        "58b37aba490bf30e3e9a6e6c98f60591f1467f159525ad4ecc5067566ab5ee0a"
    ),
    "carol": (
        "scrypt:32768:8:1$6J1Bd3JCIrEB4EmO$"
        "4be1d6373595269c1e76380fcfc75179e5c2328d8178142bc81e856d03276fe2"
        "d6ab9186be748fdcc3307cf929f4202d02d51178d2c2c56abcee1bb0e000c4f4"
    ),
}
#: Checked when the name is unknown, so a wrong name takes as long as a wrong password.
_NOBODY = USERS["alice"]

MAX_TITLE = 120
MAX_TEXT = 1000

bp = Blueprint("notify_app", __name__)


def csrf_token() -> str:
    """This session's token for its forms (a hidden field), made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return t.cast(str, session["csrf"])


bp.add_app_template_global(csrf_token)


@bp.before_request
def _check_csrf() -> None:
    # Every form of this app posts the session's token; another site's form cannot know it.
    # (Only this blueprint's views: sse_notify's endpoints under /notify have their own checks.)
    if request.method == "POST":
        sent = request.form.get("csrf", "").encode()
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "").encode()):
            abort(400, "This form is stale (or came from another site): reload the page and try again.")


def login_required(view: F) -> F:
    """Send visitors who are not signed in to the sign-in page."""

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        if session.get("user") not in USERS:
            return redirect(url_for(".login"))
        return view(*args, **kwargs)

    return t.cast(F, wrapper)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | str:
    """The sign-in form; a right name and password start a session."""
    if request.method == "GET":
        if session.get("user") in USERS:
            return redirect(url_for(".index"))
        return render_template("notify_app/login.html", users=sorted(USERS))
    name = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    # scrypt takes about 0.1 s of CPU, during which this gevent worker's other
    # requests and streams wait: fine at the rate people sign in.
    if check_password_hash(USERS.get(name, _NOBODY), password) and name in USERS:
        session.clear()  # a fresh session (and CSRF token) for the signed-in user
        session["user"] = name
        return redirect(url_for(".index"))
    flash("Wrong name or password.", "error")
    return render_template("notify_app/login.html", users=sorted(USERS)), 401


@bp.post("/logout")
def logout() -> Response:
    """End the session, and close the user's open streams (their other tabs go to sign-in)."""
    user = session.get("user")
    session.clear()
    flash("Signed out.")
    response = redirect(url_for(".login"))
    if user in USERS:
        # Every stream of theirs, on every worker, once this answer (which clears the
        # session cookie) is sent: a kick that reached a tab first would send it to the
        # sign-in page with the old cookie, and back in.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        response.call_on_close(lambda: kick(user, app=app))
    return response


@bp.get("/")
@login_required
def index() -> str:
    """The signed-in user's live inbox, and a form to send someone a notice."""
    user = session["user"]
    others = [name for name in sorted(USERS) if name != user]
    return render_template(
        "notify_app/index.html",
        user=user,
        others=others,
        # Who has a stream open right now, on any worker (presence, one store query).
        online=current_app.extensions["sse_notify"].presence_many(others),
        # Where sse_notify's endpoints and browser client are mounted (/notify).
        notify_base=request.script_root + current_app.extensions["sse_notify"].url_prefix,
    )


@bp.post("/send")
@login_required
def send() -> Response:
    """Send a notice from the signed-in user to another one (the server publishes, never the browser)."""
    sender = session["user"]
    to = request.form.get("to", "")
    title = request.form.get("title", "").strip()
    text = request.form.get("text", "").strip()
    if to not in USERS or to == sender:
        flash("Choose someone to send the notice to.", "error")
    elif not title or len(title) > MAX_TITLE or len(text) > MAX_TEXT:
        flash(f"A notice needs a title of at most {MAX_TITLE} characters (text: {MAX_TEXT}).", "error")
    else:
        notify(to, {"title": title, "text": text, "from": sender})
        flash(f"Sent to {to}.")
    return redirect(url_for(".index"))
