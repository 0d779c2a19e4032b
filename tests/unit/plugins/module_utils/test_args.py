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


#: (dataclass, its spec, the spec's dict options whose suboptions are fields of their own)
OPTION_CLASSES = [(_migration_plan.MigrationOptions, "migrate", ()),
                  (_preflight.PreflightOptions, "preflight", ("ports",))]


def _default_of(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


@pytest.mark.parametrize("cls,spec,flattened", OPTION_CLASSES, ids=["MigrationOptions", "PreflightOptions"])
def test_every_field_takes_its_default_from_the_spec_and_no_default_is_written_twice(cls, spec, flattened):
    """Each field is made by _args.spec_field (its metadata names the option): a default written
    in the dataclass as well (``detect_zeroes: bool = True``) has no such metadata and fails here;
    only a required option has no default to take."""
    covered = set()
    for field in dataclasses.fields(cls):
        source = field.metadata.get(_args.SPEC_KEY)
        if source is None:
            assert _args.option(spec, field.name).get("required"), (cls.__name__, field.name, "default not from the spec")
            assert _default_of(field) is dataclasses.MISSING, (cls.__name__, field.name)
            covered.add(field.name)
            continue
        field_spec, path = source.split(":")
        assert field_spec == spec, (cls.__name__, field.name, source)
        assert path == field.name or path.split(".")[0] in flattened, (cls.__name__, field.name, path)
        assert _default_of(field) == _args.default(path, spec), (cls.__name__, field.name)
        covered.add(path)
    options = _args.migrate_spec() if spec == "migrate" else _args.preflight_spec()
    expected = {name for name in options if name not in flattened}
    expected |= {"%s.%s" % (name, sub) for name in flattened for sub in options[name]["options"]}
    assert covered == expected  # the set of fields is the spec's set of options
    assert set(_args.move_spec()) <= covered


def test_spec_field_converts_like_ansible_module_and_copies_lists():
    opts = _migration_plan.MigrationOptions(domain="vm1", dest_host="hostb")
    assert opts.timeout_s_per_gib == 800.0 and isinstance(opts.timeout_s_per_gib, float)
    assert opts.detect_zeroes is True and opts.compression == []
    opts.compression.append("mt")
    assert _migration_plan.MigrationOptions(domain="vm1", dest_host="hostb").compression == []
    assert _preflight.PreflightOptions(domain="vm1", dest_host="hostb").port_timeout_s == 3.0
    with pytest.raises(KeyError):
        _args.spec_field("migrate", "no_such_option")


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
    assert doc["extends_documentation_fragment"] == ["kvmops.migration.move.destination", "kvmops.migration.move.health"]
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


def test_every_module_with_a_shared_fragment_is_in_its_action_group():
    """The groups of meta/runtime.yml are exactly the modules that extend the fragment; a module
    without one (preflight_dest, migration_wait) takes none of the shared options."""
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        groups = yaml.safe_load(handle)["action_groups"]
    members: dict[str, list[str]] = {"host": [], "move": []}
    names = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "plugins", "modules")) if n.endswith(".py"))
    for name in names:
        fragments = yaml.safe_load(importlib.import_module(MODULES % name).DOCUMENTATION).get(
            "extends_documentation_fragment", [])
        if "kvmops.migration.connection" in fragments:
            members["host"].append(name)
        if "kvmops.migration.move" in fragments:
            members["move"].append(name)
    assert {k: sorted(v) for k, v in groups.items()} == members
    assert len(names) >= 8


@pytest.mark.parametrize("module", ["migrate", "cold_move"])
def test_health_option_is_one_spec_and_one_fragment(module):
    mod = importlib.import_module(MODULES % module)
    assert mod.argument_spec()["health"] == _args.health_spec()["health"]
    assert "kvmops.migration.move.health" in yaml.safe_load(mod.DOCUMENTATION)["extends_documentation_fragment"]
    doc = _fragment("move", "HEALTH")["options"]["health"]
    spec = _args.health_spec()["health"]
    assert doc["type"] == spec["type"] and doc["default"] == spec["default"]
    assert set(doc["suboptions"]) == set(spec["options"])
    for name, values in spec["options"].items():
        assert doc["suboptions"][name]["type"] == values["type"], name
        assert doc["suboptions"][name].get("default") == values.get("default"), name
