# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The next release's changelog is right (issue 21 item 3): ``antsibull-changelog lint`` passes,
and ``antsibull-changelog release`` of galaxy.yml's version, run in a copy of the checkout,
writes a changelog that lists every module, role and filter once (as new, from its
``version_added``; never again as a "new module" item of a fragment), and whose text, rendered
by docutils, shows no reStructuredText errors and no Ansible markup (``O(...)``, ``C(...)``)
printed raw."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from docutils.core import publish_parts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_build import checkout_files  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
CHANGELOG = os.path.join(BIN, "antsibull-changelog")
RAW_MARKUP = re.compile(r"\b(?:RV|[BCEIMOPUVL])\([^)\s][^)]*\)")
NEW_ITEM = re.compile(r"^(?:kvmops\.migration\.)?([\w.]+) (?:module |role |filter )?- new (module|role|action|filter)")


def _version() -> str:
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        return str(yaml.safe_load(f)["version"])


def _env() -> dict:
    # antsibull-changelog asks ansible-doc (of this venv) for the plugins and their version_added
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), ANSIBLE_CONFIG="")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """``antsibull-changelog release`` in a copy: changelog.yaml's entry and CHANGELOG.rst."""
    copy = tmp_path_factory.mktemp("release") / "migration"
    for rel in checkout_files():
        dest = copy / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dest)
    res = subprocess.run([CHANGELOG, "release", "--version", _version(), "--date", "2000-01-01"],
                         cwd=copy, env=_env(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(copy / "changelogs" / "changelog.yaml") as f:
        entry = yaml.safe_load(f)["releases"][_version()]
    return {"entry": entry, "rst": (copy / "CHANGELOG.rst").read_text(), "output": res.stdout + res.stderr}


def test_fragments_lint():
    res = subprocess.run([CHANGELOG, "lint"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_no_plugin_without_docs(release):
    assert "Missing documentation" not in release["output"], release["output"]


def _versions_added() -> dict[str, dict[str, str]]:
    """version_added of every module, role (main entry point) and filter, by kind and name."""
    out: dict[str, dict[str, str]] = {"module": {}, "role": {}, "filter": {}}
    for path in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")):
        with open(path) as f:
            m = re.search(r"^version_added: ['\"]?([\w.]+)", f.read(), re.M)
        out["module"][os.path.basename(path)[:-3]] = m.group(1) if m else None
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        with open(path) as f:
            main = yaml.safe_load(f)["argument_specs"]["main"]
        out["role"][path.split(os.sep)[-3]] = main.get("version_added")
    for path in glob.glob(os.path.join(ROOT, "plugins", "filter", "*.yml")):
        with open(path) as f:
            doc = yaml.safe_load(f)["DOCUMENTATION"]
        out["filter"][doc["name"]] = doc.get("version_added")
    return out


def test_every_module_role_and_filter_has_version_added():
    missing = ["%s %s" % (kind, name) for kind, names in _versions_added().items()
               for name, version in names.items() if not version]
    assert missing == []


def test_every_new_module_role_and_filter_listed_once(release):
    entry = release["entry"]
    listed = {"module": [m["name"] for m in entry.get("modules", [])],
              "role": [r["name"] for r in entry.get("objects", {}).get("role", [])],
              "filter": [p["name"] for p in entry.get("plugins", {}).get("filter", [])]}
    for kind, names in _versions_added().items():
        expected = sorted(name for name, version in names.items() if version == _version())
        assert sorted(listed[kind]) == expected, kind
    for item in entry.get("modules", []) + entry.get("objects", {}).get("role", []) + \
            entry.get("plugins", {}).get("filter", []):
        assert item.get("description"), item
    new = {name for names in listed.values() for name in names}
    for section, items in (entry.get("changes") or {}).items():
        for item in items if isinstance(items, list) else []:
            m = NEW_ITEM.match(item)
            assert not (m and m.group(1) in new), \
                "%s is listed under New ... and again in %s: %s" % (m.group(1), section, item[:80])


def test_changelog_renders_without_raw_markup(release):
    rst = release["rst"]
    parts = publish_parts(rst, writer="html",
                          settings_overrides={"report_level": 2, "halt_level": 2, "warning_stream": False})
    text = re.sub(r"<[^>]+>", "", parts["body"])
    assert "System Message" not in text
    raw = sorted(set(RAW_MARKUP.findall(text)))
    assert raw == [], "Ansible markup printed raw: %s" % raw
    assert "\\" not in text, [line for line in text.splitlines() if "\\" in line][:5]
    assert "Release Summary" in text and "New Roles" in text and "New Modules" in text
