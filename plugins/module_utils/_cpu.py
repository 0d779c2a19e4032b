# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Guest CPU definitions: read, compare, baseline, normalise.

What lives here (all pure Python + lxml; libvirt only behind small functions taking a connection):

- parsing: a domain's ``<cpu>`` (:func:`parse_guest_cpu`), host capabilities
  (:func:`parse_capabilities`), domain capabilities (:func:`parse_domcapabilities`), the
  ``<os>``/``<emulator>`` facts of a domain (:func:`domain_platform`);
- libvirt calls: :func:`domain_xml` (virDomainGetXMLDesc), :func:`read_host`
  (virConnectGetCapabilities + virConnectGetDomainCapabilities), :func:`compare_cpu`
  (virConnectCompareHypervisorCPU), :func:`baseline_cpu` (virConnectBaselineHypervisorCPU);
- pre-flight checks returning findings ``{check, status, host, msg, values}``:
  :func:`check_cpu`, :func:`check_machine`, :func:`check_emulator`, :func:`check_feature_names`,
  plus :func:`destination_xml_with_emulator`;
- normalisation: :func:`build_target_cpu`, :func:`normalise_cpu`, :func:`validate_cpu`,
  :func:`plan_normalisation`, and the backend of the ``domain_cpu`` module :func:`run_domain_cpu`.

Rules of a live move (why a running guest's CPU never changes here): the CPU model, vendor and
features are guest ABI; libvirt's ABI check refuses a live migration whose destination XML has
another CPU. So for a running guest only the persistent definition is rewritten (effective at the
next cold boot), and a live migration is refused when the live CPU (migratable XML) is not
compatible with the destination.

libvirt 9.0 (Debian 12) and 11.3 (bookworm-backports) differ in what they print:

- domcapabilities custom models: 11.3 adds ``canonical='EPYC-Rome-v1'`` on alias models and a
  ``<blockers model='X'>`` list of missing features per unusable model; 9.0 has neither (only
  ``usable``, ``vendor``, ``deprecated``). :class:`DomCaps` fills ``blockers``/``canonical``
  when present and leaves them empty otherwise.
- host-model: both print ``<model fallback='forbid'>``; 11.3 also prints ``<maxphysaddr
  mode='passthrough' limit=.../>``, which is host specific and dropped from normalised CPUs.
- ``check``: libvirt fills a missing ``check`` when a domain is defined: ``partial`` for
  custom/host-model CPUs under KVM, ``none`` under TCG (observed with 11.3); a running domain's
  live XML shows ``check='full'`` plus features QEMU added, the migratable XML shows the
  definition again. We always write ``check='partial'`` explicitly so that re-reading the
  definition gives back what we wrote (idempotency), and we compare live CPUs from the
  migratable XML.
- error texts of the comparison ("Host CPU does not provide required features: a, b", "host CPU
  vendor does not match required CPU vendor Intel", "Unknown CPU feature x") are the same in
  both (src/cpu/cpu_x86.c).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml, _findings, _libvirt

from ansible_collections.kvmops.migration.plugins.module_utils._domain_xml import (  # noqa: F401  (one lxml import)
    HAS_LXML, LXML_IMPORT_ERROR, etree)


def _const(name: str, default: int) -> int:
    """A ``libvirt.VIR_*`` constant; ``default`` (the value of libvirt's header) without libvirt."""
    if _libvirt.HAS_LIBVIRT:
        return int(getattr(_libvirt.libvirt, name, default))
    return default


VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE = _const("VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE", 1)
VIR_CONNECT_BASELINE_CPU_MIGRATABLE = _const("VIR_CONNECT_BASELINE_CPU_MIGRATABLE", 2)
VIR_DOMAIN_XML_SECURE = _const("VIR_DOMAIN_XML_SECURE", 1)
VIR_DOMAIN_XML_INACTIVE = _const("VIR_DOMAIN_XML_INACTIVE", 2)
VIR_DOMAIN_XML_MIGRATABLE = _const("VIR_DOMAIN_XML_MIGRATABLE", 8)
VIR_CPU_COMPARE_ERROR = _const("VIR_CPU_COMPARE_ERROR", -1)
VIR_CPU_COMPARE_INCOMPATIBLE = _const("VIR_CPU_COMPARE_INCOMPATIBLE", 0)
VIR_CPU_COMPARE_IDENTICAL = _const("VIR_CPU_COMPARE_IDENTICAL", 1)
VIR_CPU_COMPARE_SUPERSET = _const("VIR_CPU_COMPARE_SUPERSET", 2)
VIR_DOMAIN_RUNNING = _const("VIR_DOMAIN_RUNNING", 1)
VIR_DOMAIN_PAUSED = _const("VIR_DOMAIN_PAUSED", 3)

POLICIES = ("baseline", "host-model", "model")

# Feature names as other libvirt versions or tools spell them -> the name libvirt 9.0/11.3 knows.
# 'arch-facilities' is an older libvirt's name of 'arch-capabilities' (case C07). The others are
# the <alias> entries of libvirt's own cpu_map (src/cpu_map/x86_features.xml of libvirt 11.3:
# QEMU and Linux spellings that libvirt translates when it talks to QEMU but that a domain XML
# written by hand or by another tool may carry).
FEATURE_RENAMES: dict[str, str] = {
    "arch-facilities": "arch-capabilities",
    "arch_capabilities": "arch-capabilities",
    "cqm": "cmt",
    "md_clear": "md-clear",
    "sse3": "pni",
    "pclmulqdq": "pclmuldq",
    "ds-cpl": "ds_cpl",
    "sse4-1": "sse4.1",
    "sse4_1": "sse4.1",
    "sse4-2": "sse4.2",
    "sse4_2": "sse4.2",
    "tsc-adjust": "tsc_adjust",
    "lahf-lm": "lahf_lm",
    "cmp-legacy": "cmp_legacy",
    "nodeid-msr": "nodeid_msr",
    "perfctr-core": "perfctr_core",
    "perfctr-nb": "perfctr_nb",
    "xd": "nx",
    "ffxsr": "fxsr_opt",
    "fxsr-opt": "fxsr_opt",
    "i64": "lm",
    "svm_lock": "svm-lock",
    "nrip_save": "nrip-save",
    "tsc_scale": "tsc-scale",
    "vmcb_clean": "vmcb-clean",
    "pause_filter": "pause-filter",
}

# Nested-virtualisation features: Intel VT-x ('vmx' and its 'vmx-*' capability bits) and AMD-V
# ('svm' and the SVM feature bits of CPUID 0x8000000A EDX as libvirt names them). They exist on
# one vendor only and only when the host's kvm module has nested=1.
NESTED_FEATURES = frozenset((
    "vmx", "svm", "npt", "lbrv", "svm-lock", "nrip-save", "tsc-scale", "vmcb-clean",
    "flushbyasid", "decodeassists", "pause-filter", "pfthreshold", "avic", "v-vmsave-vmload",
    "vgif", "svme-addr-chk", "vnmi",
))

_REQUIRING_POLICIES = ("force", "require", "optional")
_MISSING_RE = re.compile(r"does not provide required features?:\s*(?P<names>[^;\n]+)", re.I)
_VENDOR_RE = re.compile(r"vendor does not match required CPU vendor\s+(?P<vendor>\S+)", re.I)
_UNKNOWN_FEATURE_RE = re.compile(r"Unknown CPU feature\s+'?(?P<name>[^'\s]+)'?", re.I)
_UNKNOWN_MODEL_RE = re.compile(r"Unknown CPU model\s+'?(?P<name>[^'\s]+)'?", re.I)
_MACHINE_RE = re.compile(r"the machine '(?P<machine>[^']+)' is not supported", re.I)


# ----------------------------------------------------------------------------------------------
# data shapes


@dataclasses.dataclass
class GuestCpu:
    """A domain's (or a host-model's) ``<cpu>``.

    ``features`` is a list of ``(name, policy)`` in document order; ``topology`` the attributes of
    ``<topology>`` (sockets, dies, clusters, cores, threads) as strings.
    """

    mode: str | None = None
    match: str | None = None
    check: str | None = None
    model: str | None = None
    fallback: str | None = None
    vendor: str | None = None
    features: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    topology: dict[str, str] = dataclasses.field(default_factory=dict)

    def feature_names(self, policies: t.Iterable[str] = _REQUIRING_POLICIES) -> list[str]:
        """Names of the features whose policy is one of ``policies``."""
        wanted = tuple(policies)
        return [name for name, policy in self.features if policy in wanted]

    def as_dict(self) -> dict[str, t.Any]:
        """``{mode, match, check, model, fallback, vendor, features: [{name, policy}], topology}``."""
        data = dataclasses.asdict(self)
        data["features"] = [{"name": n, "policy": p} for n, p in self.features]
        return data


@dataclasses.dataclass
class HostCaps:
    """What kvmops reads from ``virsh capabilities``.

    ``guests`` maps an arch to ``{emulators: [paths], machines: {name: canonical or None},
    deprecated: [names], domain_types: [kvm, qemu]}``.
    """

    uuid: str | None
    arch: str | None
    cpu_model: str | None
    cpu_vendor: str | None
    cpu_features: list[str]
    guests: dict[str, dict[str, t.Any]]

    def machines(self, arch: str) -> dict[str, str | None]:
        return dict(self.guests.get(arch, {}).get("machines", {}))

    def emulators(self, arch: str) -> list[str]:
        return list(self.guests.get(arch, {}).get("emulators", []))


@dataclasses.dataclass
class CpuModelInfo:
    """One custom model of domcapabilities. ``canonical``/``blockers`` only from libvirt >= 10."""

    name: str
    usable: str | None
    vendor: str | None
    deprecated: bool
    canonical: str | None
    blockers: list[str]


@dataclasses.dataclass
class DomCaps:
    """What kvmops reads from ``virsh domcapabilities``.

    ``host_model`` is None when the host-model mode is not supported; ``models`` maps a model
    name to :class:`CpuModelInfo`; ``vocabulary`` is every CPU feature name the document
    mentions (host-model features and blockers): a lower bound of what libvirt knows, not all.
    """

    emulator: str | None
    virttype: str | None
    machine: str | None
    arch: str | None
    host_model: GuestCpu | None
    models: dict[str, CpuModelInfo]
    vocabulary: set[str]

    def usable_models(self) -> list[str]:
        return [m.name for m in self.models.values() if m.usable == "yes"]


@dataclasses.dataclass
class HostFacts:
    """One host of a group: its URI, capabilities and domain capabilities for one virttype."""

    uri: str
    caps: HostCaps
    domcaps: DomCaps

    @property
    def vendor(self) -> str | None:
        if self.domcaps.host_model is not None and self.domcaps.host_model.vendor:
            return self.domcaps.host_model.vendor
        return self.caps.cpu_vendor

    def feature_set(self) -> set[str]:
        """Features this host offers: capabilities' host CPU features plus the host-model's
        required ones, minus those the host-model disables (e.g. svm without nested=1)."""
        have = set(self.caps.cpu_features)
        hm = self.domcaps.host_model
        if hm is not None:
            have.update(hm.feature_names())
            have.difference_update(hm.feature_names(("disable", "forbid")))
        return have


@dataclasses.dataclass
class CpuComparison:
    """Result of comparing a guest CPU with one host (virConnectCompareHypervisorCPU).

    ``result``: ``identical`` | ``superset`` (host can run it) | ``incompatible`` | ``error``.
    ``missing_features``: required features the host lacks; ``vendor_clash``: the vendor the
    guest requires when the host has another; ``unknown_features``/``unknown_model``: names
    the host's libvirt does not know (version drift).
    """

    host: str
    result: str
    missing_features: list[str] = dataclasses.field(default_factory=list)
    vendor_clash: str | None = None
    unknown_features: list[str] = dataclasses.field(default_factory=list)
    unknown_model: str | None = None
    unsupported_machine: str | None = None
    msg: str = ""
    detail: str | None = None

    @property
    def compatible(self) -> bool:
        return self.result in ("identical", "superset")

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["compatible"] = self.compatible
        return data


@dataclasses.dataclass
class NormaliseResult:
    """Outcome of :func:`normalise_cpu`.

    ``xml``: the whole domain XML with the new ``<cpu>``; ``cpu_before``/``cpu_after``: the
    ``<cpu>`` elements serialised; ``changed``: canonical forms differ; ``dropped``: what was
    removed and why (``[{item, reason}]``); ``renamed``: ``{old: new}``.
    """

    xml: str
    cpu_before: str
    cpu_after: str
    changed: bool
    dropped: list[dict[str, str]]
    renamed: dict[str, str]


# ----------------------------------------------------------------------------------------------
# parsing


def _require_lxml() -> None:
    if not HAS_LXML:
        raise KvmopsError("python lxml is not installed on this host: install python3-lxml "
                          "(Debian/Ubuntu) or lxml (pip).", detail=LXML_IMPORT_ERROR)


def _parse(xml: t.Any, what: str) -> t.Any:
    """An lxml element from a string/bytes (or the element itself)."""
    _require_lxml()
    if not isinstance(xml, (str, bytes)):
        return xml
    try:
        return _domain_xml.from_string(xml)
    except etree.XMLSyntaxError as err:
        raise KvmopsError("The %s is not well-formed XML." % what, detail=str(err)) from err


def _text(el: t.Any) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _cpu_element(xml: t.Any) -> t.Any:
    """The ``<cpu>`` of a domain XML, or the element itself when it is a ``<cpu>``; None if absent."""
    root = _parse(xml, "domain XML")
    if root.tag == "cpu":
        return root
    return root.find("cpu")


def parse_guest_cpu(xml: t.Any) -> GuestCpu:
    """Parse the ``<cpu>`` of a domain XML (or a bare ``<cpu>``, or a host-model ``<mode>``).

    Works on the persistent XML (``virDomainGetXMLDesc(VIR_DOMAIN_XML_INACTIVE)``) and on the
    live migratable one (``VIR_DOMAIN_XML_MIGRATABLE``). A domain without ``<cpu>`` gives an
    empty :class:`GuestCpu` (libvirt's default model, mode None).
    """
    el = _cpu_element(xml) if not (not isinstance(xml, (str, bytes)) and xml.tag == "mode") else xml
    if el is None:
        return GuestCpu()
    model = el.find("model")
    topo = el.find("topology")
    mode = el.get("mode")
    if el.tag == "mode":  # domcapabilities' <mode name='host-model'>
        mode = "custom"
    elif mode is None and model is not None:
        mode = "custom"
    return GuestCpu(
        mode=mode,
        match=el.get("match"),
        check=el.get("check"),
        model=_text(model),
        fallback=model.get("fallback") if model is not None else None,
        vendor=_text(el.find("vendor")),
        features=[(f.get("name"), f.get("policy", "require")) for f in el.findall("feature")],
        topology=dict(topo.attrib) if topo is not None else {},
    )


def parse_capabilities(xml: t.Any) -> HostCaps:
    """Parse ``virConnectGetCapabilities`` output: host UUID, host CPU, guests per arch."""
    root = _parse(xml, "capabilities XML")
    host = root.find("host")
    cpu = host.find("cpu") if host is not None else None
    guests: dict[str, dict[str, t.Any]] = {}
    for guest in root.findall("guest"):
        if _text(guest.find("os_type")) != "hvm":
            continue
        arch_el = guest.find("arch")
        if arch_el is None:
            continue
        entry = guests.setdefault(arch_el.get("name"), {
            "emulators": [], "machines": {}, "deprecated": [], "domain_types": []})
        emu = _text(arch_el.find("emulator"))
        emus = [emu] if emu else []
        machines_els = list(arch_el.findall("machine"))
        for dom in arch_el.findall("domain"):
            entry["domain_types"].append(dom.get("type"))
            demu = _text(dom.find("emulator"))
            if demu:
                emus.append(demu)
            machines_els.extend(dom.findall("machine"))
        for path in emus:
            if path not in entry["emulators"]:
                entry["emulators"].append(path)
        for m in machines_els:
            name = _text(m)
            if name:
                entry["machines"][name] = m.get("canonical")
                if m.get("deprecated") == "yes" and name not in entry["deprecated"]:
                    entry["deprecated"].append(name)
    return HostCaps(
        uuid=_text(host.find("uuid")) if host is not None else None,
        arch=_text(cpu.find("arch")) if cpu is not None else None,
        cpu_model=_text(cpu.find("model")) if cpu is not None else None,
        cpu_vendor=_text(cpu.find("vendor")) if cpu is not None else None,
        cpu_features=[f.get("name") for f in cpu.findall("feature")] if cpu is not None else [],
        guests=guests,
    )


def parse_domcapabilities(xml: t.Any) -> DomCaps:
    """Parse ``virConnectGetDomainCapabilities`` output (libvirt 9.0 or 11.3 form)."""
    root = _parse(xml, "domain capabilities XML")
    host_model = None
    models: dict[str, CpuModelInfo] = {}
    vocabulary: set[str] = set()
    cpu = root.find("cpu")
    if cpu is not None:
        for mode in cpu.findall("mode"):
            if mode.get("name") == "host-model" and mode.get("supported") == "yes":
                host_model = parse_guest_cpu(mode)
                vocabulary.update(n for n, _p in host_model.features)
            elif mode.get("name") == "custom":
                blockers = {b.get("model"): [f.get("name") for f in b.findall("feature")]
                            for b in mode.findall("blockers")}
                for m in mode.findall("model"):
                    name = _text(m)
                    if not name:
                        continue
                    models[name] = CpuModelInfo(
                        name=name, usable=m.get("usable"), vendor=m.get("vendor"),
                        deprecated=m.get("deprecated") == "yes", canonical=m.get("canonical"),
                        blockers=blockers.get(name, []))
                for names in blockers.values():
                    vocabulary.update(names)
    return DomCaps(
        emulator=_text(root.find("path")), virttype=_text(root.find("domain")),
        machine=_text(root.find("machine")), arch=_text(root.find("arch")),
        host_model=host_model, models=models, vocabulary=vocabulary)


def domain_platform(xml: t.Any) -> dict[str, t.Any]:
    """``{name, uuid, virttype, arch, machine, emulator}`` of a domain XML."""
    root = _parse(xml, "domain XML")
    os_type = root.find("os/type")
    return {
        "name": _text(root.find("name")),
        "uuid": _text(root.find("uuid")),
        "virttype": root.get("type"),
        "arch": os_type.get("arch") if os_type is not None else None,
        "machine": os_type.get("machine") if os_type is not None else None,
        "emulator": _text(root.find("devices/emulator")),
    }


def cpu_to_xml(cpu: t.Any) -> str:
    """Serialise a ``<cpu>`` element (or '' for None)."""
    if cpu is None:
        return ""
    return etree.tostring(cpu, pretty_print=True, encoding="unicode")


def canonical_cpu(xml: t.Any) -> str:
    """A canonical text of a ``<cpu>`` for idempotency: libvirt's defaults filled in
    (mode custom with a model, match exact, fallback allow, policy require), features sorted,
    other children serialised sorted. Two CPUs with the same canonical text are the same CPU."""
    el = _cpu_element(xml) if isinstance(xml, (str, bytes)) else xml
    if el is None:
        return ""
    cpu = parse_guest_cpu(el)
    mode = cpu.mode or "custom"
    parts = ["mode=%s" % mode]
    if mode == "custom":
        parts.append("match=%s" % (cpu.match or "exact"))
        parts.append("model=%s fallback=%s" % (cpu.model, cpu.fallback or "allow"))
    parts.append("check=%s" % (cpu.check or ""))
    parts.append("vendor=%s" % (cpu.vendor or ""))
    parts.extend("feature %s=%s" % (n, p) for n, p in sorted(cpu.features))
    others = []
    for child in el:
        if not isinstance(child.tag, str) or child.tag in ("model", "vendor", "feature"):
            continue
        c = copy.deepcopy(child)
        others.append(etree.tostring(c, method="c14n").decode("utf-8"))
    parts.extend(sorted(others))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# libvirt calls (each takes a connection or domain object; unit tests pass hand-written fakes)


def domain_xml(dom: t.Any, migratable: bool = False, inactive: bool = False,
               secure: bool = False) -> str:
    """A domain's XML via ``virDomainGetXMLDesc``.

    :param migratable: ``VIR_DOMAIN_XML_MIGRATABLE``: the form libvirt sends to a destination
        (live: without the features QEMU added at start).
    :param inactive: ``VIR_DOMAIN_XML_INACTIVE``: the persistent definition.
    :param secure: ``VIR_DOMAIN_XML_SECURE``: keep passwords (needed before ``defineXML``).
    :raises KvmopsError: libvirt failed.
    """
    flags = 0
    if migratable:
        flags |= VIR_DOMAIN_XML_MIGRATABLE
    if inactive:
        flags |= VIR_DOMAIN_XML_INACTIVE
    if secure:
        flags |= VIR_DOMAIN_XML_SECURE
    with _libvirt.libvirt_errors("read the XML of domain %s" % _libvirt.name_of(dom)):
        return str(dom.XMLDesc(flags))


def read_host(conn: t.Any, uri: str, virttype: str, arch: str = "x86_64",
              machine: str | None = None, emulator: str | None = None) -> HostFacts:
    """Capabilities and domain capabilities of the host behind ``conn``.

    Relies on ``virConnectGetCapabilities`` and ``virConnectGetDomainCapabilities(emulator,
    arch, machine, virttype, 0)``. ``machine``: pass the guest's machine to get the
    host-model/usable models for it; a machine the host does not have raises.
    :raises KvmopsError: libvirt failed (names the URI).
    """
    with _libvirt.libvirt_errors("read the capabilities", host=uri):
        caps = parse_capabilities(conn.getCapabilities())
    with _libvirt.libvirt_errors("read the domain capabilities (virttype %s, arch %s, machine %s)"
                                 % (virttype, arch, machine or "default"), host=uri):
        domcaps = parse_domcapabilities(conn.getDomainCapabilities(emulator, arch, machine,
                                                                   virttype, 0))
    return HostFacts(uri=uri, caps=caps, domcaps=domcaps)


def compare_cpu(conn: t.Any, cpu_xml: str, virttype: str, arch: str = "x86_64",
                machine: str | None = None, emulator: str | None = None,
                host: str | None = None) -> CpuComparison:
    """Compare a guest ``<cpu>`` with what the hypervisor on ``conn`` can provide.

    Calls ``conn.compareHypervisorCPU(emulator, arch, machine, virttype, cpu_xml,
    VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)``; with that flag libvirt raises an error that
    says why (missing features, vendor) instead of returning a bare INCOMPATIBLE, and we parse
    its text. A host-model/host-passthrough CPU is not comparable this way (libvirt expands it
    on the boot host): compare the migratable live XML of the running guest instead.

    :returns: a :class:`CpuComparison`; never raises for an incompatible CPU.
    :raises KvmopsError: the XML is not a CPU, or libvirt failed in a way that is not about the
        CPU (connection lost).
    """
    where = host or _libvirt.uri_of(conn)
    try:
        code = conn.compareHypervisorCPU(emulator, arch, machine, virttype, cpu_xml,
                                         VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except Exception as err:  # only libvirt errors are interpreted; others propagate
        if not _libvirt.is_libvirt_error(err):
            raise
        return _comparison_from_error(where, _libvirt.libvirt_error_detail(err))
    if code == VIR_CPU_COMPARE_IDENTICAL:
        return CpuComparison(where, "identical", msg="%s provides exactly this CPU." % where)
    if code == VIR_CPU_COMPARE_SUPERSET:
        return CpuComparison(where, "superset", msg="%s can run this CPU." % where)
    if code == VIR_CPU_COMPARE_INCOMPATIBLE:
        return CpuComparison(where, "incompatible",
                             msg="The guest CPU is incompatible with %s (libvirt gave no reason)."
                             % where)
    return CpuComparison(where, "error", msg="libvirt could not compare the CPU on %s." % where)


def _comparison_from_error(host: str, text: str) -> CpuComparison:
    """Turn libvirt's error text of a comparison into a :class:`CpuComparison`."""
    result = CpuComparison(host, "incompatible", detail=text)
    reasons = []
    m = _VENDOR_RE.search(text)
    if m:
        result.vendor_clash = m.group("vendor")
        reasons.append("the guest requires CPU vendor %s" % result.vendor_clash)
    m = _MISSING_RE.search(text)
    if m:
        result.missing_features = [n.strip() for n in m.group("names").split(",") if n.strip()]
        reasons.append("the host lacks the features %s" % ", ".join(result.missing_features))
    m = _UNKNOWN_FEATURE_RE.search(text)
    if m:
        result.result = "error"
        result.unknown_features = [m.group("name")]
        hint = FEATURE_RENAMES.get(m.group("name"))
        reasons.append("its libvirt does not know the feature %s%s" % (
            m.group("name"), " (this libvirt calls it %s)" % hint if hint else ""))
    m = _UNKNOWN_MODEL_RE.search(text)
    if m:
        result.result = "error"
        result.unknown_model = m.group("name")
        reasons.append("its libvirt does not know the CPU model %s" % m.group("name"))
    m = _MACHINE_RE.search(text)
    if m:
        result.result = "error"
        result.unsupported_machine = m.group("machine")
        reasons.append("it has no machine type %s" % m.group("machine"))
    if not reasons:
        result.result = "error"
        reasons.append("libvirt could not compare it")
    result.msg = "The guest CPU cannot run on %s: %s." % (host, "; ".join(reasons))
    return result


def baseline_cpu(conn: t.Any, cpu_xmls: list[str], virttype: str, arch: str = "x86_64",
                 machine: str | None = None, emulator: str | None = None,
                 host: str | None = None) -> str:
    """The migratable baseline of several CPUs (e.g. the host-model CPUs of a group).

    Calls ``conn.baselineHypervisorCPU(emulator, arch, machine, virttype, cpu_xmls,
    VIR_CONNECT_BASELINE_CPU_MIGRATABLE)``: a custom ``<cpu>`` that every input CPU can run,
    without features that block migration (invtsc).
    :raises KvmopsError: libvirt failed (e.g. CPUs of different vendors share no model).
    """
    with _libvirt.libvirt_errors("compute the baseline CPU of %d host CPUs" % len(cpu_xmls),
                                 host=host or _libvirt.uri_of(conn)):
        return str(conn.baselineHypervisorCPU(emulator, arch, machine, virttype, list(cpu_xmls),
                                              VIR_CONNECT_BASELINE_CPU_MIGRATABLE))


#: Features a group's baseline leaves out, at most, before it gives up on a host's libvirt.
MAX_UNKNOWN_FEATURES = 64


def without_features(cpu_xml: str, names: t.Iterable[str]) -> str:
    """``cpu_xml`` without its ``<feature>`` elements named in ``names``."""
    drop = set(names)
    if not drop:
        return cpu_xml
    cpu = _parse(cpu_xml, "CPU XML")
    for feat in list(cpu.findall("feature")):
        if feat.get("name") in drop:
            cpu.remove(feat)
    return etree.tostring(cpu, encoding="unicode")


def group_baseline(group: t.Sequence[tuple[str, t.Any]], cpu_xmls: list[str], virttype: str,
                   arch: str = "x86_64") -> str:
    """The baseline of the group's host-model CPUs (:func:`baseline_cpu`), computed on the first
    host of ``group`` (``[(uri, conn)]``) whose libvirt can read them all.

    Hosts of different libvirt releases name different features: a newer host's host-model CPU
    can hold a feature the older libvirt does not know (libvirt: ``Unknown CPU feature
    cmpccxadd``). Such a feature is left out of the inputs on that host and the baseline computed
    again: the host's own host-model CPU cannot have a feature its libvirt does not know, so the
    baseline (what every input has) would not have it either. A host that fails otherwise (an
    unknown CPU model) passes the computation to the next host of the group.

    :returns: the baseline ``<cpu>`` XML.
    :raises KvmopsError: no host of the group could compute it (each host's reason).
    """
    reasons = []
    for uri, conn in group:
        dropped: list[str] = []
        while True:
            try:
                return baseline_cpu(conn, [without_features(x, dropped) for x in cpu_xmls], virttype, arch, host=uri)
            except KvmopsError as err:
                m = _UNKNOWN_FEATURE_RE.search(err.detail or "")
                if m and m.group("name") not in dropped and len(dropped) < MAX_UNKNOWN_FEATURES:
                    dropped.append(m.group("name"))
                    continue
                reasons.append("%s%s" % (err, " (left out, unknown there: %s)" % ", ".join(dropped) if dropped else ""))
                break
    raise KvmopsError("No host of the group could compute the baseline of its host-model CPUs: %s Use policy "
                      "'model' with a model every host knows." % " ".join(reasons))


def host_model_cpu_xml(facts: HostFacts) -> str:
    """The host-model CPU of ``facts`` as a custom ``<cpu>`` (input of :func:`baseline_cpu`).

    :raises KvmopsError: the host does not support host-model for this virttype.
    """
    hm = facts.domcaps.host_model
    if hm is None or not hm.model:
        raise KvmopsError(
            "Host %s reports no host-model CPU for virttype %s: cannot compute a baseline; "
            "use policy 'model' with a named model instead." % (facts.uri, facts.domcaps.virttype))
    cpu = etree.Element("cpu", mode="custom", match="exact")
    etree.SubElement(cpu, "model", fallback="forbid").text = hm.model
    if hm.vendor:
        etree.SubElement(cpu, "vendor").text = hm.vendor
    for name, policy in hm.features:
        etree.SubElement(cpu, "feature", policy=policy, name=name)
    return etree.tostring(cpu, encoding="unicode")


# ----------------------------------------------------------------------------------------------
# pre-flight checks: each returns a finding {check, status, host, msg, values}


_finding = _findings.finding


def check_cpu(conn: t.Any, live_migratable_xml: str, host: str,
              virttype: str | None = None) -> dict[str, t.Any]:
    """Pre-flight: can ``host`` run the guest's CPU as it runs now?

    :param live_migratable_xml: the running guest's XML from :func:`domain_xml` with
        ``migratable=True`` (what libvirt would send).
    :returns: finding ``cpu`` with ``values.comparison`` (:meth:`CpuComparison.as_dict`).
        ``error`` when incompatible: a live migration must then be refused; the fix is the
        ``domain_cpu`` module and a cold boot.
    """
    plat = domain_platform(live_migratable_xml)
    cpu_el = _cpu_element(live_migratable_xml)
    cpu = parse_guest_cpu(live_migratable_xml)
    if cpu_el is None or cpu.mode in ("host-passthrough", "maximum"):
        status = "ok" if cpu_el is None else "error"
        msg = ("The guest uses libvirt's default CPU model." if cpu_el is None else
               "The guest CPU mode is %s: it only migrates between identical hosts; normalise it "
               "with kvmops.migration.domain_cpu and cold-boot the guest." % cpu.mode)
        return _finding("cpu", status, host, msg, mode=cpu.mode)
    comparison = compare_cpu(conn, cpu_to_xml(cpu_el), virttype or plat["virttype"] or "kvm",
                             plat["arch"] or "x86_64", plat["machine"], host=host)
    if comparison.compatible:
        return _finding("cpu", "ok", host, comparison.msg, comparison=comparison.as_dict())
    return _finding(
        "cpu", "error", host,
        comparison.msg + " A running guest's CPU cannot change during a live migration: run "
        "kvmops.migration.domain_cpu on it and cold-boot it, or migrate to a compatible host.",
        comparison=comparison.as_dict())


def check_machine(domain_xml_text: str, dst: HostCaps, host: str) -> dict[str, t.Any]:
    """Pre-flight: does ``host`` offer the guest's exact machine type (case C07)?

    The machine type is guest ABI: it is never changed for a running guest, and ``pc``/``q35``
    aliases are not resolved to another version. Looks in the capabilities' ``<guest>`` list of
    the destination (domcapabilities only echo one machine).
    """
    plat = domain_platform(domain_xml_text)
    machine, arch = plat["machine"], plat["arch"] or "x86_64"
    machines = dst.machines(arch)
    if machine and machine in machines:
        values: dict[str, t.Any] = {"machine": machine}
        if machine in dst.guests.get(arch, {}).get("deprecated", []):
            return _finding("machine", "warning", host, "Machine type %s is deprecated on %s; it "
                            "still works." % (machine, host), **values)
        return _finding("machine", "ok", host, "%s offers machine type %s." % (host, machine),
                        **values)
    family = (machine or "").rsplit("-", 1)[0]
    close = sorted(m for m in machines if family and m.startswith(family + "-"))
    return _finding(
        "machine", "error", host,
        "Machine type %s (arch %s) of the guest is not available on %s: the machine type is guest "
        "ABI and is never changed for a running guest. Install a QEMU that has it on %s, or "
        "change the machine type while the guest is shut off (a cold change the guest OS sees)."
        % (machine, arch, host, host), machine=machine, available=close or sorted(machines))


def check_emulator(domain_xml_text: str, dst: HostCaps, host: str) -> dict[str, t.Any]:
    """Pre-flight: is the guest's ``<emulator>`` path present on ``host`` (case C07)?

    A different path is not an error: the emulator is not guest ABI, and the migration must be
    given a destination XML with the destination's path (:func:`destination_xml_with_emulator`).
    :returns: finding ``emulator``: ``ok``; ``warning`` with ``values.dst_emulator`` to use; ``error``
        when the destination has no emulator for the arch.
    """
    plat = domain_platform(domain_xml_text)
    arch = plat["arch"] or "x86_64"
    emus = dst.emulators(arch)
    if plat["emulator"] in emus:
        return _finding("emulator", "ok", host, "%s has emulator %s." % (host, plat["emulator"]),
                        emulator=plat["emulator"])
    if not emus:
        return _finding("emulator", "error", host, "%s has no QEMU emulator for arch %s: install "
                        "qemu-system-x86 there." % (host, arch), emulator=plat["emulator"])
    return _finding(
        "emulator", "warning", host,
        "Emulator %s of the guest does not exist on %s; the migration will use a destination XML "
        "with %s (not guest ABI)." % (plat["emulator"], host, emus[0]),
        emulator=plat["emulator"], dst_emulator=emus[0])


def destination_xml_with_emulator(domain_xml_text: str, emulator: str) -> str:
    """The domain XML with ``<devices><emulator>`` set to ``emulator`` (for the migrate call's
    ``VIR_MIGRATE_PARAM_DEST_XML``/``PERSIST_XML``). Nothing else changes."""
    root = _parse(domain_xml_text, "domain XML")
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    emu = devices.find("emulator")
    if emu is None:
        emu = etree.Element("emulator")
        devices.insert(0, emu)
    emu.text = emulator
    return etree.tostring(root, encoding="unicode")


def check_feature_names(domain_xml_text: str, host: str,
                        comparison: CpuComparison | None = None) -> dict[str, t.Any]:
    """Pre-flight: are the guest's CPU feature names spelled the way libvirt knows them (C07)?

    Names in :data:`FEATURE_RENAMES` are reported with their current name (``error`` for a
    running guest: the fix is the ``domain_cpu`` module, effective at the next cold boot);
    names that ``host``'s libvirt rejected in ``comparison`` are reported too.
    """
    cpu = parse_guest_cpu(domain_xml_text)
    renames = {n: FEATURE_RENAMES[n] for n, _p in cpu.features if n in FEATURE_RENAMES}
    unknown = [n for n in (comparison.unknown_features if comparison else []) if n not in renames]
    if not renames and not unknown:
        return _finding("cpu_feature_names", "ok", host, "All CPU feature names are known.")
    parts = []
    if renames:
        parts.append("old feature names %s (now %s)" % (
            ", ".join(sorted(renames)), ", ".join(renames[k] for k in sorted(renames))))
    if unknown:
        parts.append("features unknown to libvirt on %s: %s" % (host, ", ".join(unknown)))
    return _finding(
        "cpu_feature_names", "error", host,
        "The guest CPU uses %s: run kvmops.migration.domain_cpu to rewrite the definition "
        "(effective at the next cold boot)." % "; ".join(parts), renames=renames, unknown=unknown)


# ----------------------------------------------------------------------------------------------
# normalisation


def build_target_cpu(policy: str, baseline_xml: str | None = None, model: str | None = None,
                     features: t.Sequence[str] = ()) -> t.Any:
    """The ``<cpu>`` element a policy asks for, before the group rules of :func:`normalise_cpu`.

    - ``baseline``: ``baseline_xml`` (from :func:`baseline_cpu`) as ``mode='custom'
      match='exact' check='partial'``, model ``fallback='forbid'``, host-specific
      ``<maxphysaddr>`` removed;
    - ``host-model``: ``<cpu mode='host-model' check='partial'/>``;
    - ``model``: ``model`` with ``fallback='forbid'`` and ``features`` required.
    :raises KvmopsError: unknown policy or missing input.
    """
    _require_lxml()
    if policy == "baseline":
        if not baseline_xml:
            raise KvmopsError("Policy 'baseline' needs the group's baseline CPU: give group_uris.")
        src = _parse(baseline_xml, "baseline CPU XML")
        src = src if src.tag == "cpu" else src.find("cpu")
        cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
        for child in src:
            if isinstance(child.tag, str) and child.tag not in ("maxphysaddr",):
                cpu.append(copy.deepcopy(child))
        model_el = cpu.find("model")
        if model_el is None:
            raise KvmopsError("libvirt's baseline CPU has no model.", detail=baseline_xml)
        model_el.set("fallback", "forbid")
        return cpu
    if policy == "host-model":
        return etree.Element("cpu", mode="host-model", check="partial")
    if policy == "model":
        if not model:
            raise KvmopsError("Policy 'model' needs a model name (e.g. EPYC-Rome, "
                              "Cascadelake-Server, qemu64).")
        cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
        etree.SubElement(cpu, "model", fallback="forbid").text = model
        for name in features:
            etree.SubElement(cpu, "feature", policy="require", name=name)
        return cpu
    raise KvmopsError("Unknown CPU policy %r: use one of %s." % (policy, ", ".join(POLICIES)))


def _set_feature(cpu: t.Any, name: str, policy: str) -> None:
    for f in cpu.findall("feature"):
        if f.get("name") == name:
            f.set("policy", policy)
            return
    # libvirt wants <feature> after <model>/<vendor>/<topology> etc.: append at the end of them
    feats = cpu.findall("feature")
    if feats:
        feats[-1].addnext(etree.Element("feature", policy=policy, name=name))
    else:
        cpu.append(etree.Element("feature", policy=policy, name=name))


def normalise_cpu(domain_xml_text: str, target: t.Any, hosts: t.Sequence[HostFacts] = (),
                  disable_features: t.Sequence[str] = (),
                  require_features: t.Sequence[str] = ()) -> NormaliseResult:
    """Put ``target`` (from :func:`build_target_cpu`) into the domain XML, applying the rules:

    1. feature names in :data:`FEATURE_RENAMES` are renamed (also in the two lists);
    2. ``<vendor>`` is dropped unless every host of ``hosts`` has that vendor;
    3. required nested-virt features (:data:`NESTED_FEATURES`, ``vmx-*``) are dropped unless
       every host has them (:meth:`HostFacts.feature_set`);
    4. ``disable_features`` get ``policy='disable'``, then ``require_features``
       ``policy='require'`` (the operator's lists win over rules 2-3);
    5. the guest's ``<topology>``, ``<numa>`` and ``<cache>`` are kept (not CPU model).

    Pure: no libvirt call. ``changed`` compares :func:`canonical_cpu` of old and new.
    """
    root = _parse(domain_xml_text, "domain XML")
    old = root.find("cpu")
    cpu_before = cpu_to_xml(old)
    new = copy.deepcopy(target)
    dropped: list[dict[str, str]] = []
    renamed: dict[str, str] = {}

    for f in new.findall("feature"):
        name = f.get("name")
        if name in FEATURE_RENAMES:
            renamed[name] = FEATURE_RENAMES[name]
            f.set("name", FEATURE_RENAMES[name])
    disable = [FEATURE_RENAMES.get(n, n) for n in disable_features]
    require = [FEATURE_RENAMES.get(n, n) for n in require_features]
    renamed.update({n: FEATURE_RENAMES[n] for n in list(disable_features) + list(require_features)
                    if n in FEATURE_RENAMES})

    vendor_el = new.find("vendor")
    if vendor_el is not None:
        vendor = _text(vendor_el)
        others = sorted({h.uri for h in hosts if h.vendor != vendor})
        if not hosts or others:
            new.remove(vendor_el)
            dropped.append({"item": "vendor %s" % vendor, "reason": (
                "hosts %s have another CPU vendor" % ", ".join(others)) if others else
                "no group given to prove every host has it"})

    feature_sets = [h.feature_set() for h in hosts]
    for f in list(new.findall("feature")):
        name, policy = f.get("name"), f.get("policy", "require")
        if policy not in _REQUIRING_POLICIES or name in require:
            continue
        if name in NESTED_FEATURES or name.startswith("vmx-"):
            lacking = sorted(h.uri for h, have in zip(hosts, feature_sets) if name not in have)
            if not hosts or lacking:
                new.remove(f)
                dropped.append({"item": "feature %s" % name, "reason": (
                    "nested-virtualisation feature missing on %s" % ", ".join(lacking))
                    if lacking else "nested-virtualisation feature; no group given"})

    for name in disable:
        _set_feature(new, name, "disable")
    for name in require:
        _set_feature(new, name, "require")

    if old is not None:
        for tag in ("topology", "numa", "cache"):
            keep = old.find(tag)
            if keep is not None and new.find(tag) is None:
                _insert_before_features(new, copy.deepcopy(keep))
        root.replace(old, new)
    else:
        _insert_cpu(root, new)
    changed = canonical_cpu(old) != canonical_cpu(new) if old is not None else True
    return NormaliseResult(
        xml=etree.tostring(root, pretty_print=True, encoding="unicode"),
        cpu_before=cpu_before, cpu_after=cpu_to_xml(new), changed=changed,
        dropped=dropped, renamed=renamed)


def _insert_before_features(cpu: t.Any, child: t.Any) -> None:
    first = cpu.find("feature")
    if first is not None:
        first.addprevious(child)
    else:
        cpu.append(child)


def _insert_cpu(root: t.Any, cpu: t.Any) -> None:
    """Insert ``<cpu>`` where libvirt prints it: after <features>/<os>/<vcpu>, before <clock>."""
    for tag in ("features", "os", "vcpu", "memory"):
        anchor = root.find(tag)
        if anchor is not None:
            anchor.addnext(cpu)
            return
    root.append(cpu)


def validate_cpu(targets: t.Sequence[tuple[HostFacts, t.Any]], normalised_xml: str,
                 virttype: str) -> list[CpuComparison]:
    """Compare the normalised ``<cpu>`` with every host (``[(facts, conn)]``).

    A host-model CPU cannot be compared (libvirt expands it on the boot host): for it each host
    only has to support host-model for ``virttype``.
    :returns: one :class:`CpuComparison` per host.
    """
    plat = domain_platform(normalised_xml)
    cpu_el = _cpu_element(normalised_xml)
    results = []
    for facts, conn in targets:
        if cpu_el is not None and cpu_el.get("mode") == "host-model":
            ok = facts.domcaps.host_model is not None
            results.append(CpuComparison(
                facts.uri, "superset" if ok else "incompatible",
                msg="%s %s host-model CPUs for virttype %s." % (
                    facts.uri, "supports" if ok else "does not support", virttype)))
            continue
        results.append(compare_cpu(conn, cpu_to_xml(cpu_el), virttype, plat["arch"] or "x86_64",
                                   plat["machine"], host=facts.uri))
    return results


def plan_normalisation(domain_xml_text: str, group: t.Sequence[tuple[str, t.Any]],
                       policy: str = "baseline", virttype: str | None = None,
                       model: str | None = None, features: t.Sequence[str] = (),
                       disable_features: t.Sequence[str] = (),
                       require_features: t.Sequence[str] = ()) -> dict[str, t.Any]:
    """Compute (not write) the normalised definition of a domain for a group of hosts.

    :param group: ``[(uri, conn)]`` of every host in the group, the local one included; the
        first one computes the baseline (:func:`group_baseline`).
    :returns: ``{result: NormaliseResult, hosts: [HostFacts], validation: [CpuComparison],
        baseline: str or None, virttype}``.
    :raises KvmopsError: no hosts, libvirt failures, or a host that cannot run the result
        (message lists every host with its missing features / vendor clash; fix hints).
    """
    if not group:
        raise KvmopsError("No hosts given: group_uris must list every host of the group.")
    plat = domain_platform(domain_xml_text)
    virttype = virttype or plat["virttype"] or "kvm"
    arch = plat["arch"] or "x86_64"
    hosts = [read_host(conn, uri, virttype, arch) for uri, conn in group]
    baseline = None
    if policy == "baseline":
        baseline = group_baseline(group, [host_model_cpu_xml(h) for h in hosts], virttype, arch)
    target = build_target_cpu(policy, baseline, model, features)
    result = normalise_cpu(domain_xml_text, target, hosts, disable_features, require_features)
    validation = validate_cpu(list(zip(hosts, [c for _u, c in group])), result.xml, virttype)
    bad = [v for v in validation if not v.compatible]
    if bad:
        raise KvmopsError(
            "The normalised CPU (policy %s) cannot run on every host of the group: %s Fix: add "
            "the missing features to disable_features, choose an older model, or remove the "
            "host from the group." % (policy, " ".join(v.msg for v in bad)),
            detail="; ".join(v.detail for v in bad if v.detail) or None,
            values={"validation": [v.as_dict() for v in validation],
                    "cpu_after": result.cpu_after})
    return {"result": result, "hosts": hosts, "validation": validation, "baseline": baseline,
            "virttype": virttype}


def restore_cpu(domain_xml_text: str, cpu_xml: str) -> NormaliseResult:
    """Put a saved ``<cpu>`` (``cpu_before`` of an earlier :func:`normalise_cpu`) back into a
    domain XML, as it was: the undo of a normalisation. ``cpu_xml`` empty removes the ``<cpu>``
    (the domain had none). Pure: no libvirt call, no validation (it is the CPU the domain had).

    :raises KvmopsError: ``cpu_xml`` is not a ``<cpu>`` element.
    """
    root = _parse(domain_xml_text, "domain XML")
    old = root.find("cpu")
    new = None
    if (cpu_xml or "").strip():
        new = _parse(cpu_xml, "saved <cpu> element")
        if new.tag != "cpu":
            raise KvmopsError("restore_cpu must be a <cpu> element (cpu_before of the run to undo), "
                              "got <%s>." % new.tag)
    if old is not None and new is not None:
        root.replace(old, new)
    elif old is not None:
        root.remove(old)
    elif new is not None:
        _insert_cpu(root, new)
    if old is None or new is None:
        changed = (old is None) != (new is None)
    else:
        changed = canonical_cpu(old) != canonical_cpu(new)
    return NormaliseResult(
        xml=etree.tostring(root, pretty_print=True, encoding="unicode"),
        cpu_before=cpu_to_xml(old), cpu_after=cpu_to_xml(new), changed=changed,
        dropped=[], renamed={})


# ----------------------------------------------------------------------------------------------
# the domain_cpu module's backend


def run_domain_cpu(params: dict[str, t.Any], check_mode: bool,
                   connect: t.Callable[[str], t.ContextManager[t.Any]] = _libvirt.connection
                   ) -> dict[str, t.Any]:
    """Backend of ``kvmops.migration.domain_cpu``: read, compute, validate, then define.

    :param params: the module's parameters (``uri``, ``domain`` or ``xml``, ``policy``,
        ``model``, ``features``, ``disable_features``, ``require_features``, ``group_uris``,
        ``virttype``; or ``domain`` with ``restore_cpu``: :func:`restore_cpu`, no group needed).
    :param connect: opens a connection for a URI (a context manager); tests pass fakes.
    :returns: the module result ``{changed, cpu_before, cpu_after, cpu, dropped, renamed,
        validation, effective, diff, [domain, state], [xml]}``.
    :raises KvmopsError: lookup/libvirt failures, transient domain, validation failure.

    Relies on ``virDomainGetXMLDesc(VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE)`` (the
    persistent definition with secrets, so that defining it back loses nothing),
    ``virDomainIsPersistent``, ``virDomainGetState`` and ``virDomainDefineXML``. The live CPU
    of a running guest is never touched.
    """
    uri = params.get("uri") or _libvirt.DEFAULT_URI
    restoring = params.get("restore_cpu") is not None
    if restoring and not params.get("domain"):
        raise KvmopsError("restore_cpu needs domain: it writes the saved <cpu> back into that "
                          "domain's persistent definition.")
    group_uris = [] if restoring else (list(dict.fromkeys(params.get("group_uris") or [])) or [uri])
    needed = ([uri] if params.get("domain") else []) + group_uris
    with _libvirt.connections(needed, connect) as conns:
        dom = None
        running = False
        if params.get("domain"):
            local = conns[uri]
            dom = _libvirt.lookup_domain(local, params["domain"])
            with _libvirt.libvirt_errors("read the state of domain %s" % params["domain"], host=uri):
                if not dom.isPersistent():
                    raise KvmopsError(
                        "Domain %s on %s is transient: it has no persistent definition whose CPU "
                        "could be normalised. Define it first (virsh dumpxml | virsh define)."
                        % (params["domain"], uri))
                state = dom.state()[0]
            running = state in (VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED)
            xml = domain_xml(dom, inactive=True, secure=True)
        else:
            xml = params["xml"]
        if restoring:
            plan = {"result": restore_cpu(xml, params["restore_cpu"]), "validation": [], "baseline": None,
                    "virttype": params.get("virttype") or domain_platform(xml)["virttype"]}
        else:
            plan = plan_normalisation(
                xml, [(u, conns[u]) for u in group_uris], policy=params.get("policy") or "baseline",
                virttype=params.get("virttype"), model=params.get("model"),
                features=params.get("features") or (),
                disable_features=params.get("disable_features") or (),
                require_features=params.get("require_features") or ())
        res: NormaliseResult = plan["result"]
        if dom is not None and res.changed and not check_mode:
            with _libvirt.libvirt_errors("define the %s domain %s" % (
                    "restored" if restoring else "normalised", params["domain"]), host=uri):
                local.defineXML(res.xml)
    result: dict[str, t.Any] = {
        "changed": res.changed,
        "cpu_before": res.cpu_before,
        "cpu_after": res.cpu_after,
        "cpu": parse_guest_cpu(res.cpu_after).as_dict() if res.cpu_after else GuestCpu().as_dict(),
        "dropped": res.dropped,
        "renamed": res.renamed,
        "baseline": plan["baseline"],
        "virttype": plan["virttype"],
        "validation": [v.as_dict() for v in plan["validation"]],
        "diff": {"before": res.cpu_before, "after": res.cpu_after,
                 "before_header": "<cpu> before", "after_header": "<cpu> after"},
    }
    if dom is not None:
        result["domain"] = params["domain"]
        result["state"] = "running" if running else "shut off"
        result["effective"] = ("next cold boot" if running else "next start") if res.changed else "unchanged"
    else:
        result["xml"] = res.xml
        result["effective"] = "returned XML only"
    return result
