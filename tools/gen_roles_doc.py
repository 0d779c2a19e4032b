"""Write docs/roles.md from every role's meta/argument_specs.yml (and check defaults/main.yml).

Usage: tools/gen_roles_doc.py [--check]   (--check exits 1 when docs/roles.md is out of date)
"""

from __future__ import annotations

import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = ("kvm_host", "migrate_guest", "evacuate")
INTRO = {
    "kvm_host": "Prepares the hypervisors of a group (`playbooks/prepare_hosts.yml`).",
    "migrate_guest": "Moves one guest (`playbooks/migrate.yml`).",
    "evacuate": "Empties a host (`playbooks/evacuate.yml`).",
}


def _text(value) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value or "")


def _default(opt: dict) -> str:
    if "default" not in opt:
        return "**required**" if opt.get("required") else ""
    return "`%s`" % yaml.safe_dump(opt["default"], default_flow_style=True).strip().replace("\n...", "").replace("|", "\\|")


def render() -> str:
    out = ["# Roles", "",
           "Generated from each role's `meta/argument_specs.yml` by `tools/gen_roles_doc.py`; "
           "`tests/unit/test_roles_doc.py` fails when this page and the specs disagree.", ""]
    for role in ROLES:
        with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as f:
            specs = yaml.safe_load(f)["argument_specs"]
        out += ["## kvmops.migration.%s" % role, "", INTRO[role], ""]
        for entry, spec in specs.items():
            title = "main" if entry == "main" else "tasks_from: %s" % entry
            out += ["### %s — %s" % (title, spec.get("short_description", "")), ""]
            if spec.get("description"):
                out += [_text(spec["description"]), ""]
            options = spec.get("options") or {}
            if not options:
                out += ["No variables of its own.", ""]
                continue
            out += ["| variable | type | default | description |", "|---|---|---|---|"]
            for name, opt in options.items():
                kind = opt.get("type", "str")
                if opt.get("elements"):
                    kind += " of %s" % opt["elements"]
                desc = _text(opt.get("description"))
                if opt.get("choices"):
                    desc += " Choices: %s." % ", ".join("`%s`" % c for c in opt["choices"])
                out.append("| `%s` | %s | %s | %s |" % (name, kind, _default(opt), desc.replace("|", "\\|")))
            out.append("")
    return "\n".join(out)


def defaults_mismatch() -> list[str]:
    """Public variables in defaults/main.yml and main's argument spec must be the same set."""
    problems = []
    for role in ROLES:
        with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) as f:
            defaults = set(yaml.safe_load(f) or {})
        with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as f:
            spec = set(yaml.safe_load(f)["argument_specs"]["main"].get("options") or {})
        for name in sorted(defaults ^ spec):
            problems.append("%s: %s is in %s only" % (role, name, "defaults" if name in defaults else "argument_specs"))
    return problems


def main() -> int:
    path = os.path.join(ROOT, "docs", "roles.md")
    text = render()
    problems = defaults_mismatch()
    if "--check" in sys.argv:
        with open(path) as f:
            current = f.read()
        if current != text:
            problems.append("docs/roles.md is out of date: run tools/gen_roles_doc.py")
        for p in problems:
            print(p)
        return 1 if problems else 0
    with open(path, "w") as f:
        f.write(text)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
