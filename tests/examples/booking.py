#!/usr/bin/env python3
"""The booking platform on bellhop, end to end, the way its FastAPI backend would use it.

A real SMTP server (tests/smtp/server.py: aiosmtpd, STARTTLS required, AUTH bellhop/secret)
runs with a self-signed certificate for 127.0.0.1 made here; a webhook receiver in this
process checks every event webhook with the official Standard Webhooks library. bellhop runs
with examples/booking/bellhop.toml rendered to point at both. The booking's team member is
registered through bellhop's directory API (signed like the Pusher HTTP API); the booking
events are triggered with the official `pusher` Python server SDK on `private-bookings`, as
the backend's event bus would. Then the emails (subjects, bodies, the invite and QR code), the
reminders' timing (24 h before, moved by a reschedule, dropped by a cancellation), the
delivery records and the webhooks are checked. A local stand-in for Africa's Talking, Meta's
WhatsApp Cloud API and Zoho (accounts, CRM, Books) checks each request as the real service
would and answers with its real bodies: the SMS and WhatsApp confirmations, the CRM contact and
deal of each booking, and the invoice paid on booking.paid (with the sync log) are checked too.

    python3 -m pip install aiosmtpd standardwebhooks pusher cryptography
    BELLHOP_BIN=/path/to/bellhop python3 tests/examples/booking.py

Prints one line per check and, last, `N passed, M failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import ipaddress
import json
import os
import queue
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path

try:
    import pusher
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    import aiosmtpd  # noqa: F401  (tests/smtp/server.py runs on it)
except ImportError as e:  # pragma: no cover
    sys.exit(f"missing a package ({e}): "
             "python3 -m pip install aiosmtpd standardwebhooks pusher cryptography")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tests/examples/common.py, what hotelmate.py shares)
from common import ROOT, WAIT, Bellhop, Checks, Fatal, log, wait_until  # noqa: E402

SMTP_SERVER = ROOT / "tests" / "smtp" / "server.py"
CONFIG_TEMPLATE = ROOT / "examples" / "booking" / "bellhop.toml"

# Must match examples/booking/bellhop.toml.
APP_ID = "2001"
KEY = "booking-key"
SECRET = "booking-secret-change-me"
CHANNEL = "private-bookings"
FROM = "bookings@acme-bookings.example"
HOSTS = ["host@acme-bookings.example", "team@acme-bookings.example"]
UID_DOMAIN = "acme-bookings.example"

# The providers' credentials, as the local stand-in (Providers) expects them.
AT_USERNAME, AT_API_KEY = "acme-bookings", "atsk_0123456789abcdef0123456789abcdef"
META_PHONE_NUMBER_ID, META_ACCESS_TOKEN = "106540352242922", "EAAJB0123456789metatoken"
ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET = "1000.ACMECLIENT0123", "zoho-client-secret"
ZOHO_REFRESH_TOKEN, ZOHO_ORG = "1000.refresh.acme", "60012345678"

# tests/smtp/server.py's credentials.
SMTP_USER, SMTP_PASSWORD = "bellhop", "secret"

DAY_MS = 1440 * 60_000
HOUR_MS = 60 * 60_000

# The booking's team member, a directory user (an account on the platform).
TEAM_MEMBER = {"id": 7, "display_name": "Maeve Walsh", "email": "maeve@acme-bookings.example"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def iso(t: dt.datetime) -> str:
    """RFC 3339 as the backend (pydantic) writes it: milliseconds, `Z` for UTC."""
    s = t.isoformat(timespec="milliseconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def ics_stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ----------------------------------------------------------------------------------------
# The SMTP server (tests/smtp/server.py) and its mailbox
# ----------------------------------------------------------------------------------------


def self_signed(cert_path: Path, key_path: Path) -> None:
    """A certificate for 127.0.0.1 (IP SubjectAlternativeName), its own root for bellhop."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


class Mail:
    """One accepted message, as a mail client decodes it."""

    def __init__(self, n: int, raw: bytes, meta: dict, arrived: float) -> None:
        self.n, self.raw, self.meta, self.arrived = n, raw, meta, arrived
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.rcpt = meta.get("rcpt_tos", [])
        self.subject = str(self.msg.get("subject", ""))
        self.sender = str(self.msg.get("from", ""))
        self.text, self.html = "", None
        self.parts: list[dict] = []
        for part in self.msg.walk():
            if part.is_multipart():
                continue
            body = part.get_payload(decode=True) or b""
            ctype = part.get_content_type()
            filename = part.get_filename()
            text = body.decode(part.get_content_charset() or "utf-8", "replace") \
                if part.get_content_maintype() == "text" else None
            self.parts.append({"type": ctype, "filename": filename, "bytes": body, "text": text})
            # Bodies compared as text: the CRLF line ends of the wire are not the point.
            if filename is None and ctype == "text/plain" and not self.text:
                self.text = text.replace("\r\n", "\n")
            if filename is None and ctype == "text/html" and self.html is None:
                self.html = text.replace("\r\n", "\n")

    def part(self, ctype: str) -> dict | None:
        return next((p for p in self.parts if p["type"] == ctype), None)

    def __repr__(self) -> str:
        return f"<mail {self.n} to {self.rcpt} {self.subject!r} at {self.arrived:.3f}>"


class SmtpServer(common.Child):
    def __init__(self, tmp: Path) -> None:
        self.cert, self.key = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
        self.out = tmp / "mailbox"
        self.out.mkdir()
        self_signed(self.cert, self.key)
        self.port = free_port()
        super().__init__(
            [sys.executable, str(SMTP_SERVER), str(self.port), str(self.cert), str(self.key),
             str(self.out), "ok"],
            tmp / "smtp.log", "smtp-stdout",
        )
        try:
            first = self.lines.get(timeout=WAIT)
        except queue.Empty:
            first = None
        if first is not None:
            first = first.strip()
        if first != "ready":
            self.stop()
            raise Fatal(f"tests/smtp/server.py did not print 'ready' within {WAIT:.0f}s "
                        f"(got {first!r}); its log:\n{self.log_path.read_text(errors='replace')}")
        self.cache: dict[int, Mail] = {}

    def messages(self) -> list[Mail]:
        """Every message accepted so far, in order (N.eml is written before N.json)."""
        n = 1
        out = []
        while True:
            if n not in self.cache:
                eml, meta = self.out / f"{n}.eml", self.out / f"{n}.json"
                try:
                    m = json.loads(meta.read_text())
                    raw = eml.read_bytes()
                    arrived = eml.stat().st_mtime
                except (OSError, ValueError):  # not there yet, or being written
                    break
                self.cache[n] = Mail(n, raw, m, arrived)
            out.append(self.cache[n])
            n += 1
        return out

    def to(self, addr: str, subject_prefix: str = "") -> list[Mail]:
        return [m for m in self.messages() if addr in m.rcpt and m.subject.startswith(subject_prefix)]


# ----------------------------------------------------------------------------------------
# The webhook receiver (the CRM / automation side of the event bus)
# ----------------------------------------------------------------------------------------


class WebhookReceiver:
    """Records every POST and verifies it with the official `standardwebhooks` library; a
    request that does not verify is answered 401, as a real receiver would."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        rx = self

        class Handler(common.QuietHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    parsed = rx.webhook.verify(body, headers)
                    verified, error = True, None
                except WebhookVerificationError as e:
                    parsed, verified, error = None, False, str(e)
                except Exception as e:  # a bug here must not look like a bellhop bug
                    parsed, verified, error = None, False, f"receiver: {e!r}"
                with rx.lock:
                    rx.requests.append({"path": self.path, "headers": headers, "body": body,
                                        "verified": verified, "error": error, "json": parsed})
                status = 204 if verified else 401
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = common.serve(Handler, "webhooks")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bookings"

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def stop(self) -> None:
        common.stop_server(self.server)


class Providers:
    """A local stand-in for Africa's Talking, Meta's WhatsApp Cloud API and Zoho (accounts,
    CRM, Books), on one port. Each request is checked as the real service checks it (the
    apiKey header, the Bearer token, the Zoho-oauthtoken and organisation) and answered with
    that service's real bodies; Zoho keeps its records, so a repeated or retried sync shows
    whether it made anything twice. Every request is recorded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.tokens = 0
        self.crm: dict[str, dict[str, dict]] = {"Contacts": {}, "Deals": {}}
        self.customers: dict[str, str] = {}
        self.invoices: dict[str, dict] = {}
        self.payments: list[dict] = []
        me = self

        class Handler(common.QuietHandler):
            def answer(self, status: int, body) -> None:
                raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("content-type", "application/json" if not isinstance(body, bytes) else "text/plain")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def handle_any(self, method: str) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n).decode()
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                headers = {k.lower(): v for k, v in self.headers.items()}
                req = {"method": method, "path": url.path, "query": query, "headers": headers, "body": raw}
                with me.lock:
                    me.requests.append(req)
                    status, body = me.respond(req)
                self.answer(status, body)

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

        self.server = common.serve(Handler, "providers")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def respond(self, req: dict):
        path, h = req["path"], req["headers"]
        if path == "/version1/messaging":
            if h.get("apikey") != AT_API_KEY:
                return 401, b"The supplied authentication is invalid"
            f = dict(urllib.parse.parse_qsl(req["body"]))
            if f.get("username") != AT_USERNAME:
                return 401, b"The supplied authentication is invalid"
            n = len([r for r in self.requests if r["path"] == path])
            return 201, {"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: KES 0.8000", "Recipients": [
                {"statusCode": 101, "number": f.get("to"), "status": "Success", "cost": "KES 0.8000",
                 "messageId": f"ATXid_{n:032x}"}]}}
        if path == f"/v21.0/{META_PHONE_NUMBER_ID}/messages":
            if h.get("authorization") != f"Bearer {META_ACCESS_TOKEN}":
                return 401, {"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                                       "type": "OAuthException", "code": 190, "fbtrace_id": "AbC"}}
            body = json.loads(req["body"])
            n = len([r for r in self.requests if r["path"] == path])
            return 200, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                         "messages": [{"id": f"wamid.HBgM{n:08d}", "message_status": "accepted"}]}
        if path == "/oauth/v2/token":
            f = dict(urllib.parse.parse_qsl(req["body"]))
            if (f.get("refresh_token"), f.get("client_id"), f.get("client_secret"), f.get("grant_type")) != (
                    ZOHO_REFRESH_TOKEN, ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, "refresh_token"):
                return 200, {"error": "invalid_client"}
            self.tokens += 1
            return 200, {"access_token": f"1000.acmetoken{self.tokens}", "api_domain": self.url,
                         "token_type": "Bearer", "expires_in": 3600}
        if h.get("authorization") != f"Zoho-oauthtoken 1000.acmetoken{self.tokens}":
            return 401, {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}
        if path.startswith("/crm/v2/"):
            module = path.split("/")[3]
            body = json.loads(req["body"])
            record, key = body["data"][0], body["duplicate_check_fields"][0]
            records = self.crm[module]
            action = "update" if record[key] in records else "insert"
            rid = records.get(record[key], {}).get("id") or f"41508680000{module[:1] == 'D' and 5 or 1}{len(records):05d}"
            records[record[key]] = dict(record, id=rid)
            return 200, {"data": [{"code": "SUCCESS", "duplicate_field": key if action == "update" else None,
                                   "action": action, "details": {"id": rid}, "message": "record " + ("updated" if action == "update" else "added"),
                                   "status": "success"}]}
        if path.startswith("/books/v3/"):
            if req["query"].get("organization_id") != ZOHO_ORG:
                return 400, {"code": 6041, "message": "This user is not associated with the organization."}
            body = json.loads(req["body"]) if req["body"] else {}
            rest = path[len("/books/v3"):]
            if (req["method"], rest) == ("GET", "/contacts"):
                email = req["query"].get("email")
                found = [{"contact_id": cid, "email": e} for e, cid in self.customers.items() if e == email]
                return 200, {"code": 0, "message": "success", "contacts": found}
            if (req["method"], rest) == ("POST", "/contacts"):
                cid = f"4600000{len(self.customers) + 100:05d}"
                self.customers[body["contact_persons"][0]["email"]] = cid
                return 201, {"code": 0, "message": "The contact has been added.", "contact": {"contact_id": cid}}
            if (req["method"], rest) == ("GET", "/invoices"):
                ref = req["query"].get("reference_number")
                found = [dict(i, reference_number=r) for r, i in self.invoices.items() if r == ref]
                return 200, {"code": 0, "message": "success", "invoices": found}
            if (req["method"], rest) == ("POST", "/invoices"):
                iid = f"4600000{len(self.invoices) + 900:05d}"
                self.invoices[body["reference_number"]] = {"invoice_id": iid, "status": "draft", "body": body}
                return 201, {"code": 0, "message": "The invoice has been created.",
                             "invoice": {"invoice_id": iid, "reference_number": body["reference_number"], "status": "draft"}}
            if req["method"] == "POST" and rest.endswith("/status/sent"):
                iid = rest.split("/")[2]
                for i in self.invoices.values():
                    if i["invoice_id"] == iid:
                        i["status"] = "sent"
                        return 200, {"code": 0, "message": "Invoice status has been changed to Sent."}
                return 404, {"code": 1002, "message": "Invoice does not exist."}
            if (req["method"], rest) == ("POST", "/customerpayments"):
                iid = body["invoices"][0]["invoice_id"]
                inv = next((i for i in self.invoices.values() if i["invoice_id"] == iid), None)
                if inv is None or inv["status"] == "draft":
                    return 400, {"code": 24016, "message": "Payments cannot be recorded for draft invoices."}
                inv["status"] = "paid"
                self.payments.append(body)
                return 201, {"code": 0, "message": "The payment has been created.",
                             "payment": {"payment_id": f"46000007{len(self.payments):04d}"}}
        return 404, {"code": 5, "message": "Invalid URL Passed"}

    def to(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def stop(self) -> None:
        common.stop_server(self.server)


# ----------------------------------------------------------------------------------------
# bellhop
# ----------------------------------------------------------------------------------------


def api(base: str, method: str, path: str, body=None, params: dict | None = None):
    """A request to bellhop's HTTP API, signed with this app's key and secret (common.api)."""
    return common.api(KEY, SECRET, base, method, path, body, params)


def reminders_of(base: str, user: str, booking_id: str) -> list[dict]:
    """The user's reminder deliveries for one booking (their idempotency keys start with the
    rule and the booking's key), oldest first."""
    status, body = api(base, "GET", f"/apps/{APP_ID}/users/{user}/notifications")
    if status != 200:
        raise Fatal(f"GET notifications of {user}: {status} {body}")
    prefix = f"booking-reminder:{booking_id}|"
    out = [d for n in body["notifications"] if n.get("rule") == "booking-reminder"
           for d in n["deliveries"] if d["idempotency_key"].startswith(prefix)]
    return sorted(out, key=lambda d: d["id"])


# ----------------------------------------------------------------------------------------
# The scenario
# ----------------------------------------------------------------------------------------


def run(c: Checks, tmp: Path, binary: str) -> None:
    common.no_proxy_for_localhost()

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    smtp = hooks = server = providers = None
    try:
        smtp = SmtpServer(tmp)
        hooks = WebhookReceiver(secret)
        providers = Providers()
        config = tmp / "bellhop.toml"
        config.write_text(common.render_config(CONFIG_TEMPLATE, {
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
            "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD,
            "SMTP_CA_FILE": str(smtp.cert),
            "EVENT_WEBHOOK_URL": hooks.url, "EVENT_WEBHOOK_SECRET": secret,
            "AT_USERNAME": AT_USERNAME, "AT_API_KEY": AT_API_KEY,
            "META_PHONE_NUMBER_ID": META_PHONE_NUMBER_ID, "META_ACCESS_TOKEN": META_ACCESS_TOKEN,
            "ZOHO_CLIENT_ID": ZOHO_CLIENT_ID, "ZOHO_CLIENT_SECRET": ZOHO_CLIENT_SECRET,
            "ZOHO_REFRESH_TOKEN": ZOHO_REFRESH_TOKEN, "ZOHO_ORGANIZATION_ID": ZOHO_ORG,
            "PROVIDERS_URL": providers.url,
        }, all_filled=True))
        (tmp / "data").mkdir()
        server = Bellhop(binary, config, tmp / "data", tmp / "bellhop.log")
        log(f"bellhop at {server.base}, SMTP (STARTTLS) at 127.0.0.1:{smtp.port}, "
            f"webhooks at {hooks.url}")
        try:
            scenario(c, smtp, hooks, server, providers)
        finally:
            if c.failed:
                log("bellhop log (last lines):\n" + server.log_tail())
    finally:
        if server is not None:
            server.stop()
        if hooks is not None:
            hooks.stop()
        if providers is not None:
            providers.stop()
        if smtp is not None:
            smtp.stop()


PHONES = {"B-1001": "0712 345 678", "B-1002": "+966 50 123 4567", "B-1003": "0722 111 222",
          "B-1004": "0733 444 555"}
E164 = {"B-1001": "+254712345678", "B-1002": "+966501234567", "B-1003": "+254722111222",
        "B-1004": "+254733444555"}


def booking(booking_id: str, name: str, addr: str, title: str, location: str,
            start: dt.datetime, end: dt.datetime, status: str) -> dict:
    """The backend's event-bus payload, plus the fields the messages use."""
    return {"booking_id": booking_id, "event_type_id": 12, "team_member_id": TEAM_MEMBER["id"],
            "start_at": iso(start), "end_at": iso(end), "attendee_email": addr,
            "attendee_name": name, "status": status, "event_title": title, "location": location,
            "attendee_phone": PHONES[booking_id], "price": "120.00"}


def scenario(c: Checks, smtp: SmtpServer, hooks: WebhookReceiver, server: Bellhop,
             providers: Providers) -> None:
    base = server.base
    tm = str(TEAM_MEMBER["id"])

    # --- the directory: the team member, who gets the reminders of their bookings too -----
    status, body = api(base, "PUT", f"/apps/{APP_ID}/users/{tm}",
                       {"display_name": TEAM_MEMBER["display_name"], "email": TEAM_MEMBER["email"],
                        "time_zone": "Europe/Dublin"})
    if status != 200:
        raise Fatal(f"PUT user {tm}: {status} {body}")

    backend = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1",
                            port=server.port, ssl=False, timeout=int(WAIT))
    sent_events: list[tuple[str, dict]] = []

    def emit(event: str, payload: dict) -> None:
        """What the backend's event bus does on each booking change."""
        backend.trigger(CHANNEL, event, payload)
        sent_events.append((event, payload))

    utc = dt.timezone.utc
    cet = dt.timezone(dt.timedelta(hours=2))
    # A: a week ahead, in the venue's +02:00 offset; confirmed, then confirmed again (a
    # duplicate from the backend's retry). B: 24 h + 4 s ahead, so its 24-hour reminder is due
    # in 4 s. C: 24 h + 6 s ahead, rescheduled at once to 24 h + 10 s. D: 24 h + 8 s ahead,
    # cancelled at once.
    day7 = (dt.datetime.now(cet) + dt.timedelta(days=7)).date()
    a_start = dt.datetime(day7.year, day7.month, day7.day, 15, 0, tzinfo=cet)
    a = booking("B-1001", "Siobhán O'Neill", "siobhan@example.com", "Deep-tissue massage & sauna",
                "Acme Spa, Level 2", a_start, a_start + dt.timedelta(minutes=90), "confirmed")
    t0 = dt.datetime.now(utc)
    day = dt.timedelta(minutes=1440)
    b_start = t0 + day + dt.timedelta(seconds=4)
    b = booking("B-1002", "Ben Okafor", "ben@example.com", "Yoga class", "Studio 3",
                b_start, b_start + dt.timedelta(hours=1), "confirmed")
    c1_start = t0 + day + dt.timedelta(seconds=6)
    c2_start = t0 + day + dt.timedelta(seconds=10)
    c_first = booking("B-1003", "Cara Lindqvist", "cara@example.com", "Haircut", "Salon",
                      c1_start, c1_start + dt.timedelta(minutes=45), "confirmed")
    c_moved = dict(booking("B-1003", "Cara Lindqvist", "cara@example.com", "Haircut", "Salon",
                           c2_start, c2_start + dt.timedelta(minutes=45), "confirmed"),
                   previous_start_at=c_first["start_at"])
    d_start = t0 + day + dt.timedelta(seconds=8)
    d = booking("B-1004", "Dan Mwangi", "dan@example.com", "Tennis lesson", "Court 2",
                d_start, d_start + dt.timedelta(hours=1), "confirmed")
    d_cancelled = dict(d, status="cancelled")

    for p in (a, b, c_first, d):
        emit("booking.created", dict(p, status="pending"))
        emit("booking.confirmed", p)
    emit("booking.rescheduled", c_moved)
    emit("booking.cancelled", d_cancelled)
    emit("booking.confirmed", a)  # the duplicate
    elapsed = (dt.datetime.now(utc) - t0).total_seconds()
    if elapsed > 3.0:
        raise Fatal(f"triggering the 11 events took {elapsed:.1f}s; the reminders due 4 s "
                    "after the start could not be checked")
    log(f"11 booking events triggered in {elapsed:.2f}s")

    # --- A: the confirmation, with the invite and the QR code ------------------------------
    confirmed = "Booking confirmed: "
    got = wait_until(lambda: smtp.to(a["attendee_email"], confirmed))
    m = got[0] if got else None
    c.check("confirmation: an email to the attendee's attendee_email arrives", m is not None,
            f"mailbox: {smtp.messages()}")
    if m is None:
        raise Fatal("no confirmation email; the rest depends on email delivery")
    c.equal("confirmation: sent over STARTTLS with AUTH, from the app's address, to the attendee only",
            {"tls": m.meta.get("tls"), "auth": m.meta.get("auth"), "mail_from": m.meta.get("mail_from"),
             "rcpt": m.rcpt},
            {"tls": True, "auth": True, "mail_from": FROM, "rcpt": ["siobhan@example.com"]})
    day7s = day7.isoformat()
    c.equal("confirmation: the subject, variables filled (title, local date and time)",
            m.subject, f"Booking confirmed: Deep-tissue massage & sauna on {day7s} at 15:00")
    c.equal("confirmation: the text body, variables filled",
            m.text.strip(),
            f"Hi Siobhán O'Neill,\n\nyour booking B-1001 is confirmed: Deep-tissue massage & sauna on "
            f"{day7s} at 15:00, Acme Spa, Level 2.\n\nShow the attached QR code when you arrive. "
            "The calendar invite is attached too.")
    c.check("confirmation: the HTML body has the variables, HTML-escaped",
            m.html is not None and "Deep-tissue massage &amp; sauna" in m.html
            and ("Siobhán O&#x27;Neill" in m.html or "Siobhán O&#39;Neill" in m.html)
            and "B-1001" in m.html and "Acme Spa, Level 2" in m.html,
            f"html: {m.html!r}")
    ics = m.part("text/calendar")
    ics_text = (ics or {}).get("text") or ""
    a_utc_start = a_start.astimezone(utc)
    c.check("confirmation: an invite.ics part", ics is not None and ics["filename"] == "invite.ics",
            f"parts: {[(p['type'], p['filename']) for p in m.parts]}")
    c.check("confirmation: the invite's DTSTART/DTEND are the booking's times in UTC "
            f"({ics_stamp(a_utc_start)} from 15:00+02:00)",
            f"DTSTART:{ics_stamp(a_start)}\r\n" in ics_text
            and f"DTEND:{ics_stamp(a_start + dt.timedelta(minutes=90))}\r\n" in ics_text,
            ics_text)
    c.check("confirmation: the invite's UID is stable per booking, SUMMARY and LOCATION escaped",
            "UID:booking-B-1001@acme-bookings.example\r\n" in ics_text
            and "SUMMARY:Deep-tissue massage & sauna\r\n" in ics_text
            and "LOCATION:Acme Spa\\, Level 2\r\n" in ics_text, ics_text)
    qr = m.part("image/png")
    png = (qr or {}).get("bytes") or b""
    width, height = struct.unpack(">II", png[16:24]) if len(png) >= 24 else (0, 0)
    c.check("confirmation: a qr.png part, a square PNG image",
            qr is not None and qr["filename"] == "qr.png" and png[:8] == b"\x89PNG\r\n\x1a\n"
            and png[12:16] == b"IHDR" and width == height and width >= 21 * 8,
            f"part: {qr and {k: v for k, v in qr.items() if k != 'bytes'}}, "
            f"{len(png)} bytes, {width}x{height}, magic {png[:8].hex()}")

    # --- host / team notification, to each static address ---------------------------------
    def host_ids(addr: str) -> list[str]:
        return sorted(x["booking_id"] for x in (a, b, c_first, d)
                      for hm in smtp.to(addr, "New booking: ") if x["booking_id"] in hm.text)

    wait_until(lambda: all(len(smtp.to(h, "New booking: ")) >= 4 for h in HOSTS))
    for h in HOSTS:
        mails = smtp.to(h, "New booking: ")
        c.equal(f"host: {h} gets one 'New booking' email per booking created",
                host_ids(h), ["B-1001", "B-1002", "B-1003", "B-1004"])
        c.check(f"host: each to {h} alone", all(hm.rcpt == [h] for hm in mails),
                f"{[hm.rcpt for hm in mails]}")
    hm = next((x for x in smtp.to(HOSTS[0], "New booking: ") if "B-1001" in x.text), None)
    c.equal("host: subject and body filled from the booking",
            hm and (hm.subject, hm.text.strip()),
            ("New booking: Siobhán O'Neill for Deep-tissue massage & sauna",
             f"New booking B-1001: Siobhán O'Neill <siobhan@example.com> booked Deep-tissue massage & "
             f"sauna on {day7s} at 15:00 (until 16:30), Acme Spa, Level 2."))

    # --- C: the reschedule confirmation, with the updated invite -----------------------------
    got = wait_until(lambda: smtp.to("cara@example.com", "Booking moved: "))
    rm = got[0] if got else None
    c.check("reschedule: an email to the attendee", rm is not None, f"mailbox: {smtp.messages()}")
    if rm is not None:
        c.equal("reschedule: subject and body name the old and the new time",
                (rm.subject, rm.text.strip()),
                (f"Booking moved: Haircut is now on {c_moved['start_at'][:10]} at {c_moved['start_at'][11:16]}",
                 f"Hi Cara Lindqvist,\n\nyour booking B-1003 for Haircut has moved from "
                 f"{c_first['start_at'][:10]} at {c_first['start_at'][11:16]} to "
                 f"{c_moved['start_at'][:10]} at {c_moved['start_at'][11:16]}, Salon.\n\n"
                 "The updated calendar invite is attached."))
        rics = (rm.part("text/calendar") or {}).get("text") or ""
        c.check("reschedule: the invite has the new DTSTART/DTEND and the booking's UID",
                f"DTSTART:{ics_stamp(c2_start)}\r\n" in rics
                and f"DTEND:{ics_stamp(c2_start + dt.timedelta(minutes=45))}\r\n" in rics
                and "UID:booking-B-1003@acme-bookings.example\r\n" in rics, rics)

    # --- D: the cancellation --------------------------------------------------------------
    got = wait_until(lambda: smtp.to("dan@example.com", "Booking cancelled: "))
    cm = got[0] if got else None
    c.equal("cancellation: an email to the attendee, variables filled",
            cm and (cm.subject, cm.text.strip()),
            (f"Booking cancelled: Tennis lesson on {d['start_at'][:10]}",
             f"Hi Dan Mwangi,\n\nyour booking B-1004 for Tennis lesson on {d['start_at'][:10]} at "
             f"{d['start_at'][11:16]} has been cancelled. Any refund is on its way to your original "
             "payment method."))

    # --- B: the 24-hour reminder, due 4 s after the start ------------------------------------
    reminder = "Reminder: "
    b_due = (ms(b_start) - DAY_MS) / 1000

    def arrival(mails: list[Mail], due: float) -> str:
        return ", ".join(f"{x.arrived - due:+.2f}s" for x in mails) or "none"

    got = wait_until(lambda: smtp.to("ben@example.com", reminder) and smtp.to(TEAM_MEMBER["email"], "Reminder: Yoga"),
                     timeout=max(0.0, b_due - time.time()) + WAIT)
    time.sleep(1.0)  # long enough for a second one to have gone out
    ben = smtp.to("ben@example.com", reminder)
    c.check("reminder (B): exactly one reminder email to the attendee",
            len(ben) == 1, f"{len(ben)}: {ben}")
    if ben:
        c.equal("reminder (B): it is the 24-hour one, variables filled",
                (ben[0].subject, ben[0].text.strip()),
                (f"Reminder: Yoga class tomorrow at {b['start_at'][11:16]}",
                 f"Hi Ben Okafor,\n\nYoga class (booking B-1002, Ben Okafor) starts tomorrow: "
                 f"{b['start_at'][:10]} at {b['start_at'][11:16]}, Studio 3."))
        # The worker claims due jobs at least once a second; 10 s leaves room for a CI box
        # whose two cores are saturated by the load tests running beside this one.
        c.check("reminder (B): sent on time: not before 24 h before the start, within 10 s after",
                -0.5 <= ben[0].arrived - b_due <= 10.0, f"arrived {arrival(ben, b_due)} from due")
    tmb = smtp.to(TEAM_MEMBER["email"], "Reminder: Yoga")
    c.check("reminder (B): the team member (a directory user) gets one too, greeted by name",
            len(tmb) == 1 and tmb[0].text.startswith("Hi Maeve Walsh,"), f"{tmb} {[x.text for x in tmb]}")
    ds = reminders_of(base, tm, "B-1002")
    c.equal("reminder (B): the record: 24 h sent, 1 h still scheduled at start - 60 min",
            [(d_["state"], d_["run_at"]) for d_ in ds],
            [("sent", ms(b_start) - DAY_MS), ("scheduled", ms(b_start) - HOUR_MS)])

    # --- C: one reminder, at the new time; the old one never goes out -----------------------
    c1_due = (ms(c1_start) - DAY_MS) / 1000
    c2_due = (ms(c2_start) - DAY_MS) / 1000
    wait_until(lambda: smtp.to("cara@example.com", reminder) and smtp.to(TEAM_MEMBER["email"], "Reminder: Haircut"),
               timeout=max(0.0, c2_due - time.time()) + WAIT)
    time.sleep(max(0.0, c2_due + 1.5 - time.time()))
    cara = smtp.to("cara@example.com", reminder)
    tmc = smtp.to(TEAM_MEMBER["email"], "Reminder: Haircut")
    c.check("reschedule (C): exactly one reminder email to the attendee (the old one is never sent)",
            len(cara) == 1, f"{len(cara)}: {cara}; from the old due time {arrival(cara, c1_due)}")
    if cara:
        c.check("reschedule (C): it arrives at the new time (24 h before the new start), not the old",
                -0.5 <= cara[0].arrived - c2_due <= 5.0,
                f"arrived {arrival(cara, c2_due)} from the new due time, {arrival(cara, c1_due)} "
                "from the old one")
        c.check("reschedule (C): it names the new start",
                f"{c_moved['start_at'][:10]} at {c_moved['start_at'][11:16]}, Salon." in cara[0].text,
                cara[0].text)
    c.check("reschedule (C): the team member gets exactly one too, at the new time",
            len(tmc) == 1 and -0.5 <= tmc[0].arrived - c2_due <= 5.0,
            f"{tmc}; {arrival(tmc, c2_due)} from the new due time")
    ds = reminders_of(base, tm, "B-1003")
    c.equal("reschedule (C): the record: the old two superseded, the new 24 h sent, the new 1 h scheduled",
            [(d_["state"], d_.get("reason") if d_["state"] == "cancelled" else None, d_["run_at"]) for d_ in ds],
            [("cancelled", "superseded by a later event", ms(c1_start) - DAY_MS),
             ("cancelled", "superseded by a later event", ms(c1_start) - HOUR_MS),
             ("sent", None, ms(c2_start) - DAY_MS),
             ("scheduled", None, ms(c2_start) - HOUR_MS)])

    # --- D: cancelled, so no reminder, though it was due 8 s after the start ---------------
    d_due = (ms(d_start) - DAY_MS) / 1000
    time.sleep(max(0.0, d_due + 2.5 - time.time()))
    c.equal("cancellation (D): no reminder to the attendee, 2.5 s past when it was due",
            smtp.to("dan@example.com", reminder), [])
    c.equal("cancellation (D): nor to the team member",
            smtp.to(TEAM_MEMBER["email"], "Reminder: Tennis"), [])
    ds = reminders_of(base, tm, "B-1004")
    c.equal("cancellation (D): the record: both reminders cancelled by booking.cancelled",
            [(d_["state"], d_.get("reason")) for d_ in ds],
            [("cancelled", "cancelled by booking.cancelled (booking-cancellation)")] * 2)

    # --- A: the duplicate booking.confirmed sent nothing twice -----------------------------
    c.equal("duplicate: one confirmation email for the booking confirmed twice",
            len(smtp.to("siobhan@example.com", confirmed)), 1)
    ds = reminders_of(base, tm, "B-1001")
    c.equal("duplicate: its reminders scheduled once (24 h and 1 h before its start)",
            [(d_["state"], d_["run_at"]) for d_ in ds],
            [("scheduled", ms(a_start) - DAY_MS), ("scheduled", ms(a_start) - HOUR_MS)])

    mobile_and_crm(c, base, emit, providers, {p["booking_id"]: p for p in (a, b, c_first, d)})

    # --- every email, accounted for ----------------------------------------------------------
    want = {"Booking confirmed": 4, "New booking": 8, "Booking moved": 1, "Booking cancelled": 1,
            "Reminder": 4}
    everything = smtp.messages()
    kinds: dict[str, int] = {}
    for x in everything:
        k = x.subject.split(":", 1)[0]
        kinds[k] = kinds.get(k, 0) + 1
    c.equal("email: 18 messages in all, by kind (no stray or repeated email)", kinds, want)
    c.check("email: every message went over STARTTLS with AUTH",
            all(x.meta.get("tls") and x.meta.get("auth") for x in everything),
            f"{[(x.n, x.meta) for x in everything if not (x.meta.get('tls') and x.meta.get('auth'))]}")

    # --- the event webhooks ------------------------------------------------------------------
    unique = {(e, json.dumps(p, sort_keys=True)) for e, p in sent_events}
    wait_until(lambda: len(hooks.received()) >= len(unique))
    time.sleep(1.0)
    got_hooks = hooks.received()
    c.check("webhooks: every request verified by standardwebhooks (webhook-id, -timestamp, -signature)",
            bool(got_hooks) and all(r["verified"] for r in got_hooks),
            "\n".join(f"{r['headers'].get('webhook-id')}: {r['error']}" for r in got_hooks
                      if not r["verified"]) or "no webhook arrived")
    seen = sorted((r["json"]["data"]["booking_id"], r["json"]["type"]) for r in got_hooks if r["json"])
    c.equal("webhooks: booking.created/confirmed/rescheduled/cancelled, once each per booking "
            "(the duplicate confirmation is not sent again)",
            seen,
            sorted([("B-1001", "booking.created"), ("B-1001", "booking.confirmed"),
                    ("B-1002", "booking.created"), ("B-1002", "booking.confirmed"),
                    ("B-1003", "booking.created"), ("B-1003", "booking.confirmed"),
                    ("B-1003", "booking.rescheduled"),
                    ("B-1004", "booking.created"), ("B-1004", "booking.confirmed"),
                    ("B-1004", "booking.cancelled"), ("B-1001", "booking.paid")]))
    by_event = {(e, p["booking_id"]): p for e, p in sent_events}
    mismatched = [r["json"] for r in got_hooks if r["json"] and (
        r["json"].get("channel") != CHANNEL
        or r["json"].get("data") != by_event.get((r["json"]["type"], r["json"]["data"].get("booking_id"))))]
    c.check("webhooks: each body is {type, timestamp, channel, data} with the payload as triggered",
            bool(got_hooks) and not mismatched
            and all(set(r["json"]) == {"type", "timestamp", "channel", "data"} for r in got_hooks if r["json"]),
            f"mismatched: {mismatched}")
    ids = [r["headers"].get("webhook-id") for r in got_hooks]
    c.check("webhooks: a distinct webhook-id per event, all POSTed to the subscription's URL",
            len(set(ids)) == len(ids) and all(r["path"] == "/hooks/bookings" for r in got_hooks),
            f"ids: {ids}, paths: {[r['path'] for r in got_hooks]}")


def mobile_and_crm(c: Checks, base: str, emit, providers: Providers, bookings: dict) -> None:
    """SMS and WhatsApp confirmations, the CRM records of each confirmed booking, and the paid
    invoice of booking.paid, as each provider received them."""
    a = bookings["B-1001"]
    sms_path, wa_path = "/version1/messaging", f"/v21.0/{META_PHONE_NUMBER_ID}/messages"
    wait_until(lambda: len(providers.to(sms_path)) >= 4 and len(providers.to(wa_path)) >= 4
               and len(providers.to("/crm/v2/Deals/upsert")) >= 4)
    time.sleep(0.5)  # long enough for a repeated one to have gone out
    sms = providers.to(sms_path)
    forms = {f["to"]: f for f in (dict(urllib.parse.parse_qsl(r["body"])) for r in sms)}
    c.equal("sms: one confirmation per booking (the duplicate event sends none), numbers in E.164 "
            "(Kenyan local numbers with the app's region, the Saudi one kept)",
            sorted(dict(urllib.parse.parse_qsl(r["body"]))["to"] for r in sms), sorted(E164.values()))
    c.equal("sms: Africa's Talking gets its form: username, to, message, from (and the apiKey header)",
            forms.get(E164["B-1001"]),
            {"username": AT_USERNAME, "to": E164["B-1001"], "from": "ACME",
             "message": f"Acme Bookings: {a['event_title']} on {a['start_at'][:10]} at "
                        f"{a['start_at'][11:16]} is confirmed (ref B-1001)."})
    wa = providers.to(wa_path)
    bodies = {json.loads(r["body"])["to"]: json.loads(r["body"]) for r in wa}
    c.equal("whatsapp: one template message per booking, to the number without its +",
            sorted(bodies), sorted(n.lstrip("+") for n in E164.values()))
    c.equal("whatsapp: the Cloud API template body, parameters filled",
            bodies.get("254712345678"),
            {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "254712345678",
             "type": "template", "template": {"name": "booking_confirmation", "language": {"code": "en"},
                                              "components": [{"type": "body", "parameters": [
                                                  {"type": "text", "text": a["attendee_name"]},
                                                  {"type": "text", "text": a["event_title"]},
                                                  {"type": "text", "text": f"{a['start_at'][:10]} {a['start_at'][11:16]}"}]}]}})
    contacts, deals = providers.crm["Contacts"], providers.crm["Deals"]
    c.equal("zoho crm: a contact per attendee, upserted on Email",
            sorted(contacts), sorted(p["attendee_email"] for p in bookings.values()))
    c.equal("zoho crm: the contact's fields",
            {k: v for k, v in contacts.get(a["attendee_email"], {}).items() if k != "id"},
            {"Email": a["attendee_email"], "Last_Name": a["attendee_name"], "Mobile": a["attendee_phone"]})
    deal = deals.get("B-1001", {})
    c.equal("zoho crm: a deal per booking on Booking_Reference, linked to its contact",
            (sorted(deals), deal.get("Contact_Name"), deal.get("Deal_Name"), deal.get("Stage"),
             deal.get("Closing_Date")),
            (sorted(bookings), {"id": contacts.get(a["attendee_email"], {}).get("id")},
             f"{a['event_title']} (B-1001)", "Closed Won", a["start_at"][:10]))
    c.equal("zoho: one access token for all of it", providers.tokens, 1)

    # --- the payment: an invoice in Zoho Books, paid ---------------------------------------
    paid = dict(a, status="paid", payment_id="pi_3QxYz")
    emit("booking.paid", paid)
    emit("booking.paid", paid)  # the payment provider's webhook, delivered twice
    wait_until(lambda: providers.payments)
    time.sleep(0.5)
    inv = providers.invoices.get("B-1001")
    c.equal("zoho books: one invoice for the booking, with its line item",
            (list(providers.invoices), inv and inv["body"]),
            (["B-1001"], {"customer_id": providers.customers.get(a["attendee_email"]), "reference_number": "B-1001",
                          "line_items": [{"name": a["event_title"], "rate": 120.0, "quantity": 1.0,
                                          "description": f"{a['start_at'][:10]} at {a['start_at'][11:16]}, {a['location']}"}]}))
    pay = providers.payments[0] if providers.payments else {}
    c.equal("zoho books: marked sent, then one payment applied in full (the repeated event pays nothing twice)",
            (inv and inv["status"], len(providers.payments), pay.get("payment_mode"), pay.get("amount"),
             pay.get("reference_number"), pay.get("invoices")),
            ("paid", 1, "creditcard", 120.0, "pi_3QxYz", [{"invoice_id": inv and inv["invoice_id"], "amount_applied": 120.0}]))
    status, body = api(base, "GET", f"/apps/{APP_ID}/zoho/sync_logs", params={"reference": "B-1001"})
    logs = [(x["operation"], x["entity"], x["status"]) for x in reversed((body or {}).get("sync_logs", []))] if status == 200 else body
    c.equal("zoho: the sync log of B-1001, oldest first, as the seeds' zohoSyncLogs",
            logs,
            [("CONTACT_UPSERT", "Contacts", "SUCCESS"), ("DEAL_CREATE", "Deals", "SUCCESS"),
             ("CONTACT_UPSERT", "Customers", "SUCCESS"), ("INVOICE_CREATE", "Invoices", "SUCCESS"),
             ("INVOICE_MARK_PAID", "CustomerPayments", "SUCCESS")])


if __name__ == "__main__":
    sys.exit(common.main(run, "bellhop-booking-", Checks(json_default=str)))
