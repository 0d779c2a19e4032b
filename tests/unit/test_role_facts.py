# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migrate_guest role leaks nothing from one guest to the next (issue 18 item 4): the
evacuate role's lanes run it for several guests on one host, whose set_fact'ed and registered
facts stay. Every internal fact (``_migrate_guest_*``) a task reads must be reset by the role's
first task, or be set before on every way to that task: earlier in the same file, or by a file
that always ran before it (main.yml: validate, locate, then preflight, prepare, move, verify in
the block; rollback after any step of the block; report after verify or, with nothing to do,
right after locate)."""

from __future__ import annotations

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = os.path.join(ROOT, "roles", "migrate_guest", "tasks")
#: files in the order main.yml runs them (rollback after any of the block's)
CHAIN = ["validate", "locate", "preflight", "prepare", "move", "verify"]
#: the files that ran before each file on every way to it
BEFORE = dict({name: CHAIN[:i] for i, name in enumerate(CHAIN)}, rollback=CHAIN[:2], report=CHAIN[:2])
FACT_USE = re.compile(r"\b(_migrate_guest_\w+)")


def tasks(name):
    with open(os.path.join(TASKS, name + ".yml")) as f:
        return yaml.safe_load(f) or []


def walk(items):
    for task in items:
        yield task
        for key in ("block", "rescue", "always"):
            yield from walk(task.get(key) or [])


def sets(task):
    out = set()
    if task.get("register"):
        out.add(task["register"])
    if "ansible.builtin.set_fact" in task:
        out |= set(task["ansible.builtin.set_fact"] or {})
    if isinstance(task.get("vars"), dict):
        out |= set(task["vars"])
    return out


def reset_facts():
    first = tasks("validate")[0]
    assert first["name"].startswith("Start a new run"), first["name"]
    return set(first["ansible.builtin.set_fact"])


def text_of(task):
    """The task without its nested blocks (those are walked on their own)."""
    return yaml.safe_dump({k: v for k, v in task.items() if k not in ("block", "rescue", "always")})


def leaks(files, reset):
    """``file.yml 'task' reads FACT`` for each fact a task reads that is not in ``reset`` nor set
    before on every way to it; ``files``: name -> task list."""
    missing = []
    for name, before in BEFORE.items():
        earlier = set().union(*(sets(t) for f in before for t in walk(files.get(f, []))))
        own: set[str] = set()  # facts this file set before the task
        for task in walk(files.get(name, [])):
            for fact in sorted(set(FACT_USE.findall(text_of(task))) - sets(task) - reset - own - earlier):
                missing.append("%s.yml '%s' reads %s" % (name, task.get("name"), fact))
            own |= sets(task)
    return missing


def test_every_fact_a_task_reads_is_reset_or_set_before_on_every_way_to_it():
    missing = leaks({name: tasks(name) for name in BEFORE}, reset_facts())
    assert not missing, "not reset by validate.yml's first task (a guest before may leak into the next):\n" + \
        "\n".join(missing)


def test_the_check_finds_a_fact_of_the_guest_before():
    files = {
        "validate": [{"name": "Start a new run", "ansible.builtin.set_fact": {"_migrate_guest_failed": False}}],
        "locate": [{"name": "Note the source", "ansible.builtin.set_fact": {"_migrate_guest_source": "a"}}],
        "preflight": [{"name": "Note the destination", "ansible.builtin.set_fact": {"_migrate_guest_dest": "b"}}],
        # the rollback runs when the pre-flight failed before it chose: its _migrate_guest_dest is the last guest's
        "rollback": [{"name": "Remove", "when": "_migrate_guest_dest is defined", "delegate_to": "{{ _migrate_guest_source }}"},
                     {"name": "Note", "register": "_migrate_guest_x", "debug": "{{ _migrate_guest_failed }}"},
                     {"name": "Use", "debug": "{{ _migrate_guest_x }}"}],
    }
    assert leaks(files, {"_migrate_guest_failed"}) == ["rollback.yml 'Remove' reads _migrate_guest_dest"]
    assert leaks(files, {"_migrate_guest_failed", "_migrate_guest_dest"}) == []
