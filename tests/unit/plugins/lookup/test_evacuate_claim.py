# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The evacuate_claim lookup as the evacuate role's lane.yml calls it: claim, nothing left, done,
and an unusable claim file named with its fix."""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleLookupError

from ansible_collections.kvmops.migration.plugins.lookup.evacuate_claim import LookupModule


def test_claim_then_nothing_then_done(tmp_path):
    path = str(tmp_path / "claims.json")
    moves = [{"guest": "g1", "to": "hostb", "bytes_to_move": 3}, {"guest": "g2", "to": "hostc", "bytes_to_move": 1}]
    lookup = LookupModule()
    first = lookup.run([path], {}, moves=moves, lane="kvmops-lane-1")
    assert len(first) == 1 and first[0]["guest"] == "g1" and first[0]["lane"] == "kvmops-lane-1"
    assert lookup.run([path], {}, moves=moves, lane="kvmops-lane-2")[0]["to"] == "hostc"
    assert lookup.run([path], {}, moves=moves, lane="kvmops-lane-1") == [{}]
    done = lookup.run([path], {}, done="g1")[0]
    assert done["guest"] == "g1" and done["ended_at"] >= done["started_at"]


def test_unusable_claim_file_names_the_file_and_the_fix(tmp_path):
    missing = str(tmp_path / "gone" / "claims.json")
    with pytest.raises(AnsibleLookupError, match="gone/claims.json.*the directory exists"):
        LookupModule().run([missing], {}, moves=[{"guest": "g1"}])
    with pytest.raises(AnsibleLookupError, match="one term"):
        LookupModule().run([], {})
    with pytest.raises(AnsibleLookupError, match="not lanes"):
        LookupModule().run([missing], {}, lanes=2)
