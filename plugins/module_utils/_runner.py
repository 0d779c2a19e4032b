# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The external commands this collection runs on a host: one interface, the real runner, and
the checked call.

:class:`SubprocessRunner` runs an ``argv`` list with ``subprocess.run``: no shell, no stdin,
``LC_ALL=C``/``LANG=C`` so that the tools answer in the words the parsers expect; a tool that
cannot be started is exit code 127 with the reason as stderr. Unit tests pass a :class:`Runner`
of their own with canned outputs. :func:`run_checked` turns a non-zero exit into our
exception, with the tool's stderr as its detail.

Used for qemu-img, blockdev, lvs/vgs/lvcreate/lvremove, restorecon (the image modules) and
ss (``_sockets``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError


@dataclass
class RunResult:
    """Outcome of one command: exit code, stdout and stderr as text."""
    rc: int
    stdout: str
    stderr: str


class Runner:
    """Runs external commands. Tests pass a fake with canned outputs."""

    def run(self, argv: list[str]) -> RunResult:  # pragma: no cover - interface
        raise NotImplementedError

    def which(self, name: str) -> str | None:
        return shutil.which(name)


class SubprocessRunner(Runner):
    """The real runner: ``subprocess.run`` with ``LC_ALL=C``, no shell, no stdin."""

    def run(self, argv: list[str]) -> RunResult:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, check=False)
        except OSError as err:
            return RunResult(127, "", "%s: %s" % (argv[0], err))
        return RunResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                         proc.stderr.decode("utf-8", "replace"))


def run_checked(runner: Runner, argv: list[str], what: str) -> str:
    """Run ``argv``; return stdout or raise :class:`KvmopsError` naming ``what``.

    :raises KvmopsError: non-zero exit; the tool's stderr is the detail.
    """
    res = runner.run(argv)
    if res.rc != 0:
        raise KvmopsError("Could not %s: %s exited with %d." % (what, argv[0], res.rc),
                          detail=(res.stderr or res.stdout).strip() or None,
                          values={"command": argv})
    return res.stdout
