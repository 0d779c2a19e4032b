# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _host (the host_info module's backend) against a hand-written fake connection."""

from __future__ import annotations

import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _host

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_FIXTURES = os.path.join(HERE, "..", "..", "fixtures", "cpu")


class FakeDomain:
    def __init__(self, name, uuid, state, mem_kib, vcpus, persistent=True):
        self._name, self._uuid, self._state = name, uuid, state
        self._mem, self._vcpus, self._persistent = mem_kib, vcpus, persistent

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802 - libvirt's name
        return self._uuid

    def info(self):
        return [self._state, self._mem, self._mem, self._vcpus, 0]

    def isActive(self):  # noqa: N802
        return self._state in (1, 2, 3)

    def isPersistent(self):  # noqa: N802
        return self._persistent


class FakeConn:
    def __init__(self, caps, domains, mem_stats=None):
        self.caps, self.domains, self.mem_stats = caps, domains, mem_stats

    def getCapabilities(self):  # noqa: N802
        return self.caps

    def getInfo(self):  # noqa: N802
        return ["x86_64", 24000, 2, 2000, 1, 1, 2, 1]

    def getLibVersion(self):  # noqa: N802
        return 11003000

    def getVersion(self):  # noqa: N802
        return 10000000

    def getMemoryStats(self, cell, flags):  # noqa: N802
        if self.mem_stats is None:
            raise RuntimeError("not supported")  # not a libvirt error: must propagate
        return self.mem_stats

    def listAllDomains(self, flags):  # noqa: N802
        return self.domains

    def getURI(self):  # noqa: N802
        return "qemu:///system"


def caps():
    with open(os.path.join(CPU_FIXTURES, "lab-amd-capabilities.xml")) as f:
        return f.read()


@pytest.mark.parametrize("text, expected", [
    ('host_uuid = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"\n', "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"),
    ('#host_uuid = "00000000-1111-2222-3333-444444444444"\n', None),
    ('listen_tls = 0\n  host_uuid="a"  # set by hand\nhost_uuid = "b"\n', "b"),
    ("", None),
])
def test_parse_host_uuid(text, expected):
    assert _host.parse_host_uuid(text) == expected


@pytest.mark.parametrize("value, valid", [
    ("8d6c1f5e-1111-4a2b-9c3d-0123456789ab", True),
    ("ffffffff-ffff-ffff-ffff-ffffffffffff", False),
    ("00000000-0000-0000-0000-000000000000", False),
    ("not-a-uuid", False),
    (None, False),
])
def test_is_valid_host_uuid(value, valid):
    assert _host.is_valid_host_uuid(value) is valid


def test_version_text():
    assert _host.version_text(11003000) == "11.3.0" and _host.version_text(9000000) == "9.0.0"
    assert _host.version_text(None) is None


def test_memory_from_stats():
    mem = _host.memory_from_stats({"total": 1000, "free": 100, "buffers": 10, "cached": 40})
    assert mem == {"memory_bytes": 1024000, "free_memory_bytes": 102400, "available_memory_bytes": 153600}


def test_host_facts_with_domains():
    doms = [FakeDomain("vm2", "u2", 5, 524288, 2), FakeDomain("vm1", "u1", 1, 262144, 1)]
    conn = FakeConn(caps(), doms, {"total": 24 * 1024 ** 2, "free": 1024 ** 2, "buffers": 0, "cached": 1024 ** 2})
    out = _host.host_facts(conn, 'host_uuid = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"\n', True, hostname="hosta")
    h = out["host"]
    assert h["hostname"] == "hosta" and h["uuid"] and h["cpu_vendor"] == "AMD"
    assert h["uuid_configured"] == "8d6c1f5e-1111-4a2b-9c3d-0123456789ab" and h["uuid_configured_valid"] is True
    assert h["libvirt_version"] == "11.3.0" and h["hypervisor_version"] == "10.0.0" and h["cpus"] == 2
    assert h["free_memory_bytes"] == 1024 ** 3 and h["available_memory_bytes"] == 2 * 1024 ** 3
    assert [d["name"] for d in out["domains"]] == ["vm1", "vm2"]
    assert out["domains"][0] == {"name": "vm1", "uuid": "u1", "state": "running", "active": True,
                                 "persistent": True, "memory_bytes": 256 * 1024 ** 2,
                                 "max_memory_bytes": 256 * 1024 ** 2, "vcpus": 1}
    assert out["domains"][1]["state"] == "shutoff" and not out["domains"][1]["active"]
    assert h["running_memory_bytes"] == 256 * 1024 ** 2 and h["running_vcpus"] == 1


def test_host_facts_without_domains_and_conf():
    conn = FakeConn(caps(), [], {"total": 100, "free": 50})
    out = _host.host_facts(conn, "", False, include_domains=False)
    assert "domains" not in out and out["host"]["uuid_configured"] is None
    assert out["host"]["uuid_configured_valid"] is None and out["host"]["libvirtd_conf_exists"] is False


def test_non_libvirt_errors_propagate():
    with pytest.raises(RuntimeError):
        _host.host_facts(FakeConn(caps(), [], None), "", True)


def test_read_conf_missing(tmp_path):
    assert _host.read_conf(str(tmp_path / "nope.conf")) == (False, "")
    conf = tmp_path / "libvirtd.conf"
    conf.write_text('host_uuid = "x"\n')
    assert _host.read_conf(str(conf)) == (True, 'host_uuid = "x"\n')
