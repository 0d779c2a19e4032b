# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sphinx configuration of the collection's HTML docs (``make docs``, tools/docs.sh).

Started from ``antsibull-docs sphinx-init`` 2.28.0. Built offline: no intersphinx inventory is
fetched, so the few labels of Ansible's own docs that antsibull-docs' pages refer to, and pages
of other collections, are linked to docs.ansible.com by :func:`ansible_docs_link`; any other
unresolved reference fails the build (``-W``)."""

from __future__ import annotations

project = "kvmops.migration"
copyright = "kvmops.migration contributors"  # pylint: disable=redefined-builtin
title = "kvmops.migration"
html_short_title = "kvmops.migration"

extensions = ["sphinx_antsibull_ext"]
pygments_style = "ansible"
highlight_language = "YAML+Jinja"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_use_smartypants = True
html_use_modindex = False
html_use_index = False
html_copy_source = False
html_theme_options = {"display_version": False}

intersphinx_mapping: dict = {}
default_role = "any"
nitpicky = True

ANSIBLE_DOCS = "https://docs.ansible.com/ansible/latest/"
ANSIBLE_LABELS = {
    "common_return_values": "reference_appendices/common_return_values.html",
    "ansible_configuration_settings": "reference_appendices/config.html",
    "action_plugins": "plugins/action.html",
}


def ansible_docs_link(app, env, node, contnode):  # pylint: disable=unused-argument
    """Sphinx ``missing-reference``: a label of Ansible's docs, or a page of another collection
    (``ansible_collections.NS.NAME.PLUGIN_TYPE``), as a link to docs.ansible.com."""
    from docutils import nodes  # pylint: disable=import-outside-toplevel

    target = node.get("reftarget", "")
    path = ANSIBLE_LABELS.get(target)
    parts = target.split(".")
    if path is None and len(parts) == 4 and parts[0] == "ansible_collections" and \
            not (parts[1] == "kvmops" and parts[2] == "migration"):
        path = "collections/%s/%s/%s.html" % tuple(parts[1:])
    if path is None:
        return None
    ref = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + path)
    ref.append(contnode)
    return ref


def setup(app):
    app.connect("missing-reference", ansible_docs_link)
