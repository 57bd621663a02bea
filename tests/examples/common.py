"""What the end-to-end example scripts (tests/examples/hotelmate.py, booking.py) share.

A plain module, standard library only. The scripts import it from their own directory (they
put it on sys.path first), so they run from any working directory:

- the check counter (`ok    name` / `FAIL  name` lines, then `N passed, M failed`) and the
  bounded wait `wait_until`, every wait bounded by WAIT;
- child processes in their own session, stderr into a log file, stdout read line by line,
  terminated (then killed) on stop; bellhop itself, started on free ports, its address read
  from its `listening http://...` line;
- small HTTP servers on 127.0.0.1 in a daemon thread;
- requests to bellhop's HTTP API signed as the Pusher HTTP API is;
- filling the `${NAME}` placeholders of an example config;
- `main`: the binary check, SIGTERM as an interruption, a temporary directory removed on every
  path, a crash reported as a failed check, the final line and the exit code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = "/var/tmp/bellhop-ci-target/debug/bellhop"
WAIT = 15.0  # the bound of every wait, seconds


class Fatal(Exception):
    """A failure that makes the remaining checks meaningless."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------


class Checks:
    """Counts the checks. `json_default` is handed to json.dumps for `equal`'s detail (e.g.
    `str`, for values JSON cannot represent)."""

    def __init__(self, json_default=None) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.json_default = json_default

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            log(f"ok    {name}")
        else:
            self.failed.append(name)
            log(f"FAIL  {name}")
            if detail:
                for line in detail.splitlines():
                    log(f"        {line}")
        return ok

    def equal(self, name: str, got, want) -> bool:
        d = self.json_default
        return self.check(
            name,
            got == want,
            f"expected: {json.dumps(want, ensure_ascii=False, sort_keys=True, default=d)}\n"
            f"got:      {json.dumps(got, ensure_ascii=False, sort_keys=True, default=d)}",
        )


def wait_until(fn, timeout: float = WAIT, every: float = 0.1):
    """Calls fn until it returns something truthy or timeout passes; returns the last value."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() >= end:
            return v
        time.sleep(every)


# ----------------------------------------------------------------------------------------
# Child processes and local HTTP servers
# ----------------------------------------------------------------------------------------


def tail(path: Path, fh, n: int, missing: str) -> str:
    """The last n lines of a log file being written through fh (flushed first)."""
    try:
        if not fh.closed:
            fh.flush()
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) or "(empty)"
    except OSError:
        return missing


def stop_process(proc: subprocess.Popen) -> None:
    """Terminates proc if it still runs, killing it if it does not exit within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Child:
    """A child process in its own session: stdin closed, stderr into log_path, and each stdout
    line (decoded, without its newline) put on self.lines, then None when stdout closes."""

    def __init__(self, cmd: list[str], log_path: Path, reader_name: str, env: dict | None = None) -> None:
        self.log_path = log_path
        self.stderr = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr, start_new_session=True,
        )
        self.lines: queue.Queue = queue.Queue()

        def read():
            for raw in self.proc.stdout:
                self.lines.put(raw.decode(errors="replace").rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=read, name=reader_name, daemon=True).start()

    def log_tail(self, n: int = 40) -> str:
        return tail(self.log_path, self.stderr, n, "(no log)")

    def stop(self) -> None:
        stop_process(self.proc)
        self.stderr.close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


def serve(handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port), serving in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def stop_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------------------
# bellhop
# ----------------------------------------------------------------------------------------


class Bellhop(Child):
    def __init__(self, binary: str, config: Path, data_dir: Path, log_path: Path) -> None:
        env = dict(os.environ)
        env.update({
            "BELLHOP_CONFIG": str(config),
            "BELLHOP_PORT": "0",
            "BELLHOP_METRICS_PORT": "0",
            "BELLHOP_DATA_DIR": str(data_dir),
            "BELLHOP_LOG": "warn",
        })
        super().__init__([binary], log_path, "bellhop-stdout", env=env)
        end = time.monotonic() + WAIT
        self.base = None
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.05, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("listening http://"):
                self.base = line.split(" ", 1)[1].strip()
                break
        if self.base is None:
            self.stop()
            raise Fatal(f"bellhop did not print 'listening http://…' within {WAIT:.0f}s "
                        f"(exit code {self.proc.returncode}); its log:\n{self.log_tail()}")
        self.port = int(self.base.rsplit(":", 1)[1])


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api(key: str, secret: str, base: str, method: str, path: str, body=None,
        params: dict | None = None):
    """A request to bellhop's HTTP API, signed as the Pusher HTTP API is: auth_key,
    auth_timestamp, auth_version=1.0, body_md5 for a non-empty body, and auth_signature =
    HMAC-SHA256 hex of "METHOD\\nPATH\\nsorted query" under the app secret."""
    raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    q = {"auth_key": key, "auth_timestamp": str(int(time.time())), "auth_version": "1.0"}
    q.update(params or {})
    if raw:
        q["body_md5"] = hashlib.md5(raw).hexdigest()
    to_sign = f"{method}\n{path}\n" + "&".join(f"{k}={q[k]}" for k in sorted(q))
    q["auth_signature"] = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"{base}{path}?{urllib.parse.urlencode(q)}", data=raw if raw else None, method=method,
        headers={"content-type": "application/json"} if raw else {},
    )
    try:
        with _no_proxy.open(req, timeout=WAIT) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


# ----------------------------------------------------------------------------------------
# Running a scenario
# ----------------------------------------------------------------------------------------


def render_config(template_path: Path, values: dict[str, str], all_filled: bool = False) -> str:
    """The example config at template_path with its `${NAME}` placeholders filled; each must
    be there, and with all_filled no other `${NAME}` may be left."""
    template = template_path.read_text()
    for name, value in values.items():
        placeholder = "${" + name + "}"
        if placeholder not in template:
            raise Fatal(f"{template_path} has no {placeholder} placeholder")
        if "'" in value or "\n" in value:  # the placeholders sit in TOML literal strings
            raise Fatal(f"{name} cannot go in a TOML literal string: {value!r}")
        template = template.replace(placeholder, value)
    if all_filled:
        left = re.findall(r"\$\{[A-Z0-9_]+\}", template)
        if left:
            raise Fatal(f"{template_path} has placeholders the test does not fill: {left}")
    return template


def no_proxy_for_localhost() -> None:
    for var in ("NO_PROXY", "no_proxy"):  # the pusher SDK (requests) and bellhop (reqwest)
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"]))


def main(run, tmp_prefix: str, c: Checks | None = None) -> int:
    """Runs run(c, tmp, binary) in a temporary directory (removed on every path, SIGTERM
    included) and prints `N passed, M failed` last; the exit code is 1 on any failure."""
    binary = os.environ.get("BELLHOP_BIN") or DEFAULT_BIN
    if c is None:
        c = Checks()
    if not os.access(binary, os.X_OK):
        c.check("the bellhop binary is there", False, f"{binary!r} is not executable (set BELLHOP_BIN)")
        log(f"{c.passed} passed, {len(c.failed)} failed")
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix=tmp_prefix) as tmp:
        try:
            run(c, Path(tmp), binary)
        except Fatal as e:
            c.check("the scenario ran to its end", False, str(e))
        except KeyboardInterrupt as e:
            c.check("the scenario ran to its end", False, f"interrupted ({e})")
        except Exception as e:  # a crash is a failure with its reason, never a pass
            import traceback
            c.check("the scenario ran to its end", False, traceback.format_exc().rstrip() or repr(e))
    log(f"{c.passed} passed, {len(c.failed)} failed")
    return 1 if c.failed else 0
