"""Hand-written fakes for the images/domain tests: a command runner (libvirt's fake is fake_libvirt.py)."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._runner import (
    Runner, RunResult, SubprocessRunner)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")


def fixture(*parts: str) -> str:
    with open(os.path.join(FIXTURES, *parts), "r", encoding="utf-8") as handle:
        return handle.read()


class FakeRunner(Runner):
    """Canned outputs keyed by a command prefix (tuple); records every call.

    Commands not matched go to ``fallback`` (the real runner when given, e.g. for qemu-img in
    tmp_path) or fail with rc 127.
    """

    def __init__(self, canned: dict[tuple[str, ...], RunResult] | None = None,
                 fallback: Runner | None = None, tools: t.Iterable[str] = ("lvs", "vgs", "lvcreate")) -> None:
        self.canned = dict(canned or {})
        self.fallback = fallback
        self.tools = set(tools)
        self.calls: list[list[str]] = []

    def add(self, prefix: t.Sequence[str], stdout: str = "", rc: int = 0, stderr: str = "") -> None:
        self.canned[tuple(prefix)] = RunResult(rc, stdout, stderr)

    def run(self, argv: list[str]) -> RunResult:
        self.calls.append(list(argv))
        best = None
        for prefix, res in self.canned.items():
            if tuple(argv[:len(prefix)]) == prefix and (best is None or len(prefix) > len(best[0])):
                best = (prefix, res)
        if best is not None:
            return best[1]
        if self.fallback is not None:
            return self.fallback.run(argv)
        return RunResult(127, "", "%s: not faked" % argv[0])

    def which(self, name: str) -> str | None:
        if name in self.tools:
            return "/usr/sbin/" + name
        return None

    def commands(self, name: str) -> list[list[str]]:
        return [c for c in self.calls if c and c[0] == name]


def real_runner() -> FakeRunner:
    """Real qemu-img, no SELinux, LVM tools absent."""
    return FakeRunner(fallback=SubprocessRunner(), tools=())
