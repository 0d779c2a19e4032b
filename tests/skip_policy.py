# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A skipped test fails the run unless its reason is listed here (issue 13 item 6).

A skip that nobody looked at hides a failure: ``importorskip("libvirt")`` without
libvirt-python silently dropped a hundred unit tests, and a test skipped because an earlier
one failed looked like a pass. Every skip the suites may show is listed with why it is
acceptable; any other skip turns the session's exit status into a failure, and the terminal
summary lists each skip with its reason (like ``-rs``).

Used by tests/unit/conftest.py and tests/integration/conftest.py (``pytest_plugins`` cannot be
used from a non-root conftest, so both import these hooks).
"""

from __future__ import annotations

import re

import pytest

#: (pattern of the skip reason, why a skip for it is not a hidden failure)
ALLOWED_SKIPS = [
    (r"^LV activation needs the kernel's device-mapper, which this lab machine lacks",
     "this machine's kernel has no device-mapper: LVs cannot be activated in the lab at all "
     "(the refusal path of disk_image is tested instead, CASES.md C04)"),
    (r"^no /dev/kvm on this machine$",
     "a KVM guest cannot run without /dev/kvm; the TCG variant of the same test runs"),
]

_skipped: list[tuple[str, str]] = []


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text[len("Skipped: "):] if text.startswith("Skipped: ") else text


def allowed(reason: str) -> bool:
    """Whether a skip with this reason is listed in :data:`ALLOWED_SKIPS`."""
    return any(re.search(pattern, reason) for pattern, _why in ALLOWED_SKIPS)


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _reason(report)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _skipped:
        return
    terminalreporter.section("skips (tests/skip_policy.py)")
    for nodeid, reason in _skipped:
        verdict = "allowed" if allowed(reason) else "NOT ALLOWED"
        terminalreporter.write_line("%s: %s [%s]" % (nodeid, reason, verdict))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    bad = [(n, r) for n, r in _skipped if not allowed(r)]
    if bad and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\n%d skip(s) not listed in tests/skip_policy.py ALLOWED_SKIPS: the run fails." % len(bad))
        for nodeid, reason in bad:
            print("  %s: %s" % (nodeid, reason))
