from __future__ import annotations

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt


def test_error_keeps_detail_out_of_headline():
    err = KvmopsError("Domain vm1 is not defined on hostb.", detail="Domain not found", values={"name": "vm1"})
    assert err.msg == "Domain vm1 is not defined on hostb."
    assert str(err) == "Domain vm1 is not defined on hostb. (detail: Domain not found)"
    assert err.as_result() == {"detail": "Domain not found", "values": {"name": "vm1"}}


def test_uuid_detection():
    assert _libvirt.looks_like_uuid("0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6f")
    assert not _libvirt.looks_like_uuid("migratetest2")
    assert not _libvirt.looks_like_uuid("0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6")
