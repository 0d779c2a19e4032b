# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module of kvmops.migration does around its one backend call.

- :func:`check_requirements`: libvirt-python and lxml present on the managed host, else
  ``fail_json(msg=missing_required_lib(...))`` with the import error;
- :func:`call_backend`: run the backend, turn :class:`KvmopsError` into ``fail_json`` (the
  operator's message as ``msg``, ``detail``/``values`` beside it, the traceback only in
  ``exception``), drop ``diff`` unless ``--diff`` was asked, and hand the backend's
  ``warnings`` to ``module.warn`` (ansible-core 2.19 deprecates a ``warnings`` key in results;
  Ansible still returns them under ``warnings``), with every secret a domain XML can carry
  (graphics passwords, ``<auth>``/``<secret>`` of iSCSI/RBD disks, cookies) redacted from the
  result, the diff, the warnings and the error (``_domain_xml.redact``). A
  ``libvirt.libvirtError`` left over fails the module with a message naming libvirt's error
  and, when :func:`_libvirt.explain_failure` knows its text, the cause and the fix
  (:func:`libvirt_error_message`), not a traceback.
"""

from __future__ import annotations

import traceback
import typing as t

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml, _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError


def check_requirements(module: t.Any, libvirt: bool = True, lxml: bool = True) -> None:
    """Fail the module when a Python library it needs is missing on the managed host."""
    if libvirt and not _libvirt.HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"),
                         exception=_libvirt.LIBVIRT_IMPORT_ERROR)
    if lxml and not _domain_xml.HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml (python3-lxml)"), exception=_domain_xml.LXML_IMPORT_ERROR)


def call_backend(module: t.Any, backend: t.Callable[..., dict[str, t.Any]], *args: t.Any,
                 **kwargs: t.Any) -> dict[str, t.Any]:
    """``backend(*args, **kwargs)``; a :class:`KvmopsError` fails the module with its message.

    A ``libvirt.libvirtError`` that the backend did not turn into :class:`KvmopsError` fails the
    module too, with :func:`libvirt_error_message` as ``msg`` and libvirt's text as ``detail``
    (the traceback only in ``exception``), never as a MODULE FAILURE with a traceback.

    :returns: the backend's result, without ``diff`` when the run did not ask for one, and
        without ``warnings`` (given to ``module.warn``); secrets redacted.
    """
    try:
        result = backend(*args, **kwargs)
    except KvmopsError as err:
        module.fail_json(**_domain_xml.redact(dict(err.as_result(), msg=str(err),
                                                   exception=traceback.format_exc())))
    except Exception as err:  # only libvirt's errors are mapped; anything else is a bug, shown as one
        if not _libvirt.is_libvirt_error(err):
            raise
        module.fail_json(**_domain_xml.redact(dict(msg=libvirt_error_message(err), exception=traceback.format_exc(),
                                                   detail=_libvirt.libvirt_error_detail(err))))
    result = _domain_xml.redact(result)
    if not module._diff:
        result.pop("diff", None)
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    return result


def libvirt_error_message(err: BaseException) -> str:
    """The ``msg`` of a module that met a libvirt error no backend step explained.

    Names libvirt's code and message (``get_error_code``/``get_error_message``) and what to do:
    check libvirtd on the hosts involved, then run again; nothing is implied about what changed.
    """
    code = _libvirt.libvirt_error_code(err)
    where = " (libvirt error code %s)" % code if code is not None else ""
    cause = _libvirt.explain_failure(_libvirt.libvirt_error_detail(err), "the other host")
    if cause is not None:
        return ("libvirt reported an error that kvmops did not expect at this step: %s%s. Likely cause: "
                "%s. The guest's state is reported by 'virsh domstate' on each host."
                % (_libvirt.libvirt_error_detail(err), where, cause))
    return ("libvirt reported an error that kvmops did not expect at this step: %s%s. Check that "
            "libvirtd runs on the hosts involved and that the connection between them holds "
            "(journalctl -u libvirtd), then run again; the guest's state is reported by "
            "'virsh domstate' on each host." % (_libvirt.libvirt_error_detail(err), where))
