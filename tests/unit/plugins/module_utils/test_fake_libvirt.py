# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one fake libvirt of the unit tests (fake_libvirt.py) holds the real binding's values."""

from __future__ import annotations

import fake_libvirt


def binding_version() -> tuple[int, ...]:
    """The version of the installed libvirt-python binding (its constants), which is not the
    version of the libvirt library it talks to (``libvirt.getVersion()``): Debian 12's
    python3-libvirt 9.0 runs fine against libvirt 11.3 from backports and lacks 11.x constants."""
    from importlib import metadata

    return tuple(int(p) for p in metadata.version("libvirt-python").split(".")[:3])


def test_fakes_match_the_installed_binding():
    """The constants of the fake of the binding's own version match the binding (the 11.3 fake
    for a binding >= 11.3, the 9.0 fake for an older one): never skipped."""
    import libvirt

    fake = fake_libvirt.LV_11_3 if binding_version() >= (11, 3) else fake_libvirt.LV_9_0
    names = [n for n in vars(fake) if n.startswith("VIR_")]
    assert names
    for name in names:
        assert getattr(libvirt, name) == getattr(fake, name), name
    for name, value in fake_libvirt.FAKE_ONLY.items():  # the codes and flags the fakes raise or check
        assert getattr(libvirt, name) == value, name


def test_the_fake_error_is_a_libvirt_error_for_the_real_binding_and_the_fake_namespaces():
    from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

    err = fake_libvirt.LibvirtError("Domain not found", fake_libvirt.CONSTANTS["VIR_ERR_NO_DOMAIN"])
    assert _libvirt.is_libvirt_error(err) and _libvirt.is_libvirt_error(err, fake_libvirt.LV_9_0)
    assert _libvirt.libvirt_error_code(err) == 42 and _libvirt.libvirt_error_detail(err) == "Domain not found"
