# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docs site that ``make docs`` built (.cache/docs/html) renders in a browser (issue 21
item 4): headless Chromium opens the page of every module, role and filter and finds its
options table laid out with the theme's style, one visible row per option the plugin documents
(ansible-doc for modules, meta/argument_specs.yml for roles, plugins/filter/NAME.yml for
filters). The migrate module's page is kept as a screenshot, .cache/docs/migrate_module.png."""

from __future__ import annotations

import functools
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Browser  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HTML = os.path.join(ROOT, ".cache", "docs", "html")
BIN = os.path.dirname(sys.executable)

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")))
ROLES = sorted(p.split(os.sep)[-3] for p in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")))
FILTERS = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "plugins", "filter", "*.yml")))
PAGES = [("module", n) for n in MODULES] + [("role", n) for n in ROLES] + [("filter", n) for n in FILTERS]

# what the browser laid out: each options table of the page, its header, and each row's anchor
# (parameter-NAME, parameter-ENTRY--NAME for roles), title and size on the screen
MEASURE = r"""
(() => {
  const tables = [];
  const sections = 'section#parameters, section#input, section#positional-parameters, section#keyword-parameters';
  for (const sec of document.querySelectorAll(sections)) {
    for (const t of sec.querySelectorAll('table.ansible-option-table')) {
      const box = t.getBoundingClientRect();
      const th = t.querySelector('thead th');
      tables.push({
        section: sec.id, width: box.width, height: box.height,
        head: Array.from(t.querySelectorAll('thead th')).map(h => h.textContent.trim()),
        headBackground: [th, th && th.parentElement, t.tHead].filter(e => e)
          .map(e => getComputedStyle(e).backgroundColor).find(c => c !== 'rgba(0, 0, 0, 0)') || null,
        rows: Array.from(t.querySelectorAll(':scope > tbody > tr')).map(tr => {
          const anchor = tr.querySelector('.ansibleOptionAnchor');
          const title = tr.querySelector('.ansible-option-title');
          const r = tr.getBoundingClientRect();
          return {id: anchor ? anchor.id : null, title: title ? title.textContent.trim() : null,
                  width: r.width, height: r.height};
        }),
      });
    }
  }
  return {title: document.title, viewport: window.innerWidth, tables: tables};
})()
"""


@functools.lru_cache(maxsize=None)
def module_docs() -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG="", ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"))
    res = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "module", "--json"]
                         + ["kvmops.migration." + n for n in MODULES], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout)


def documented_options(kind: str, name: str) -> list[str]:
    if kind == "module":
        return sorted(module_docs()["kvmops.migration." + name]["doc"]["options"])
    if kind == "role":
        with open(os.path.join(ROOT, "roles", name, "meta", "argument_specs.yml")) as f:
            return sorted(yaml.safe_load(f)["argument_specs"]["main"]["options"])
    with open(os.path.join(ROOT, "plugins", "filter", name + ".yml")) as f:
        return sorted(yaml.safe_load(f)["DOCUMENTATION"]["options"])


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(os.path.join(HTML, "index.html")), "no docs site: run make docs first"
    with Browser() as b:
        yield b


@pytest.mark.parametrize("kind,name", PAGES, ids=["%s-%s" % p for p in PAGES])
def test_page_renders_its_options_table(browser, kind, name):
    page = os.path.join(HTML, "%s_%s.html" % (name, kind))
    assert os.path.exists(page), page
    session = browser.open("file://" + page)
    seen = browser.evaluate(session, MEASURE)
    assert seen["title"].startswith("kvmops.migration.%s %s" % (name, kind)), seen["title"]
    assert seen["tables"], "no options table on %s" % page
    prefix = "parameter-main--" if kind == "role" else "parameter-"
    shown = []
    for table in seen["tables"]:
        assert table["head"] == ["Parameter", "Comments"], table["head"]
        # the theme's style applies (a coloured header), and the table spans the content column
        assert table["headBackground"] not in (None, "rgba(0, 0, 0, 0)", "transparent"), table["headBackground"]
        assert table["width"] > seen["viewport"] * 0.4 and table["height"] > 0, table
        for row in table["rows"]:
            assert row["height"] > 0 and row["width"] >= table["width"] * 0.9, row
            if row["id"] and row["id"].startswith(prefix) and "/" not in row["id"]:
                shown.append(row["id"][len(prefix):])
    assert sorted(shown) == documented_options(kind, name)
    if (kind, name) == ("module", "migrate"):
        browser.screenshot(session, os.path.join(ROOT, ".cache", "docs", "migrate_module.png"))
