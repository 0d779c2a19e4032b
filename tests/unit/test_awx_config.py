# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/awx/configure_controller.yml (the AWX objects of docs/awx.md as code, issue 21 item 2):
each job template runs a playbook of the collection, and each survey question sets a variable
that playbook reads. ansible-lint (tools/lint.sh) checks the awx.awx arguments."""

from __future__ import annotations

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def job_templates() -> list[dict]:
    with open(os.path.join(ROOT, "docs", "awx", "configure_controller.yml")) as f:
        plays = yaml.safe_load(f)
    return [task["awx.awx.job_template"] for play in plays for task in play["tasks"]
            if "awx.awx.job_template" in task]


def test_three_job_templates_with_their_playbooks():
    templates = job_templates()
    assert sorted(t["playbook"] for t in templates) == [
        "playbooks/evacuate.yml", "playbooks/migrate.yml", "playbooks/prepare_hosts.yml"]
    for template in templates:
        assert os.path.isfile(os.path.join(ROOT, template["playbook"]))


def test_survey_variables_are_read_by_the_playbook():
    for template in job_templates():
        if not template.get("survey_enabled"):
            continue
        with open(os.path.join(ROOT, template["playbook"])) as f:
            playbook = f.read()
        for question in template["survey_spec"]["spec"]:
            var = question["variable"]
            assert re.search(r"\{\{\s*%s\s*\|" % re.escape(var), playbook), \
                "%s: survey variable %s is not read by %s" % (template["name"], var, template["playbook"])
            if "default" in question and question["type"] == "integer":
                # the playbook's own default is the survey's
                m = re.search(r"\{\{\s*%s\s*\|\s*default\((\d+)\)" % re.escape(var), playbook)
                assert m and int(m.group(1)) == question["default"], (template["name"], var)
