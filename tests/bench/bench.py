"""make bench: our migration against raw virsh and against the lab link's limit (issue 9).

Runs in the lab (tests/lab/lab.py), with the lab link shaped to 1 Gbit/s (tc tbf on the
root-side veths) unless --unshaped. Prints one table and writes docs/performance.md.

Measures, side by side in one run:
1. overhead: the same guest (512 MiB RAM, 10 GiB raw disk with 2 GiB written) moved hosta ->
   hostb by (a) hand-made `virsh migrate --live --persistent --undefinesource
   --copy-storage-all` with destination images made by `truncate` and explicit data URIs, and (b)
   `ansible-playbook playbooks/migrate.yml`, alternating, N pairs; median wall-time ratio b/a;
2. bytes: bytes into hostb on the lab link (veth counters) against the source allocation, and the
   destination allocation against the source allocation, for raw and qcow2;
3. the limit: iperf3 between the hosts; migration throughput (bytes on the link / job time);
4. convergence: a guest dirtying memory faster than a 32 MiB/s cap: plain virsh with a timeout,
   ours with auto-converge, ours with post-copy;
5. controller cost: wall time of the playbook's own steps (ansible's profile_tasks);
6. TLS (issue 15): the overhead's moves again with QEMU's native TLS (`virsh migrate --tls`,
   `-e migrate_guest_tls=true`), N more pairs; wall and job time, downtime, throughput against
   iperf3, and the CPU time the source's QEMU process spent during the job (utime + stime of
   /proc/<pid>/stat, sampled every 0.1 s until the process exits), plain against TLS per tool;
7. scale: 4 guests moved one by one (migrate.yml), then evacuated at concurrency 1, 2 and 4, each
   against the summed single moves and against the bytes all of them sent over the iperf3 rate.

Every move except the TLS ones is plain, as `virsh migrate` without `--tls`: the playbook gets
`migrate_guest_tls=false` and `migrate_guest_allow_insecure_transport=true`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import lab  # noqa: E402

VM = "benchvm"
VM_IP = "198.18.0.20"
VM_MAC = 0x20
MIB = 1024 ** 2
GIB = 1024 ** 3
VENV_BIN = os.path.dirname(sys.executable)
#: extra vars of a plain playbook move (as `virsh migrate` without --tls), and of an encrypted one
PLAIN_VARS = {"migrate_guest_tls": "false", "migrate_guest_allow_insecure_transport": True}
TLS_VARS = {"migrate_guest_tls": "true"}
#: what QEMU's native TLS needs on each host (qemu.conf default_tls_x509_cert_dir, kvm_host_tls)
QEMU_PKI = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")
CPU_SAMPLE_S = 0.1


def sh(cmd: list[str], timeout: float = 1800, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, check=False, env=env, cwd=ROOT)
    if check and res.returncode != 0:
        raise SystemExit("bench: %s failed (%d):\n%s\n%s" % (
            " ".join(cmd[:6]), res.returncode, res.stdout[-3000:], res.stderr[-2000:]))
    return res


def link_rx(host: str) -> int:
    """Bytes the lab link delivered into ``host`` (tx of the root-side veth)."""
    with open("/sys/class/net/kl-%s/statistics/tx_bytes" % host) as f:
        return int(f.read())


def alloc(host: str, name: str) -> int:
    return os.stat(lab.hdir(host, "var-lib-libvirt", "images", name)).st_blocks * 512


def jobinfo(host: str, name: str = VM) -> dict:
    """``virsh domjobinfo --completed`` on the destination, as numbers."""
    out = lab.in_host_out(host, ["virsh", "domjobinfo", "--completed", "--keep-completed", name], check=False)
    vals = {}
    for line in out.splitlines():
        key, _sep, val = line.partition(":")
        m = re.match(r"\s*([\d.]+)\s*(\S*)", val)
        if not m:
            continue
        num, unit = float(m.group(1)), m.group(2)
        mult = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": GIB, "ms": 1}.get(unit, 1)
        vals[key.strip()] = num * mult
    return vals


def fresh_guest(fmt: str = "raw", written_mib: int = 2048, memory_mib: int = 512) -> None:
    for host in lab.HOSTS:
        for ext in ("raw", "qcow2", "swap"):
            path = lab.hdir(host, "var-lib-libvirt", "images", "%s.%s" % (VM, ext))
            if os.path.exists(path) and lab.in_host(host, ["virsh", "-q", "domstate", VM], check=False,
                                                    capture=True).returncode != 0:
                os.unlink(path)
    lab.create_guest(name=VM, ip=VM_IP, mac_suffix=VM_MAC, recreate=True, memory_mib=memory_mib,
                     written_mib=written_mib, disk_format=fmt)
    lab.wait_guest_ping(VM_IP, timeout=60)
    manifest = os.path.join(lab.hdir("hostb", "var-lib-kvmops-migration"), "manifest.json")
    if os.path.exists(manifest):
        os.unlink(manifest)


def src_alloc(fmt: str) -> dict:
    return {"system": alloc("hosta", "%s.%s" % (VM, fmt)), "swap": alloc("hosta", "%s.swap" % VM)}


def dst_alloc(fmt: str) -> dict:
    return {"system": alloc("hostb", "%s.%s" % (VM, fmt)), "swap": alloc("hostb", "%s.swap" % VM)}


def stat_ticks(text: str) -> tuple[str, int]:
    """``/proc/<pid>/stat`` (or a task's): its comm and utime + stime, in clock ticks."""
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return comm, int(fields[11]) + int(fields[12])


def is_vcpu_thread(comm: str) -> bool:
    """QEMU's vCPU threads are named ``CPU <n>/TCG`` or ``CPU <n>/KVM`` (libvirt: debug-threads=on)."""
    return re.match(r"^CPU \d+/", comm) is not None


def innermost_nspid(status: str) -> int | None:
    """The pid in the innermost pid namespace, from the ``NSpid:`` line of ``/proc/<pid>/status``."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def qemu_pid(host: str, name: str = VM) -> int | None:
    """The pid, in this (the root) namespace, of the QEMU process of guest ``name`` on ``host``."""
    holder = lab.holder_pid(host)
    if holder is None:
        return None
    try:
        with open("/proc/%d/root/run/libvirt/qemu/%s.pid" % (holder, name)) as f:
            inner = int(f.read().strip())
        pidns = os.readlink("/proc/%d/ns/pid" % holder)
    except (OSError, ValueError):
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/ns/pid" % entry) != pidns:
                continue
            with open("/proc/%s/status" % entry) as f:
                if innermost_nspid(f.read()) == inner:
                    return int(entry)
        except (OSError, ValueError):
            continue
    return None


class CpuSampler(threading.Thread):
    """CPU time of one process (utime + stime of /proc/<pid>/stat, all its threads, the ones
    that ended included) every CPU_SAMPLE_S until it exits or stop() is called. ``samples``:
    (monotonic time, process ticks, ticks of its vCPU threads so far)."""

    def __init__(self, pid: int | None):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self.exited = False
        self._halt = threading.Event()
        self._vcpu: dict[str, int] = {}

    def sample(self) -> bool:
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                _comm, total = stat_ticks(f.read())
            tasks = os.listdir("/proc/%d/task" % self.pid)
        except OSError:
            return False
        for tid in tasks:
            try:
                with open("/proc/%d/task/%s/stat" % (self.pid, tid)) as f:
                    comm, ticks = stat_ticks(f.read())
            except (OSError, ValueError):
                continue
            if is_vcpu_thread(comm):
                # a thread's ticks only grow; a thread that ended keeps its last figure
                self._vcpu[tid] = max(ticks, self._vcpu.get(tid, 0))
        if self.samples:
            # the process's ticks only grow too (whatever an exiting process reports)
            total = max(total, self.samples[-1][1])
        self.samples.append((time.monotonic(), total, sum(self._vcpu.values())))
        return True

    def run(self) -> None:
        if self.pid is None:
            return
        while True:
            if not self.sample():
                self.exited = True
                return
            if self._halt.wait(CPU_SAMPLE_S):
                break
        # stopped: one last look
        if not self.sample():
            self.exited = True

    def stop(self, wait_exit: float = 0) -> dict:
        """Stop sampling, after waiting up to ``wait_exit`` s for the process to exit by itself
        (after a completed move libvirt ends the source's QEMU as the command returns)."""
        if wait_exit:
            self.join(timeout=wait_exit)
        self._halt.set()
        self.join(timeout=10)
        return {"pid": self.pid, "exited": self.exited, "samples": self.samples}


def ticks_at(samples: list, when: float) -> tuple[float, float]:
    """(process ticks, vCPU ticks) at monotonic time ``when``, linear between two samples; the
    first sample before it, the last after it."""
    if when <= samples[0][0]:
        return float(samples[0][1]), float(samples[0][2])
    for (t0, a0, v0), (t1, a1, v1) in zip(samples, samples[1:]):
        if t0 <= when <= t1:
            k = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
            return a0 + k * (a1 - a0), v0 + k * (v1 - v0)
    return float(samples[-1][1]), float(samples[-1][2])


def move_cpu(sampled: dict, job_s: float, clk_tck: int) -> dict | None:
    """CPU seconds of the source's QEMU process during the migration job: the last ``job_s``
    seconds before it exited (it exits when the move completes), and of them the vCPU threads'
    and the rest (the migration thread, the disks' NBD mirror, the main loop, TLS). None when
    the process did not exit (the move failed) or fewer than two samples were taken."""
    samples = sampled.get("samples") or []
    if not sampled.get("exited") or len(samples) < 2 or not job_s or job_s <= 0:
        return None
    end = samples[-1][0]
    total0, vcpu0 = ticks_at(samples, end - job_s)
    cpu_s = (samples[-1][1] - total0) / clk_tck
    vcpu_s = (samples[-1][2] - vcpu0) / clk_tck
    return {"cpu_s": cpu_s, "vcpu_s": vcpu_s, "other_s": cpu_s - vcpu_s,
            "core_pct": 100.0 * cpu_s / job_s, "window_s": job_s,
            "sampled_s": end - samples[0][0], "samples": len(samples)}


def start_cpu(host: str = "hosta") -> CpuSampler:
    sampler = CpuSampler(qemu_pid(host))
    if sampler.pid is None:
        print("bench: no QEMU process of %s found on %s: no CPU figure for this move" % (VM, host), flush=True)
    else:
        sampler.sample()
    sampler.start()
    return sampler


def finish(out: dict, sampler: CpuSampler) -> dict:
    """The move's completed job statistics, allocations and source CPU into ``out``."""
    sampled = sampler.stop(wait_exit=10 if out["ok"] else 0)
    if out["ok"]:
        out.update(job=jobinfo("hostb"), dst_alloc=dst_alloc(out["fmt"]))
        out["cpu"] = move_cpu(sampled, out["job"].get("Time elapsed", 0) / 1000, os.sysconf("SC_CLK_TCK"))
    return out


def run_virsh(fmt: str = "raw", extra: list[str] | None = None, timeout: float = 1800, tls: bool = False) -> dict:
    """(a): hand-made virsh migrate with truncate-made images and explicit data URIs (``--tls``:
    QEMU's native TLS for the memory and disk streams)."""
    size = str(10 * GIB)
    for name in ("%s.%s" % (VM, fmt), "%s.swap" % VM):
        if fmt == "qcow2" and name.endswith("qcow2"):
            lab.in_host("hostb", ["qemu-img", "create", "-q", "-f", "qcow2", "/var/lib/libvirt/images/" + name, size])
        else:
            lab.in_host("hostb", ["truncate", "-s", size, "/var/lib/libvirt/images/" + name])
    dest = lab.HOSTS["hostb"]
    cmd = (["virsh", "migrate", "--live", "--persistent", "--undefinesource", "--copy-storage-all"]
           + (["--tls"] if tls else [])
           + [VM, "qemu+ssh://root@%s/system" % dest, "--migrateuri", "tcp://%s" % dest,
              "--disks-uri", "tcp://%s" % dest] + (extra or []))
    before = (src_alloc(fmt), link_rx("hostb"))
    sampler = start_cpu()
    start = time.monotonic()
    res = lab.in_host("hosta", cmd, check=False, capture=True, timeout=timeout)
    wall = time.monotonic() - start
    out = {"wall_s": wall, "ok": res.returncode == 0, "error": res.stderr.strip()[-300:],
           "link_bytes": link_rx("hostb") - before[1], "src_alloc": before[0], "fmt": fmt, "tls": tls}
    return finish(out, sampler)


def playbook(name: str, evars: dict, timeout: float, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``ansible-playbook [ARGS] playbooks/NAME -e EVARS`` from the checkout against the lab
    inventory (an absolute NAME is used as it is)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", **env)
    return sh([os.path.join(VENV_BIN, "ansible-playbook"), *args, "-i", os.path.join(lab.STATE, "inventory.yml"),
               os.path.join("playbooks", name), "-e", json.dumps(evars)], timeout=timeout, check=False, env=env)


def run_ours(fmt: str = "raw", extra_vars: dict | None = None, timeout: float = 1800, tls: bool = False) -> dict:
    """(b): ansible-playbook playbooks/migrate.yml, with per-task timings (profile_tasks); plain
    unless ``tls``."""
    evars = {"vm": VM, "dest": "hostb"}
    evars.update(TLS_VARS if tls else PLAIN_VARS)
    evars.update(extra_vars or {})
    before = (src_alloc(fmt), link_rx("hostb"))
    sampler = start_cpu()
    start = time.monotonic()
    res = playbook("migrate.yml", evars, timeout, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                   PROFILE_TASKS_SORT_ORDER="none", PROFILE_TASKS_TASK_OUTPUT_LIMIT="all")
    wall = time.monotonic() - start
    out = {"wall_s": wall, "ok": res.returncode == 0, "error": (res.stdout + res.stderr)[-600:] if res.returncode else "",
           "link_bytes": link_rx("hostb") - before[1], "src_alloc": before[0], "tasks": task_times(res.stdout),
           "fmt": fmt, "tls": tls, "health_watched_s": health_watched_s(res.stdout),
           "forecast": forecast_of(res.stdout)}
    return finish(out, sampler)


def task_times(stdout: str) -> list[tuple[str, float]]:
    """profile_tasks' closing table: (task name, seconds)."""
    times = []
    for line in stdout.splitlines():
        m = re.match(r"^(.*?)\s-+\s([\d.]+)s\s*$", line.strip())
        if m:
            times.append((m.group(1).strip(), float(m.group(2))))
    return times


def forecast_of(stdout: str) -> dict | None:
    """The summary's forecast line (issue 19): ``{total_s, actual_s, error_pct, converges}``
    (``total_s`` None when the forecast said pre-copy does not converge, with its ``lever``);
    None without the line."""
    m = re.search(r"forecast beside actual: ([\d.]+) s / ([\d.]+) s \(([+-]?\d+) %\)", stdout)
    if m:
        return {"total_s": float(m.group(1)), "actual_s": float(m.group(2)), "error_pct": float(m.group(3)),
                "converges": True}
    m = re.search(r"forecast: does not converge \((\S+) recommended\); actual: ([\d.]+) s", stdout)
    if m:
        return {"total_s": None, "actual_s": float(m.group(2)), "error_pct": None, "converges": False,
                "lever": m.group(1)}
    return None


def forecast_rows(r: dict) -> list[str]:
    """Issue 19: the forecast beside the actual move for every workload of ours (medians of the
    completed runs; target: total time within +-25 %, the convergence verdict right)."""
    workloads = [("idle, 2 GiB written, plain", [p["ours"] for p in r.get("pairs", [])], True),
                 ("idle, 512 MiB written, plain", [p["ours"] for p in r.get("small_pairs", [])], True),
                 ("idle, 2 GiB written, TLS", [p["ours"] for p in r.get("tls_pairs", [])], True),
                 ("qcow2, 2 GiB written", [r["qcow2_ours"]] if r.get("qcow2_ours") else [], True)]
    for name, run in (r.get("convergence") or {}).items():
        if name.startswith("ours"):
            # 64 MiB/s dirtied against a 32 MiB/s cap: plain pre-copy does not converge
            workloads.append(("dirtying 64 MiB/s, cap 32 MiB/s (%s)" % name[5:], [run], False))
    rows = ["| workload | runs | forecast s | actual s | error % (median, worst) | forecast: converges | right |",
            "|---|---|---|---|---|---|---|"]
    for label, runs, converges in workloads:
        fcs = [x["forecast"] for x in runs if x.get("ok") and x.get("forecast")]
        if not fcs:
            rows.append("| %s | 0 | - | - | - | - | - |" % label)
            continue
        errs = [f["error_pct"] for f in fcs if f["error_pct"] is not None]
        said = {f["converges"] for f in fcs}
        rows.append("| %s | %d | %s | %.1f | %s | %s | %s |" % (
            label, len(fcs),
            _f(statistics.median([f["total_s"] for f in fcs if f["total_s"] is not None]) if errs else None),
            statistics.median([f["actual_s"] for f in fcs]),
            "%+.0f, %+.0f" % (statistics.median(errs), max(errs, key=abs)) if errs else "-",
            "/".join("yes" if v else "no (%s)" % fcs[0].get("lever") for v in sorted(said)),
            "yes" if said == {converges} else "NO"))
    return rows


def health_watched_s(stdout: str) -> float | None:
    """The seconds the guest was watched after the switch-over, from the summary's health line
    (``guest on hostb: healthy 0.1 s after the switch-over, watched 2.1 s ...``)."""
    m = re.search(r"watched ([\d.]+) s", stdout)
    return float(m.group(1)) if m else None


def overhead_split(run: dict) -> dict | None:
    """Where our wall time beyond the migration job goes, from one run's profile_tasks times (in
    the order the tasks ran): ``before`` the job (every task before "Migrate the guest"),
    ``start`` (that task: async_wrapper's start), ``wait_beyond_job`` ("Wait for the move" minus
    the job's own time: the module's start and end, the wait's last poll), ``after`` (every task
    after the wait) and ``startup_teardown`` (the wall time outside every task: ansible-playbook's
    start, inventory, role loading, teardown). Seconds; None for a failed run or one without the
    two tasks."""
    tasks = run.get("tasks") or []
    names = [n for n, dummy in tasks]
    i_start = next((i for i, n in enumerate(names) if "Migrate the guest" in n), None)
    i_wait = next((i for i, n in enumerate(names) if "Wait for the move" in n), None)
    if not run.get("ok") or i_start is None or i_wait is None:
        return None
    job_s = run.get("job", {}).get("Time elapsed", 0) / 1000
    secs = [t for dummy, t in tasks]
    health = run.get("health_watched_s") or 0.0
    return {"before": sum(secs[:i_start]), "start": sum(secs[i_start:i_wait]),
            "wait_beyond_job": secs[i_wait] - job_s - health, "health_window": health,
            "after": sum(secs[i_wait + 1:]), "startup_teardown": run["wall_s"] - sum(secs), "job_s": job_s}


def remote_commands(stdout: str) -> dict:
    """Remote commands of one ``ansible-playbook -vvv`` run: every ``SSH: EXEC`` line is one
    command on a host (a pipelined module, a ``raw``, async_wrapper's file transfers and steps).
    ``total`` and ``during_job``: those of the task "Wait for the move" (its polls)."""
    total = during = 0
    in_wait = False
    for line in stdout.splitlines():
        if line.startswith("TASK ["):
            in_wait = "Wait for the move" in line
        elif "SSH: EXEC" in line:
            total += 1
            during += in_wait
    return {"total": total, "during_job": during, "outside_job": total - during}


def floor_run() -> float:
    """ansible-playbook running one trivial task on hostb (``ansible.builtin.command: "true"``),
    with the same configuration and inventory: the least a playbook costs; seconds of wall time."""
    path = os.path.join(ROOT, ".cache", "bench-floor.yml")
    with open(path, "w") as f:
        f.write("- name: Floor\n  hosts: hostb\n  gather_facts: false\n  tasks:\n"
                "    - name: One trivial task\n      ansible.builtin.command: 'true'\n      changed_when: false\n")
    start = time.monotonic()
    res = playbook(path, {}, 120)
    if res.returncode != 0:
        raise SystemExit("bench: the floor's one-task playbook failed:\n%s" % (res.stdout + res.stderr)[-2000:])
    return time.monotonic() - start


SMALL_WRITTEN_MIB = 512


def check_mode_run() -> dict:
    """``migrate.yml --check`` of a fresh guest: the plan with every check, nothing changed."""
    fresh_guest()
    start = time.monotonic()
    res = playbook("migrate.yml", dict({"vm": VM, "dest": "hostb"}, **PLAIN_VARS), 600, "--check")
    wall = time.monotonic() - start
    moved = lab.in_host("hostb", ["virsh", "-q", "domstate", VM], check=False, capture=True).returncode == 0
    return {"wall_s": wall, "ok": res.returncode == 0 and not moved,
            "error": "" if res.returncode == 0 else (res.stdout + res.stderr)[-300:]}


def preflight_failure_run() -> dict:
    """A move the pre-flight refuses (``migrate_guest_tls=false`` without
    ``migrate_guest_allow_insecure_transport``): the pre-flight, the rollback and the failure
    report; ``ok`` when it failed for that reason and the guest still runs on hosta."""
    fresh_guest()
    start = time.monotonic()
    res = playbook("migrate.yml", {"vm": VM, "dest": "hostb", "migrate_guest_tls": "false"}, 600)
    wall = time.monotonic() - start
    still = lab.in_host("hosta", ["virsh", "-q", "domstate", VM], check=False, capture=True).stdout.strip()
    return {"wall_s": wall, "ok": res.returncode != 0 and "unencrypted" in res.stdout and still == "running",
            "error": "" if res.returncode != 0 else "the move was not refused"}


def count_run() -> dict:
    """One untimed move of ours with ``-vvv`` (the same guest and variables as the overhead's
    runs) whose remote commands are counted (:func:`remote_commands`); ``ok`` says it moved."""
    fresh_guest()
    res = playbook("migrate.yml", dict({"vm": VM, "dest": "hostb"}, **PLAIN_VARS), 1800, "-vvv")
    return dict(remote_commands(res.stdout), ok=res.returncode == 0)


def iperf() -> float:
    """Mbit/s from hosta to hostb over the lab link (iperf3, 5 s)."""
    server = subprocess.Popen(["nsenter", "-t", str(lab.holder_pid("hostb")), "-n", "iperf3", "-s", "-1",
                               "-B", lab.HOSTS["hostb"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    # the client, like the server, is the controller's iperf3 in the host's network namespace:
    # the lab's hosts are servers as the kvm_host role leaves them, without iperf3
    try:
        out = subprocess.run(["nsenter", "-t", str(lab.holder_pid("hosta")), "-n", "iperf3", "-c", lab.HOSTS["hostb"],
                              "-t", "5", "-J"], text=True, capture_output=True, timeout=60, check=True).stdout
    finally:
        if server.poll() is None:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def missing_pki() -> list[str]:
    """The files of QEMU's native TLS missing on the lab's hosts (the kvm_host role writes them
    with kvm_host_tls: true)."""
    missing = []
    for host in lab.HOSTS:
        holder = lab.holder_pid(host)
        if holder is None:
            missing.append("%s (not up)" % host)
            continue
        for name in QEMU_PKI:
            if not os.path.exists("/proc/%d/root/etc/pki/qemu/%s" % (holder, name)):
                missing.append("%s:/etc/pki/qemu/%s" % (host, name))
    return missing


def role_has_tls() -> bool:
    """The checkout's migrate_guest role declares ``migrate_guest_tls`` (else the playbook would
    ignore it and move plain where the bench says TLS)."""
    with open(os.path.join(ROOT, "roles", "migrate_guest", "meta", "argument_specs.yml")) as f:
        return re.search(r"^\s+migrate_guest_tls:", f.read(), re.M) is not None


def parse_openssl_speed(text: str) -> float | None:
    """Bytes per second of the last ``+F:`` line of ``openssl speed -mr`` (its largest block)."""
    rate = None
    for line in text.splitlines():
        if line.startswith("+F:"):
            rate = float(line.rsplit(":", 1)[1])
    return rate


def cipher_speed() -> dict | None:
    """AES-256-GCM (the cipher GnuTLS, QEMU's TLS, prefers) on one core of this machine, the one
    the lab's hosts run on: ``openssl speed`` with 16 KiB blocks (TLS records), 2 s."""
    try:
        res = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "2", "-mr"],
                             text=True, capture_output=True, timeout=120, check=False)
        version = subprocess.run(["openssl", "version"], text=True, capture_output=True, timeout=10,
                                 check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    rate = parse_openssl_speed(res.stdout)
    if rate is None:
        return None
    return {"cipher": "AES-256-GCM", "bytes_per_s": rate, "tool": version or "openssl"}


def dirty_memory(mib_per_s: int) -> None:
    """Start a loop in the guest that keeps rewriting a file of ``mib_per_s`` MiB in its /tmp
    (the guest's root is in its RAM; it has no /dev/shm) with new data: each pass copies a
    window of a pool of random data half as large again, shifted by 1 MiB from the last pass,
    so every page changes content each pass (about 0.1 s per pass under TCG): about
    ``mib_per_s`` MiB of distinct pages dirtied in any second, which QEMU cannot send as zero
    pages and its page sampling sees (a rewrite with the same data would dirty the pages for
    migration but not for the sampling, the only dirty-rate measurement without KVM)."""
    pool = mib_per_s + mib_per_s // 2
    cmd = ("(cd /tmp && dd if=/dev/urandom of=kvb-pool bs=1M count=%d 2>/dev/null && "
           "dd if=kvb-pool of=kvb-x bs=1M count=%d 2>/dev/null && i=0 && "
           "while :; do dd if=kvb-pool of=kvb-x bs=1M count=%d skip=$i conv=notrunc 2>/dev/null; "
           "i=$(( (i + 1) %% %d )); done) </dev/null >/dev/null 2>&1 &\n"
           % (pool, mib_per_s, mib_per_s, pool - mib_per_s + 1))
    lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "2", VM_IP, "2323"],
            input=cmd, check=False, capture=True)
    time.sleep(4)


SCALE_VMS = [("scale%d" % i, "198.18.0.%d" % (30 + i), 0x30 + i) for i in range(4)]


def scale_guests() -> None:
    """Four small guests (256 MiB, 10 GiB raw with 256 MiB written) on hosta, none on hostb."""
    for name, ip, mac in SCALE_VMS:
        remove_vm(name)
        lab.create_guest(name=name, ip=ip, mac_suffix=mac, recreate=True, memory_mib=256, written_mib=256)
    for _name, ip, _mac in SCALE_VMS:
        lab.wait_guest_ping(ip, timeout=120)
    manifest = os.path.join(lab.hdir("hostb", "var-lib-kvmops-migration"), "manifest.json")
    if os.path.exists(manifest):
        os.unlink(manifest)


def run_evacuate(concurrency: int) -> dict:
    """playbooks/evacuate.yml of hosta, only the scale guests, ``concurrency`` at a time."""
    evars = {"host": "hosta", "concurrency": concurrency, "include": [n for n, _i, _m in SCALE_VMS]}
    evars.update(PLAIN_VARS)
    rx0 = link_rx("hostb")
    start = time.monotonic()
    res = playbook("evacuate.yml", evars, 1800)
    wall = time.monotonic() - start
    link_bytes = link_rx("hostb") - rx0
    moved = [n for n, _i, _m in SCALE_VMS
             if lab.in_host("hostb", ["virsh", "-q", "domstate", n], check=False, capture=True).stdout.strip() == "running"]
    return {"wall_s": wall, "ok": res.returncode == 0 and len(moved) == len(SCALE_VMS), "moved": moved,
            "link_bytes": link_bytes, "error": (res.stdout + res.stderr)[-600:] if res.returncode else ""}


def run_single(name: str) -> dict:
    """One scale guest moved alone with migrate.yml."""
    rx0 = link_rx("hostb")
    start = time.monotonic()
    res = playbook("migrate.yml", dict(PLAIN_VARS, vm=name, dest="hostb"), 900)
    return {"wall_s": time.monotonic() - start, "ok": res.returncode == 0, "link_bytes": link_rx("hostb") - rx0}


def link_bound_s(link_bytes: float | None, iperf_mbit_s: float | None) -> float | None:
    """The least time ``link_bytes`` take over a link that carries ``iperf_mbit_s`` (iperf3,
    Mbit/s): the bound no concurrency beats; None without either figure."""
    if not link_bytes or not iperf_mbit_s:
        return None
    return float(link_bytes) * 8 / (float(iperf_mbit_s) * 1e6)


def scale_rows(sc: dict, iperf_mbit_s: float | None) -> list[str]:
    """The Scale table: the 4 single moves summed, then evacuate.yml at each concurrency, each
    against the summed singles and against the sum-of-bytes-over-link bound (the bytes all the
    guests sent on the link, as the summed singles measured them, over the iperf3 rate)."""
    singles = sc.get("singles", {})
    total = sum(v["wall_s"] for v in singles.values())
    single_bytes = sum(v.get("link_bytes") or 0 for v in singles.values()) or None
    bound = link_bound_s(single_bytes, iperf_mbit_s)

    def over(wall: float, base: float | None) -> str:
        return "%.2f" % (wall / base) if base else "-"

    rows = ["| run | ok | wall s | against the sum of single moves | link GiB | bytes/link bound s | against the bound |",
            "|---|---|---|---|---|---|---|",
            "| 4 single moves (migrate.yml each), summed | %s | %.1f | 1.00 | %s | %s | %s |" % (
                "yes" if singles and all(v["ok"] for v in singles.values()) else "no", total,
                "%.2f" % (single_bytes / GIB) if single_bytes else "-", fmt_s(bound) if bound else "-",
                over(total, bound))]
    for c in (1, 2, 4):
        run = sc.get("evacuate_c%d" % c)
        if run:
            rows.append("| evacuate.yml, concurrency %d | %s | %.1f | %s | %s | %s | %s |" % (
                c, "yes" if run["ok"] else "no (%s)" % ", ".join(run.get("moved", [])), run["wall_s"],
                over(run["wall_s"], total), "%.2f" % (run["link_bytes"] / GIB) if run.get("link_bytes") else "-",
                fmt_s(bound) if bound else "-", over(run["wall_s"], bound)))
    return rows


def scale() -> dict:
    """Issue 9.5: evacuating 4 guests from hosta, against the sum of 4 single moves."""
    out: dict = {}
    scale_guests()
    out["singles"] = {n: run_single(n) for n, _i, _m in SCALE_VMS}
    for concurrency in (1, 2, 4):
        scale_guests()
        out["evacuate_c%d" % concurrency] = run_evacuate(concurrency)
        run = out["evacuate_c%d" % concurrency]
        print("scale: evacuate 4 guests, concurrency %d: %.1f s, %.2f GiB on the link" % (
            concurrency, run["wall_s"], run["link_bytes"] / GIB), flush=True)
    for name, _i, _m in SCALE_VMS:
        remove_vm(name)
    return out


def remove_vm(name: str) -> None:
    for host in lab.HOSTS:
        if lab.in_host(host, ["virsh", "-q", "domstate", name], check=False, capture=True).returncode == 0:
            lab.remove_guest(host, name)
        for ext in ("raw", "qcow2", "swap"):
            path = lab.hdir(host, "var-lib-libvirt", "images", "%s.%s" % (name, ext))
            if os.path.exists(path):
                os.unlink(path)


def fmt_s(v):
    return "%.1f" % v if isinstance(v, (int, float)) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description="kvmops.migration benchmark (issue 9)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--small-pairs", type=int, default=3,
                   help="pairs with the smaller disk (512 MiB written): the fixed cost and the slope")
    p.add_argument("--unshaped", action="store_true")
    p.add_argument("--skip-convergence", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-tls", action="store_true", help="no moves with QEMU's native TLS")
    args = p.parse_args()
    if not args.skip_tls:
        if not role_has_tls():
            raise SystemExit("bench: roles/migrate_guest has no migrate_guest_tls: the playbook cannot be told to "
                             "move with or without TLS. Run with --skip-tls.")
        missing = missing_pki()
        if missing:
            raise SystemExit("bench: the moves with TLS need QEMU's certificates on both hosts (kvm_host role with "
                             "kvm_host_tls: true); missing: %s. Or run with --skip-tls." % ", ".join(missing))
    rate = None if args.unshaped else "1gbit"
    report: dict = {"rate": rate or "unshaped", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "clk_tck": os.sysconf("SC_CLK_TCK")}
    if not args.skip_tls:
        report["cipher"] = cipher_speed()
    lab.shape(rate)
    try:
        report["iperf_mbit_s"] = iperf()
        pairs = []
        tls_pairs = []
        for i in range(args.pairs):
            # plain and TLS pairs alternate which goes first
            for tls in ((False, True) if i % 2 == 0 else (True, False)):
                if tls and args.skip_tls:
                    continue
                fresh_guest()
                a = run_virsh(tls=tls)
                fresh_guest()
                b = run_ours(tls=tls)
                (tls_pairs if tls else pairs).append({"virsh": a, "ours": b})
                print("pair %d%s: virsh %.1f s%s, ours %.1f s%s" % (
                    i + 1, " (TLS)" if tls else "", a["wall_s"], "" if a["ok"] else " (failed)",
                    b["wall_s"], "" if b["ok"] else " (failed)"), flush=True)
        report["pairs"] = pairs
        small = []
        for i in range(args.small_pairs):
            fresh_guest(written_mib=SMALL_WRITTEN_MIB)
            a = run_virsh()
            fresh_guest(written_mib=SMALL_WRITTEN_MIB)
            b = run_ours()
            small.append({"virsh": a, "ours": b})
            print("small pair %d: virsh %.1f s, ours %.1f s" % (i + 1, a["wall_s"], b["wall_s"]), flush=True)
        report["small_pairs"] = small
        report["check_mode"] = [check_mode_run() for dummy in range(2)]
        report["preflight_failure"] = [preflight_failure_run() for dummy in range(2)]
        report["floor_s"] = [floor_run() for dummy in range(3)]
        report["remote_commands"] = count_run()
        if not args.skip_tls:
            report["tls_pairs"] = tls_pairs
        fresh_guest("qcow2")
        report["qcow2_ours"] = run_ours("qcow2")
        fresh_guest("qcow2")
        report["qcow2_virsh"] = run_virsh("qcow2")
        if not args.skip_convergence:
            conv = {}
            fresh_guest(written_mib=256)
            dirty_memory(64)
            conv["virsh_timeout"] = run_virsh(extra=["--bandwidth", "32", "--timeout", "120", "--timeout-suspend"],
                                              timeout=400)
            conv["virsh_timeout"]["note"] = "virsh --timeout 120 --timeout-suspend: pauses the guest at 120 s"
            fresh_guest(written_mib=256)
            dirty_memory(64)
            conv["ours_autoconverge"] = run_ours(extra_vars={"bandwidth": 32, "migrate_guest_auto_converge": True},
                                                 timeout=900)
            fresh_guest(written_mib=256)
            dirty_memory(64)
            conv["ours_postcopy"] = run_ours(extra_vars={"bandwidth": 32, "migrate_guest_postcopy": True,
                                                         "migrate_guest_timeout_action": "postcopy",
                                                         "migrate_guest_timeout_min_s": 30,
                                                         "migrate_guest_timeout_s_per_gib": 1}, timeout=900)
            report["convergence"] = conv
        if not args.skip_scale:
            report["scale"] = scale()
    finally:
        lab.shape(None)
        remove_vm(VM)
    with open(os.path.join(ROOT, ".cache", "bench.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    write_report(report)


MARKER = "<!-- end of the figures written by tests/bench/bench.py; what follows is kept -->"


def _ratio(a, b):
    return b / a if a else float("nan")


def run_figures(run: dict, iperf_mbit_s: float) -> dict | None:
    """One completed move's figures: wall and job time, downtime, link throughput (all bytes into
    hostb during the command over the job time) in MiB/s and as % of iperf3, source QEMU CPU."""
    if not run.get("ok"):
        return None
    job = run.get("job", {})
    job_s = job.get("Time elapsed", 0) / 1000
    cpu = run.get("cpu") or {}
    return {"wall_s": run["wall_s"], "job_s": job_s or None, "downtime_ms": job.get("Total downtime"),
            "mib_s": run["link_bytes"] / job_s / MIB if job_s else None,
            "iperf_pct": 100.0 * run["link_bytes"] * 8 / job_s / 1e6 / iperf_mbit_s if job_s and iperf_mbit_s else None,
            "cpu_s": cpu.get("cpu_s"), "core_pct": cpu.get("core_pct"), "other_s": cpu.get("other_s")}


FIGURES = ("wall_s", "job_s", "downtime_ms", "mib_s", "iperf_pct", "cpu_s", "core_pct", "other_s")


def median_figures(runs: list[dict], iperf_mbit_s: float) -> dict:
    """The median of each figure over the completed runs (None when no run has it); ``n``: how
    many completed, ``failed``: how many did not."""
    figs = [f for f in (run_figures(r, iperf_mbit_s) for r in runs) if f is not None]
    out: dict = {"n": len(figs), "failed": len(runs) - len(figs)}
    for key in FIGURES:
        vals = [f[key] for f in figs if f[key] is not None]
        out[key] = statistics.median(vals) if vals else None
    return out


def _f(v, fmt: str = "%.1f") -> str:
    return fmt % v if isinstance(v, (int, float)) and not math.isnan(v) else "-"


def tls_rows(pairs: list[dict], tls_pairs: list[dict], iperf_mbit_s: float) -> list[str]:
    """The TLS section's two tables: the medians of each tool plain and with TLS, and TLS / plain."""
    rows = ["| move | runs | wall s | job s | downtime ms | MiB/s | % of iperf3 | source CPU s | % of one core "
            "| of it outside vCPU threads s |", "|---|---|---|---|---|---|---|---|---|---|"]
    med = {}
    for tool, label in (("virsh", "raw virsh"), ("ours", "playbook")):
        for tls, runs in ((False, [p[tool] for p in pairs]), (True, [p[tool] for p in tls_pairs])):
            m = med[tool, tls] = median_figures(runs, iperf_mbit_s)
            rows.append("| %s %s | %d%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label, "TLS" if tls else "plain", m["n"], " (%d failed)" % m["failed"] if m["failed"] else "",
                _f(m["wall_s"]), _f(m["job_s"]), _f(m["downtime_ms"], "%.0f"), _f(m["mib_s"], "%.0f"),
                _f(m["iperf_pct"], "%.0f"), _f(m["cpu_s"], "%.2f"), _f(m["core_pct"], "%.0f"), _f(m["other_s"], "%.2f")))
    rows += ["", "| tool | TLS / plain: wall s | job s | MiB/s | source CPU s | of it outside vCPU threads s |",
             "|---|---|---|---|---|---|"]
    for tool, label in (("virsh", "raw virsh"), ("ours", "playbook")):
        plain, tls = med[tool, False], med[tool, True]
        rows.append("| %s | %s |" % (label, " | ".join(
            _f(_ratio(plain[k], tls[k]) if plain[k] is not None and tls[k] is not None else None, "%.2f")
            for k in ("wall_s", "job_s", "mib_s", "cpu_s", "other_s"))))
    return rows


def cipher_line(cipher: dict | None, iperf_mbit_s: float) -> str:
    if not cipher:
        return "AES-256-GCM on one core of this machine: not measured (no `openssl speed`)."
    mbit = cipher["bytes_per_s"] * 8 / 1e6
    return ("AES-256-GCM on one core of this machine (%s, `openssl speed -evp aes-256-gcm -bytes 16384`): "
            "%.0f MiB/s (%.0f Mbit/s), %.1f times the link's iperf3 figure. QEMU's TLS is GnuTLS, whose "
            "cipher speed differs, and TLS records, copies and system calls cost more than the cipher: an "
            "upper bound of what one TLS connection carries per core." % (
                cipher["tool"], cipher["bytes_per_s"] / MIB, mbit, _ratio(iperf_mbit_s, mbit)))


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` by the nearest rank (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100.0 * len(ordered)) - 1)]


def split_rows(pairs: list[dict], r: dict) -> list[str]:
    """The overhead's parts (:func:`overhead_split`), the floor and the remote commands."""
    splits = [s for s in (overhead_split(p["ours"]) for p in pairs) if s is not None]
    labels = (("startup_teardown", "ansible-playbook start-up and teardown (outside every task)"),
              ("before", "before the job: validate, locate, facts, pre-flight, images, CPU"),
              ("start", "starting the job (async task)"),
              ("wait_beyond_job", "waiting, beyond the job's own time and the health window (module start and end, "
               "last poll)"),
              ("health_window", "the guest's health window after the switch-over (migrate_guest_health_window_s)"),
              ("after", "after the job: verify, report"))
    rows = ["| part | s |", "|---|---|"]
    for key, label in labels:
        vals = [s[key] for s in splits]
        rows.append("| %s | %s |" % (label, _f(statistics.median(vals) if vals else None, "%.2f")))
    floor = r.get("floor_s") or []
    rows.append("| floor: ansible-playbook with one trivial task on hostb (median of %d) | %s |" % (
        len(floor), _f(statistics.median(floor) if floor else None, "%.2f")))
    rc = r.get("remote_commands")
    if rc:
        rows += ["", "Remote commands of one move (an untimed `-vvv` run, `SSH: EXEC` lines%s): **%d** in total, "
                 "%d outside the job, %d while waiting for it." % (
                     "" if rc.get("ok") else "; that run FAILED", rc["total"], rc["outside_job"], rc["during_job"])]
    return rows


def fixed_and_slope(big: list[dict], small: list[dict], big_mib: int, small_mib: int) -> dict | None:
    """Our overhead (ours wall - virsh wall, medians of the completed pairs) on two amounts of
    disk data: what is fixed per move and what grows with the data (s per GiB). None without
    a completed pair of each."""
    def over(pairs):
        vals = [p["ours"]["wall_s"] - p["virsh"]["wall_s"] for p in pairs if p["virsh"]["ok"] and p["ours"]["ok"]]
        return statistics.median(vals) if vals else None
    ob, osm = over(big), over(small)
    if ob is None or osm is None:
        return None
    slope = (ob - osm) / ((big_mib - small_mib) / 1024)
    return {"overhead_big_s": ob, "overhead_small_s": osm, "slope_s_per_gib": slope,
            "fixed_s": osm - slope * small_mib / 1024}


def size_rows(r: dict) -> list[str]:
    """The two disk sizes side by side: walls, ratio and our overhead; the fixed cost and slope."""
    small = r.get("small_pairs") or []
    if not small:
        return ["Not run (--small-pairs 0)."]
    rows = ["| data written | pairs | virsh wall s | ours wall s | ratio | our overhead s |", "|---|---|---|---|---|---|"]
    for label, pairs in (("2048 MiB", r["pairs"]), ("%d MiB" % SMALL_WRITTEN_MIB, small)):
        ok = [p for p in pairs if p["virsh"]["ok"] and p["ours"]["ok"]]
        if not ok:
            rows.append("| %s | %d | failed | | | |" % (label, len(pairs)))
            continue
        va = statistics.median([p["virsh"]["wall_s"] for p in ok])
        vb = statistics.median([p["ours"]["wall_s"] for p in ok])
        rows.append("| %s | %d | %.1f | %.1f | %.2f | %.1f |" % (
            label, len(ok), va, vb, statistics.median([_ratio(p["virsh"]["wall_s"], p["ours"]["wall_s"]) for p in ok]),
            statistics.median([p["ours"]["wall_s"] - p["virsh"]["wall_s"] for p in ok])))
    fit = fixed_and_slope(r["pairs"], small, 2048, SMALL_WRITTEN_MIB)
    if fit:
        rows += ["", "Our overhead is %.1f s fixed per move and %+.2f s per GiB of disk data (medians; the "
                 "10 GiB disk is walked in both)." % (fit["fixed_s"], fit["slope_s_per_gib"])]
    return rows


def timed_rows(r: dict) -> list[str]:
    """Check mode and a pre-flight failure with rollback, timed."""
    rows = ["| run | runs | ok | wall s (median) | what it is |", "|---|---|---|---|---|"]
    for key, what in (("check_mode", "`migrate.yml --check`: locate, facts, pre-flight, the plan; nothing changed"),
                      ("preflight_failure", "a move the pre-flight refuses (`migrate_guest_tls=false` without "
                       "allowing it): pre-flight, rollback, failure report; the guest still runs on hosta")):
        runs = r.get(key) or []
        if not runs:
            continue
        rows.append("| %s | %d | %s | %.1f | %s |" % (
            key.replace("_", " "), len(runs), "yes" if all(x["ok"] for x in runs) else "NO",
            statistics.median([x["wall_s"] for x in runs]), what))
    return rows if len(rows) > 2 else ["Not run."]


def write_report(r: dict) -> None:
    pairs = r["pairs"]
    ok_pairs = [p for p in pairs if p["virsh"]["ok"] and p["ours"]["ok"]]
    ratios = [_ratio(p["virsh"]["wall_s"], p["ours"]["wall_s"]) for p in ok_pairs]
    med = statistics.median(ratios) if ratios else float("nan")
    p90 = percentile(ratios, 90)
    lines = ["| run | virsh wall s | ours wall s | ratio | virsh job s | ours job s | downtime ms (virsh / ours) |",
             "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(pairs, 1):
        a, b = p["virsh"], p["ours"]
        lines.append("| %d | %s | %s | %.2f | %s | %s | %s / %s |" % (
            i, fmt_s(a["wall_s"]), fmt_s(b["wall_s"]), _ratio(a["wall_s"], b["wall_s"]),
            fmt_s(a.get("job", {}).get("Time elapsed", 0) / 1000), fmt_s(b.get("job", {}).get("Time elapsed", 0) / 1000),
            int(a.get("job", {}).get("Total downtime", 0)), int(b.get("job", {}).get("Total downtime", 0))))
    bytes_rows = ["| format | tool | link bytes / source allocation | destination / source allocation |",
                  "|---|---|---|---|"]

    def bytes_row(fmt, tool, run):
        if not run.get("ok"):
            return "| %s | %s | failed: %s | |" % (fmt, tool, run.get("error", "")[:80])
        src = sum(run["src_alloc"].values())
        dst = sum(run["dst_alloc"].values())
        return "| %s | %s | %.3f | %.3f |" % (fmt, tool, run["link_bytes"] / src, dst / src)
    bytes_rows.append(bytes_row("raw", "virsh", pairs[0]["virsh"]))
    bytes_rows.append(bytes_row("raw", "ours", pairs[0]["ours"]))
    bytes_rows.append(bytes_row("qcow2", "virsh", r["qcow2_virsh"]))
    bytes_rows.append(bytes_row("qcow2", "ours", r["qcow2_ours"]))
    limit_rows = ["| tool | link bytes | job time s | throughput Mbit/s | fraction of iperf3 |", "|---|---|---|---|---|"]
    for tool in ("virsh", "ours"):
        run = pairs[0][tool]
        job_s = run.get("job", {}).get("Time elapsed", 0) / 1000
        tput = run["link_bytes"] * 8 / job_s / 1e6 if job_s else 0
        fraction = tput / r["iperf_mbit_s"] if r["iperf_mbit_s"] else 0
        limit_rows.append("| %s | %d | %.1f | %.0f | %.2f |" % (tool, run["link_bytes"], job_s, tput, fraction))
    conv_rows = []
    if "convergence" in r:
        conv_rows = ["| run | finished | wall s | downtime ms | note |", "|---|---|---|---|---|"]
        for name, run in r["convergence"].items():
            conv_rows.append("| %s | %s | %.1f | %s | %s |" % (
                name, "yes" if run["ok"] else "no", run["wall_s"],
                int(run.get("job", {}).get("Total downtime", 0)) if run["ok"] else "-",
                (run.get("note") or run.get("error", "")[:120]).replace("\n", " ").replace("|", "/")))
    scale_table = scale_rows(r["scale"], r.get("iperf_mbit_s")) if "scale" in r else []
    steps = {}
    for name, sec in pairs[-1]["ours"].get("tasks", []):
        steps[name] = steps.get(name, 0) + sec
    top = sorted(steps.items(), key=lambda kv: -kv[1])[:12]
    step_rows = ["| task | s |", "|---|---|"] + ["| %s | %.1f |" % (n.replace("|", "/")[:90], s) for n, s in top]
    if "tls_pairs" in r:
        tls_text = [
            "All four with the same guest; the plain ones are the overhead's runs above, the TLS ones as many "
            "more, alternating. Raw virsh TLS: `virsh migrate ... --tls`; playbook TLS: `-e migrate_guest_tls=true`.",
            "", *tls_rows(pairs, r["tls_pairs"], r["iperf_mbit_s"]), "",
            "Medians of the completed runs. MiB/s: all bytes into hostb on the lab link during the command over "
            "the job time (job s, `virsh domjobinfo --completed`); %% of iperf3 against %.0f Mbit/s. Source CPU: "
            "utime + stime of the source's QEMU process of the guest (`/proc/<pid>/stat`, all its threads, "
            "sampled every %.1f s until it exits, %d ticks/s; the last interval is not counted) in the last job s of "
            "its life, the migration job; "
            "%% of one core = source CPU s / job s. Outside vCPU threads: without the guest's `CPU n/TCG` "
            "threads, so the migration thread, the disks' NBD mirror, the main loop and the encryption. Not "
            "the source host's `/proc/stat`: the lab's hosts are containers on one kernel, whose `/proc/stat` "
            "counts the destination and the controller too." % (r["iperf_mbit_s"], CPU_SAMPLE_S, r.get("clk_tck", 100)),
            "", cipher_line(r.get("cipher"), r["iperf_mbit_s"])]
    else:
        tls_text = ["Not run (--skip-tls)."]
    text = "\n".join([
        "# Performance", "",
        "Measured by `make bench` (`.venv/bin/python tests/bench/bench.py`) on %s, in the two-host lab "
        "(TCG guests, 2 cores), lab link %s. iperf3 hosta -> hostb: %.0f Mbit/s. Every move is plain "
        "(no TLS: `virsh migrate` without `--tls`, the playbook with `migrate_guest_tls=false`) except in "
        "the TLS section." % (
            r["started"], "shaped to " + r["rate"] if r["rate"] != "unshaped" else "unshaped", r["iperf_mbit_s"]),
        "", "## Overhead: ours against hand-made virsh (guest 512 MiB, 10 GiB raw disk with 2 GiB written)", "",
        *lines, "", "Wall-time ratio ours / virsh: median **%.2f**, p90 %.2f over %d pairs (target: median <= 1.10, "
        "issue 18)." % (med, p90, len(ratios)), "",
        "### Where our time beyond the job goes (medians over the pairs, s)", "", *split_rows(pairs, r), "",
        "### Two amounts of disk data: the fixed cost and the slope", "", *size_rows(r), "",
        "### Check mode and a refused move, timed", "", *timed_rows(r), "",
        "## Forecast beside actual (issue 19)", "", *forecast_rows(r), "",
        "Forecast: the pre-flight's (`migrate_guest_forecast`), from the guest's dirty rate, disk write rate, "
        "memory in use, the copied disks' allocation and the link; actual: the move's job time as the summary "
        "gives it. Target: within +-25 %, and the convergence verdict right in every run.", "",
        "## Bytes", "", *bytes_rows, "",
        "Link bytes are all bytes into hostb on the lab link during the run (memory, disks, ssh, ansible)."
        " Target <= 1.05.", "",
        "## The limit", "", *limit_rows, "",
        "## TLS: QEMU's native TLS against plain (guest 512 MiB, 10 GiB raw disk with 2 GiB written)", "",
        *tls_text, "",
        "## Convergence (64 MiB/s of dirty memory against a 32 MiB/s cap)", "", *conv_rows, "",
        "## Scale: evacuating 4 guests from hosta (256 MiB, 10 GiB raw with 256 MiB written, each)", "",
        *(scale_table or ["Not run (--skip-scale)."]), "",
        *(["The bound: the bytes the four guests sent on the link (their single moves, summed) over the iperf3 "
           "rate; no concurrency moves them faster over one link. evacuate.yml runs a sliding window of "
           "`concurrency` lanes, the largest move first."] if scale_table else []), "",
        "## Controller cost (slowest tasks of the last playbook run, profile_tasks)", "", *step_rows, ""])
    path = os.path.join(ROOT, "docs", "performance.md")
    # what follows the marker is written by hand (how to read the figures) and is kept
    tail = MARKER + "\n"
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if MARKER in old:
            tail = old[old.index(MARKER):]
    with open(path, "w") as f:
        f.write(text + "\n" + tail)
    print(text)


if __name__ == "__main__":
    main()
