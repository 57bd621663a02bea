#!/usr/bin/env python3
"""HotelMate on bellhop, end to end, the way HotelMate's Django backend would use it.

A fake FCM (token endpoint verifying the service account's RS256 JWT with
tests/fixtures/fcm-test-key.pub.pem; `messages:send` recording every body) runs in this
process. bellhop runs with examples/hotelmate/bellhop.toml rendered to point at it. Staff and
their FCM tokens are registered through bellhop's directory API (signed like the Pusher HTTP
API); one porter has the app open (a real pusher-js client, tests/examples/staff_client.mjs,
signed in with pusher.signin()); events are triggered with the official `pusher` Python server
SDK. Then the pushes, the live in-app items and the delivery records are checked.

    python3 -m pip install pyjwt cryptography pusher
    (cd tests/sdk && npm ci)   # pusher-js and the pusher Node SDK for staff_client.mjs (Node 20)
    BELLHOP_BIN=/path/to/bellhop python3 tests/examples/hotelmate.py

Prints one line per check and, last, `N passed, M failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

try:
    import jwt  # PyJWT (RS256 needs `cryptography`)
    import pusher
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing a package ({e}): python3 -m pip install pyjwt cryptography pusher")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tests/examples/common.py, what booking.py shares)
from common import ROOT, WAIT, Bellhop, Checks, Fatal, log, wait_until  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CONFIG_TEMPLATE = ROOT / "examples" / "hotelmate" / "bellhop.toml"
STAFF_CLIENT = ROOT / "tests" / "examples" / "staff_client.mjs"
SDK_MODULES = ROOT / "tests" / "sdk" / "node_modules"

# Must match examples/hotelmate/bellhop.toml.
APP_ID = "1001"
KEY = "hotelmate-key"
SECRET = "hotelmate-secret-change-me"

PROJECT = "hotelmate-test"
CLIENT_EMAIL = "bellhop@hotelmate-test.iam.gserviceaccount.com"
KEY_ID = "test-key-1"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

HOTEL = "grand-hotel"

# The staff: 41 writes in the staff chat; 42 (porter) and 44 (housekeeping) have the app
# closed; 43 (porter) has it open.
STAFF = {
    "41": {"display_name": "Aoife Byrne", "email": "aoife@grand-hotel.example", "token": "tok-41-phone"},
    "42": {"display_name": "Seán Murphy", "email": "sean@grand-hotel.example", "token": "tok-42-phone"},
    "43": {"display_name": "Conor Walsh", "email": "conor@grand-hotel.example", "token": "tok-43-phone"},
    "44": {"display_name": "Niamh Kelly", "email": "niamh@grand-hotel.example", "token": "tok-44-phone"},
}
CONNECTED = "43"


# ----------------------------------------------------------------------------------------
# The fake FCM
# ----------------------------------------------------------------------------------------


class FakeFcm:
    """`POST /token`: checks the JWT bearer grant (RS256, kid, iss, aud, scope) and hands out
    `ya29.fake-N`. `POST /v1/projects/{PROJECT}/messages:send`: wants a token it handed out,
    records the body, and answers as FCM does (a known device token: 200 with a message name;
    another: 400 INVALID_ARGUMENT)."""

    def __init__(self, public_pem: bytes, known_tokens: set[str]) -> None:
        self.public_pem = public_pem
        self.known = known_tokens
        self.lock = threading.Lock()
        self.issued: list[str] = []
        self.token_requests = 0
        self.rejected_tokens: list[str] = []  # why a token request was refused
        self.unauthorized_sends = 0
        self.sends: list[dict] = []  # every messages:send body, parsed
        fake = self

        class Handler(common.QuietHandler):
            def reply(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=UTF-8")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                try:
                    status, answer = fake.handle(self.path, self.headers, body)
                except Exception as e:  # a bug here must not look like a bellhop bug
                    status, answer = 500, {"error": {"code": 500, "message": f"fake FCM: {e!r}"}}
                self.reply(status, answer)

        self.server = common.serve(Handler, "fake-fcm")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token_url = self.url + "/token"

    def stop(self) -> None:
        common.stop_server(self.server)

    def handle(self, path: str, headers, body: bytes):
        if path == "/token":
            return self.token(body)
        if path == f"/v1/projects/{PROJECT}/messages:send":
            return self.send(headers, body)
        return 404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}}

    def token(self, body: bytes):
        form = urllib.parse.parse_qs(body.decode())
        with self.lock:
            self.token_requests += 1
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self.refuse(f"grant_type {grant!r}", 400, "unsupported_grant_type")
        assertion = form.get("assertion", [""])[0]
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_pem,
                algorithms=["RS256"],
                audience=self.token_url,
                issuer=CLIENT_EMAIL,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError as e:
            return self.refuse(f"JWT: {e}", 400, "invalid_grant", "Invalid JWT Signature.")
        if header.get("kid") != KEY_ID:
            return self.refuse(f"kid {header.get('kid')!r}", 400, "invalid_grant")
        if claims.get("scope") != SCOPE:
            return self.refuse(f"scope {claims.get('scope')!r}", 400, "invalid_scope")
        if not (claims["iat"] <= time.time() + 60 and claims["exp"] - claims["iat"] <= 3600):
            return self.refuse(f"iat/exp {claims['iat']}/{claims['exp']}", 400, "invalid_grant")
        with self.lock:
            t = f"ya29.fake-{len(self.issued) + 1}"
            self.issued.append(t)
        return 200, {"access_token": t, "expires_in": 3599, "token_type": "Bearer"}

    def refuse(self, why: str, status: int, error: str, description: str = ""):
        with self.lock:
            self.rejected_tokens.append(why)
        return status, {"error": error, "error_description": description or why}

    def send(self, headers, body: bytes):
        bearer = headers.get("authorization", "")
        with self.lock:
            known = any(bearer == f"Bearer {t}" for t in self.issued)
            if not known:
                self.unauthorized_sends += 1
        if not known:
            return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                   "message": "Request had invalid authentication credentials.",
                                   "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                                "errorCode": "THIRD_PARTY_AUTH_ERROR"}]}}
        msg = json.loads(body)
        token = msg.get("message", {}).get("token", "")
        with self.lock:
            self.sends.append(msg)
            n = len(self.sends)
        if token not in self.known:
            return 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                   "message": "The registration token is not a valid FCM registration token",
                                   "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                                "errorCode": "INVALID_ARGUMENT"}]}}
        return 200, {"name": f"projects/{PROJECT}/messages/{n}"}

    def messages(self, token: str | None = None, kind: str | None = None) -> list[dict]:
        """The `message` objects sent, optionally to one device token and of one data type."""
        with self.lock:
            out = [s["message"] for s in self.sends]
        if token is not None:
            out = [m for m in out if m.get("token") == token]
        if kind is not None:
            out = [m for m in out if m.get("data", {}).get("type") == kind]
        return out


# ----------------------------------------------------------------------------------------
# bellhop
# ----------------------------------------------------------------------------------------


def api(base: str, method: str, path: str, body=None, params: dict | None = None):
    """A request to bellhop's HTTP API, signed with this app's key and secret (common.api)."""
    return common.api(KEY, SECRET, base, method, path, body, params)


def deliveries(base: str, user: str, rule: str) -> list[dict]:
    """The user's deliveries made by one rule, from GET /apps/{id}/users/{user}/notifications."""
    status, body = api(base, "GET", f"/apps/{APP_ID}/users/{user}/notifications")
    if status != 200:
        raise Fatal(f"GET notifications of {user}: {status} {body}")
    return [
        d for n in body["notifications"] if n.get("rule") == rule for d in n["deliveries"]
    ]


def settled(base: str, user: str, rule: str, n: int) -> list[dict]:
    """Waits until the user has n deliveries of the rule, none pending/held/scheduled."""
    last: list[dict] = []

    def done():
        nonlocal last
        last = deliveries(base, user, rule)
        return len(last) >= n and all(d["state"] not in ("pending", "held", "scheduled") for d in last)

    wait_until(done)
    return last


def states(ds: list[dict]) -> dict[str, tuple[str, str]]:
    return {d["channel"]: (d["state"], d.get("reason") or "") for d in ds}


# ----------------------------------------------------------------------------------------
# A staff app's connection: pusher-js, in tests/examples/staff_client.mjs
# ----------------------------------------------------------------------------------------


class StaffClient:
    """A real pusher-js client (`node tests/examples/staff_client.mjs`) signed in as a staff
    member with pusher.signin() and subscribed to the given channels. It prints a JSON line per
    event it receives (`{"channel", "event", "data"}`, data as pusher-js hands it to the app,
    events on pusher.user under `#server-to-user-{id}`), `{"ready": true}` once signed in and
    subscribed, and `{"error": ...}` on trouble; it exits when its stdin closes."""

    def __init__(self, port: int, user_id: str, user_info: dict, channels: list[str],
                 log_path: Path) -> None:
        if not (SDK_MODULES / "pusher-js").is_dir() or not (SDK_MODULES / "pusher").is_dir():
            raise Fatal(f"pusher-js and pusher are not in {SDK_MODULES}: (cd tests/sdk && npm ci)")
        cmd = ["node", str(STAFF_CLIENT.relative_to(ROOT)), "--host", "127.0.0.1",
               "--port", str(port), "--app-id", APP_ID, "--key", KEY, "--secret", SECRET,
               "--user", user_id, "--user-info", json.dumps(user_info, separators=(",", ":")),
               "--timeout-ms", str(int(WAIT * 1000)), *channels]
        self.cond = threading.Condition()
        self.frames: list[dict] = []  # the event lines
        self.errors: list[str] = []   # the error lines, and any line that is not JSON
        self.ready: dict | None = None
        self.exited = False
        self.log_path = log_path
        self.stderr = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                start_new_session=True,
            )
        except OSError as e:
            self.stderr.close()
            raise Fatal(f"could not start {' '.join(cmd[:2])}: {e} (Node 20 is needed)") from e
        threading.Thread(target=self.read, name="staff-client-stdout", daemon=True).start()
        end = time.monotonic() + WAIT + 5  # the client gives up by itself after WAIT
        with self.cond:
            while self.ready is None and not self.exited and not self.errors:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            ready, errors = self.ready, list(self.errors)
        if ready is None or errors:
            self.close()
            raise Fatal(f"the pusher-js staff client of {user_id} did not get ready "
                        f"(exit code {self.proc.returncode}): {errors or 'no ready line'}\n"
                        f"its stderr:\n{self.stderr_tail()}")
        self.socket_id = ready.get("socket_id")

    def read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"error": f"not a JSON line: {line}"}
            with self.cond:
                if not isinstance(msg, dict) or "error" in msg:
                    self.errors.append(msg.get("error") if isinstance(msg, dict) else line)
                elif msg.get("ready"):
                    self.ready = msg
                elif "event" in msg:
                    self.frames.append(msg)
                self.cond.notify_all()
        with self.cond:
            self.exited = True
            self.cond.notify_all()

    def wait(self, pred, timeout: float = WAIT):
        """The first event matching pred, waiting up to timeout for it."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for f in self.frames:
                    if pred(f):
                        return f
                left = end - time.monotonic()
                if left <= 0 or self.exited:
                    return None
                self.cond.wait(left)

    def matching(self, pred) -> list[dict]:
        with self.cond:
            return [f for f in self.frames if pred(f)]

    def stderr_tail(self, n: int = 20) -> str:
        return common.tail(self.log_path, self.stderr, n, "(none)")

    def close(self) -> None:
        """Closes its stdin (it disconnects and exits), killing it if it does not go in 5 s."""
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait(timeout=5)
        finally:
            if self.proc.poll() is None:  # interrupted while waiting: never leave it behind
                self.proc.kill()
            self.stderr.close()


def event_on(channel: str, event: str):
    return lambda f: f.get("channel") == channel and f.get("event") == event


def inbox_push(user: str, kind: str):
    """A bellhop:notification on #server-to-user-{user} whose item has this type."""
    def pred(f):
        if f.get("channel") != f"#server-to-user-{user}" or f.get("event") != "bellhop:notification":
            return False
        try:
            return f["data"]["item"]["type"] == kind
        except (KeyError, TypeError):
            return False
    return pred


# ----------------------------------------------------------------------------------------
# The scenario
# ----------------------------------------------------------------------------------------


def run(c: Checks, tmp: Path, binary: str) -> None:
    common.no_proxy_for_localhost()

    fcm = FakeFcm((FIXTURES / "fcm-test-key.pub.pem").read_bytes(),
                  {s["token"] for s in STAFF.values()})
    server = None
    try:
        sa = tmp / "service-account.json"
        sa.write_text(json.dumps({
            "type": "service_account", "project_id": PROJECT, "private_key_id": KEY_ID,
            "private_key": (FIXTURES / "fcm-test-key.pem").read_text(),
            "client_email": CLIENT_EMAIL, "client_id": "1", "token_uri": fcm.token_url,
        }))
        config = tmp / "bellhop.toml"
        config.write_text(common.render_config(CONFIG_TEMPLATE, {
            "FCM_SERVICE_ACCOUNT_FILE": str(sa), "FCM_BASE_URL": fcm.url}))
        (tmp / "data").mkdir()
        server = Bellhop(binary, config, tmp / "data", tmp / "bellhop.log")
        base = server.base
        log(f"bellhop at {base}, fake FCM at {fcm.url}")
        try:
            scenario(c, fcm, base, server)
        finally:
            if c.failed:
                log("bellhop log (last lines):\n" + server.log_tail())
    finally:
        if server is not None:
            server.stop()
        fcm.stop()


def scenario(c: Checks, fcm: FakeFcm, base: str, server: Bellhop) -> None:
    # --- the directory: staff and their phones --------------------------------------------
    for uid, s in STAFF.items():
        status, body = api(base, "PUT", f"/apps/{APP_ID}/users/{uid}",
                           {"display_name": s["display_name"], "email": s["email"],
                            "locale": "en-IE", "time_zone": "Europe/Dublin"})
        if status != 200:
            raise Fatal(f"PUT user {uid}: {status} {body}")
        status, body = api(base, "POST", f"/apps/{APP_ID}/users/{uid}/devices",
                           {"token": s["token"], "platform": "android"})
        if status != 200:
            raise Fatal(f"POST device of {uid}: {status} {body}")
    status, body = api(base, "GET", f"/apps/{APP_ID}/users/42")
    c.check("directory: GET /users/42 shows the profile and its active device",
            status == 200 and body.get("display_name") == "Seán Murphy"
            and [d["token"] for d in body.get("devices", []) if d.get("active")] == ["tok-42-phone"],
            f"{status} {body}")

    # --- porter 43 has the app open: pusher-js, signed in (pusher.user is on
    # #server-to-user-43), subscribed to their porter, notifications and conversation channels
    sock = StaffClient(server.port, CONNECTED, {"name": "Conor Walsh", "role": "porter"},
                       [f"{HOTEL}-staff-{CONNECTED}-porter", f"{HOTEL}-staff-{CONNECTED}-notifications",
                        f"{HOTEL}-staff-conversation-456"],
                       server.log_path.with_name(f"staff-client-{CONNECTED}.log"))
    try:
        scenario_events(c, fcm, base, server, sock)
    finally:
        sock.close()


def scenario_events(c: Checks, fcm: FakeFcm, base: str, server: Bellhop, sock: StaffClient) -> None:
    backend = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1",
                            port=server.port, ssl=False, timeout=int(WAIT))
    porters = ["42", CONNECTED]

    # --- (a) a room service order, to every on-duty porter, as HotelMate's signal does -----
    order = {"order_id": "123", "room_number": "101", "total_price": 45.99,
             "created_at": "2025-11-30T12:00:00Z", "status": "pending"}
    for p in porters:
        backend.trigger(f"{HOTEL}-staff-{p}-porter", "new-room-service-order", order)

    rt = sock.wait(event_on(f"{HOTEL}-staff-{CONNECTED}-porter", "new-room-service-order"))
    c.check("room service: the connected porter's pusher-js client gets the realtime event with the payload",
            rt is not None and rt["data"] == order, f"event: {rt}")
    item = sock.wait(inbox_push(CONNECTED, "room_service_order"))
    got = item["data"] if item else None
    c.equal("room service: the connected porter gets bellhop:notification on #server-to-user-43",
            got and {k: got["item"].get(k) for k in ("type", "title", "body", "data")},
            {"type": "room_service_order", "title": "🔔 New Room Service Order",
             "body": "Room 101 - €45.99",
             "data": {"type": "room_service_order", "order_id": "123", "room_number": "101",
                      "route": "/orders/room-service"}})

    d42 = settled(base, "42", "porter-room-service-order", 2)
    c.equal("room service: the disconnected porter's deliveries are in_app sent + fcm sent",
            {k: v[0] for k, v in states(d42).items()}, {"in_app": "sent", "fcm": "sent"})
    d43 = settled(base, CONNECTED, "porter-room-service-order", 2)
    c.equal("room service: the connected porter's push is skipped, 'the recipient is connected'",
            states(d43), {"in_app": ("sent", "in the inbox"), "fcm": ("skipped", "the recipient is connected")})

    pushes = wait_until(lambda: fcm.messages("tok-42-phone", "room_service_order"), timeout=5)
    c.check("room service: the disconnected porter's phone gets exactly one push",
            len(pushes) == 1, f"{len(pushes)} pushes: {pushes}")
    m = pushes[0] if pushes else {}
    c.equal("room service: FCM notification title and body", m.get("notification"),
            {"title": "🔔 New Room Service Order", "body": "Room 101 - €45.99"})
    c.equal("room service: FCM data exactly as HotelMate's", m.get("data"),
            {"type": "room_service_order", "order_id": "123", "room_number": "101",
             "total_price": "45.99", "status": "pending",
             "click_action": "FLUTTER_NOTIFICATION_CLICK", "route": "/orders/room-service"})
    c.equal("room service: android click_action FLUTTER_NOTIFICATION_CLICK",
            m.get("android", {}).get("notification", {}).get("click_action"), "FLUTTER_NOTIFICATION_CLICK")

    # --- (b) a breakfast order -------------------------------------------------------------
    breakfast = {"order_id": "456", "room_number": "102", "delivery_time": "2025-11-30T08:00:00Z",
                 "created_at": "2025-11-30T20:00:00Z", "status": "pending"}
    for p in porters:
        backend.trigger(f"{HOTEL}-staff-{p}-porter", "new-breakfast-order", breakfast)
    rt = sock.wait(event_on(f"{HOTEL}-staff-{CONNECTED}-porter", "new-breakfast-order"))
    item = sock.wait(inbox_push(CONNECTED, "breakfast_order"))
    got = item["data"]["item"] if item else {}
    c.check("breakfast: the connected porter gets the realtime event and the live in-app item",
            rt is not None and rt["data"] == breakfast
            and got.get("title") == "🍳 New Breakfast Order"
            and got.get("body") == "Room 102 - Delivery: 08:00",
            f"event: {rt}\nitem: {got}")
    d43 = settled(base, CONNECTED, "porter-breakfast-order", 2)
    c.equal("breakfast: the connected porter's push is skipped as connected",
            states(d43).get("fcm"), ("skipped", "the recipient is connected"))
    settled(base, "42", "porter-breakfast-order", 2)
    pushes = wait_until(lambda: fcm.messages("tok-42-phone", "breakfast_order"), timeout=5)
    c.check("breakfast: the disconnected porter's phone gets exactly one push",
            len(pushes) == 1, f"{len(pushes)} pushes: {pushes}")
    m = pushes[0] if pushes else {}
    c.equal("breakfast: FCM notification and data exactly as HotelMate's",
            {"notification": m.get("notification"), "data": m.get("data")},
            {"notification": {"title": "🍳 New Breakfast Order", "body": "Room 102 - Delivery: 08:00"},
             "data": {"type": "breakfast_order", "order_id": "456", "room_number": "102",
                      "delivery_time": "08:00", "status": "pending",
                      "click_action": "FLUTTER_NOTIFICATION_CLICK", "route": "/orders/breakfast"}})

    # --- (c) a staff chat message in a group conversation ----------------------------------
    # Porter 43's app is subscribed to the conversation channel, as HotelMate's is while the
    # conversation list is open; 42 and 44 have the app closed. The backend lists the
    # participants to notify (all but the sender, 41) in participant_ids, as Django ids.
    text = ("Heads up: the Murphy wedding party checks in at 23:00 tonight, 14 rooms on the third "
            "floor, luggage trolleys to the side entrance please.")
    chat = {"message_id": "789", "sender_id": "41", "sender_name": "Aoife Byrne",
            "message_text": text, "conversation_id": "456", "timestamp": "2025-11-30T10:00:00Z",
            "participant_ids": [42, 43, 44], "is_group": True, "group_title": "Night Shift"}
    backend.trigger(f"{HOTEL}-staff-conversation-456", "new-message", chat)
    chat_title, chat_body = "💬 Aoife Byrne in Night Shift", text[:100]
    rt = sock.wait(event_on(f"{HOTEL}-staff-conversation-456", "new-message"))
    item = sock.wait(inbox_push(CONNECTED, "staff_chat_message"))
    got = item["data"]["item"] if item else {}
    c.check("staff chat: the connected participant gets the realtime event and the live in-app item",
            rt is not None and rt["data"] == chat
            and got.get("title") == chat_title and got.get("body") == chat_body,
            f"event: {rt}\nitem: {got}")
    per_user = {u: states(settled(base, u, "staff-chat-message", 2)) for u in ("42", "43", "44")}
    c.equal("staff chat: every participant in participant_ids gets the in-app item",
            {u: s.get("in_app", ("none", ""))[0] for u, s in per_user.items()},
            {"42": "sent", "43": "sent", "44": "sent"})
    c.equal("staff chat: the sender (not in participant_ids) gets nothing",
            deliveries(base, "41", "staff-chat-message"), [])
    c.equal("staff chat: push to the two participants with the app closed, none to the connected one",
            {u: s.get("fcm") for u, s in per_user.items()},
            {"42": ("sent", "pushed to 1 device(s)"), "43": ("skipped", "the recipient is connected"),
             "44": ("sent", "pushed to 1 device(s)")})
    want_chat = {
        "notification": {"title": chat_title, "body": chat_body},
        "data": {"type": "staff_chat_message", "conversation_id": "456", "sender_id": "41",
                 "sender_name": "Aoife Byrne", "is_group": "true", "hotel_slug": HOTEL,
                 "click_action": f"/staff-chat/{HOTEL}/conversation/456",
                 "url": f"https://hotelsmates.com/staff-chat/{HOTEL}/conversation/456"},
    }
    for u in ("42", "44"):
        pushes = fcm.messages(STAFF[u]["token"], "staff_chat_message")
        c.equal(f"staff chat: {u}'s phone gets exactly one push, HotelMate's title/body/data",
                [{"notification": p.get("notification"), "data": p.get("data")} for p in pushes],
                [want_chat])

    # --- (d) @mentions: 44 with the app closed, 43 with it open ----------------------------
    mention_text = "@Niamh can you check the minibar in 214 before the wedding party arrives?"
    mention = {"conversation_id": "456", "conversation_title": "Night Shift", "message_id": "790",
               "sender_id": "41", "sender_name": "Aoife Byrne", "message_text": mention_text,
               "timestamp": "2025-11-30T10:05:00Z"}
    backend.trigger(f"{HOTEL}-staff-44-notifications", "message-mention", mention)
    mention_title = "@\ufe0f\u20e3 Aoife Byrne mentioned you in Night Shift"
    d44 = settled(base, "44", "staff-chat-mention", 2)
    c.equal("mention: the mentioned staff member's deliveries are in_app sent + fcm sent",
            {k: v[0] for k, v in states(d44).items()}, {"in_app": "sent", "fcm": "sent"})
    pushes = wait_until(lambda: fcm.messages("tok-44-phone", "staff_chat_mention"), timeout=5)
    c.equal("mention: one push to the mentioned staff member, HotelMate's title/body/data",
            [{"notification": p.get("notification"), "data": p.get("data")} for p in pushes],
            [{"notification": {"title": mention_title, "body": mention_text},
              "data": {"type": "staff_chat_mention", "conversation_id": "456", "sender_id": "41",
                       "sender_name": "Aoife Byrne", "mentioned_staff_id": "44", "hotel_slug": HOTEL,
                       "click_action": f"/staff-chat/{HOTEL}/conversation/456",
                       "url": f"https://hotelsmates.com/staff-chat/{HOTEL}/conversation/456"}}])
    c.equal("mention: nobody else is notified of it",
            {u: deliveries(base, u, "staff-chat-mention") for u in ("41", "42", "43")},
            {"41": [], "42": [], "43": []})
    mention43 = dict(mention, message_id="791", message_text="@Conor trolley to room 301 please")
    backend.trigger(f"{HOTEL}-staff-{CONNECTED}-notifications", "message-mention", mention43)
    item = sock.wait(inbox_push(CONNECTED, "staff_chat_mention"))
    got = item["data"]["item"] if item else {}
    c.check("mention: a connected staff member gets it live as bellhop:notification",
            got.get("title") == mention_title and got.get("body") == "@Conor trolley to room 301 please",
            f"item: {got}")
    c.equal("mention: and no push, as connected",
            states(settled(base, CONNECTED, "staff-chat-mention", 2)).get("fcm"),
            ("skipped", "the recipient is connected"))

    # --- (e) the same order again (post_save fires again): nobody is notified twice --------
    backend.trigger(f"{HOTEL}-staff-42-porter", "new-room-service-order", order)
    backend.trigger(f"{HOTEL}-staff-42-porter", "new-room-service-order", order)
    time.sleep(2.0)  # long enough for a second push to have gone out
    c.check("duplicate order: still exactly one room-service push to the porter's phone",
            len(fcm.messages("tok-42-phone", "room_service_order")) == 1,
            f"pushes: {fcm.messages('tok-42-phone', 'room_service_order')}")
    d42 = deliveries(base, "42", "porter-room-service-order")
    c.check("duplicate order: still two deliveries (in_app, fcm) in the porter's record",
            sorted(d["channel"] for d in d42) == ["fcm", "in_app"], f"deliveries: {d42}")
    status, inbox = api(base, "GET", f"/apps/{APP_ID}/users/42/inbox")
    kinds = sorted(i["type"] for i in inbox.get("items", [])) if status == 200 else inbox
    c.equal("duplicate order: one room-service item in the porter's inbox (3 items, 3 unread)",
            {"kinds": kinds, "unread": inbox.get("unread_count") if status == 200 else None},
            {"kinds": ["breakfast_order", "room_service_order", "staff_chat_message"], "unread": 3})

    # --- FCM as a whole ----------------------------------------------------------------------
    c.equal("fcm: the connected porter's phone never got a push", fcm.messages("tok-43-phone"), [])
    c.equal("fcm: pushes per device over the whole run",
            {t: len(fcm.messages(s["token"])) for t, s in STAFF.items()},
            {"41": 0, "42": 3, "43": 0, "44": 2})
    c.check("fcm: every token request carried a valid RS256 JWT (kid, iss, aud, scope), and "
            "every send a token the fake issued",
            fcm.token_requests >= 1 and not fcm.rejected_tokens and fcm.unauthorized_sends == 0,
            f"token requests {fcm.token_requests}, refused {fcm.rejected_tokens}, "
            f"unauthorized sends {fcm.unauthorized_sends}")


if __name__ == "__main__":
    sys.exit(common.main(run, "bellhop-hotelmate-"))
