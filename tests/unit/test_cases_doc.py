# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/cases.md explains every case code (C01, ...) the code and the tests cite, and the
module_utils functions it names exist."""

from __future__ import annotations

import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODE = re.compile(r"\bC(\d{2})\b")


def _cited() -> set[str]:
    codes: set[str] = set()
    for top in ("plugins", "roles", "playbooks", "tests"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "fixtures")]
            for name in filenames:
                if name.endswith((".py", ".yml", ".yaml")):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as handle:
                        codes |= {"C" + m for m in CODE.findall(handle.read())}
    return codes


def _doc() -> str:
    with open(os.path.join(ROOT, "docs", "cases.md"), encoding="utf-8") as handle:
        return handle.read()


def test_every_cited_case_code_has_a_row():
    rows = set(re.findall(r"^\| (C\d{2}) \|", _doc(), re.M))
    cited = _cited()
    assert cited, "no case code found in the sources: the scan is broken"
    assert cited <= rows, "cited but not explained in docs/cases.md: %s" % sorted(cited - rows)


def test_functions_named_in_the_doc_exist():
    named = re.findall(r"`(_[a-z_]+)\.([a-z_]+)`", _doc())
    assert named
    for module, func in named:
        mod = importlib.import_module("ansible_collections.kvmops.migration.plugins.module_utils.%s" % module)
        assert callable(getattr(mod, func, None)), "%s.%s is named in docs/cases.md but does not exist" % (module, func)
