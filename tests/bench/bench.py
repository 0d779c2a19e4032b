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
5. controller cost: wall time of the playbook's own steps (ansible's profile_tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
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


def run_virsh(fmt: str = "raw", extra: list[str] | None = None, timeout: float = 1800) -> dict:
    """(a): hand-made virsh migrate with truncate-made images and explicit data URIs."""
    size = str(10 * GIB)
    for name in ("%s.%s" % (VM, fmt), "%s.swap" % VM):
        if fmt == "qcow2" and name.endswith("qcow2"):
            lab.in_host("hostb", ["qemu-img", "create", "-q", "-f", "qcow2", "/var/lib/libvirt/images/" + name, size])
        else:
            lab.in_host("hostb", ["truncate", "-s", size, "/var/lib/libvirt/images/" + name])
    before = (src_alloc(fmt), link_rx("hostb"))
    start = time.monotonic()
    res = lab.in_host("hosta", ["virsh", "migrate", "--live", "--persistent", "--undefinesource",
                                "--copy-storage-all", VM, "qemu+ssh://root@%s/system" % lab.HOSTS["hostb"],
                                "--migrateuri", "tcp://%s" % lab.HOSTS["hostb"],
                                "--disks-uri", "tcp://%s" % lab.HOSTS["hostb"]] + (extra or []),
                      check=False, capture=True, timeout=timeout)
    wall = time.monotonic() - start
    out = {"wall_s": wall, "ok": res.returncode == 0, "error": res.stderr.strip()[-300:],
           "link_bytes": link_rx("hostb") - before[1], "src_alloc": before[0]}
    if out["ok"]:
        out.update(job=jobinfo("hostb"), dst_alloc=dst_alloc(fmt))
    return out


def playbook(name: str, evars: dict, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """``ansible-playbook playbooks/NAME -e EVARS`` from the checkout against the lab inventory."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", **env)
    return sh([os.path.join(VENV_BIN, "ansible-playbook"), "-i", os.path.join(lab.STATE, "inventory.yml"),
               "playbooks/" + name, "-e", json.dumps(evars)], timeout=timeout, check=False, env=env)


def run_ours(fmt: str = "raw", extra_vars: dict | None = None, timeout: float = 1800) -> dict:
    """(b): ansible-playbook playbooks/migrate.yml, with per-task timings (profile_tasks)."""
    evars = {"vm": VM, "dest": "hostb"}
    evars.update(extra_vars or {})
    before = (src_alloc(fmt), link_rx("hostb"))
    start = time.monotonic()
    res = playbook("migrate.yml", evars, timeout, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
                   PROFILE_TASKS_SORT_ORDER="none", PROFILE_TASKS_TASK_OUTPUT_LIMIT="all")
    wall = time.monotonic() - start
    out = {"wall_s": wall, "ok": res.returncode == 0, "error": (res.stdout + res.stderr)[-600:] if res.returncode else "",
           "link_bytes": link_rx("hostb") - before[1], "src_alloc": before[0], "tasks": task_times(res.stdout)}
    if out["ok"]:
        out.update(job=jobinfo("hostb"), dst_alloc=dst_alloc(fmt))
    return out


def task_times(stdout: str) -> list[tuple[str, float]]:
    """profile_tasks' closing table: (task name, seconds)."""
    times = []
    for line in stdout.splitlines():
        m = re.match(r"^(.*?)\s-+\s([\d.]+)s\s*$", line.strip())
        if m:
            times.append((m.group(1).strip(), float(m.group(2))))
    return times


def iperf() -> float:
    """Mbit/s from hosta to hostb over the lab link (iperf3, 5 s)."""
    server = subprocess.Popen(["nsenter", "-t", str(lab.holder_pid("hostb")), "-n", "iperf3", "-s", "-1",
                               "-B", lab.HOSTS["hostb"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        out = lab.in_host_out("hosta", ["iperf3", "-c", lab.HOSTS["hostb"], "-t", "5", "-J"])
    finally:
        server.wait(timeout=20)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def dirty_memory(mib_per_s: int) -> None:
    """Start a loop in the guest rewriting a tmpfs file: about ``mib_per_s`` MiB/s of dirty memory."""
    cmd = ("(while :; do dd if=/dev/zero of=/dev/shm/x bs=1M count=%d 2>/dev/null; sleep 1; done) "
           "</dev/null >/dev/null 2>&1 &\n" % mib_per_s)
    lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "2", VM_IP, "2323"],
            input=cmd, check=False, capture=True)
    time.sleep(2)


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
    start = time.monotonic()
    res = playbook("evacuate.yml", evars, 1800)
    wall = time.monotonic() - start
    moved = [n for n, _i, _m in SCALE_VMS
             if lab.in_host("hostb", ["virsh", "-q", "domstate", n], check=False, capture=True).stdout.strip() == "running"]
    return {"wall_s": wall, "ok": res.returncode == 0 and len(moved) == len(SCALE_VMS), "moved": moved,
            "error": (res.stdout + res.stderr)[-600:] if res.returncode else ""}


def run_single(name: str) -> dict:
    """One scale guest moved alone with migrate.yml."""
    start = time.monotonic()
    res = playbook("migrate.yml", {"vm": name, "dest": "hostb"}, 900)
    return {"wall_s": time.monotonic() - start, "ok": res.returncode == 0}


def scale() -> dict:
    """Issue 9.5: evacuating 4 guests from hosta, against the sum of 4 single moves."""
    out: dict = {}
    scale_guests()
    out["singles"] = {n: run_single(n) for n, _i, _m in SCALE_VMS}
    for concurrency in (1, 2, 4):
        scale_guests()
        out["evacuate_c%d" % concurrency] = run_evacuate(concurrency)
        print("scale: evacuate 4 guests, concurrency %d: %.1f s" % (concurrency, out["evacuate_c%d" % concurrency]["wall_s"]),
              flush=True)
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
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--unshaped", action="store_true")
    p.add_argument("--skip-convergence", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    args = p.parse_args()
    rate = None if args.unshaped else "1gbit"
    lab.shape(rate)
    report: dict = {"rate": rate or "unshaped", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        report["iperf_mbit_s"] = iperf()
        pairs = []
        for i in range(args.pairs):
            fresh_guest()
            a = run_virsh()
            fresh_guest()
            b = run_ours()
            pairs.append({"virsh": a, "ours": b})
            print("pair %d: virsh %.1f s, ours %.1f s" % (i + 1, a["wall_s"], b["wall_s"]), flush=True)
        report["pairs"] = pairs
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


def write_report(r: dict) -> None:
    pairs = r["pairs"]
    ok_pairs = [p for p in pairs if p["virsh"]["ok"] and p["ours"]["ok"]]
    ratios = [_ratio(p["virsh"]["wall_s"], p["ours"]["wall_s"]) for p in ok_pairs]
    med = statistics.median(ratios) if ratios else float("nan")
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
    scale_rows = []
    if "scale" in r:
        sc = r["scale"]
        singles = sc.get("singles", {})
        total = sum(v["wall_s"] for v in singles.values())
        scale_rows = ["| run | ok | wall s | against the sum of single moves |", "|---|---|---|---|",
                      "| 4 single moves (migrate.yml each), summed | %s | %.1f | 1.00 |" % (
                          "yes" if all(v["ok"] for v in singles.values()) else "no", total)]
        for c in (1, 2, 4):
            run = sc.get("evacuate_c%d" % c)
            if run:
                scale_rows.append("| evacuate.yml, concurrency %d | %s | %.1f | %.2f |" % (
                    c, "yes" if run["ok"] else "no (%s)" % ", ".join(run.get("moved", [])), run["wall_s"],
                    run["wall_s"] / total if total else float("nan")))
    steps = {}
    for name, sec in pairs[-1]["ours"].get("tasks", []):
        steps[name] = steps.get(name, 0) + sec
    top = sorted(steps.items(), key=lambda kv: -kv[1])[:12]
    step_rows = ["| task | s |", "|---|---|"] + ["| %s | %.1f |" % (n.replace("|", "/")[:90], s) for n, s in top]
    text = "\n".join([
        "# Performance", "",
        "Measured by `make bench` (`.venv/bin/python tests/bench/bench.py`) on %s, in the two-host lab "
        "(TCG guests, 2 cores), lab link %s. iperf3 hosta -> hostb: %.0f Mbit/s." % (
            r["started"], "shaped to " + r["rate"] if r["rate"] != "unshaped" else "unshaped", r["iperf_mbit_s"]),
        "", "## Overhead: ours against hand-made virsh (guest 512 MiB, 10 GiB raw disk with 2 GiB written)", "",
        *lines, "", "Median wall-time ratio ours / virsh: **%.2f** (target <= 1.25)." % med, "",
        "## Bytes", "", *bytes_rows, "",
        "Link bytes are all bytes into hostb on the lab link during the run (memory, disks, ssh, ansible)."
        " Target <= 1.05.", "",
        "## The limit", "", *limit_rows, "",
        "## Convergence (64 MiB/s of dirty memory against a 32 MiB/s cap)", "", *conv_rows, "",
        "## Scale: evacuating 4 guests from hosta (256 MiB, 10 GiB raw with 256 MiB written, each)", "",
        *(scale_rows or ["Not run (--skip-scale)."]), "",
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
