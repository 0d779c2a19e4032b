# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
the browser reads commands on its fd 3 and writes answers on its fd 4, NUL-terminated JSON), so
the docs test needs no driver or client package: Debian's chromium and the standard library."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time

# the flags of this machine's facts: no sandbox as root, no GPU, and no connection attempts
# (background networking, component updates, sync) on a machine without the internet
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2000"]


class Browser:
    """``with Browser() as b: page = b.open(url); b.evaluate(page, "document.title")``."""

    def __init__(self, executable: str = "chromium", timeout_s: float = 30.0):
        self.executable = shutil.which(executable) or executable
        self.timeout_s = timeout_s
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> "Browser":
        self._profile = tempfile.mkdtemp(prefix="kvmops-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # copies above 4 (free ones), so that placing them on 3 and 4 in the child cannot
        # clobber one another
        fds = [fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds():
            os.dup2(fds[0], 3)
            os.dup2(fds[1], 4)

        # its log (dbus complaints of a machine without a session bus) goes to a file, not a pipe
        self._log = open(os.path.join(self._profile, "chromium.log"), "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [self.executable] + FLAGS + ["--remote-debugging-pipe", "--user-data-dir=" + self._profile,
                                         "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=child_fds, pass_fds=(3, 4) + tuple(fds))
        for fd in fds:
            os.close(fd)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError("no answer from Chromium to %s within %s s" % (method, self.timeout_s))
                chunk = os.read(self._from_browser, 65536)
                if not chunk:
                    with open(self._log.name, "rb") as log:
                        raise RuntimeError("Chromium exited: %s" % log.read().decode(errors="replace")[-2000:])
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError("%s: %s" % (method, answer["error"]))
                return answer.get("result", {})

    def open(self, url: str) -> str:
        """A new tab on ``url``, loaded; returns its session."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + self.timeout_s
        # a new tab holds about:blank (complete) until the navigation commits
        check = "document.readyState === 'complete' && location.href === %s" % json.dumps(url)
        while not self.evaluate(session, check):
            if time.monotonic() > deadline:
                raise TimeoutError("%s did not load within %s s" % (url, self.timeout_s))
            time.sleep(0.1)
        return session

    def evaluate(self, session: str, expression: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in res:
            raise RuntimeError("%s: %s" % (expression[:80], res["exceptionDetails"]))
        return res["result"].get("value")

    def screenshot(self, session: str, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
