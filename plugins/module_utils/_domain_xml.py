# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read libvirt domain XML with lxml: disks, interfaces, os/machine, memory, paths.

Everything returns plain dicts and lists (they travel as Ansible facts). The CPU element is
handled in ``_cpu.py``, not here.

Relies on the libvirt domain XML format, https://libvirt.org/formatdomain.html :
``<disk type device>`` with ``<driver name type cache io discard>``, ``<source file|dev|pool+volume
|protocol+name>``, ``<backingStore>``, ``<target dev bus>``, ``<readonly/>``, ``<shareable/>``;
``<interface type>`` with ``<mac address>``, ``<source bridge|network|dev>``, ``<model type>``;
``<memory unit>`` (default KiB), ``<vcpu>``, ``<os><type arch machine>``, ``<loader>``,
``<nvram template format>`` (the path as text, or ``<source file>`` of a ``type='file'`` one),
``<kernel>``, ``<initrd>``, ``<dtb>``, ``<devices><emulator>``, the guest agent's
``<channel>``.

And on libvirt's default disk selection for ``--copy-storage-*`` (qemu_migration.c,
``qemuMigrationAnyCopyDisk``): disks that are not shared, not read-only and have a source;
network disks are never copied.
"""

from __future__ import annotations

import hashlib
import re
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

try:
    from lxml import etree  # type: ignore[import-untyped]
    HAS_LXML = True
    LXML_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the host
    etree = None
    HAS_LXML = False
    LXML_IMPORT_ERROR = str(exc)

#: Multipliers of libvirt's ``unit`` attribute (formatdomain.html#memory-allocation).
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000 ** 2, "m": 1024 ** 2, "mib": 1024 ** 2,
    "gb": 1000 ** 3, "g": 1024 ** 3, "gib": 1024 ** 3,
    "tb": 1000 ** 4, "t": 1024 ** 4, "tib": 1024 ** 4,
    "pb": 1000 ** 5, "p": 1024 ** 5, "pib": 1024 ** 5,
    "eb": 1000 ** 6, "e": 1024 ** 6, "eib": 1024 ** 6,
}

#: Disk types whose data lives on the host (a storage migration can copy them).
LOCAL_DISK_TYPES = ("file", "block", "volume")

#: What a redacted secret reads as in results, diffs and messages.
REDACTED = "********"

# Secrets that domain XML (and libvirt's or QEMU's messages quoting it) can carry: any attribute
# whose name holds "passwd"/"password" (<graphics passwd>, the VNC/SPICE passwords of
# formatdomain.html#graphical-framebuffers), the user and the libvirt secret of an <auth>
# (iSCSI CHAP, RBD/cephx; formatdomain.html#hard-drives-floppy-disks-cdroms), the <secret>
# references of <auth> and <encryption>, and HTTP <cookie> values of network disks.
_SECRET_ATTR_RE = re.compile(r"""(?P<name>[\w:.-]*(?:passwd|password))(?P<eq>\s*=\s*)"""
                             r"""(?:(?P<q>["'])(?P<quoted>.*?)(?P=q)|(?P<bare>[^\s,;&"'<>/]+))""",
                             re.IGNORECASE | re.DOTALL)
_SECRET_ELEMENT_ATTRS = {"auth": ("username",), "secret": ("usage", "uuid")}
_ELEMENT_RE = re.compile(r"<(?P<tag>auth|secret)\b(?P<attrs>[^>]*)>", re.IGNORECASE)
_ATTR_RE = re.compile(r"""(?P<name>[\w:.-]+)(?P<eq>\s*=\s*)(?P<q>["'])(?P<value>.*?)(?P=q)""", re.DOTALL)
_COOKIE_RE = re.compile(r"(?P<open><cookie\b[^>]*>)(?P<value>[^<]*)(?P<close></cookie>)", re.IGNORECASE)


def require_lxml() -> None:
    """:raises KvmopsError: lxml is not installed."""
    if not HAS_LXML:
        raise KvmopsError("lxml is not installed on this host: install python3-lxml (Debian/Ubuntu) "
                          "or lxml (pip).", detail=LXML_IMPORT_ERROR)


def xml_parser(remove_blank_text: bool = True) -> t.Any:
    """The one hardened lxml parser of the collection: entities are not expanded, nothing is
    fetched from the network, huge trees are refused (libvirt's XML is ours to read, but a
    guest's definition is written by whoever defined the guest)."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           remove_blank_text=remove_blank_text)


def from_string(xml: str | bytes, remove_blank_text: bool = True) -> t.Any:
    """The root element of ``xml`` parsed with :func:`xml_parser`.

    :raises etree.XMLSyntaxError: not well-formed (callers word their own message).
    """
    return etree.fromstring(xml.encode("utf-8") if isinstance(xml, str) else xml,
                            xml_parser(remove_blank_text))


def parse_xml(xml: str | bytes) -> t.Any:
    """Parse domain XML safely (no entities, no network) and return the root element.

    :raises KvmopsError: lxml missing, or the text is not XML / not a ``<domain>``.
    """
    require_lxml()
    try:
        root = from_string(xml)
    except etree.XMLSyntaxError as err:
        raise KvmopsError("The domain XML could not be parsed.", detail=str(err)) from err
    if root.tag != "domain":
        raise KvmopsError("Expected a libvirt <domain> document, got <%s>." % root.tag)
    return root


def _root(xml_or_root: t.Any) -> t.Any:
    if isinstance(xml_or_root, (str, bytes)):
        return parse_xml(xml_or_root)
    return xml_or_root


def cpu_fingerprint(xml_or_root: t.Any) -> str:
    """``sha256:<hex>`` of the domain's ``<cpu>`` element in canonical form (C14N, blank text
    removed by the parser), or of nothing when it has none.

    Pass the XML the pre-flight checked (the migratable live XML of a running guest): the
    ``migrate`` module compares it with the one it is about to send (``expect_cpu``).
    """
    cpu = _root(xml_or_root).find("cpu")
    text = etree.tostring(cpu, method="c14n", with_comments=False) if cpu is not None else b""
    return "sha256:" + hashlib.sha256(text).hexdigest()


def to_bytes(value: str | int, unit: str | None = None) -> int:
    """Convert a libvirt scaled integer (``value`` with ``unit``, default KiB) to bytes.

    :raises KvmopsError: unknown unit or not an integer.
    """
    key = (unit or "KiB").strip().lower()
    if key not in _UNITS:
        raise KvmopsError("Unknown libvirt size unit %r." % unit)
    try:
        return int(str(value).strip()) * _UNITS[key]
    except ValueError as err:
        raise KvmopsError("Size %r is not an integer." % value) from err


def _attr(elem: t.Any, path: str, name: str) -> str | None:
    if elem is None:
        return None
    found = elem.find(path) if path else elem
    if found is None:
        return None
    return found.get(name)


def _text(elem: t.Any, path: str) -> str | None:
    found = elem.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _source(disk_type: str | None, src: t.Any) -> dict[str, t.Any]:
    """Source of a disk or backingStore: ``{path, pool, volume, protocol, name, hosts}``."""
    out: dict[str, t.Any] = {"path": None, "pool": None, "volume": None, "protocol": None,
                             "name": None, "hosts": []}
    if src is None:
        return out
    if disk_type == "file":
        out["path"] = src.get("file")
    elif disk_type == "block":
        out["path"] = src.get("dev")
    elif disk_type == "dir":
        out["path"] = src.get("dir")
    elif disk_type == "volume":
        out["pool"] = src.get("pool")
        out["volume"] = src.get("volume")
    elif disk_type == "network":
        out["protocol"] = src.get("protocol")
        out["name"] = src.get("name")
        out["hosts"] = [{"name": h.get("name"), "port": h.get("port"), "transport": h.get("transport")}
                        for h in src.findall("host")]
    else:
        out["path"] = src.get("file") or src.get("dev")
    return out


def _backing_chain(elem: t.Any) -> list[dict[str, t.Any]]:
    """Walk nested ``<backingStore>`` elements: ``[{type, format, path, pool, volume, ...}]``.

    An empty ``<backingStore/>`` terminates the chain (libvirt writes it for "no backing").
    """
    chain: list[dict[str, t.Any]] = []
    node = elem.find("backingStore")
    while node is not None and node.get("type"):
        layer = {"type": node.get("type"), "format": _attr(node, "format", "type"),
                 "index": node.get("index")}
        layer.update(_source(node.get("type"), node.find("source")))
        chain.append(layer)
        node = node.find("backingStore")
    return chain


def parse_disk(disk: t.Any) -> dict[str, t.Any]:
    """One ``<disk>`` element as a dict.

    Shape: ``{target, bus, device, type, path, pool, volume, protocol, name, hosts, format,
    driver, cache, io, discard, readonly, shareable, backing: [...], copy, copy_reason,
    must_be_shared}``. ``format`` is the driver type (raw, qcow2, ...). Sizes are not in the
    XML; ``_disk_info`` adds them.
    """
    disk_type = disk.get("type") or "file"
    device = disk.get("device") or "disk"
    driver = disk.find("driver")
    info: dict[str, t.Any] = {
        "target": _attr(disk, "target", "dev"),
        "bus": _attr(disk, "target", "bus"),
        "device": device,
        "type": disk_type,
        "format": driver.get("type") if driver is not None else None,
        "driver": driver.get("name") if driver is not None else None,
        "cache": driver.get("cache") if driver is not None else None,
        "io": driver.get("io") if driver is not None else None,
        "discard": driver.get("discard") if driver is not None else None,
        "readonly": disk.find("readonly") is not None or device == "cdrom",
        "shareable": disk.find("shareable") is not None,
        "serial": _text(disk, "serial"),
    }
    info.update(_source(disk_type, disk.find("source")))
    info["backing"] = _backing_chain(disk)
    copy, reason, must_share = copy_decision(info)
    info.update({"copy": copy, "copy_reason": reason, "must_be_shared": must_share})
    return info


def disks(xml_or_root: t.Any) -> list[dict[str, t.Any]]:
    """All ``<devices><disk>`` of a domain, in document order (see :func:`parse_disk`)."""
    root = _root(xml_or_root)
    return [parse_disk(d) for d in root.findall("devices/disk")]


def copy_decision(disk: dict[str, t.Any]) -> tuple[bool, str, bool]:
    """Whether a storage migration copies ``disk`` (a :func:`parse_disk` dict).

    :returns: ``(copy, reason, must_be_shared)``. ``must_be_shared`` is True for a writable
        disk that is not copied (network disks, SCSI LUN passthrough): it must be storage
        that the destination reaches too, or the migration is unsafe (case C12).
    """
    has_source = bool(disk.get("path") or disk.get("volume"))
    if disk.get("device") == "cdrom":
        return False, "cdrom: read-only media are not copied; the file must exist on the destination", False
    if disk.get("readonly"):
        return False, "read-only: not copied; the file must exist on the destination", False
    if disk.get("shareable"):
        return False, "shareable: must be shared storage reachable from both hosts", True
    if disk.get("type") == "network":
        return False, "network disk (%s): not copied; the destination must reach it" % (
            disk.get("protocol") or "network"), True
    if disk.get("device") == "lun":
        return False, "SCSI LUN passthrough: not copied; must be shared storage", True
    if disk.get("type") not in LOCAL_DISK_TYPES:
        return False, "disk type %s: not copied by a storage migration" % disk.get("type"), True
    if not has_source:
        return False, "no source (empty drive)", False
    return True, "writable local %s disk" % disk.get("type"), False


def copy_set(disk_list: list[dict[str, t.Any]], shared: t.Iterable[str] = ()) -> list[str]:
    """Target names (``vda``...) that a storage migration must copy.

    Every writable, non-shareable, local (file/block/volume) disk with a source, minus the
    targets in ``shared`` (declared on shared storage by the user, to be verified by the
    caller). Read-only, cdrom, shareable and network disks never (cases C12, C13).
    Pass the result as libvirt's ``migrate_disks`` parameter.
    """
    declared = set(shared)
    return [d["target"] for d in disk_list if copy_decision(d)[0] and d["target"] not in declared]


def check_copy_selection(disk_list: list[dict[str, t.Any]], selected: t.Iterable[str],
                         shared: t.Iterable[str] = ()) -> None:
    """Refuse a copy selection that leaves a writable local disk behind (case C12).

    :param selected: the targets the migration will copy.
    :param shared: targets the user declared shared (and the caller verified).
    :raises KvmopsError: naming the writable disks neither copied nor declared shared, or a
        selected target that is not copyable (read-only, cdrom, network, unknown).
    """
    chosen = list(selected)
    declared = set(shared)
    by_target = {d["target"]: d for d in disk_list}
    bad = []
    for target in chosen:
        disk = by_target.get(target)
        if disk is None:
            raise KvmopsError("Disk %s selected for copy is not a disk of the domain (disks: %s)."
                              % (target, ", ".join(sorted(by_target))))
        copy, reason, _share = copy_decision(disk)
        if not copy:
            bad.append("%s (%s)" % (target, reason))
    if bad:
        raise KvmopsError("Disks selected for copy cannot be copied: %s." % "; ".join(bad))
    left = [d["target"] for d in disk_list
            if copy_decision(d)[0] and d["target"] not in chosen and d["target"] not in declared]
    if left:
        raise KvmopsError(
            "Unsafe migration: writable disk(s) %s would be left behind on the source: add them "
            "to the copy set, or declare them shared storage (verified on both hosts)."
            % ", ".join(left), values={"left_out": left, "selected": chosen})


def interfaces(xml_or_root: t.Any) -> list[dict[str, t.Any]]:
    """``<devices><interface>``: ``[{type, source, mac, model, target}]``.

    ``source`` is the bridge, network or host device name, by interface type.
    """
    root = _root(xml_or_root)
    out = []
    for nic in root.findall("devices/interface"):
        nic_type = nic.get("type")
        src = nic.find("source")
        source = None
        if src is not None:
            source = src.get("bridge") or src.get("network") or src.get("dev")
        out.append({"type": nic_type, "source": source, "mac": _attr(nic, "mac", "address"),
                    "model": _attr(nic, "model", "type"), "target": _attr(nic, "target", "dev")})
    return out


#: the name of the QEMU guest agent's virtio-serial port (formatdomain.html#channel)
AGENT_CHANNEL = "org.qemu.guest_agent.0"


def agent_channel_state(xml_or_root: t.Any) -> str | None:
    """The state of the guest agent's channel (``<channel><target type='virtio'
    name='org.qemu.guest_agent.0' state=.../>``; the live XML of a running domain carries
    ``state``): ``connected`` (the agent has the port open), ``disconnected``, ``unknown`` (a
    channel without a state, e.g. in an inactive definition), or None when there is no such
    channel.
    """
    root = _root(xml_or_root)
    for target in root.findall("devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            state = (target.get("state") or "").strip()
            return state if state in ("connected", "disconnected") else "unknown"
    return None


def nvram_of(xml_or_root: t.Any) -> dict[str, str | None]:
    """The guest's NVRAM file (UEFI variables), ``<os><nvram>``: ``{path, template, format}``.

    ``path`` is the element's text, or the ``<source file>`` of a ``type='file'`` one (libvirt
    8.5), None without an NVRAM file (BIOS guests; a network or block store has no file path);
    ``template`` the file libvirt creates an absent NVRAM file from (``template`` attribute),
    None when the definition names none (libvirt then takes the firmware's default);
    ``format`` the ``format`` attribute (None: raw).
    """
    root = _root(xml_or_root)
    elem = root.find("os/nvram")
    if elem is None:
        return {"path": None, "template": None, "format": None}
    nvram_type = elem.get("type")
    path = _text(root, "os/nvram") or None
    if nvram_type not in (None, "file"):
        path = None
    elif not path:
        path = _attr(elem, "source", "file")
    return {"path": path, "template": (elem.get("template") or "").strip() or None,
            "format": elem.get("format")}


def domain_facts(xml_or_root: t.Any) -> dict[str, t.Any]:
    """The non-CPU facts of a domain definition.

    Shape: ``{name, uuid, domain_type, memory_bytes, current_memory_bytes, vcpus, arch,
    machine, os_type, emulator, loader, nvram, nvram_template, nvram_format, kernel, initrd, dtb,
    dirty_ring, disks: [...], interfaces: [...]}``; memory in bytes. ``dirty_ring``: KVM's dirty
    ring is on (``<features><kvm><dirty-ring state='on'/>``), which decides how QEMU can measure
    the guest's dirty rate. ``nvram_template`` is the file libvirt
    creates an absent NVRAM file from (``<nvram template=...>``), None when the definition names
    none (libvirt then takes the firmware's default template); ``nvram_format`` the
    ``format`` attribute (None: raw).
    """
    root = _root(xml_or_root)
    nvram = nvram_of(root)
    mem = root.find("memory")
    cur = root.find("currentMemory")
    vcpu = root.find("vcpu")
    return {
        "name": _text(root, "name"),
        "uuid": _text(root, "uuid"),
        "domain_type": root.get("type"),
        "memory_bytes": to_bytes(mem.text, mem.get("unit")) if mem is not None else None,
        "current_memory_bytes": to_bytes(cur.text, cur.get("unit")) if cur is not None else None,
        "vcpus": int(vcpu.text.strip()) if vcpu is not None and vcpu.text else None,
        "arch": _attr(root, "os/type", "arch"),
        "machine": _attr(root, "os/type", "machine"),
        "os_type": _text(root, "os/type"),
        "emulator": _text(root, "devices/emulator"),
        "loader": _text(root, "os/loader"),
        "nvram": nvram["path"], "nvram_template": nvram["template"], "nvram_format": nvram["format"],
        "kernel": _text(root, "os/kernel"),
        "initrd": _text(root, "os/initrd"),
        "dtb": _text(root, "os/dtb"),
        "dirty_ring": _attr(root, "features/kvm/dirty-ring", "state") == "on",
        "disks": disks(root),
        "interfaces": interfaces(root),
    }


def referenced_paths(xml_or_root: t.Any) -> set[str]:
    """Every host path a domain uses for storage: disk sources, backing layers, nvram, loader,
    kernel, initrd, dtb. Used to tell whether an image is in use by a domain."""
    root = _root(xml_or_root)
    paths: set[str] = set()
    for disk in disks(root):
        if disk.get("path"):
            paths.add(disk["path"])
        for layer in disk["backing"]:
            if layer.get("path"):
                paths.add(layer["path"])
    for path in ("os/loader", "os/nvram", "os/kernel", "os/initrd", "os/dtb"):
        value = _text(root, path)
        if value:
            paths.add(value)
    return paths


def required_files(facts: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Paths the destination must already have because migration does not copy them
    (case C13, LAB_NOTES): read-only media and cdroms, kernel, initrd, device tree (dtb),
    loader, nvram, and the nvram template (``what`` ``nvram template``: needed there only when
    the NVRAM file is absent, ``_checks_storage.check_required_files`` decides).

    :param facts: :func:`domain_facts`, its disks optionally described by
        ``_disk_info.describe_disk`` (then ``virtual_size`` is known).
    :returns: ``[{what, path, target, virtual_size}]``; ``target`` and ``virtual_size`` are
        None for the files of ``<os>``.
    """
    out = []
    for disk in facts.get("disks") or []:
        if disk.get("readonly") and disk.get("path") and disk.get("type") != "network":
            out.append({"what": "%s %s" % (disk.get("device"), disk.get("target")),
                        "path": disk["path"], "target": disk.get("target"),
                        "virtual_size": disk.get("virtual_size")})
    for key in ("kernel", "initrd", "dtb", "loader", "nvram"):
        if facts.get(key):
            out.append({"what": key, "path": facts[key], "target": None, "virtual_size": None})
    if facts.get("nvram") and facts.get("nvram_template"):
        out.append({"what": "nvram template", "path": facts["nvram_template"], "target": None, "virtual_size": None})
    return out


def with_discard_unmap(xml: str, targets: t.Iterable[str]) -> tuple[str, list[str]]:
    """Set ``<driver discard='unmap'/>`` on the disks ``targets`` that have no discard mode.

    Used for the destination's live definition of a storage migration: QEMU's NBD target then
    turns zero blocks (and the zero-detected blocks of ``migrate_disks_detect_zeroes``) into
    holes, so the destination image stays sparse. Without it a raw destination image ends up
    fully allocated (seen with QEMU 10.0 / libvirt 11.3). The discard mode of the block layer is
    not guest ABI (virtio-blk advertises discard whatever the mode; ``ignore`` only drops the
    requests), and libvirt's migration ABI check accepts the change. A disk with an explicit
    ``discard`` attribute (``ignore`` included) is left as the user set it.

    :param xml: domain XML (the migratable live XML of the source).
    :returns: ``(xml, changed_targets)``; the input text unchanged when nothing changed.
    """
    wanted = set(targets)
    root = parse_xml(xml)
    changed = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev not in wanted:
            continue
        driver = disk.find("driver")
        if driver is None:
            driver = etree.Element("driver", name="qemu")
            disk.insert(0, driver)
        if driver.get("discard") is None:
            driver.set("discard", "unmap")
            changed.append(dev)
    if not changed:
        return xml, []
    return etree.tostring(root, encoding="unicode"), changed


def redact_secrets(text: str) -> str:
    """``text`` with every secret a domain XML can carry replaced by :data:`REDACTED`.

    Works on any text, not only well-formed XML: whole domain XML, a ``<cpu>`` or ``<disk>``
    fragment, or a libvirt/QEMU message quoting one (``passwd='...'``, ``password=...``).
    Replaced: the value of any attribute or ``key=value`` whose name contains ``passwd`` or
    ``password``; ``username`` of ``<auth>``; ``usage`` and ``uuid`` of ``<secret>``; the value of
    ``<cookie>``. Everything else is left byte for byte.
    """
    if not text or not isinstance(text, str):
        return text

    def attr(match: t.Any) -> str:
        if match.group("q"):
            return "%s%s%s%s%s" % (match.group("name"), match.group("eq"), match.group("q"),
                                   REDACTED, match.group("q"))
        return "%s%s%s" % (match.group("name"), match.group("eq"), REDACTED)

    def element(match: t.Any) -> str:
        secret = _SECRET_ELEMENT_ATTRS[match.group("tag").lower()]

        def one(am: t.Any) -> str:
            if am.group("name").lower() not in secret:
                return am.group(0)
            return "%s%s%s%s%s" % (am.group("name"), am.group("eq"), am.group("q"), REDACTED, am.group("q"))
        return "<%s%s>" % (match.group("tag"), _ATTR_RE.sub(one, match.group("attrs")))

    text = _SECRET_ATTR_RE.sub(attr, text)
    text = _ELEMENT_RE.sub(element, text)
    return _COOKIE_RE.sub(lambda m: m.group("open") + REDACTED + m.group("close"), text)


def redact(value: t.Any) -> t.Any:
    """A copy of a module result (dicts, lists, strings, ...) with :func:`redact_secrets`
    applied to every string in it; dict keys and other types are kept. Used on every result,
    diff, warning and error of the collection's modules (``_module.call_backend``)."""
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value
