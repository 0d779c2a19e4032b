# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docs site tests (make docs-test): a skip whose reason tests/skip_policy.py does not list
fails the run, as in the unit and lab suites."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skip_policy  # noqa: E402

pytest_runtest_logreport = skip_policy.pytest_runtest_logreport
pytest_terminal_summary = skip_policy.pytest_terminal_summary
pytest_sessionfinish = skip_policy.pytest_sessionfinish
