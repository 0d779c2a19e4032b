# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """The libvirt connection of the modules that work on one host (argument spec
    ``_args.connection_spec()``)."""

    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt URI of the host the module works on (the host that holds O(domain), where the module has one).
    type: str
    default: qemu:///system
attributes:
  action_group:
    description: Use C(group/kvmops.migration.host) in C(module_defaults) to set O(uri) once for these modules.
    support: full
    membership:
      - kvmops.migration.host
"""
