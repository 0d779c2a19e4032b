# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Attributes shared by the collection's modules."""

    # The read-only modules (disk_info, host_info, preflight).
    INFO_MODULE = r"""
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  idempotent:
    support: full
    description: It changes nothing; C(changed) is always false.
  platform:
    support: full
    platforms: posix
    description: Linux hypervisor hosts with QEMU and libvirt.
"""
