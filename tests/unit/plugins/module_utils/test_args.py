# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared argument specs (issue 17 item 2): the modules use them, the backends' option
dataclasses hold the same defaults, and the doc fragments document the same options."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re

import pytest
import yaml

from ansible_collections.kvmops.migration.plugins.module_utils import _args, _migration_plan, _preflight

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MODULES = "ansible_collections.kvmops.migration.plugins.modules.%s"


def _fields(cls) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = dataclasses.MISSING
    return out


@pytest.mark.parametrize("cls", [_migration_plan.MigrationOptions, _preflight.PreflightOptions])
def test_backend_defaults_are_the_spec_defaults(cls):
    fields = _fields(cls)
    shared = [name for name in _args.move_spec() if name in fields]
    assert len(shared) >= 15, shared  # the scan found the options of a move
    for name in shared:
        if _args.move_spec()[name].get("required"):
            continue
        assert fields[name] == _args.default(name), (cls.__name__, name, fields[name], _args.default(name))


@pytest.mark.parametrize("module,spec", [("migrate", "move"), ("preflight", "move"), ("disk_info", "connection"),
                                         ("disk_image", "connection"), ("domain_cpu", "connection"),
                                         ("host_info", "connection")])
def test_modules_take_the_shared_spec_and_its_fragment(module, spec):
    mod = importlib.import_module(MODULES % module)
    shared = _args.move_spec() if spec == "move" else _args.connection_spec()
    full = mod.argument_spec()
    for name, option in shared.items():
        assert full[name] == option, (module, name)
    doc = yaml.safe_load(mod.DOCUMENTATION)
    assert "kvmops.migration.%s" % spec in doc["extends_documentation_fragment"]


def test_cold_move_takes_the_destination_spec_and_its_fragment():
    mod = importlib.import_module(MODULES % "cold_move")
    full = mod.argument_spec()
    for name, option in _args.destination_spec().items():
        assert full[name] == option == _args.move_spec()[name], name
    doc = yaml.safe_load(mod.DOCUMENTATION)
    assert doc["extends_documentation_fragment"] == ["kvmops.migration.move.destination"]
    for module in ("migrate", "preflight"):
        assert "kvmops.migration.move.destination" in yaml.safe_load(
            importlib.import_module(MODULES % module).DOCUMENTATION)["extends_documentation_fragment"]


def _fragment(name: str, part: str = "DOCUMENTATION") -> dict:
    frag = importlib.import_module("ansible_collections.kvmops.migration.plugins.doc_fragments.%s" % name)
    return yaml.safe_load(getattr(frag.ModuleDocFragment, part))


@pytest.mark.parametrize("name,spec", [("move", _args.move_spec), ("connection", _args.connection_spec)])
def test_fragment_documents_exactly_the_shared_options(name, spec):
    doc = dict(_fragment(name)["options"], **(_fragment(name, "DESTINATION")["options"] if name == "move" else {}))
    if name == "move":
        assert set(_fragment(name, "DESTINATION")["options"]) == set(_args.destination_spec())
    assert set(doc) == set(spec())
    for option, values in spec().items():
        assert doc[option]["type"] == values["type"], option
        assert doc[option].get("default") == values.get("default"), option
        assert doc[option].get("choices") == values.get("choices"), option


def test_action_groups_list_the_modules_of_each_fragment():
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        groups = yaml.safe_load(handle)["action_groups"]
    assert sorted(groups["move"]) == ["migrate", "preflight"]
    assert sorted(groups["host"]) == ["disk_image", "disk_info", "domain_cpu", "host_info"]
    for name in ("move", "connection"):
        group = "kvmops.migration." + {"move": "move", "connection": "host"}[name]
        assert _fragment(name)["attributes"]["action_group"]["membership"] == [group]
    assert re.match(r"^[a-z_]+$", "".join(groups))
