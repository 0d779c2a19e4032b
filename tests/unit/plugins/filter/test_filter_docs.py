# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every filter has documentation of its own (plugins/filter/NAME.yml, issue 21 item 4) that
ansible-doc loads and whose options are the filter's arguments, in order, with the same
defaults."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.kvmops.migration.plugins.filter import placement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
FILTERS = placement.FilterModule().filters()


def _doc(name):
    with open(os.path.join(ROOT, "plugins", "filter", name + ".yml")) as f:
        return yaml.safe_load(f)


def test_no_doc_without_a_filter():
    docs = {n[:-4] for n in os.listdir(os.path.join(ROOT, "plugins", "filter")) if n.endswith(".yml")}
    assert docs == set(FILTERS)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_doc_matches_the_signature(name):
    doc = _doc(name)
    spec = doc["DOCUMENTATION"]
    assert spec["name"] == name
    params = list(inspect.signature(FILTERS[name]).parameters.values())
    names = ["_input"] + [p.name for p in params[1:]]
    assert list(spec["options"]) == names
    assert [n.strip() for n in spec["positional"].split(",")] == names
    for param, opt in zip(params, spec["options"].values()):
        if param.default is inspect.Parameter.empty:
            assert opt.get("required") is True, param.name
        else:
            assert not opt.get("required"), param.name
            assert opt.get("default") == param.default, param.name
    assert name in doc["EXAMPLES"] and doc["RETURN"]["_value"]["type"]


def test_ansible_doc_loads_every_filter_doc():
    env = dict(os.environ, ANSIBLE_CONFIG="",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"))
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "-t", "filter",
                          "--json"] + ["kvmops.migration.%s" % n for n in sorted(FILTERS)],
                         env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    loaded = json.loads(res.stdout)
    assert sorted(loaded) == ["kvmops.migration.%s" % n for n in sorted(FILTERS)]
    for data in loaded.values():
        assert data["doc"]["short_description"] and data["doc"]["version_added"]
