# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of kvmops.migration.

Every error a user can cause or meet is raised as :class:`KvmopsError` with a message written
for the operator (what failed, on which host, the value seen, the value needed, the fix).
A lower-level error text (libvirt's, qemu-img's) is kept in ``detail``, never as the headline.
Modules catch it in ``main()`` and call ``fail_json(msg=str(err), **err.as_result())``.
"""

from __future__ import annotations

import typing as t


class KvmopsError(Exception):
    """An error for the operator.

    :param msg: the headline: what failed, where, and the fix.
    :param detail: the underlying tool's or library's message (libvirt, qemu-img), if any.
    :param values: raw values seen (sizes in bytes, paths, names) for machine readers.
    """

    def __init__(self, msg: str, detail: str | None = None,
                 values: dict[str, t.Any] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.detail = detail
        self.values = dict(values or {})

    def __str__(self) -> str:
        if self.detail:
            return "%s (detail: %s)" % (self.msg, self.detail)
        return self.msg

    def as_result(self) -> dict[str, t.Any]:
        """Extra keys for ``fail_json``: ``detail`` and ``values`` when present."""
        result: dict[str, t.Any] = {}
        if self.detail:
            result["detail"] = self.detail
        if self.values:
            result["values"] = self.values
        return result
