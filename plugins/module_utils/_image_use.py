# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether an image is in use on this host: by a libvirt domain, by a process that has it open
(QEMU's lock bytes), or, for a block device, mounted or held.

Relies on: libvirt ``virConnectListAllDomains`` and ``virDomainGetXMLDesc`` (live and
``VIR_DOMAIN_XML_INACTIVE``); QEMU's file locking (block/file-posix.c raw_apply_lock_bytes)
probed with ``fcntl(F_GETLK)``; ``qemu-img info`` without ``-U`` failing on a lock; open(2)
``O_EXCL`` on a block device fails with EBUSY when the device is mounted or otherwise held.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils._image_geometry import read_format
from ansible_collections.kvmops.migration.plugins.module_utils._runner import Runner

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

#: The byte ranges QEMU's file locking uses: 100+n "holds permission n", 200+n "does not share
#: permission n" (block/file-posix.c raw_apply_lock_bytes; up to 64 permission bits).
QEMU_LOCK_RANGES = ((100, 64), (200, 64))


def paths_in_use(conn: t.Any, resolve: bool = True) -> dict[str, list[str]]:
    """Every storage path used by a libvirt domain on ``conn`` -> domain names.

    Reads the live and the inactive XML of every domain (running or defined):
    ``virConnectListAllDomains``, ``virDomainGetXMLDesc``. ``resolve``: paths are resolved with
    ``os.path.realpath`` on this host (right for a local connection; give False for another
    host's, whose links this host cannot see).

    :raises libvirt.libvirtError: the domains or a live XML could not be read.
    """
    used: dict[str, list[str]] = {}
    for dom in conn.listAllDomains(0):
        name = dom.name()
        for flags in (0, 2):  # 2 = VIR_DOMAIN_XML_INACTIVE
            try:
                xml = dom.XMLDesc(flags)
            except Exception:  # a transient domain has no inactive XML; the live one was read
                if flags == 0:
                    raise
                continue
            for path in _domain_xml.referenced_paths(xml):
                names = used.setdefault(os.path.realpath(path) if resolve else path, [])
                if name not in names:
                    names.append(name)
    return used


def lock_bytes_held(path: str) -> bool:
    """True when another process holds a lock on QEMU's lock bytes of the file
    (:data:`QEMU_LOCK_RANGES`): a QEMU (or qemu-img, qemu-nbd, ...) has the image open.

    Uses ``fcntl(F_GETLK)`` with a write-lock probe, which reports POSIX and OFD locks of other
    processes (QEMU takes shared OFD locks on those bytes, so even a read-only user shows). A
    running guest's raw image holds only the "consistent read" and "write" bytes, which
    ``qemu-img info`` without ``-U`` does not conflict with: that probe alone misses it.
    """
    if fcntl is None or struct.calcsize("hh4xqqi4x") != 32:  # pragma: no cover - not LP64 Linux
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for start, length in QEMU_LOCK_RANGES:
            probe = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
            got = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
            if struct.unpack("hh4xqqi4x", got)[0] != fcntl.F_UNLCK:
                return True
    finally:
        os.close(fd)
    return False


def qemu_holds_lock(path: str, runner: Runner, fmt: str | None = None) -> bool:
    """True when a process (QEMU) has the image open: it holds QEMU's lock bytes
    (:func:`lock_bytes_held`) or ``qemu-img info --output=json -f FMT PATH`` (without ``-U``)
    fails on a lock.

    :param fmt: the format recorded for the image (:func:`_image_geometry.read_format`: None is raw).
    """
    with contextlib.suppress(OSError):
        if lock_bytes_held(path):
            return True
    res = runner.run(["qemu-img", "info", "--output=json", "-f", read_format(fmt), path])
    return res.rc != 0 and "lock" in res.stderr.lower()


def block_busy(path: str) -> bool:
    """True when the block device is mounted or held (open with O_EXCL fails with EBUSY)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as err:
        return err.errno == errno.EBUSY
    os.close(fd)
    return False
