"""What every module does around its backend (_module.call_backend): secrets redacted from
results, diffs, warnings and errors; XML options not logged (issue 13 item 4)."""

from __future__ import annotations

import importlib

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml, _module
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from disk_fakes import fixture

SECRET_XML = fixture("domains", "secrets.xml")


class Failed(Exception):
    """fail_json was called (it does not return)."""


class FakeModule:
    """The three things call_backend uses of an AnsibleModule."""

    def __init__(self, diff=True):
        self._diff = diff
        self.warnings = []
        self.failed = None

    def warn(self, text):
        self.warnings.append(text)

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise Failed()


def test_results_diffs_and_warnings_are_redacted():
    def backend():
        return {"changed": True, "xml": SECRET_XML,
                "diff": {"before": "<graphics passwd='old-s3cret'/>", "after": SECRET_XML},
                "warnings": ["libvirt said: passwd='warn-s3cret'"]}
    module = FakeModule()
    result = _module.call_backend(module, backend)
    assert "s3cret" not in repr(result) and "s3cret" not in repr(module.warnings)
    assert result["diff"]["before"] == "<graphics passwd='%s'/>" % _domain_xml.REDACTED


def test_errors_are_redacted():
    def backend():
        raise KvmopsError("define failed for <graphics passwd='msg-s3cret'/>", detail=SECRET_XML,
                          values={"xml": SECRET_XML})
    module = FakeModule()
    with pytest.raises(Failed):
        _module.call_backend(module, backend)
    assert module.failed["msg"].startswith("define failed")
    assert "s3cret" not in repr(module.failed)


def test_domain_cpu_xml_result_is_redacted():
    """The module's xml mode returns a whole domain XML: its passwords never reach the output."""
    pytest.importorskip("libvirt")
    from fake_libvirt import LAB, connector, lab_conn  # the lab host of the CPU fixtures
    from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
    conns = {LAB: lab_conn()}
    params = {"xml": SECRET_XML.replace("type='kvm'", "type='qemu'"), "group_uris": [LAB],
              "policy": "model", "model": "qemu64"}
    result = _module.call_backend(FakeModule(), _cpu.run_domain_cpu, params, False,
                                  connect=connector(conns))
    assert "qemu64" in result["xml"] and "s3cret" not in repr(result)


@pytest.mark.parametrize("module_name, options", [
    ("migrate", ["dest_xml", "persist_xml"]),
    ("domain_cpu", ["xml"]),
])
def test_options_that_take_a_whole_domain_xml_are_not_logged(module_name, options):
    mod = importlib.import_module("ansible_collections.kvmops.migration.plugins.modules." + module_name)
    spec = mod.argument_spec()
    for name in options:
        assert spec[name].get("no_log") is True, "%s.%s must be no_log" % (module_name, name)
