# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup ``kvmops.migration.evacuate_claim``: a lane of the evacuate role's sliding window
claims the next move of the plan, or records that its move ended (``_evacuation.claim_next``,
``_evacuation.finish_claim``: a claim file on the controller under an exclusive flock)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: evacuate_claim
author:
  - kvmops.migration contributors (@kvmops)
version_added: 0.1.0
short_description: Claim the next move of an evacuation for a lane of its sliding window
description:
  - The P(kvmops.migration.evacuate#role) role runs an evacuation's moves on C(evacuate_concurrency) lanes
    (in-memory hosts under the C(free) strategy); a lane that is free claims the next move with this lookup,
    the largest not yet claimed, and runs it.
  - The claims live in a JSON file on the controller, changed under an exclusive C(flock) so that two lanes,
    whatever process runs them, never take the same move. It is written in check mode too (it is the run's
    bookkeeping, not a change to a host); the role removes it in its summary.
options:
  _terms:
    description: Path of the claim file on the controller (created when absent).
    required: true
    type: list
    elements: str
  moves:
    description:
      - The moves of the plan in the order they are taken (C(moves) of P(kvmops.migration.plan_evacuation#filter),
        largest first), each with at least C(guest). Needed to claim, not with O(done).
    type: list
    elements: dict
    default: []
  lane:
    description: Name of the lane that claims (recorded with the claim).
    type: str
    default: lane
  done:
    description: Instead of claiming, record that the move of this guest ended (its end time).
    type: str
"""

EXAMPLES = r"""
- name: Claim the next move
  ansible.builtin.set_fact:
    move: "{{ query('kvmops.migration.evacuate_claim', claim_file, moves=plan.moves, lane=inventory_hostname) | first }}"

- name: Record that it ended
  ansible.builtin.set_fact:
    claim: "{{ query('kvmops.migration.evacuate_claim', claim_file, done=move.guest) | first }}"
"""

RETURN = r"""
_list:
  description:
    - One element. Claiming, the claimed move (its fields in O(moves)) with C(lane), C(started_at) (seconds since
      the epoch) and C(position) (1 for the first move claimed), or an empty dictionary when every move is claimed.
    - With O(done), the claim C(guest), C(lane), C(position), C(started_at), C(ended_at).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.kvmops.migration.plugins.module_utils import _evacuation


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        unknown = sorted(set(kwargs) - {"moves", "lane", "done"})
        if unknown:
            raise AnsibleLookupError("evacuate_claim takes the options moves, lane and done; not %s" % ", ".join(unknown))
        if len(terms) != 1:
            raise AnsibleLookupError("evacuate_claim takes one term, the path of the claim file; got %d" % len(terms))
        path = str(terms[0])
        done = kwargs.get("done")
        try:
            if done:
                return [_evacuation.finish_claim(path, str(done))]
            moves = [dict(m) for m in kwargs.get("moves") or []]
            return [_evacuation.claim_next(path, moves, str(kwargs.get("lane") or "lane")) or {}]
        except (OSError, ValueError, KeyError) as exc:
            raise AnsibleLookupError(
                "Cannot use the evacuation's claim file %s on the controller (%s). The evacuate role's plan makes "
                "it in a temporary directory of the controller: check that the directory exists and is writable, "
                "and run the evacuation again." % (path, exc)) from exc
