# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one findings type of the checks (CPU, machine, emulator, pre-flight): a dict

``{check: str, status: "ok"|"warning"|"error", host: str, msg: str, values: dict}``

``check`` names the check (``cpu``, ``machine``, ``space``, ...), ``host`` the host it is about,
``msg`` the sentence for the operator (for an error: the thing and the fix), ``values`` the
figures behind it (sizes in bytes). An ``error`` means the move cannot succeed; a ``warning``
that it can, with something the operator should know. Plain dicts, so that module results
carry them as they are.
"""

from __future__ import annotations

import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

STATUSES = ("ok", "warning", "error")


def finding(check: str, status: str, host: str, msg: str, **values: t.Any) -> dict[str, t.Any]:
    """One finding (see the module docstring).

    :raises KvmopsError: ``status`` not in :data:`STATUSES` (a programming error, named).
    """
    return validated({"check": check, "status": status, "host": host, "msg": msg, "values": values})


def validated(item: dict[str, t.Any]) -> dict[str, t.Any]:
    """A copy of ``item`` with ``values`` present, after checking its status.

    :raises KvmopsError: ``status`` not in :data:`STATUSES`.
    """
    if item.get("status") not in STATUSES:
        raise KvmopsError("Finding %s has unknown status %r (one of %s)."
                          % (item.get("check"), item.get("status"), ", ".join(STATUSES)))
    out = dict(item)
    out.setdefault("values", {})
    return out


def errors(findings: t.Iterable[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """The findings whose status is ``error``, in order."""
    return [f for f in findings if f["status"] == "error"]
