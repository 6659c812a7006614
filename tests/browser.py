"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

The browser talks to us over a pipe (``--remote-debugging-pipe``: file descriptors 3 and 4,
JSON messages ending in NUL), so it opens no port at all. :func:`open_page` loads a page,
waits for its load event and records what a reader cannot see: console messages, uncaught
exceptions, log entries and every network request the page made.

:func:`chromium` finds the browser and installs it with ``apt-get`` when it is missing and we
are root; without it a test skips, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


#: Where browser tests keep their screenshots after the run (pytest's temporary folders rotate):
#: ``$TEST_OUTPUT`` or ``test-output/`` in the project (git ignores it).
SHOTS = Path(os.environ.get("TEST_OUTPUT") or Path(__file__).resolve().parents[1] / "test-output")


def kept(name: str) -> Path:
    """A path under :data:`SHOTS` for ``name``, its folder made."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / name


def chromium() -> str:
    """The browser's path; installed with apt-get when missing and we are root. Missing: the
    test skips, or under ``CI=true`` fails."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            env=env,
            capture_output=True,
            check=False,
        )
        found = shutil.which("chromium")
    if found is None:
        message = "headless Chromium (Debian's chromium package) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " and could not be installed")
        pytest.skip(message)
    return found


@dataclass
class PageLoad:
    """What loading one page showed: console messages, exceptions, requests, and a session
    to ask the page more (:meth:`evaluate`, :meth:`screenshot`)."""

    url: str
    seconds: float
    console: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    log_entries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    browser: _Browser | None = None
    session: str | None = None

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries, as text."""
        out = [json.dumps(m.get("args")) for m in self.console if m.get("type") == "error"]
        out += [json.dumps(e.get("exceptionDetails")) for e in self.exceptions]
        out += [json.dumps(e) for e in self.log_entries if e.get("level") == "error"]
        return out

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (returned by value)."""
        assert self.browser is not None
        reply = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session,
        )
        result = reply.get("result", {})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the whole page, or of the element ``selector`` finds."""
        assert self.browser is not None
        if selector is None:
            size = self.browser.call("Page.getLayoutMetrics", {}, self.session)["result"]
            content = size.get("cssContentSize") or size["contentSize"]
            box = {"x": 0, "y": 0, "width": content["width"], "height": content["height"]}
        else:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return {x: r.x + window.scrollX, "
                "y: r.y + window.scrollY, width: r.width, height: r.height}; })()"
            )
        clip = {**box, "scale": 1}
        shot = self.browser.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            self.session,
        )
        path.write_bytes(base64.b64decode(shot["result"]["data"]))
        return path


class _Browser:
    """One Chromium process and its DevTools pipe."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        ours_read, theirs_write = os.pipe()
        theirs_read, ours_write = os.pipe()
        # Above 2 and out of the way of 3 and 4, which the child gets them as.
        high_read = fcntl.fcntl(theirs_read, fcntl.F_DUPFD, 10)
        high_write = fcntl.fcntl(theirs_write, fcntl.F_DUPFD, 10)
        for fd in (theirs_read, theirs_write):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4, high_read, high_write),
            preexec_fn=child_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(high_read)
        os.close(high_write)
        self._in, self._out = ours_read, ours_write
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any], session: str | None = None) -> int:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        return self._id

    def receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(
        self, method: str, params: dict[str, Any], session: str | None = None
    ) -> dict[str, Any]:
        """Send a command and return its reply; events on the way are kept in ``events``."""
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self.receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message
            self.events.append(message)

    def wait_for(self, method: str, deadline: float) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.receive(deadline))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", {})
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=10)
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def open_page(path: Path, *, width: int = 1400, timeout: float = 60.0) -> Iterator[PageLoad]:
    """Load ``path`` from a ``file://`` URL in a fresh headless Chromium (a new profile) and
    yield what the load showed; the browser is closed afterwards."""
    executable = chromium()
    url = path.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        browser = _Browser(executable, Path(profile), timeout)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})
            target_id = target["result"]["targetId"]
            attached = browser.call(
                "Target.attachToTarget", {"targetId": target_id, "flatten": True}
            )
            session = attached["result"]["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                browser.call(f"{domain}.enable", {}, session)
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            browser.events.clear()
            started = time.monotonic()
            browser.call("Page.navigate", {"url": url}, session)
            browser.wait_for("Page.loadEventFired", started + timeout)
            load = PageLoad(url, time.monotonic() - started, browser=browser, session=session)
            load.evaluate("1")  # everything the load logged has arrived before this answer
            _sort_events(load, browser.events)
            yield load
        finally:
            browser.close()


def _sort_events(load: PageLoad, events: list[dict[str, Any]]) -> None:
    for e in events:
        method, params = e.get("method"), e.get("params") or {}
        if method == "Runtime.consoleAPICalled":
            load.console.append(params)
        elif method == "Runtime.exceptionThrown":
            load.exceptions.append(params)
        elif method == "Log.entryAdded":
            load.log_entries.append(params.get("entry") or {})
        elif method == "Network.requestWillBeSent":
            load.requests.append(str((params.get("request") or {}).get("url")))
