# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/roles.md is generated from the roles' argument specs, and every public variable of a
role is both in defaults/main.yml and in meta/argument_specs.yml."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_roles_doc_is_current_and_defaults_match_specs():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_roles_doc.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
