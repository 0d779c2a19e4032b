# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest: the record on a host of the images (files and LVs) this collection created,
and the directories made for them.

An image is ours only when the manifest records it: same host and path and, for a file, the
same inode and the random identity kept in the extended attribute :data:`ID_XATTR` (when the
filesystem has user xattrs; :func:`tag_file`), because a freed inode number is reused at once
by the next file made in the directory (:func:`is_recorded_file`, and
:func:`fingerprint_matches` for a fingerprint taken on another host). The parent directories
made for an image are recorded with it and removed with it only when they are empty and still
the directories we made (:func:`remove_created_dirs`).

The file (default :data:`DEFAULT_MANIFEST`) is JSON, written to a temporary file renamed over
it under an ``flock`` on ``<path>.lock``; the shape is in :class:`Manifest`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._image_geometry import read_format

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

DEFAULT_MANIFEST = "/var/lib/kvmops-migration/manifest.json"
#: Extended attribute holding the random identity recorded in the manifest for a file we made.
ID_XATTR = "user.kvmops-migration.id"


class Manifest:
    """The JSON record of what this collection created on a host.

    File shape: ``{"version": 1, "entries": [{host, path, kind: file|lv, format, virtual_size,
    created_at, for_domain, inode, id, created_dirs}]}`` (``id``: the :data:`ID_XATTR` value of a
    file, where the filesystem has user xattrs; ``created_dirs``: ``[{path, inode}]``, the parent
    directories made for the image, outermost first; entries written before it was recorded have
    none, and then no directory is ever removed for them). Writes go to a temporary file
    renamed over the manifest (our own file), under an ``flock`` on ``<path>.lock``.
    """

    def __init__(self, path: str = DEFAULT_MANIFEST) -> None:
        self.path = path

    def entries(self) -> list[dict[str, t.Any]]:
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise KvmopsError("The kvmops manifest %s is unreadable: fix or move it aside "
                              "(it lists the images this tool created)." % self.path,
                              detail=str(err)) from err
        return list(doc.get("entries", []))

    def find(self, host: str, path: str) -> dict[str, t.Any] | None:
        for entry in self.entries():
            if entry.get("host") == host and entry.get("path") == path:
                return entry
        return None

    def recorded_format(self, host: str, path: str) -> str | None:
        """The format recorded for the file at ``path`` on ``host`` when the entry records this
        very file (:func:`is_recorded_file`), else None: the caller then reads it as ``raw`` or as
        declared, never probed (a file we did not make may hold a guest-written header).

        :raises KvmopsError: the manifest is unreadable, or the recorded format is no format name.
        """
        entry = self.find(host, path)
        if entry is not None and entry.get("kind") == "file" and is_recorded_file(entry, path):
            return read_format(entry.get("format"))
        return None

    @contextlib.contextmanager
    def _locked(self) -> t.Iterator[None]:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(self.path + ".lock", "a", encoding="utf-8") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def _write(self, entries: list[dict[str, t.Any]]) -> None:
        tmp = "%s.%s.tmp" % (self.path, secrets.token_hex(4))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "entries": entries}, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def add(self, entry: dict[str, t.Any]) -> None:
        with self._locked():
            entries = [e for e in self.entries()
                       if not (e.get("host") == entry["host"] and e.get("path") == entry["path"])]
            entries.append(entry)
            self._write(entries)

    def remove(self, host: str, path: str, hand_over: t.Sequence[dict[str, t.Any]] = ()) -> None:
        """Drop the entry of ``path``.

        :param hand_over: directories recorded with it that could not be removed yet (not
            empty): each is recorded again with an image of ours still inside it, so that
            removing that one removes the directory (a directory made for the first of two
            images is not left behind when the second goes last).
        """
        with self._locked():
            entries = self.entries()
            kept = [e for e in entries if not (e.get("host") == host and e.get("path") == path)]
            moved = False
            for record in hand_over:
                heir = next((e for e in kept if e.get("host") == host
                             and _is_under(str(e.get("path") or ""), record["path"])), None)
                if heir is None:
                    continue
                dirs = [d for d in created_dirs_of(heir) if d["path"] != record["path"]] + [dict(record)]
                heir["created_dirs"] = sorted(dirs, key=lambda d: len(d["path"]))
                moved = True
            if len(kept) != len(entries) or moved:
                self._write(kept)


def _is_under(path: str, directory: str) -> bool:
    """True when ``path`` lies inside ``directory`` (both absolute, normalised)."""
    directory = directory.rstrip("/")
    return bool(directory) and path.startswith(directory + "/")


def created_dirs_of(entry: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The ``created_dirs`` of a manifest entry as ``[{path, inode}]``, outermost first; ``[]``
    for entries of older versions (no field) and for records that are not well-formed."""
    out = []
    for record in entry.get("created_dirs") or []:
        if isinstance(record, dict) and isinstance(record.get("path"), str) and os.path.isabs(record["path"]):
            out.append({"path": os.path.normpath(record["path"]), "inode": record.get("inode")})
    return sorted(out, key=lambda d: len(d["path"]))


def tag_file(path: str) -> str | None:
    """Give the file a random identity in :data:`ID_XATTR`; None when the filesystem has no user
    extended attributes (then the manifest falls back to the inode alone)."""
    token = secrets.token_hex(16)
    try:
        os.setxattr(path, ID_XATTR, token.encode("ascii"), follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return token


def is_recorded_file(entry: dict[str, t.Any], path: str) -> bool:
    """True when the file at ``path`` is the one the manifest ``entry`` records: the same inode
    and, when recorded, the same identity attribute (a file made later at the same path may get
    the freed inode number again, never the attribute)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    ident = None
    if entry.get("id"):
        with contextlib.suppress(OSError):
            ident = os.getxattr(path, ID_XATTR, follow_symlinks=False).decode("ascii", "replace")
    return fingerprint_matches(entry, {"inode": st.st_ino, "kvmops_id": ident})


def fingerprint_matches(entry: dict[str, t.Any], fingerprint: dict[str, t.Any] | None) -> bool:
    """Whether ``fingerprint`` (``{inode, kvmops_id}``, such as ``_storage.storage_fingerprint``
    taken on the host of the file: the pre-flight runs elsewhere) is the file the manifest
    ``entry`` records: same inode and, when the manifest recorded one, the same identity
    attribute. No fingerprint: no match. The one rule, also of :func:`is_recorded_file`."""
    if not fingerprint:
        return False
    if entry.get("inode") is not None and fingerprint.get("inode") != entry["inode"]:
        return False
    return not entry.get("id") or fingerprint.get("kvmops_id") == entry["id"]


def remove_created_dirs(records: t.Sequence[dict[str, t.Any]], image_path: str,
                        check_mode: bool = False) -> tuple[list[str], list[dict[str, t.Any]]]:
    """Remove the directories we made for ``image_path`` (``created_dirs`` of its manifest
    entry) that are empty once the image is gone, innermost first.

    Never a directory we did not make: only recorded paths that contain ``image_path``, are
    still a directory (not a symlink) with the recorded inode; never a non-empty one (``rmdir``,
    which refuses one that is not empty). In check mode nothing is removed and the answer
    says what would be (the image and the inner recorded directories counted as gone).

    :returns: ``(removed, kept)``: the paths removed (or that would be), and the records of
        ours left because they are not empty (for :meth:`Manifest.remove` to hand over).
    """
    removed: list[str] = []
    kept: list[dict[str, t.Any]] = []
    gone = os.path.normpath(image_path)
    for record in sorted(records, key=lambda d: len(d["path"]), reverse=True):
        directory = record["path"]
        if not _is_under(gone, directory) and gone != directory:
            continue
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            gone = directory
            continue
        if not stat.S_ISDIR(st.st_mode) or (record.get("inode") is not None and st.st_ino != record["inode"]):
            continue  # not the directory we made any more: never ours to remove
        if kept:
            kept.append(record)
            continue
        if check_mode:
            rest = [n for n in os.listdir(directory) if os.path.join(directory, n) != gone]
            if rest:
                kept.append(record)
            else:
                removed.append(directory)
                gone = directory
            continue
        try:
            os.rmdir(directory)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise KvmopsError("Could not remove directory %s that kvmops.migration created: %s."
                                  % (directory, err.strerror or err)) from err
            kept.append(record)
            continue
        removed.append(directory)
        gone = directory
    return removed, kept
