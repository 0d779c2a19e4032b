# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of libvirt's configuration files (qemu.conf, libvirtd.conf and the other
``/etc/libvirt/*.conf``): ``key = "string"``, ``key = 1`` and ``key = [ "a", "b" ]`` settings,
``#`` comments, the last setting of a key wins (libvirt's virConf syntax).

Pure text functions; the callers read the files (``_tls.read_text``, the host facts).
"""

from __future__ import annotations

import re

_SCALAR_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"([^"]*)"|(\S+))\s*(?:#.*)?$')


def _without_comments(text: str | None) -> str:
    return "\n".join(line.split("#", 1)[0] for line in (text or "").splitlines())


def value(text: str | None, key: str) -> str | None:
    """The value of ``key = "value"`` (or ``key = 1``) in configuration ``text``, None when unset
    (or ``text`` is None). A quoted value comes without its quotes."""
    found = None
    for line in (text or "").splitlines():
        match = _SCALAR_RE.match(line)
        if match and match.group(1) == key:
            found = match.group(2) if match.group(2) is not None else match.group(3)
    return found


def string_list(text: str | None, key: str) -> list[str]:
    """The strings of ``key = [ "a", "b" ]`` in configuration ``text`` (the list may span lines;
    commented-out examples are ignored), [] when unset. The last setting wins."""
    blocks = re.findall(r"^\s*%s\s*=\s*\[(.*?)\]" % re.escape(key), _without_comments(text), re.MULTILINE | re.DOTALL)
    return re.findall(r'"([^"]+)"', blocks[-1]) if blocks else []
