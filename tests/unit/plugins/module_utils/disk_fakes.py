"""Hand-written fakes for the images/domain tests: a command runner and a libvirt connection."""

from __future__ import annotations

import contextlib
import os
import typing as t

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils._runner import (
    Runner, RunResult, SubprocessRunner)

try:
    import libvirt  # type: ignore[import-not-found]
except ImportError:  # the fakes that need libvirt's error type skip their test
    libvirt = None

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


class FakeDomain:
    def __init__(self, name: str, xml: str, active: bool = True, inactive_xml: str | None = None) -> None:
        self._name = name
        self.xml = xml
        self.active = active
        self.inactive_xml = inactive_xml or xml

    def name(self) -> str:
        return self._name

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        return 1 if self.active else 0

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 - libvirt's name
        return self.inactive_xml if flags & 2 else self.xml


class FakeVolume:
    def __init__(self, path: str) -> None:
        self._path = path

    def path(self) -> str:
        return self._path


class FakePool:
    def __init__(self, volumes: dict[str, str]) -> None:
        self.volumes = volumes

    def storageVolLookupByName(self, name: str) -> FakeVolume:  # noqa: N802
        return FakeVolume(self.volumes[name])


class FakePoolDef:
    """A storage pool as ``listAllStoragePools`` returns it: name, XML with its target, state."""

    def __init__(self, name: str, path: str, active: bool = True) -> None:
        self._name, self.path, self.active = name, path, active

    def name(self) -> str:
        return self._name

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.active)

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 - libvirt's name
        return ("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>"
                % (self._name, self.path))


class FakeConnection:
    """The few virConnect calls used: listAllDomains, lookupByName/UUIDString, pools.

    ``pools`` maps a pool name to its volumes (name -> path) for ``storagePoolLookupByName``;
    ``pool_dirs`` maps a pool name to its target directory for ``listAllStoragePools``.
    """

    def __init__(self, domains: t.Iterable[FakeDomain] = (), pools: dict[str, dict[str, str]] | None = None,
                 pool_dirs: dict[str, str] | None = None) -> None:
        self.domains = list(domains)
        self.pools = pools or {}
        self.pool_dirs = pool_dirs or {}
        self.closed = False

    def listAllStoragePools(self, flags: int = 0) -> list[FakePoolDef]:  # noqa: N802
        return [FakePoolDef(name, path) for name, path in self.pool_dirs.items()]

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:  # noqa: N802
        return list(self.domains)

    def lookupByName(self, name: str) -> FakeDomain:  # noqa: N802
        for dom in self.domains:
            if dom.name() == name:
                return dom
        raise no_domain_error(name)

    lookupByUUIDString = lookupByName

    def storagePoolLookupByName(self, name: str) -> FakePool:  # noqa: N802
        return FakePool(self.pools[name])

    def getURI(self) -> str:  # noqa: N802
        return "test:///fake"

    def close(self) -> None:
        self.closed = True


def no_domain_error(name: str) -> Exception:
    """The ``libvirtError`` (VIR_ERR_NO_DOMAIN) libvirt raises for a domain that is not defined,
    made without a real libvirt failure."""
    if libvirt is None:
        pytest.skip("libvirt-python is needed to fake libvirt's errors")
    err = libvirt.libvirtError.__new__(libvirt.libvirtError)
    msg = "Domain not found: no domain with matching name '%s'" % name
    Exception.__init__(err, msg)
    err.err = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, msg, 2, name, None, None, -1, -1)
    return err


def connector(conn: FakeConnection) -> t.Callable[..., t.Any]:
    @contextlib.contextmanager
    def connect(uri: str, readonly: bool = False) -> t.Iterator[FakeConnection]:
        yield conn
    return connect
