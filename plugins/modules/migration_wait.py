#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration_wait
short_description: Wait for an asynchronous migration and show its progress
version_added: 0.1.0
description:
  - Waits for an asynchronous M(kvmops.migration.migrate) task (started with C(async) and C(poll=0))
    on the host it runs on, and prints the latest sample of the migration's progress file
    (phase, percent, data remaining, memory pass, dirty rate) whenever it changes, so that a
    person sees the move advance.
  - Each poll is one shell command on the host that waits there for the job's end, looking at the
    job's result file every 0.1 s, for up to O(poll_interval_s); so the end of the move is seen
    within about 0.1 s and a round trip, not on the next poll, and a poll costs no module run.
  - Returns the migrate module's result when the job ends; fails when the migration failed, with
    the migrate module's message.
  - This is an action plugin; it runs on the controller and talks to the host through the task's
    connection (use the same C(delegate_to) as the migrate task).
author:
  - kvmops.migration contributors (@kvmops)
options:
  jid:
    description: The C(ansible_job_id) of the asynchronous migrate task.
    type: str
    required: true
  progress_file:
    description: The migrate task's O(kvmops.migration.migrate#module:progress_file) on the same host.
    type: str
  poll_interval_s:
    description:
      - Seconds between two progress lines; each poll waits on the host up to this long for the job's end.
      - The end itself is seen within about 0.1 s, whatever this is.
    type: float
    default: 5
  timeout_s:
    description: Seconds after which waiting stops with an error (the job is left alone).
    type: float
    default: 86400
  label:
    description: Text that starts every progress line (the guest's name).
    type: str
    default: migration
  cleanup:
    description: Remove the job's async result file when it has ended.
    type: bool
    default: true
  remove_progress_file:
    description:
      - Remove O(progress_file) when the job has ended (successfully or not), in the same remote
        command as O(cleanup).
      - Left in place when waiting gives up (O(timeout_s)), as the job may still write to it.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Only reads; the roles do not start asynchronous jobs in check mode.
  diff_mode:
    support: none
    description: Nothing to compare.
  platform:
    support: full
    platforms: posix
    description: Hosts reachable by the task's connection.
notes:
  - Progress lines are printed by the controller as they come, between the task's header and its
    result.
seealso:
  - module: kvmops.migration.migrate
"""

EXAMPLES = r"""
- name: Start the migration without waiting
  kvmops.migration.migrate:
    domain: vm1
    dest_host: 198.18.0.2
    progress_file: /var/tmp/kvmops-vm1.jsonl
  async: 86400
  poll: 0
  delegate_to: hosta
  register: job

- name: Show the progress until it ends
  kvmops.migration.migration_wait:
    jid: "{{ job.ansible_job_id }}"
    progress_file: /var/tmp/kvmops-vm1.jsonl
    remove_progress_file: true
    label: vm1
  delegate_to: hosta
  register: moved
"""

RETURN = r"""
state:
  description: The migrate module's RV(kvmops.migration.migrate#module:state).
  returned: when the migration succeeded
  type: str
stats:
  description: The migrate module's completed job statistics.
  returned: when the migration succeeded
  type: dict
progress_samples:
  description: How many progress samples were shown.
  returned: always
  type: int
polls:
  description: How many remote commands the wait ran on the host (one per poll).
  returned: always
  type: int
waited_s:
  description: Seconds spent waiting.
  returned: always
  type: float
"""
