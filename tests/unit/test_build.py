# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection tarball holds the collection, never what a checkout generates (issue 21
item 3): it is built from a copy of the checkout in which a file is planted for every pattern
of .gitignore (venvs, caches, lab state, test output, reports, old tarballs), and none of them
may be in it. galaxy.yml names no invented URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GALAXY = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")


def _git(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run(["git", "-C", ROOT] + list(args), input=stdin, capture_output=True,
                         text=True, check=False)
    # check-ignore exits 1 when no path is ignored
    assert res.returncode == 0 or (args[0] == "check-ignore" and res.returncode == 1), res.stderr
    return res.stdout


def checkout_files() -> list[str]:
    """Tracked and new (not ignored) files: what a clean clone holds, plus work in progress."""
    out = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted(f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f)))


def planted_paths() -> list[str]:
    """One generated file per .gitignore pattern: ``dir/`` patterns get a file inside, others
    are the file itself; glob patterns (``*.pyc``) and ``__pycache__/`` also one level down, where
    a checkout generates them too."""
    paths = []
    with open(os.path.join(ROOT, ".gitignore")) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for pattern in patterns:
        name = pattern.strip("/").replace("*", "planted")
        rel = name + "/planted.txt" if pattern.endswith("/") else name
        paths.append(rel)
        if "*" in pattern or pattern == "__pycache__/":
            paths.append("plugins/module_utils/" + rel)
    return paths


def test_planted_files_are_what_git_ignores():
    planted = planted_paths()
    ignored = _git("check-ignore", "--no-index", "--stdin", stdin="\n".join(planted) + "\n").split()
    assert sorted(ignored) == sorted(planted)


def test_tarball_holds_no_generated_file(tmp_path):
    src = tmp_path / "src"
    for rel in checkout_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dest)
    for rel in planted_paths():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("generated\n")
    out = tmp_path / "out"
    res = subprocess.run([GALAXY, "collection", "build", "--output-path", str(out), str(src)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    (tarball,) = out.glob("kvmops-migration-*.tar.gz")
    with tarfile.open(tarball) as tar:
        members = sorted(m.name for m in tar.getmembers() if m.isfile())
    shipped = [m for m in members if m not in ("MANIFEST.json", "FILES.json")]

    leaked = _git("check-ignore", "--no-index", "--stdin", stdin="\n".join(shipped) + "\n").split()
    assert leaked == [], "generated files in the tarball: %s" % leaked
    assert set(shipped) <= set(checkout_files()), set(shipped) - set(checkout_files())
    for needed in ("meta/runtime.yml", "plugins/modules/migrate.py", "plugins/filter/placement.py",
                   "plugins/filter/locate_guest.yml", "roles/migrate_guest/meta/argument_specs.yml",
                   "playbooks/migrate.yml", "changelogs/config.yaml", "README.md"):
        assert needed in shipped, needed


def test_galaxy_names_no_invented_url():
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        galaxy = yaml.safe_load(f)
    for key in ("repository", "documentation", "homepage", "issues"):
        value = galaxy.get(key)
        if value is not None:
            assert value.startswith("https://") and ".invalid" not in value and "example." not in value, \
                "%s: %s" % (key, value)
