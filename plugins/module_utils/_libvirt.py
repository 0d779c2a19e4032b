# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one libvirt connection helper of kvmops.migration.

Opens a connection once per module run and closes it on exit; turns ``libvirt.libvirtError``
into :class:`KvmopsError` with an operator message. libvirt-python is imported lazily so that
pure-logic code and unit tests do not need it; modules check :data:`HAS_LIBVIRT` and call
``missing_required_lib('libvirt-python')`` with :data:`LIBVIRT_IMPORT_ERROR`.

Relies on: libvirt-python ``libvirt.open`` (virConnectOpen), ``lookupByName``/
``lookupByUUIDString`` (virDomainLookupBy*), https://libvirt.org/uri.html for URIs.
"""

from __future__ import annotations

import contextlib
import threading
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

try:
    import libvirt  # type: ignore[import-not-found]
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = str(exc)

DEFAULT_URI = "qemu:///system"

#: Keepalive of remote connections (virConnectSetKeepAlive): a probe every 5 s, the connection
#: is closed after 6 unanswered ones (about 30 s). Without it, a call on a connection whose
#: network was cut silently blocks until TCP gives up (15 min and more).
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 6

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP: list[threading.Thread] = []


def _ignore_libvirt_errors(_ctx: t.Any, _err: t.Any) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


def libvirt_error_detail(err: BaseException) -> str:
    """Return libvirt's own message of ``err`` (``get_error_message()``) or ``str(err)``."""
    getter = getattr(err, "get_error_message", None)
    if callable(getter):
        text = getter()
        if text:
            return str(text)
    return str(err)


def is_libvirt_error(err: BaseException) -> bool:
    """True when ``err`` is a ``libvirt.libvirtError``."""
    return HAS_LIBVIRT and isinstance(err, libvirt.libvirtError)


def libvirt_error_code(err: BaseException) -> int | None:
    """libvirt's error code (``VIR_ERR_*``) of ``err``, or None."""
    getter = getattr(err, "get_error_code", None)
    return getter() if callable(getter) else None


@contextlib.contextmanager
def libvirt_errors(action: str, host: str | None = None) -> t.Iterator[None]:
    """Turn a ``libvirtError`` raised inside the block into :class:`KvmopsError`.

    :param action: what was being done, written for the operator ("look up domain vm1").
    :param host: where (a URI or host name), added to the message.
    :raises KvmopsError: with ``detail`` set to libvirt's message.
    """
    try:
        yield
    except Exception as err:  # only libvirt errors are translated; others propagate
        if not is_libvirt_error(err):
            raise
        where = " on %s" % host if host else ""
        raise KvmopsError("Could not %s%s." % (action, where), detail=libvirt_error_detail(err)) from err


def open_connection(uri: str = DEFAULT_URI, readonly: bool = False) -> t.Any:
    """Open a libvirt connection.

    :param uri: a libvirt URI, e.g. ``qemu:///system`` or ``qemu+ssh://root@hostb/system``.
    :param readonly: open read-only (virConnectOpenReadOnly).
    :returns: a ``libvirt.virConnect``.
    :raises KvmopsError: libvirt-python missing, or the connection failed (names the URI and
        the usual fixes).
    """
    if not HAS_LIBVIRT:
        raise KvmopsError("libvirt-python is not installed on this host: install python3-libvirt "
                          "(Debian/Ubuntu) or libvirt-python (pip).", detail=LIBVIRT_IMPORT_ERROR)
    libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
    remote = is_remote_uri(uri)
    if remote:
        _start_event_loop()
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise KvmopsError(
            "Could not connect to libvirt at %s: check that libvirtd runs there and that this "
            "user may use it (for qemu+ssh: key login and libvirt's socket on the remote host)." % uri,
            detail=libvirt_error_detail(err)) from err
    if remote:
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def is_remote_uri(uri: str) -> bool:
    """True for a URI with a host part (``qemu+ssh://root@hostb/system``), False for a local
    one (``qemu:///system``)."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    return bool(rest) and not rest.startswith("/")


def _start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process:
    client keepalive (virConnectSetKeepAlive) needs it. Must run before the first connection
    is opened (https://libvirt.org/html/libvirt-libvirt-event.html)."""
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP:
            return
        try:
            libvirt.virEventRegisterDefaultImpl()
        except libvirt.libvirtError:  # pragma: no cover - only when another loop is registered
            return

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt failure
                    return

        thread = threading.Thread(target=run, name="kvmops-libvirt-events", daemon=True)
        thread.start()
        _EVENT_LOOP.append(thread)


@contextlib.contextmanager
def connection(uri: str = DEFAULT_URI, readonly: bool = False) -> t.Iterator[t.Any]:
    """Context manager around :func:`open_connection` that always closes the connection."""
    conn = open_connection(uri, readonly=readonly)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def lookup_domain(conn: t.Any, name_or_uuid: str, required: bool = True) -> t.Any:
    """Find a domain by name, or by UUID when the text is a UUID.

    :returns: a ``libvirt.virDomain`` or None when absent and ``required`` is False.
    :raises KvmopsError: domain absent (when required) or another libvirt failure.
    """
    text = name_or_uuid.strip()
    lookups = [conn.lookupByName]
    if _looks_like_uuid(text):
        lookups.insert(0, conn.lookupByUUIDString)
    for lookup in lookups:
        try:
            return lookup(text)
        except Exception as err:
            if not is_libvirt_error(err):
                raise
            if libvirt_error_code(err) != libvirt.VIR_ERR_NO_DOMAIN:
                raise KvmopsError("Could not look up domain %s." % text,
                                  detail=libvirt_error_detail(err)) from err
    if required:
        raise KvmopsError("Domain %s is not defined on %s: check the guest name (virsh list --all)."
                          % (text, _uri_of(conn)))
    return None


def _uri_of(conn: t.Any) -> str:
    try:
        return str(conn.getURI())
    except Exception:  # a broken connection still deserves a message
        return "this host"


def _looks_like_uuid(text: str) -> bool:
    parts = text.split("-")
    return len(text) == 36 and [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for c in text.replace("-", ""))
