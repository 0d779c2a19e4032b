# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/skip_policy.py: a skip whose reason is not allowed fails the pytest run; a listed one
does not (run in a separate pytest process on a throw-away test file)."""

from __future__ import annotations

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFTEST = """
import sys
sys.path.insert(0, %r)
from skip_policy import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary
""" % TESTS


def run_pytest(tmp_path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_x.py").write_text("import pytest\n\n" + body)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:pytest-ansible",
                           str(tmp_path)], cwd=str(tmp_path), capture_output=True, text=True, check=False)


def test_unlisted_skip_fails_the_run(tmp_path):
    res = run_pytest(tmp_path, "def test_a():\n    pass\n\n"
                     "def test_b():\n    pytest.importorskip('no_such_module_kvmops')\n")
    assert res.returncode == 1, res.stdout
    assert "NOT ALLOWED" in res.stdout and "no_such_module_kvmops" in res.stdout


def test_listed_skip_passes_and_is_shown_with_its_reason(tmp_path):
    res = run_pytest(tmp_path, "def test_a():\n    pytest.skip('no /dev/kvm on this machine')\n")
    assert res.returncode == 0, res.stdout
    assert "no /dev/kvm on this machine [allowed]" in res.stdout


def test_failure_stays_a_failure(tmp_path):
    res = run_pytest(tmp_path, "def test_a():\n    assert False\n")
    assert res.returncode == 1
