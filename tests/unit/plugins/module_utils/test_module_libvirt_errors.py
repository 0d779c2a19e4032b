# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _module.call_backend: our error and a libvirt error left over both end in
fail_json with a message for the operator, never in a traceback (issue 13 item 2)."""

from __future__ import annotations

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

libvirt = pytest.importorskip("libvirt")


class Failed(Exception):
    pass


class FakeModule:
    """The two things call_backend uses of AnsibleModule."""

    _diff = False

    def __init__(self):
        self.failed = None
        self.warnings = []

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise Failed()

    def warn(self, text):
        self.warnings.append(text)


def test_a_libvirt_error_left_over_fails_with_a_clear_message():
    def backend():
        raise libvirt.libvirtError("Cannot recv data: Connection reset by peer")

    module = FakeModule()
    with pytest.raises(Failed):
        _module.call_backend(module, backend)
    msg = module.failed["msg"]
    assert msg.startswith("libvirt reported an error that kvmops did not expect")
    assert "Connection reset by peer" in msg and "run again" in msg
    assert "Traceback" not in msg
    assert module.failed["detail"] == "Cannot recv data: Connection reset by peer"
    assert "Traceback" in module.failed["exception"]  # only for -vvv


def test_our_error_keeps_its_message_and_detail():
    def backend():
        raise KvmopsError("Could not do X on hostb.", detail="libvirt said Y")

    module = FakeModule()
    with pytest.raises(Failed):
        _module.call_backend(module, backend)
    assert module.failed["msg"] == "Could not do X on hostb. (detail: libvirt said Y)"
    assert module.failed["detail"] == "libvirt said Y"


def test_other_exceptions_are_bugs_and_propagate():
    def backend():
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        _module.call_backend(FakeModule(), backend)


def test_result_passes_through_with_warnings_given_to_warn():
    module = FakeModule()
    res = _module.call_backend(module, lambda: {"changed": False, "diff": {}, "warnings": ["w"]})
    assert res == {"changed": False} and module.warnings == ["w"]
