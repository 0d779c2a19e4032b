"""Make the checkout importable as ``ansible_collections.kvmops.migration`` for plain pytest."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".cache", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "kvmops", "migration")

# A checkout already inside an ansible_collections/kvmops/migration tree needs no link.
if os.path.basename(os.path.dirname(os.path.dirname(ROOT))) != "ansible_collections":
    if not os.path.islink(LINK):
        os.makedirs(os.path.dirname(LINK), exist_ok=True)
        os.symlink(ROOT, LINK)
    sys.path.insert(0, COLLECTIONS)
else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(ROOT))))

FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures")

# A skip whose reason is not listed in tests/skip_policy.py fails the run.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skip_policy  # noqa: E402

pytest_runtest_logreport = skip_policy.pytest_runtest_logreport
pytest_terminal_summary = skip_policy.pytest_terminal_summary
pytest_sessionfinish = skip_policy.pytest_sessionfinish
