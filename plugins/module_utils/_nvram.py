# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A UEFI guest's NVRAM file (its variables: boot entries, Secure Boot keys): size and SHA-256 of
the file read on the host that holds it (:func:`read_nvram`), and the source's file at the
switch-over compared with the destination's after the move (:func:`compare`).

Why this tells whether the variables moved: QEMU keeps the variables in the guest's pflash
device, writing every change through to the NVRAM file. At the switch-over the source's QEMU
stops, so its file holds the variables as they were then (libvirt keeps the file when it
undefines the source, ``VIR_DOMAIN_UNDEFINE_KEEP_NVRAM``). The pflash contents are part of the
migrated device state; the destination's QEMU writes them whole into its NVRAM file (created by
libvirt from the ``<nvram template>`` when absent) when the guest runs there (QEMU's
``pflash_post_load``). Equal bytes mean the variables were carried and not changed since; a
difference means the guest wrote variables after the switch-over, or they were not carried.

Only a path that a domain XML names as ``<nvram>`` is ever passed here (hostile input: the
definition is whoever defined the guest's): only a regular file is read, at most
:data:`MAX_NVRAM_BYTES`, opened non-blocking so that a FIFO never hangs the module; anything
else is reported in ``error``, never raised.
"""

from __future__ import annotations

import hashlib
import os
import stat
import typing as t

#: the largest NVRAM file read (OVMF's 4M variable store is 540672 bytes, AAVMF's 64 MiB)
MAX_NVRAM_BYTES = 128 * 1024 ** 2
_CHUNK = 1024 ** 2

#: formats whose file bytes are the variable store itself (libvirt's ``<nvram format>``, raw by default)
RAW_FORMATS = (None, "", "raw")


def read_nvram(path: str | None, fmt: str | None = None, max_bytes: int = MAX_NVRAM_BYTES,
               opener: t.Callable[..., int] = os.open) -> dict[str, t.Any] | None:
    """Size and SHA-256 of the NVRAM file ``path`` on this host.

    :param path: the ``<nvram>`` path of the guest's domain XML (:func:`_domain_xml.domain_facts`).
    :param fmt: its ``format`` attribute; a qcow2 store is not read (its bytes are not the variables).
    :param opener: ``os.open`` (tests inject failures).
    :returns: None when ``path`` is empty (no NVRAM file), else ``{path, format, exists, size,
        sha256, error}``: ``size`` in bytes and ``sha256`` hex when read; ``exists`` false for
        a missing file (``error`` says so); ``error`` a sentence when the file could not be read
        (permission, not a regular file, too large, not absolute, another format).
    """
    if not path:
        return None
    out: dict[str, t.Any] = {"path": path, "format": fmt or "raw", "exists": None, "size": None,
                             "sha256": None, "error": None}
    if not os.path.isabs(path):
        out["error"] = "the NVRAM path %s is not absolute: not read" % path
        return out
    if fmt not in RAW_FORMATS:
        out["error"] = "the NVRAM file %s is in %s format: its bytes are not compared" % (path, fmt)
        return out
    try:
        fd = opener(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        out.update(exists=False, error="the NVRAM file %s does not exist" % path)
        return out
    except OSError as err:
        out["error"] = "the NVRAM file %s could not be opened: %s" % (path, err.strerror or err)
        return out
    try:
        info = os.fstat(fd)
        out["exists"] = True
        if not stat.S_ISREG(info.st_mode):
            out["error"] = "%s is not a regular file: not read" % path
            return out
        if info.st_size > max_bytes:
            out["error"] = "the NVRAM file %s has %d bytes, more than the %d read: not read" % (
                path, info.st_size, max_bytes)
            return out
        digest, size = hashlib.sha256(), 0
        while size <= max_bytes:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        if size > max_bytes:
            out["error"] = "the NVRAM file %s grew past %d bytes while it was read: not read" % (path, max_bytes)
            return out
        out.update(size=size, sha256=digest.hexdigest())
    except OSError as err:
        out["error"] = "the NVRAM file %s could not be read: %s" % (path, err.strerror or err)
    finally:
        os.close(fd)
    return out


def compare(src: dict[str, t.Any] | None, dst: dict[str, t.Any] | None, dest: str) -> dict[str, t.Any] | None:
    """The source's NVRAM file at the switch-over (``migrate``'s ``nvram``) against the
    destination's after the move (``host_info``'s ``guest_nvram`` there), both :func:`read_nvram`.

    :returns: None when the source had no NVRAM file to compare (no UEFI variables, a cold or
        offline move), else ``{path, same, src_size, src_sha256, dst_path, dst_size, dst_sha256,
        words}``: ``same`` True (equal size and SHA-256), False (they differ: a warning, not a
        failure), None (not compared: ``words`` says why).
    """
    if not src:
        return None
    dst = dst or {}
    out = {"path": src.get("path"), "same": None, "src_size": src.get("size"), "src_sha256": src.get("sha256"),
           "dst_path": dst.get("path"), "dst_size": dst.get("size"), "dst_sha256": dst.get("sha256")}
    if not src.get("sha256"):
        why = "the source's file was not read at the switch-over (%s)" % (src.get("error") or "no digest")
    elif not dst:
        why = "the destination's file was not read (its domain names no NVRAM file, or host_info did not run there)"
    elif not dst.get("sha256"):
        why = "the destination's file was not read (%s)" % (dst.get("error") or "no digest")
    else:
        why = None
    if why is not None:
        out["words"] = "nvram: WARNING, not compared: %s" % why
        return out
    out["same"] = src["size"] == dst.get("size") and src["sha256"] == dst["sha256"]
    if out["same"]:
        out["words"] = "nvram: same content as on the source at the switch-over (%s, %d bytes, sha256 %s)" % (
            dst.get("path"), dst["size"], dst["sha256"][:16])
    else:
        out["words"] = ("nvram: WARNING, %s on %s differs from the source's at the switch-over (%s bytes, sha256 %s "
                        "there; %s bytes, sha256 %s on the source): the guest may have written UEFI variables since "
                        "the switch-over, or they were not carried; check its boot entries (efibootmgr -v in the "
                        "guest). The source's file is kept." % (
                            dst.get("path"), dest, dst.get("size"), dst["sha256"][:16], src["size"],
                            src["sha256"][:16]))
    return out
