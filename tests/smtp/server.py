"""A real SMTP server (aiosmtpd) for bellhop's email tests.

STARTTLS is required before AUTH (LOGIN/PLAIN, user `bellhop`, password `secret`); each
accepted message is written to OUTDIR as N.eml with N.json (envelope). MODE picks how DATA is
answered: ok, fail-first (451 once, then 250), reject (550), stall (never answers). With a
sixth argument `implicit`, the server speaks TLS from the first byte (SMTPS) instead.

usage: server.py PORT CERT KEY OUTDIR MODE [implicit]
"""
import asyncio
import json
import os
import ssl
import sys
import warnings

# aiosmtpd warns about its own Session.login_data on every AUTH.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*login_data.*")

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402


class Handler:
    def __init__(self, outdir, mode):
        self.outdir, self.mode, self.count = outdir, mode, 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        if self.mode == "fail-first" and self.count == 1:
            return "451 4.3.0 Temporary failure, try again later"
        if self.mode == "reject":
            return "550 5.1.1 Mailbox unavailable"
        if self.mode == "stall":
            await asyncio.sleep(3600)
        n = len([f for f in os.listdir(self.outdir) if f.endswith(".eml")]) + 1
        with open(os.path.join(self.outdir, f"{n}.eml"), "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(os.path.join(self.outdir, f"{n}.json"), "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "auth": session.authenticated,
                       "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None}, f)
        return "250 2.0.0 OK queued"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"bellhop" \
        and auth_data.password == b"secret"
    return AuthResult(success=ok)


def main():
    port, cert, key, outdir, mode = sys.argv[1:6]
    implicit = len(sys.argv) > 6 and sys.argv[6] == "implicit"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if implicit:
        controller = Controller(Handler(outdir, mode), hostname="127.0.0.1", port=int(port),
                                ssl_context=ctx, authenticator=authenticate,
                                auth_require_tls=False)
    else:
        controller = Controller(Handler(outdir, mode), hostname="127.0.0.1", port=int(port),
                                tls_context=ctx, require_starttls=True,
                                authenticator=authenticate, auth_require_tls=True)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
