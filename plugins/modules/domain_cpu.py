#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: domain_cpu
short_description: Give a libvirt guest a CPU definition that every host of a group can run
version_added: 0.1.0
description:
  - Normalises the C(<cpu>) element of a domain's persistent definition, or of a domain XML given
    as a string (the normalised XML is then returned and nothing is defined).
  - "Policy C(baseline) (default): the migratable baseline of the host-model CPUs of all hosts in
    O(group_uris) (virConnectBaselineHypervisorCPU), written as a custom model with
    C(match='exact'), C(fallback='forbid') and C(check='partial')."
  - Policy C(host-model) writes C(<cpu mode='host-model'/>); policy C(model) a named model with
    optional O(features).
  - "Rules applied to every policy: feature names of older libvirt versions are renamed
    (for example C(arch-facilities) to C(arch-capabilities)); C(<vendor>) and nested-virtualisation
    features (C(svm), C(vmx), C(vmx-*), SVM sub-features) are dropped unless every host has them;
    then O(disable_features) and O(require_features) are applied."
  - The result is validated against every host of the group (virConnectCompareHypervisorCPU)
    before it is written; the module fails listing the missing features or the vendor clash per
    host when one cannot run it.
  - A running guest's live CPU never changes (it is guest ABI; libvirt refuses a live migration
    that would change it). For a running guest only the persistent definition is rewritten and
    the result says RV(effective=next cold boot). A shut-off guest gets the new CPU at its next
    start, and a cold migration moves the normalised definition.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the host the module runs on
  - lxml (python3-lxml)
options:
  uri:
    description:
      - libvirt URI of the host that holds O(domain).
  domain:
    description:
      - Name or UUID of the domain whose persistent definition is normalised.
      - Exactly one of O(domain) and O(xml) is required.
    type: str
  xml:
    description:
      - A whole domain XML to normalise; the result is returned in RV(xml) and nothing is defined.
      - Not logged, as it can carry graphics passwords and disk credentials; in RV(xml) they are
        redacted, so define a domain that has such secrets with O(domain) instead.
    type: str
  restore_cpu:
    description:
      - "Undo an earlier normalisation of O(domain)'s persistent definition: write this C(<cpu>)
        element (RV(cpu_before) of the run to undo) back as it was, without computing or
        validating anything. An empty string removes the C(<cpu>) element (the domain had none)."
      - The other options but O(uri) and O(domain) are ignored. A running guest's live CPU is
        never changed.
    type: str
  policy:
    description:
      - How the new CPU is chosen. See the description.
    type: str
    choices: [baseline, host-model, model]
    default: baseline
  model:
    description:
      - CPU model name for O(policy=model), for example C(EPYC-Rome), C(Cascadelake-Server),
        C(qemu64).
    type: str
  features:
    description:
      - Features required together with O(model) (O(policy=model) only).
    type: list
    elements: str
    default: []
  disable_features:
    description:
      - Features set to C(policy='disable'), applied after the policy and the rules; for a feature
        a host advertises but cannot set (on nested AMD hosts C(arch-capabilities)).
    type: list
    elements: str
    default: []
  require_features:
    description:
      - Features set to C(policy='require'), applied last; they are kept even when the rules would
        drop them, and the validation then checks that every host has them.
    type: list
    elements: str
    default: []
  group_uris:
    description:
      - libvirt URIs of all hosts of the group, the local one included, for example
        C(qemu+ssh://root@198.18.0.2/system). The first one computes the baseline; features its
        libvirt does not know (a newer host's names) are left out of the inputs there, and a host
        that cannot compute it passes to the next.
      - Defaults to O(uri) alone.
    type: list
    elements: str
    default: []
  virttype:
    description:
      - Virtualisation type whose capabilities count. Defaults to the domain's C(type) attribute.
    type: str
    choices: [kvm, qemu]
attributes:
  check_mode:
    support: full
    description: Computes and validates the new CPU and reports it without defining it.
  diff_mode:
    support: full
    description: The C(<cpu>) element before and after.
  idempotent:
    support: full
    description: A second run with the same input reports no change (canonicalised C(<cpu>)).
extends_documentation_fragment:
  - kvmops.migration.connection
notes:
  - Hosts are compared with the virttype given; a KVM host whose host-model cannot start (nested
    KVM that refuses MSR 0x10a) needs O(disable_features=[arch-capabilities]).
  - libvirt 9.0 and 11.3 are both supported; 11.3 reports blockers of unusable models, which are
    included in validation failures when present.
seealso:
  - name: libvirt CPU model and topology
    description: The C(<cpu>) element of the domain XML.
    link: https://libvirt.org/formatdomain.html#cpu-model-and-topology
"""

EXAMPLES = r"""
- name: Give the guest a CPU both lab hosts can run (next cold boot)
  kvmops.migration.domain_cpu:
    domain: demo1
    group_uris:
      - qemu:///system
      - qemu+ssh://root@198.18.0.2/system
    disable_features:
      - arch-capabilities
  register: cpu

- name: Tell the operator when the new CPU takes effect
  ansible.builtin.debug:
    msg: "{{ cpu.cpu_after }} effective: {{ cpu.effective }}"

- name: A named model without vendor-only features
  kvmops.migration.domain_cpu:
    domain: db1
    policy: model
    model: EPYC-Rome
    disable_features: [svm]

- name: Undo the normalisation when the move that needed it failed
  kvmops.migration.domain_cpu:
    domain: demo1
    restore_cpu: "{{ cpu.cpu_before }}"
  when: cpu is changed

- name: Normalise an XML before defining it anywhere
  kvmops.migration.domain_cpu:
    xml: "{{ lookup('ansible.builtin.file', 'guest.xml') }}"
    group_uris: "{{ kvm_group_uris }}"
  register: normalised
"""

RETURN = r"""
changed:
  description: Whether the canonicalised C(<cpu>) differs from the current one.
  returned: always
  type: bool
cpu_before:
  description:
    - The C(<cpu>) element before (empty when the domain had none). Pass it to O(restore_cpu) to
      undo this run. A C(<cpu>) element holds no secrets.
  returned: always
  type: str
cpu_after:
  description: The C(<cpu>) element after normalisation.
  returned: always
  type: str
  sample: "<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>EPYC</model></cpu>"
cpu:
  description: The new CPU as data.
  returned: always
  type: dict
  contains:
    mode: {description: CPU mode, type: str}
    match: {description: match attribute, type: str}
    check: {description: check attribute, type: str}
    model: {description: model name, type: str}
    fallback: {description: model fallback, type: str}
    vendor: {description: vendor or null, type: str}
    features: {description: "list of {name, policy}", type: list, elements: dict}
    topology: {description: topology attributes, type: dict}
dropped:
  description: What the rules removed and why (C([{item, reason}])).
  returned: always
  type: list
  elements: dict
renamed:
  description: Feature names renamed, old to new.
  returned: always
  type: dict
baseline:
  description: libvirt's baseline CPU of the group (policy C(baseline) only).
  returned: always
  type: str
virttype:
  description: The virtualisation type used.
  returned: always
  type: str
validation:
  description:
    - One comparison per host of the group C({host, result, compatible, missing_features,
      vendor_clash, unknown_features, unknown_model, unsupported_machine, msg, detail}).
  returned: always
  type: list
  elements: dict
effective:
  description:
    - When the new CPU applies. C(next cold boot) for a running guest (its live CPU never
      changes), C(next start) for a shut-off one, C(unchanged), or C(returned XML only).
    - With O(restore_cpu) the same, for the restored C(<cpu>).
  returned: always
  type: str
domain:
  description: The domain normalised.
  returned: when O(domain) is given
  type: str
state:
  description: C(running) or C(shut off) when the module ran.
  returned: when O(domain) is given
  type: str
xml:
  description:
    - The whole normalised domain XML, with passwords and disk credentials redacted.
  returned: when O(xml) is given
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _cpu


def argument_spec() -> dict:
    """The module's options (see DOCUMENTATION)."""
    return dict(
        _args.connection_spec(),
        domain=dict(type="str"),
        xml=dict(type="str", no_log=True),
        restore_cpu=dict(type="str"),
        policy=dict(type="str", default="baseline", choices=list(_cpu.POLICIES)),
        model=dict(type="str"),
        features=dict(type="list", elements="str", default=[]),
        disable_features=dict(type="list", elements="str", default=[]),
        require_features=dict(type="list", elements="str", default=[]),
        group_uris=dict(type="list", elements="str", default=[]),
        virttype=dict(type="str", choices=["kvm", "qemu"]),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_one_of=[("domain", "xml")],
        mutually_exclusive=[("domain", "xml"), ("xml", "restore_cpu")],
        required_if=[("policy", "model", ("model",))],
        supports_check_mode=True,
    )
    _module.check_requirements(module)
    module.exit_json(**_module.call_backend(module, _cpu.run_domain_cpu, module.params, module.check_mode))


if __name__ == "__main__":
    main()
