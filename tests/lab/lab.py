"""The two-host KVM lab of kvmops.migration: ``up`` / ``down`` / ``status`` (idempotent).

Layout (all addresses in 198.18.0.0/24, nothing else is ever used):

    root namespace: bridge kvmlab0 198.18.0.254 (the Ansible controller's side)
      |- veth kl-hosta  -> hosta: eth0 in bridge br-vm, br-vm 198.18.0.1/24
      |- veth kl-hostb  -> hostb: eth0 in bridge br-vm, br-vm 198.18.0.2/24
      '- veth kl-observer -> observer: eth0 198.18.0.3/24 (pings guests)

Each hypervisor host is a network namespace plus a long-lived holder process in its own mount
and UTS namespace, with private /run, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt, /root/.ssh, /etc/hosts and /var/lib/kvmops-migration (nothing shared, as in
the field), its own sshd (key login) and libvirtd (own host_uuid, migration address). Guests on
br-vm share one L2 segment with the controller and the observer, so a guest keeps its address
when it moves. Each host has the same libvirt NAT network ``default`` (198.18.1.0/24, inside
the host only).

Everything lives in the state directory (``$KVMOPS_LAB_DIR``, default /var/lib/kvmops-lab);
``down`` leaves nothing else behind: no processes, mounts, links or namespaces.

Usage: lab.py up [--no-guest] | down [--purge] | status | guest [--recreate] [--no-agent] [--uefi] |
       exec HOST -- CMD... | inventory
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

STATE = os.environ.get("KVMOPS_LAB_DIR", "/var/lib/kvmops-lab")
BRIDGE = "kvmlab0"
BRIDGE_ADDR = "198.18.0.254"
PREFIX = 24
HOSTS = {"hosta": "198.18.0.1", "hostb": "198.18.0.2"}
OBSERVER = ("observer", "198.18.0.3")
GUEST = "migratetest2"
GUEST_IP = "198.18.0.10"
GUEST_MEMORY_MIB = 256
GIB = 1024 ** 3
MIB = 1024 ** 2
GUEST_DISK_BYTES = 10 * GIB
GUEST_WRITTEN = [(0, 64), (2 * 1024, 64), (5 * 1024, 64), (9 * 1024, 64)]  # (offset MiB, MiB)
MANIFEST_DIR = "/var/lib/kvmops-migration"
# one directory of the machine bound into both hosts at this path: storage both hosts see, as
# NFS or a cluster filesystem would be (the shared-storage tests use it; nothing else does)
SHARED_DIR = "/srv/kvmops-shared"
DEFAULT_SUITE = "trixie"  # Debian 13
OLD_SUITE = "bookworm"  # Debian 12: hosta's release with ``up --mixed``
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_PROXY_PORT = 3142
APT_PROXY = "http://%s:%d" % (BRIDGE_ADDR, APT_PROXY_PORT)
PRIVATE_DIRS = {
    # mount point inside the host -> directory name under STATE/<host>/ (bound into the booted
    # host, so that tests read and stage files there from the root namespace)
    "/var/lib/libvirt": "var-lib-libvirt",
    "/var/log/libvirt": "var-log-libvirt",
    "/var/cache/libvirt": "var-cache-libvirt",
    "/root/.ssh": "root-ssh",
    MANIFEST_DIR: "var-lib-kvmops-migration",
}
# button and evdev: the ACPI power button reaches the guest's acpid (virsh shutdown --mode acpi);
# virtio_console: the guest agent's virtio-serial port; pvpanic_mmio: the driver of the ISA pvpanic
# device (ACPI QEMU0001, I/O port 0x505; with its core module pvpanic); efivarfs: the EFI variables
# of a UEFI guest. The RTC (rtc_cmos, hwclock) is built into the Debian cloud kernel.
KERNEL_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "button", "evdev", "virtio_console",
                  "pvpanic_mmio", "efivarfs"]
# bump when build_guest_artifacts() builds a different initramfs: a cached one is then rebuilt
GUEST_RECIPE = 2
# the guest agent (Debian's qemu-guest-agent, its binary and libraries in the initramfs) on this
# virtio-serial port; started by the guest's init only with kvmops.agent=1 on its command line
AGENT_PACKAGE = "qemu-guest-agent"
AGENT_PORT = "org.qemu.guest_agent.0"
LOADER = "/lib64/ld-linux-x86-64.so.2"
# a UEFI guest (``guest --uefi``): Debian's OVMF (package ovmf, installed by the kvm_host role), its
# variables in an NVRAM file per guest, made by libvirt from the template at the first start
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"


# --------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print("lab: %s" % msg, flush=True)


def run(cmd: list[str] | str, check: bool = True, capture: bool = False, input: str | None = None,
        timeout: float | None = 120) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    # never the caller's stdin: a child that sets it non-blocking (QEMU's -serial stdio) and is
    # killed leaves it so, and the next ansible-playbook refuses to start ("Ansible requires
    # blocking IO"); and nothing of the lab reads a terminal
    res = subprocess.run(cmd, input=input, text=True, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL if input is None else None,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None)
    if check and res.returncode != 0:
        err = (res.stderr or "").strip() if capture else ""
        raise SystemExit("lab: command failed (%d): %s %s" % (res.returncode, " ".join(cmd), err))
    return res


def out(cmd: list[str] | str, check: bool = True) -> str:
    return run(cmd, check=check, capture=True).stdout.strip()


def hdir(host: str, *parts: str) -> str:
    return os.path.join(STATE, host, *parts)


def _netns_id(host: str) -> str | None:
    path = "/run/netns/%s" % host
    if not os.path.exists(path):
        return None
    st = os.stat(path)
    return "net:[%d]" % st.st_ino


def in_host(host: str, cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside a booted lab host (all its namespaces), as root logged in there."""
    pid = holder_pid(host)
    if pid is None:
        raise SystemExit("lab: host %s is not up (run: lab.py up)" % host)
    if isinstance(cmd, str):
        cmd = ["/bin/sh", "-c", cmd]
    env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
    return run(["nsenter", "-t", str(pid), "-a", "--"] + env + cmd, **kw)


def in_host_out(host: str, cmd: list[str] | str, check: bool = True) -> str:
    return in_host(host, cmd, check=check, capture=True).stdout.strip()


def netns_exists(name: str) -> bool:
    return os.path.exists("/run/netns/%s" % name)


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(cmd, check=False, capture=True).returncode == 0


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- guest artifacts

def build_guest_artifacts() -> dict[str, str]:
    """Kernel (Debian cloud kernel) and busybox initramfs, built once into STATE/guest."""
    gdir = os.path.join(STATE, "guest")
    kernel = os.path.join(gdir, "vmlinuz")
    initrd = os.path.join(gdir, "initrd.gz")
    init_src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest-init.sh")
    stamp = os.path.join(gdir, "init.sha")
    # what the initramfs is made of: guest-init.sh, the recipe's version and the module list
    init_hash = "%s recipe %d modules %s" % (
        out(["sha256sum", init_src]).split()[0], GUEST_RECIPE, ",".join(KERNEL_MODULES))
    if os.path.exists(kernel) and os.path.exists(initrd) and _read(stamp) == init_hash:
        return {"kernel": kernel, "initrd": initrd}
    os.makedirs(gdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="guest-", dir=gdir)
    try:
        kdeb = _download_kernel(work)
        run(["dpkg-deb", "-x", kdeb, os.path.join(work, "k")])
        kroot = os.path.join(work, "k")
        vmlinuz = [f for f in os.listdir(os.path.join(kroot, "boot")) if f.startswith("vmlinuz-")][0]
        kver = vmlinuz[len("vmlinuz-"):]
        rootfs = os.path.join(work, "rootfs")
        for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib/modules", "etc", "run", "var/log", "usr/sbin"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        os.symlink("../run", os.path.join(rootfs, "var", "run"))
        shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
        agent = _install_agent(work, rootfs)
        with open(init_src) as src, open(os.path.join(rootfs, "init"), "w") as dst:
            dst.write("#!/bin/busybox sh\n" + src.read())
        os.chmod(os.path.join(rootfs, "init"), 0o755)
        moddir = os.path.join(kroot, "lib", "modules", kver)
        run(["depmod", "-b", kroot, kver])
        order = _module_order(moddir, KERNEL_MODULES)
        with open(os.path.join(rootfs, "etc", "modules.order"), "w") as f:
            for rel in order:
                dst = os.path.join(rootfs, "lib", "modules", os.path.basename(rel))
                shutil.copy2(os.path.join(moddir, rel), dst)
                f.write(os.path.basename(rel) + "\n")
        cpio = subprocess.run("cd %s && find . | cpio -o -H newc --quiet | gzip -1 > %s"
                              % (shlex.quote(rootfs), shlex.quote(initrd + ".tmp")), shell=True, check=False)
        if cpio.returncode:
            raise SystemExit("lab: building the initramfs failed")
        shutil.copy2(os.path.join(kroot, "boot", vmlinuz), kernel + ".tmp")
        os.replace(kernel + ".tmp", kernel)
        os.replace(initrd + ".tmp", initrd)
        write(stamp, init_hash)
        log("guest kernel %s and busybox initramfs built (with %s)" % (kver, agent))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"kernel": kernel, "initrd": initrd}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _install_agent(work: str, rootfs: str) -> str:
    """Debian's qemu-ga (the machine's apt candidate of qemu-guest-agent) into ``rootfs`` as
    /usr/sbin/qemu-ga, with every shared library ``ldd`` names (the machine's own; a library the
    machine lacks from the Debian packages qemu-guest-agent depends on) and the loader. Returns
    "qemu-guest-agent VERSION"."""
    deb = _apt_download(AGENT_PACKAGE, os.path.join(work, "agent-deb"))
    root = os.path.join(work, "agent")
    run(["dpkg-deb", "-x", deb, root])
    version = out(["dpkg-deb", "-f", deb, "Version"])
    binary = os.path.join(root, "usr", "sbin", "qemu-ga")
    shutil.copy2(binary, os.path.join(rootfs, "usr", "sbin", "qemu-ga"))
    for name, src in _shared_libs(binary, work).items():
        dst = os.path.join(rootfs, LOADER.lstrip("/") if name == LOADER else os.path.join("lib", "x86_64-linux-gnu", name))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.realpath(src), dst)
    return "%s %s" % (AGENT_PACKAGE, version)


def _shared_libs(binary: str, work: str) -> dict[str, str]:
    """{soname (the loader: its path): file} of what ``binary`` loads, from ``ldd``: the machine's
    libraries; when one is missing, the library packages qemu-guest-agent depends on
    (recursively, but not libc6: the machine's C library goes with its loader) are downloaded into
    a sysroot under ``work`` for what the machine lacks."""
    sysroot = os.path.join(work, "sysroot")
    fetched = False
    machine: dict[str, str] = {}
    while True:
        env = dict(os.environ)
        if fetched:
            env["LD_LIBRARY_PATH"] = ":".join(os.path.join(sysroot, d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
        res = subprocess.run(["ldd", binary], env=env, text=True, capture_output=True, check=False)
        libs: dict[str, str] = {}
        missing = []
        for line in res.stdout.splitlines():
            name, arrow, rest = line.strip().partition(" => ")
            if arrow and rest.startswith("not found"):
                missing.append(name)
            elif arrow and rest.startswith("/"):
                libs[name] = rest.split(" (", 1)[0]
            elif name.startswith("/"):
                libs[LOADER if os.path.basename(name.split(" (", 1)[0]) == os.path.basename(LOADER) else name] = name.split(" (", 1)[0]
        if res.returncode == 0 and not missing and LOADER in libs:
            return {**libs, **machine}
        if fetched or res.returncode:
            raise SystemExit("lab: the guest agent %s needs libraries found neither on this machine nor in the Debian "
                             "packages it depends on: %s (ldd: %s)" % (binary, ", ".join(missing) or "?", res.stderr.strip()))
        deps = out(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                    "--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends", AGENT_PACKAGE])
        machine = libs
        for pkg in sorted({line.strip() for line in deps.splitlines() if line[:1] != " " and line.startswith("lib")} - {"libc6"}):
            run(["dpkg-deb", "-x", _apt_download(pkg, os.path.join(work, "libs-deb", pkg)), sysroot])
        log("the guest agent's libraries %s are not on this machine: taken from their Debian packages" % ", ".join(missing))
        fetched = True


def _apt_download(name: str, work: str) -> str:
    """``apt-get download`` package ``name`` (the apt candidate) into the new directory ``work``
    (an ``apt-get update`` and a retry when it fails); the .deb's path."""
    os.makedirs(work, exist_ok=True)
    res = subprocess.run(["apt-get", "download", "-q", name], cwd=work, text=True, check=False,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if res.returncode:
        run(["apt-get", "update", "-q"])
        res = subprocess.run(["apt-get", "download", "-q", name], cwd=work, text=True, check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    debs = [f for f in os.listdir(work) if f.endswith(".deb")]
    if res.returncode or not debs:
        raise SystemExit("lab: apt-get download %s failed: %s" % (name, res.stdout))
    return os.path.join(work, debs[0])


def _download_kernel(work: str) -> str:
    """``apt-get download`` the package that linux-image-cloud-amd64 depends on."""
    def pkgname() -> str | None:
        deps = out(["apt-cache", "depends", "linux-image-cloud-amd64"], check=False)
        for line in deps.splitlines():
            line = line.strip()
            if line.startswith("Depends: linux-image-"):
                return line.split(": ", 1)[1]
        return None
    name = pkgname()
    if name is None:
        run(["apt-get", "update", "-q"])
        name = pkgname()
    if name is None:
        raise SystemExit("lab: no linux-image-cloud-amd64 in the apt sources")
    return _apt_download(name, os.path.join(work, "kernel-deb"))


def _module_order(moddir: str, wanted: list[str]) -> list[str]:
    """Dependency-ordered relative paths of ``wanted`` modules, from modules.dep."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _sep, rest = line.partition(":")
            deps[mod] = rest.split()
            by_name[os.path.basename(mod).split(".ko")[0].replace("-", "_")] = mod
    result: list[str] = []

    def visit(mod: str) -> None:
        for dep in deps.get(mod, []):
            visit(dep)
        if mod not in result:
            result.append(mod)
    for name in wanted:
        visit(by_name[name])
    return result


# --------------------------------------------------------------------------- accelerator probe

def probe_accelerator(art: dict[str, str]) -> str:
    """'kvm' when the guest kernel boots under KVM here, else 'qemu' (TCG). Cached."""
    cache = os.path.join(STATE, "guest", "accel")
    cached = _read(cache)
    if cached in ("kvm", "qemu"):
        return cached
    accel = "qemu"
    if os.path.exists("/dev/kvm"):
        cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-nodefaults",
               "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", art["kernel"],
               "-initrd", art["initrd"], "-append", "console=ttyS0 kvmops.probe=1 panic=-1"]
        try:
            # stdin from /dev/null: QEMU's -serial stdio sets its stdin non-blocking and, killed
            # at the timeout, would leave the caller's terminal so (issue 14 item 6)
            res = subprocess.run(cmd, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=30, errors="replace", check=False)
            output = res.stdout
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        if "KVMOPS-PROBE-OK" in output:
            accel = "kvm"
    log("accelerator probe: the guest kernel %s" % (
        "boots under KVM: using KVM" if accel == "kvm" else "does not boot under KVM here: using TCG (domain type qemu)"))
    write(cache, accel)
    return accel


# --------------------------------------------------------------------------- network

def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = out(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE])
    if "%s/%d" % (BRIDGE_ADDR, PREFIX) not in addrs:
        run(["ip", "addr", "add", "%s/%d" % (BRIDGE_ADDR, PREFIX), "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def ensure_netns(name: str, addr: str, bridge_inside: bool) -> None:
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    outer = "kl-%s" % name
    if not link_exists(outer):
        run(["ip", "link", "add", outer, "type", "veth", "peer", "name", "kl-%s-in" % name])
        run(["ip", "link", "set", "kl-%s-in" % name, "netns", name])
        run(["ip", "-n", name, "link", "set", "kl-%s-in" % name, "name", "eth0"])
    run(["ip", "link", "set", outer, "master", BRIDGE])
    run(["ip", "link", "set", outer, "up"])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    ifname = "eth0"
    if bridge_inside:
        if not link_exists("br-vm", name):
            run(["ip", "-n", name, "link", "add", "br-vm", "type", "bridge"])
        run(["ip", "-n", name, "link", "set", "eth0", "master", "br-vm"])
        # A bridge without a fixed MAC takes the lowest MAC of its ports: a guest's tap
        # joining it would change the host's MAC and break its neighbours' ARP caches.
        mac = out(
            ["ip", "netns", "exec", name, "cat", "/sys/class/net/eth0/address"])
        run(["ip", "-n", name, "link", "set", "br-vm", "address", mac])
        run(["ip", "-n", name, "link", "set", "br-vm", "up"])
        ifname = "br-vm"
    run(["ip", "-n", name, "link", "set", "eth0", "up"])
    addrs = out(["ip", "-n", name, "-o", "-4", "addr", "show", "dev", ifname])
    if "%s/%d" % (addr, PREFIX) not in addrs:
        run(["ip", "-n", name, "addr", "add", "%s/%d" % (addr, PREFIX), "dev", ifname])


# --------------------------------------------------------------------------- ssh keys

def ensure_keys() -> None:
    """The controller's key and each host's ssh host key (installed into the host's root by
    :func:`ensure_host_root`), and the controller's known_hosts: what a user brings (ssh access
    to their servers). The hosts' own keys and their trust are the kvm_host role's work."""
    keys = os.path.join(STATE, "keys")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    for name, kind in [("controller", "id")] + [(h, "hostkey") for h in HOSTS]:
        path = os.path.join(keys, "%s_%s_ed25519" % (name, kind))
        if not os.path.exists(path):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmops-lab-%s-%s" % (name, kind),
                 "-f", path])
    known = []
    for host, addr in HOSTS.items():
        hk = _read(os.path.join(keys, "%s_hostkey_ed25519.pub" % host)).split()
        known.append("%s,%s %s %s" % (host, addr, hk[0], hk[1]))
    write(os.path.join(STATE, "known_hosts"), "\n".join(known) + "\n", 0o600)


# --------------------------------------------------------------------------- hosts

def host_root(host: str) -> str:
    """The root filesystem of a booted lab host (a Debian server)."""
    return hdir(host, "root")


def suite_of(host: str) -> str:
    """The Debian release of ``host``: trixie (Debian 13), or bookworm (Debian 12) for hosta when
    the lab was brought up with ``--mixed``."""
    return _read(hdir(host, "suite")) or DEFAULT_SUITE


def ensure_apt_proxy() -> None:
    """apt-cacher-ng (Debian's package) on the bridge address in the root namespace: the lab
    hosts' only way to packages. Its cache in STATE/apt-cache outlives ``down``."""
    if _proxy_pid() is not None:
        return
    if shutil.which("apt-cacher-ng") is None and not os.path.exists("/usr/sbin/apt-cacher-ng"):
        raise SystemExit("lab: apt-cacher-ng is missing: run tools/bootstrap.sh (make setup)")
    cache, logs = os.path.join(STATE, "apt-cache"), os.path.join(STATE, "apt-cache-log")
    os.makedirs(cache, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    conf = os.path.join(STATE, "apt-cacher-ng")
    # a configuration of the lab's own: the package's backends name mirrors these machines
    # cannot reach; the Debian archive is fetched from the registry the machine uses
    write(os.path.join(conf, "acng.conf"), textwrap.dedent("""\
        # kvmops lab: the apt proxy of the lab's hosts (tests/lab/lab.py)
        CacheDir: %(cache)s
        LogDir: %(logs)s
        SocketPath: %(conf)s/socket
        PidFile: %(conf)s/pid
        Port: %(port)d
        BindAddress: %(addr)s
        Remap-debrep: file:backends_debian /debian ; file:backends_debian
        ExThreshold: 90
        VerboseLog: 1
        """) % {"cache": cache, "logs": logs, "conf": conf, "port": APT_PROXY_PORT, "addr": BRIDGE_ADDR})
    write(os.path.join(conf, "backends_debian"), DEBIAN_MIRROR + "/\n")
    logf = open(os.path.join(STATE, "apt-cacher-ng.out"), "w")
    proc = subprocess.Popen(["/usr/sbin/apt-cacher-ng", "-c", conf, "ForeGround=1"],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    write(os.path.join(STATE, "apt-cacher-ng.pid"), str(proc.pid))
    import socket
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((BRIDGE_ADDR, APT_PROXY_PORT), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    raise SystemExit("lab: apt-cacher-ng did not start: %s" % _read(os.path.join(STATE, "apt-cacher-ng.out")))


def _proxy_pid() -> int | None:
    try:
        pid = int(_read(os.path.join(STATE, "apt-cacher-ng.pid")) or "")
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if b"apt-cacher-ng" not in f.read():
                return None
        return pid
    except (OSError, ValueError):
        return None


def ensure_base(suite: str) -> str:
    """A minimal Debian ``suite`` root filesystem (debootstrap from the Debian registry, through
    the lab's apt proxy), built once into STATE/base/SUITE: what a freshly installed server has
    (systemd, dbus, sshd, python3, iproute2), nothing of libvirt or QEMU."""
    base = os.path.join(STATE, "base", suite)
    if os.path.exists(os.path.join(base, ".kvmops-base")):
        return base
    tmp = base + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
        raise SystemExit("lab: debootstrap is missing: run tools/bootstrap.sh (make setup)")
    log("building the %s root filesystem of the lab hosts (debootstrap, once)" % suite)
    env = dict(os.environ, http_proxy="http://%s:%d" % (BRIDGE_ADDR, APT_PROXY_PORT))
    res = subprocess.run(["debootstrap", "--variant=minbase",
                          "--include=systemd,systemd-sysv,dbus,openssh-server,python3,iproute2,ca-certificates",
                          suite, tmp, DEBIAN_MIRROR], env=env, text=True, capture_output=True, check=False)
    if res.returncode:
        raise SystemExit("lab: debootstrap %s failed:\n%s" % (suite, (res.stdout + res.stderr)[-3000:]))
    # as an installer leaves it: no machine id yet (set per host), sources of the release
    write(os.path.join(tmp, "etc", "machine-id"), "")
    sources = ["deb %s %s main" % (DEBIAN_MIRROR, suite), "deb %s %s-updates main" % (DEBIAN_MIRROR, suite)]
    write(os.path.join(tmp, "etc", "apt", "sources.list"), "\n".join(sources) + "\n")
    for f in os.listdir(os.path.join(tmp, "etc", "ssh")):
        if f.startswith("ssh_host_"):
            os.unlink(os.path.join(tmp, "etc", "ssh", f))
    write(os.path.join(tmp, ".kvmops-base"), suite + "\n")
    os.replace(tmp, base)
    return base


def ensure_host_root(host: str, addr: str) -> None:
    """The host's own root filesystem, a copy of the base (kept across ``down``/``up``, like a
    server's disk): hostname, machine id, the lab's ssh host key and the controller's key for
    root. Nothing of libvirt: that is the ``kvm_host`` role's work."""
    root = host_root(host)
    suite = suite_of(host)
    if not os.path.exists(os.path.join(root, ".kvmops-host")):
        base = ensure_base(suite)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(hdir(host), exist_ok=True)
        run(["cp", "-a", "--reflink=auto", base, root])
        write(os.path.join(root, "etc", "hostname"), host + "\n")
        write(os.path.join(root, "etc", "machine-id"), uuid.uuid4().hex + "\n", 0o444)
        write(os.path.join(root, "etc", "hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n" % host)
        # no name server: a name that is not in /etc/hosts fails at once instead of timing out
        write(os.path.join(root, "etc", "resolv.conf"), "# kvmops lab: no DNS on the lab network\n")
        write(os.path.join(root, ".kvmops-host"), "%s %s\n" % (host, suite))
    keys = os.path.join(STATE, "keys")
    for ext, mode in (("", 0o600), (".pub", 0o644)):
        shutil.copy2(os.path.join(keys, "%s_hostkey_ed25519%s" % (host, ext)),
                     os.path.join(root, "etc", "ssh", "ssh_host_ed25519_key%s" % ext))
        os.chmod(os.path.join(root, "etc", "ssh", "ssh_host_ed25519_key%s" % ext), mode)
    for sub in PRIVATE_DIRS.values():
        os.makedirs(hdir(host, sub), exist_ok=True)
    os.chmod(hdir(host, "root-ssh"), 0o700)
    # the controller's key for root, as a provisioned server has it (the role adds the peers')
    auth = hdir(host, "root-ssh", "authorized_keys")
    ctl = _read(os.path.join(keys, "controller_id_ed25519.pub"))
    have = (_read(auth) or "").splitlines()
    if ctl not in have:
        write(auth, "\n".join(have + [ctl]) + "\n", 0o600)


def _children(pid: int) -> list[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def holder_pid(host: str) -> int | None:
    """The pid (in the root namespace) of the booted host's systemd (its PID 1), or None."""
    try:
        nspawn = int(_read(hdir(host, "nspawn.pid")) or "")
    except ValueError:
        return None
    try:
        with open("/proc/%d/cmdline" % nspawn, "rb") as f:
            if b"systemd-nspawn" not in f.read():
                return None
    except OSError:
        return None
    # systemd-nspawn -> systemd (or, with some versions, an intermediate nspawn process -> systemd)
    for child in _children(nspawn):
        for grandchild in [child] + _children(child):
            try:
                with open("/proc/%d/comm" % grandchild) as f:
                    if f.read().strip() != "systemd":
                        continue
                # ours: it lives in the host's network namespace
                if os.readlink("/proc/%d/ns/net" % grandchild) == _netns_id(host):
                    return grandchild
            except OSError:
                continue
    return None


def boot_host(host: str) -> int:
    """Boot ``host`` (systemd as PID 1 in its own container, in the host's network namespace)
    unless it runs; wait until systemd reports the system up and sshd answers."""
    pid = holder_pid(host)
    if pid is None:
        binds = ["--bind=%s:%s" % (hdir(host, n), m) for m, n in PRIVATE_DIRS.items()]
        # the host's lab directory at the same path: files the tests hand to the host (XML)
        binds.append("--bind=%s" % hdir(host))
        os.makedirs(os.path.join(STATE, "shared"), exist_ok=True)
        binds.append("--bind=%s:%s" % (os.path.join(STATE, "shared"), SHARED_DIR))
        # KVM, taps for the guests' NICs, and loop devices (tests mount small filesystems over
        # the images directory and use loop devices as block disks)
        loops = ["/dev/loop-control"] + ["/dev/loop%d" % i for i in range(16)]
        for dev in ["/dev/kvm", "/dev/net/tun", "/dev/userfaultfd"] + loops:
            if os.path.exists(dev):
                binds.append("--bind=%s" % dev)
        cmd = ["systemd-nspawn", "-D", host_root(host), "--keep-unit", "--register=no", "-b",
               "--machine=kvmops-%s" % host, "--hostname=%s" % host,
               "--network-namespace-path=/run/netns/%s" % host, "--resolv-conf=off", "--timezone=off",
               "--link-journal=no", "--console=passive", "--capability=all",
               # QEMU's post-copy needs userfaultfd, which nspawn's default filter refuses
               "--system-call-filter=userfaultfd"] + binds
        logf = open(hdir(host, "nspawn.log"), "w")
        # /proc/sys/net writable: libvirt sets bridge and forwarding sysctls of its networks
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="0", SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, env=env)
        write(hdir(host, "nspawn.pid"), str(proc.pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = holder_pid(host)
            if pid is not None:
                break
            if proc.poll() is not None:
                raise SystemExit("lab: %s did not boot:\n%s" % (host, _read(hdir(host, "nspawn.log"))))
            time.sleep(0.2)
        else:
            raise SystemExit("lab: %s did not boot within 60 s" % host)

    def booted() -> bool:
        res = in_host(host, ["systemctl", "is-system-running"], check=False, capture=True)
        return res.stdout.strip() in ("running", "degraded")
    wait_for(booted, "systemd on %s to finish booting" % host, 120)
    return pid


def stop_host(host: str, timeout: float = 120) -> None:
    """Shut ``host`` down as ``poweroff`` would (its guests destroyed first: libvirt-guests would
    wait minutes for guests that ignore ACPI), then make sure nothing of it runs."""
    pid = holder_pid(host)
    if pid is not None:
        res = in_host(host, "command -v virsh >/dev/null && virsh -q list --name || true", check=False, capture=True)
        for name in res.stdout.split():
            in_host(host, ["virsh", "-q", "destroy", name], check=False, capture=True)
        in_host(host, ["systemctl", "poweroff"], check=False, capture=True)
    try:
        nspawn = int(_read(hdir(host, "nspawn.pid")) or "")
    except ValueError:
        nspawn = None
    if nspawn is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and os.path.exists("/proc/%d" % nspawn):
            try:
                with open("/proc/%d/cmdline" % nspawn, "rb") as f:
                    if b"systemd-nspawn" not in f.read():
                        break
            except OSError:
                break
            time.sleep(0.3)
        else:
            if os.path.exists("/proc/%d" % nspawn):
                try:
                    os.kill(nspawn, signal.SIGKILL)
                except OSError:
                    pass
    if os.path.exists(hdir(host, "nspawn.pid")):
        os.unlink(hdir(host, "nspawn.pid"))
    # what the host's kernel held goes with it, as at a real power-off: the devices it made
    # (libvirt's virbr0, guests' taps) and its firewall rules; the lab's own uplink stays
    if netns_exists(host):
        links = out(["ip", "-n", host, "-o", "link", "show"], check=False)
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name and name not in ("lo", "eth0", "br-vm"):
                run(["ip", "-n", host, "link", "del", name], check=False, capture=True)
        run(["ip", "netns", "exec", host, "nft", "flush", "ruleset"], check=False, capture=True)


def reboot_host(host: str) -> None:
    """A restart of the host: poweroff, then boot again (the services that come back are the
    enabled ones)."""
    stop_host(host)
    boot_host(host)
    wait_for(lambda: ssh_ok(HOSTS[host]), "sshd on %s" % host, 60)


def swap_disk(host: str, suite: str) -> None:
    """Give ``host`` the disk of another Debian release, as swapping a server's system disk:
    its root filesystem and private directories are put aside under ``NAME@SUITE`` and those of
    ``suite`` come back if they were kept (prepared as they were), else it starts as a fresh
    install of ``suite``."""
    stop_host(host)
    current = suite_of(host)
    for name in ["root"] + list(PRIVATE_DIRS.values()):
        path = hdir(host, name)
        if os.path.lexists(path):
            shutil.rmtree("%s@%s" % (path, current), ignore_errors=True)
            os.rename(path, "%s@%s" % (path, current))
        if os.path.lexists("%s@%s" % (path, suite)):
            os.rename("%s@%s" % (path, suite), path)
    write(hdir(host, "suite"), suite + "\n")
    log("%s: the disk of Debian %s%s" % (host, suite, "" if os.path.isdir(host_root(host)) else " (a fresh install)"))


def reset_host(host: str) -> None:
    """Back to a freshly installed server: the host is stopped, its root filesystem and its
    private directories are replaced by a new copy of the base."""
    stop_host(host)
    shutil.rmtree(host_root(host), ignore_errors=True)
    for sub in PRIVATE_DIRS.values():
        shutil.rmtree(hdir(host, sub), ignore_errors=True)


def _unit(name: str) -> str:
    return {"sshd": "ssh"}.get(name, name)


def daemon_running(host: str, name: str) -> bool:
    """The systemd unit of ``name`` (sshd, libvirtd, virtqemud) is active on ``host``."""
    res = in_host(host, ["systemctl", "is-active", "--quiet", _unit(name)], check=False, capture=True)
    return res.returncode == 0


LIBVIRTD_UNITS = ["libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket", "libvirtd.service"]
OPTIONAL_SOCKETS = ["libvirtd-tls.socket", "libvirtd-tcp.socket"]
_NO_RESTART = "/run/systemd/system/libvirtd.service.d/kvmops-lab-fault.conf"


def stop_libvirtd(host: str, crash: bool = False) -> None:
    """libvirtd on ``host`` down and staying down (its sockets too, so that no connection starts
    it again): stopped as an operator would, or with ``crash`` killed (SIGKILL, as a crash),
    with systemd's restart of a failed libvirtd held off until :func:`start_daemons`."""
    if crash:
        in_host(host, "mkdir -p %s && printf '[Service]\\nRestart=no\\n' > %s && systemctl daemon-reload"
                % (os.path.dirname(_NO_RESTART), _NO_RESTART))
        in_host(host, ["systemctl", "stop"] + LIBVIRTD_UNITS[:3])
        pid = libvirtd_pid(host)
        if pid:
            in_host(host, ["kill", "-9", str(pid)])
    else:
        in_host(host, ["systemctl", "stop"] + LIBVIRTD_UNITS)
    wait_for(lambda: not daemon_running(host, "libvirtd"), "libvirtd on %s to stop" % host, 30)


def start_daemons(host: str) -> None:
    """Start what a test stopped, as an operator would (systemctl start), and wait for libvirt."""
    in_host(host, ["systemctl", "start", "ssh"], check=False, capture=True)
    res = in_host(host, ["systemctl", "list-unit-files", "--no-legend", "libvirtd.service"], check=False, capture=True)
    if res.stdout.strip():
        in_host(host, "rm -f %s && systemctl daemon-reload && systemctl reset-failed libvirtd.service || true"
                % _NO_RESTART, check=False, capture=True)
        # stopping libvirtd.socket stopped the sockets bound to it (libvirtd-tls.socket, which
        # the kvm_host role enables, and -tcp): those enabled start again with it
        extra = [u for u in OPTIONAL_SOCKETS
                 if in_host(host, ["systemctl", "is-enabled", "--quiet", u], check=False, capture=True).returncode == 0]
        in_host(host, ["systemctl", "start"] + LIBVIRTD_UNITS[:3] + extra + LIBVIRTD_UNITS[3:], check=False,
                capture=True)
        wait_for(lambda: in_host(host, ["virsh", "-q", "uri"], check=False, capture=True).returncode == 0,
                 "libvirtd on %s" % host, 30)


def libvirtd_pid(host: str) -> int | None:
    """The main pid of libvirtd.service inside ``host`` (in its PID namespace), None if it does not run."""
    res = in_host(host, ["systemctl", "show", "-p", "MainPID", "--value", "libvirtd"], check=False, capture=True)
    try:
        pid = int(res.stdout.strip())
    except ValueError:
        return None
    return pid or None


def wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise SystemExit("lab: timed out waiting for %s" % what)


# --------------------------------------------------------------------------- the demo guest

def nvram_path(name: str) -> str:
    """The NVRAM file (EFI variables) of the UEFI lab guest ``name``, inside a host."""
    return "%s/%s_VARS.fd" % (NVRAM_DIR, name)


def guest_xml(accel: str, name: str = GUEST, ip: str = GUEST_IP, mac_suffix: int = 0x10,
              memory_mib: int = GUEST_MEMORY_MIB, disk_format: str = "raw", machine: str = "pc",
              cpu_model: str = "qemu64", agent: bool = True, uefi: bool = False) -> str:
    """``machine``: the machine type as given (libvirt expands ``pc`` to the host QEMU's newest
    i440fx); ``cpu_model``: the custom CPU model (``check='none'``: QEMU starts it with what the
    accelerator can provide); ``agent``: a virtio-serial channel for the guest agent (libvirt
    picks its socket) and ``kvmops.agent=1``, which starts qemu-ga in the guest; ``uefi``: OVMF
    (pflash, read-only code, variables in :func:`nvram_path` made from the template), still
    direct kernel boot (OVMF loads the kernel's EFI stub through fw_cfg)."""
    cpu = "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>%s</model></cpu>" % cpu_model
    firmware = ""
    if uefi:
        firmware = ("<loader readonly='yes' type='pflash'>%s</loader>\n"
                    "            <nvram template='%s'>%s</nvram>\n            " % (OVMF_CODE, OVMF_VARS, nvram_path(name)))
    channel = ""
    if agent:
        channel = "<channel type='unix'><target type='virtio' name='%s'/></channel>\n            " % AGENT_PORT
    return textwrap.dedent("""\
        <domain type='%(accel)s'>
          <name>%(name)s</name>
          <memory unit='MiB'>%(mem)d</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='%(machine)s'>hvm</type>
            %(firmware)s<kernel>/var/lib/libvirt/boot/kvmops-guest-vmlinuz</kernel>
            <initrd>/var/lib/libvirt/boot/kvmops-guest-initrd.gz</initrd>
            <cmdline>console=ttyS0 panic=-1 kvmops.ip=%(ip)s/%(prefix)d%(agent)s</cmdline>
          </os>
          <features><acpi/></features>
          %(cpu)s
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='%(fmt)s' cache='none'/>
              <source file='/var/lib/libvirt/images/%(name)s.%(fmt)s'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <disk type='file' device='disk'>
              <driver name='qemu' type='raw' cache='none'/>
              <source file='/var/lib/libvirt/images/%(name)s.swap'/>
              <target dev='vdb' bus='virtio'/>
            </disk>
            <interface type='network'>
              <mac address='52:54:00:6b:00:%(mac)02x'/>
              <source network='default'/>
              <model type='virtio'/>
            </interface>
            <interface type='bridge'>
              <mac address='52:54:00:6b:01:%(mac)02x'/>
              <source bridge='br-vm'/>
              <model type='virtio'/>
            </interface>
            <serial type='pty'>
              <log file='/var/log/libvirt/qemu/%(name)s-console.log' append='on'/>
              <target port='0'/>
            </serial>
            <console type='pty'><target type='serial' port='0'/></console>
            %(channel)s<panic model='isa'><address type='isa' iobase='0x505'/></panic>
            <memballoon model='none'/>
          </devices>
        </domain>
        """) % {"accel": accel, "name": name, "mem": memory_mib, "ip": ip, "prefix": PREFIX, "fmt": disk_format,
                "cpu": cpu, "mac": mac_suffix, "machine": machine, "firmware": firmware, "channel": channel,
                "agent": " kvmops.agent=1" if agent else ""}


def domain_hosts(name: str) -> dict[str, str]:
    """{host: state} of every lab host where ``name`` is defined."""
    found = {}
    for host in HOSTS:
        res = in_host(host, ["virsh", "-q", "domstate", name], check=False, capture=True)
        if res.returncode == 0:
            found[host] = res.stdout.strip()
    return found


def install_boot_files(art: dict[str, str]) -> None:
    for host in HOSTS:
        boot = hdir(host, "var-lib-libvirt", "boot")
        for src, dst in ((art["kernel"], "kvmops-guest-vmlinuz"), (art["initrd"], "kvmops-guest-initrd.gz")):
            target = os.path.join(boot, dst)
            if _read_bytes_hash(target) != _read_bytes_hash(src):
                shutil.copy2(src, target)


def _read_bytes_hash(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    return out(["sha256sum", path]).split()[0]


def written_regions(written_mib: int) -> list[tuple[int, int]]:
    """(offset MiB, size MiB) regions of random data: ``written_mib`` spread over 4 places."""
    if written_mib == 256:
        return list(GUEST_WRITTEN)
    part = max(1, written_mib // 4)
    return [(i * 2560, part) for i in range(4)]


def create_guest(name: str = GUEST, host: str = "hosta", ip: str = GUEST_IP, mac_suffix: int = 0x10,
                 recreate: bool = False, memory_mib: int = GUEST_MEMORY_MIB, written_mib: int = 256,
                 disk_format: str = "raw", machine: str = "pc", cpu_model: str = "qemu64", agent: bool = True,
                 uefi: bool = False) -> None:
    """Define and start a lab guest on ``host`` unless it already exists in the lab.

    Two 10 GiB disks: the system disk ``NAME.raw`` (or ``NAME.qcow2``) with ``written_mib`` MiB of
    random data written at a few places (sparse), and the empty ``NAME.swap`` (raw). ``agent``
    and ``uefi``: see :func:`guest_xml` (a new UEFI guest starts with the template's variables).
    """
    art = build_guest_artifacts()
    accel = probe_accelerator(art)
    install_boot_files(art)
    where = domain_hosts(name)
    if recreate:
        for h in HOSTS:  # the guest, its images on every host, and what kvmops recorded there
            remove_guest(h, name)
            manifest = hdir(h, PRIVATE_DIRS[MANIFEST_DIR], "manifest.json")
            if os.path.exists(manifest):
                os.unlink(manifest)
        where = {}
    if where:
        for h, state in where.items():
            if state != "running":
                in_host(h, ["virsh", "-q", "start", name], capture=True)
        log("guest %s already in the lab on %s" % (name, ", ".join(sorted(where))))
        return
    for h in HOSTS:  # a new guest starts a new console log: its ticks count from 1 again
        log_path = hdir(h, "var-log-libvirt", "qemu", "%s-console.log" % name)
        if os.path.exists(log_path):
            os.unlink(log_path)
    images = hdir(host, "var-lib-libvirt", "images")
    system = os.path.join(images, "%s.%s" % (name, disk_format))
    swap = os.path.join(images, "%s.swap" % name)
    nvram = hdir(host, "var-lib-libvirt", nvram_path(name)[len("/var/lib/libvirt/"):])
    for path in (system, swap, system + ".tmp", nvram):
        if os.path.exists(path):
            os.unlink(path)  # lab-owned leftovers of a guest that is defined nowhere
    raw = system if disk_format == "raw" else system + ".tmp"
    with open(raw, "wb") as f:
        f.truncate(GUEST_DISK_BYTES)
    # random data written at a few places: a sparse 10 GiB system disk
    for off_mib, size_mib in written_regions(written_mib):
        run(["dd", "if=/dev/urandom", "of=%s" % raw, "bs=1M", "seek=%d" % off_mib,
             "count=%d" % size_mib, "conv=notrunc,fsync", "status=none"])
    if disk_format != "raw":
        run(["qemu-img", "convert", "-f", "raw", "-O", disk_format, raw, system])
        os.unlink(raw)
    with open(swap, "wb") as f:
        f.truncate(GUEST_DISK_BYTES)
    xml = hdir(host, "%s.xml" % name)
    write(xml, guest_xml(accel, name, ip, mac_suffix, memory_mib, disk_format, machine, cpu_model, agent, uefi))
    in_host(host, ["virsh", "-q", "define", xml], capture=True)
    in_host(host, ["virsh", "-q", "start", name], capture=True)
    log("guest %s (%s, machine %s, CPU %s, %s, %s, %d MiB, 10 GiB %s disk with %d MiB written, 10 GiB empty raw "
        "disk) started on %s" % (name, accel, machine, cpu_model, "UEFI (OVMF)" if uefi else "BIOS",
                                 "guest agent" if agent else "no guest agent", memory_mib, disk_format, written_mib, host))


def remove_guest(host: str, name: str) -> None:
    """Destroy and undefine ``name`` on ``host`` if it is there; remove its lab images and its
    NVRAM file (a UEFI guest's variables) there."""
    in_host(host, ["virsh", "-q", "destroy", name], check=False, capture=True)
    in_host(host, ["virsh", "-q", "undefine", "--nvram", name], check=False, capture=True)
    paths = [hdir(host, "var-lib-libvirt", "images", "%s.%s" % (name, ext)) for ext in ("raw", "qcow2", "swap")]
    paths.append(hdir(host, "var-lib-libvirt", nvram_path(name)[len("/var/lib/libvirt/"):]))
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)


def wait_guest_ping(ip: str = GUEST_IP, timeout: float = 90) -> float:
    start = time.monotonic()
    wait_for(lambda: run(["ip", "netns", "exec", OBSERVER[0], "ping", "-c", "1", "-W", "1", ip],
                         check=False, capture=True).returncode == 0, "guest %s to answer ping" % ip, timeout)
    return time.monotonic() - start


# --------------------------------------------------------------------------- inventory

DEFAULT_NETWORK_XML = ("<network><name>default</name><forward mode='nat'/>"
                       "<bridge name='virbr0' stp='on' delay='0'/>"
                       "<ip address='192.168.122.1' netmask='255.255.255.0'>"
                       "<dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>")


def write_inventory() -> str:
    path = os.path.join(STATE, "inventory.yml")
    keys = os.path.join(STATE, "keys")
    ssh_args = ("-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o ControlMaster=auto "
                "-o ControlPersist=120s -o ControlPath=%s/cp-%%C" % (os.path.join(STATE, "known_hosts"), STATE))
    lines = ["# kvmops lab inventory, written by tests/lab/lab.py", "all:", "  children:",
             "    kvm_hosts:", "      hosts:"]
    for host, addr in HOSTS.items():
        lines += ["        %s:" % host, "          ansible_host: %s" % addr]
    lines += ["      vars:",
              "        ansible_user: root",
              "        ansible_python_interpreter: /usr/bin/python3",
              "        ansible_ssh_private_key_file: %s" % os.path.join(keys, "controller_id_ed25519"),
              "        ansible_ssh_common_args: %s" % json.dumps(ssh_args),
              "        ansible_ssh_pipelining: true",
              "        kvmops_lab: true",
              "        # what this site brings: packages through its apt proxy (no internet here)",
              "        kvm_host_apt_proxy: %s" % APT_PROXY,
              "        # the hosts are containers (systemd-nspawn): QEMU gets no cgroups or",
              "        # security driver of its own there",
              "        kvm_host_qemu_conf:",
              "          security_driver: none",
              "          cgroup_controllers: []",
              "        # the guests' NAT network inside each host (Debian's packaged one is defined but",
              "        # not started at boot: the role makes it active and autostarted); their bridge",
              "        # br-vm is the hosts' uplink bridge, made with the host's network",
              "        kvm_host_networks:",
              "          - name: default",
              "            xml: %s" % json.dumps(DEFAULT_NETWORK_XML),
              "        kvm_host_guest_bridges: [br-vm]",
              "        # a pool of its own, not the images directory: a pool there would let libvirt",
              "        # pre-create the images that the collection's tests expect to be missing",
              "        kvm_host_storage_pools:",
              "          - {name: kvmops-test, path: /var/lib/libvirt/kvmops-test-pool}",
              "        migrate_guest_allow_outside_pools: true",
              "        # the group's CA, made once by the role on this controller (kept with the lab's",
              "        # state; `lab.py down --purge` removes it with the hosts that trust it)",
              "        kvm_host_tls_ca_dir: %s" % os.path.join(STATE, "pki")]
    write(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- commands

def cmd_up(args) -> None:
    """Two booted Debian servers (systemd, sshd with the lab's key, python3) on the lab bridge,
    the observer, the apt proxy, the inventory; fresh installs have nothing of libvirt. Unless
    ``--no-guest``: hosts not prepared yet get ``prepare`` (playbooks/prepare_hosts.yml, the
    kvm_host role), then the demo guest."""
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root")
    for tool in ("ip", "nsenter", "systemd-nspawn", "debootstrap", "apt-cacher-ng", "ssh-keygen", "qemu-system-x86_64"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/%s" % tool):
            raise SystemExit("lab: %s is missing: run tools/bootstrap.sh (make setup)" % tool)
    os.makedirs(STATE, exist_ok=True)
    mixed = getattr(args, "mixed", False)
    for host in HOSTS:
        # --mixed: hosta runs Debian 12 (its stock libvirt and QEMU); without it both run
        # Debian 13. Each release keeps its own disk (swap_disk).
        want = OLD_SUITE if (mixed and host == "hosta") else DEFAULT_SUITE
        if suite_of(host) != want:
            swap_disk(host, want)
    ensure_keys()
    ensure_bridge()
    ensure_apt_proxy()
    for host, addr in HOSTS.items():
        ensure_netns(host, addr, bridge_inside=True)
        ensure_host_root(host, addr)
        boot_host(host)
    ensure_netns(OBSERVER[0], OBSERVER[1], bridge_inside=False)
    inv = write_inventory()
    for host, addr in HOSTS.items():
        wait_for(lambda a=addr: ssh_ok(a), "sshd on %s" % host, 60)
    if not args.no_guest:
        if not all(prepared(h) for h in HOSTS):
            cmd_prepare(args)
        create_guest()
        took = wait_guest_ping()
        log("guest %s answers ping from observer at %s (%.1f s)" % (GUEST, GUEST_IP, took))
    log("up: hosts %s, inventory %s" % (", ".join("%s=%s (Debian %s)" % (h, a, suite_of(h)) for h, a in HOSTS.items()), inv))


def prepared(host: str) -> bool:
    """libvirt answers on ``host`` (the kvm_host role ran there)."""
    return holder_pid(host) is not None and in_host(
        host, "command -v virsh >/dev/null && virsh -q uri", check=False, capture=True).returncode == 0


def cmd_prepare(args) -> None:
    """Run playbooks/prepare_hosts.yml on the lab's hosts, as a user does on theirs."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(playbook):
        playbook = "ansible-playbook"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"))
    res = subprocess.run([playbook, "-i", write_inventory(), os.path.join(root, "playbooks", "prepare_hosts.yml")],
                         cwd=root, env=env, check=False)
    if res.returncode:
        raise SystemExit("lab: playbooks/prepare_hosts.yml failed (%d)" % res.returncode)


def cmd_reset(args) -> None:
    """Hosts back to freshly installed servers (new copies of the base root filesystem)."""
    for host in args.hosts or list(HOSTS):
        if host not in HOSTS:
            raise SystemExit("lab: no host %s (hosts: %s)" % (host, ", ".join(HOSTS)))
        reset_host(host)
    log("reset: %s are fresh installs again (run: lab.py up)" % ", ".join(args.hosts or list(HOSTS)))


def cmd_reboot(args) -> None:
    reboot_host(args.host)
    log("%s restarted" % args.host)


def ssh_ok(addr: str) -> bool:
    return run(ssh_cmd(addr, "true"), check=False, capture=True, timeout=15).returncode == 0


def ssh_cmd(addr: str, command: str) -> list[str]:
    return ["ssh", "-i", os.path.join(STATE, "keys", "controller_id_ed25519"), "-o", "BatchMode=yes",
            "-o", "UserKnownHostsFile=%s" % os.path.join(STATE, "known_hosts"), "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", "root@%s" % addr, command]


def cmd_down(args) -> None:
    for host in HOSTS:
        stop_host(host)
    for host in list(HOSTS) + [OBSERVER[0]]:
        if netns_exists(host):
            pids = out(["ip", "netns", "pids", host], check=False).split()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(int(pid), sig)
                    except (OSError, ValueError):
                        pass
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and out(["ip", "netns", "pids", host], check=False):
                    time.sleep(0.1)
                pids = out(["ip", "netns", "pids", host], check=False).split()
                if not pids:
                    break
            run(["ip", "netns", "del", host], check=False, capture=True)
        if link_exists("kl-%s" % host):
            run(["ip", "link", "del", "kl-%s" % host], check=False, capture=True)
    pid = _proxy_pid()
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _proxy_pid() is not None:
            time.sleep(0.1)
        if _proxy_pid() is not None:
            os.kill(pid, signal.SIGKILL)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], check=False, capture=True)
    marker = os.path.join(STATE, "created-manifest-mountpoint")
    if os.path.exists(marker):
        try:
            os.rmdir(MANIFEST_DIR)
        except OSError:
            pass
        os.unlink(marker)
    for f in os.listdir(STATE) if os.path.isdir(STATE) else []:
        if f.startswith("cp-"):
            # Ansible's ssh ControlMaster (ansible.cfg: ControlPersist 300 s) outlives the hosts: ask it to exit
            run(["ssh", "-o", "ControlPath=%s" % os.path.join(STATE, f), "-O", "exit", "lab"],
                check=False, capture=True, timeout=10)
            if os.path.lexists(os.path.join(STATE, f)):
                os.unlink(os.path.join(STATE, f))
    _stop_control_masters()
    if args.purge and os.path.isdir(STATE):
        shutil.rmtree(STATE)
    log("down: nothing of the lab is running%s" % (" and its state is removed" if args.purge else ""))


def _stop_control_masters() -> None:
    """End ssh multiplexers whose control socket is in STATE but already gone (``ssh: PATH
    [mux]``): only the lab's own, found by their socket path."""
    prefix = "ssh: %s/cp-" % STATE
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline.startswith(prefix) and cmdline.endswith("[mux]"):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except OSError:
                pass


def status() -> dict:
    st: dict = {"state_dir": STATE, "bridge": link_exists(BRIDGE), "apt_proxy": _proxy_pid() is not None, "hosts": {}}
    for host, addr in HOSTS.items():
        h = {"address": addr, "netns": netns_exists(host), "booted": holder_pid(host) is not None,
             "debian": suite_of(host)}
        if h["booted"]:
            h["sshd"] = daemon_running(host, "sshd")
            h["libvirt"] = prepared(host)
            h["hostname"] = in_host_out(host, ["hostname"], check=False)
            if h["libvirt"]:
                h["domains"] = in_host_out(host, ["virsh", "-q", "list", "--all"], check=False).splitlines()
            h["ssh"] = ssh_ok(addr)
        st["hosts"][host] = h
    st["observer"] = netns_exists(OBSERVER[0])
    st["up"] = st["bridge"] and st["observer"] and all(
        h.get("booted") and h.get("sshd") and h.get("ssh") for h in st["hosts"].values())
    st["prepared"] = st["up"] and all(h.get("libvirt") for h in st["hosts"].values())
    return st


def cmd_status(args) -> None:
    st = status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print("lab %s (state %s)" % ("UP" if st["up"] else "DOWN", STATE))
        for host, h in st["hosts"].items():
            print("  %-8s %-12s %s" % (host, h["address"], " ".join(
                "%s=%s" % (k, v) for k, v in h.items() if k not in ("address", "domains"))))
            for d in h.get("domains", []):
                print("           %s" % d.strip())
    sys.exit(0 if st["up"] else 1)


def cmd_guest(args) -> None:
    create_guest(name=args.name, host=args.host, ip=args.ip, mac_suffix=args.mac, recreate=args.recreate,
                 memory_mib=args.memory_mib, written_mib=args.written_mib, disk_format=args.format,
                 machine=args.machine, cpu_model=args.cpu_model, agent=not args.no_agent, uefi=args.uefi)
    if args.wait:
        log("guest %s answers ping (%.1f s)" % (args.name, wait_guest_ping(args.ip)))


def shape(rate: str | None) -> None:
    """Shape the lab link: egress of the root-side veth of each host (traffic into the host) to
    ``rate`` (tc tbf, e.g. ``1gbit``), or remove the shaping when ``rate`` is None."""
    for host in HOSTS:
        dev = "kl-%s" % host
        run(["tc", "qdisc", "del", "dev", dev, "root"], check=False, capture=True)
        if rate:
            run(["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "512kb",
                 "latency", "20ms"])
    log("lab link %s" % ("shaped to %s per host" % rate if rate else "unshaped"))


def cmd_shape(args) -> None:
    shape(None if args.off else args.rate)


def cmd_exec(args) -> None:
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if args.host == OBSERVER[0]:
        sys.exit(run(["ip", "netns", "exec", OBSERVER[0]] + cmd, check=False, timeout=None).returncode)
    sys.exit(in_host(args.host, cmd, check=False, timeout=None).returncode)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring the lab up (idempotent)")
    up.add_argument("--no-guest", action="store_true",
                    help="bare hosts only: no prepare_hosts.yml run, no demo guest")
    up.add_argument("--mixed", action="store_true", help="hosta runs Debian 12 (bookworm), hostb Debian 13")
    up.set_defaults(func=cmd_up)
    pr = sub.add_parser("prepare", help="run playbooks/prepare_hosts.yml on the lab's hosts")
    pr.set_defaults(func=cmd_prepare)
    rs = sub.add_parser("reset", help="hosts back to fresh installs (stops them)")
    rs.add_argument("hosts", nargs="*", metavar="HOST", help="hosta, hostb (default: both)")
    rs.set_defaults(func=cmd_reset)
    rb = sub.add_parser("reboot", help="restart a host (poweroff, boot)")
    rb.add_argument("host", choices=sorted(HOSTS))
    rb.set_defaults(func=cmd_reboot)
    down = sub.add_parser("down", help="stop everything of the lab")
    down.add_argument("--purge", action="store_true", help="also remove the state directory")
    down.set_defaults(func=cmd_down)
    stp = sub.add_parser("status", help="what runs (exit 0 when the lab is up)")
    stp.add_argument("--json", action="store_true")
    stp.set_defaults(func=cmd_status)
    g = sub.add_parser("guest", help="create (and start) a lab guest")
    g.add_argument("--name", default=GUEST)
    g.add_argument("--host", default="hosta", choices=sorted(HOSTS))
    g.add_argument("--ip", default=GUEST_IP)
    g.add_argument("--mac", type=lambda s: int(s, 0), default=0x10)
    g.add_argument("--recreate", action="store_true")
    g.add_argument("--memory-mib", type=int, default=GUEST_MEMORY_MIB)
    g.add_argument("--written-mib", type=int, default=256, help="MiB of random data on the system disk")
    g.add_argument("--format", default="raw", choices=["raw", "qcow2"], help="format of the system disk")
    g.add_argument("--machine", default="pc", help="machine type (default pc: the host QEMU's newest i440fx)")
    g.add_argument("--cpu-model", default="qemu64", help="custom CPU model of the guest")
    g.add_argument("--no-agent", action="store_true",
                   help="no guest agent (no virtio-serial channel, qemu-ga not started in the guest)")
    g.add_argument("--uefi", action="store_true",
                   help="UEFI firmware (OVMF, package ovmf on the hosts) with an NVRAM file of the guest's own")
    g.add_argument("--wait", action="store_true")
    g.set_defaults(func=cmd_guest)
    sh = sub.add_parser("shape", help="shape the lab link (tc) like a direct Gigabit link")
    sh.add_argument("--rate", default="1gbit")
    sh.add_argument("--off", action="store_true")
    sh.set_defaults(func=cmd_shape)
    e = sub.add_parser("exec", help="run a command inside a lab host (or observer)")
    e.add_argument("host", choices=sorted(HOSTS) + [OBSERVER[0]])
    e.add_argument("cmd", nargs=argparse.REMAINDER)
    e.set_defaults(func=cmd_exec)
    inv = sub.add_parser("inventory", help="print the inventory path")
    inv.set_defaults(func=lambda a: print(write_inventory()))
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
