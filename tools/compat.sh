#!/usr/bin/env bash
# The claims of meta/runtime.yml and tests/config.yml, tested (issue 21 item 5):
# - requires_ansible '>=2.16.0': for each older ansible-core release of requirements-compat.txt
#   (2.19, .venv's own, runs in make units and make sanity), the plugins' unit tests and the
#   sanity tests that depend on the ansible-core version (ansible-doc, validate-modules,
#   runtime-metadata, import, action-plugin-docs), in the .venv/core-X.Y that bootstrap made;
# - modules' python_requires '>=3.9': ansible-test's compile and import tests on every other
#   Python that ansible-core 2.19 supports for modules from 3.9 on (3.11 runs in make sanity),
#   the interpreters taken from pyenv's versions (this machine image has 3.9 to 3.13).
# Every one must run: a missing venv or Python fails, it is not skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venvs="${COMPAT_VENVS:-$here/.venv}"
pythons=(3.9 3.10 3.12 3.13)
failed=()

while read -r core; do
  ver=${core#ansible-core==}
  venv="$venvs/core-${ver%.*}"
  if [ ! -x "$venv/bin/ansible-test" ]; then
    failed+=("ansible-core $ver: no $venv (run make setup)")
    continue
  fi
  echo "compat: ansible-core $ver: unit tests of the plugins"
  "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider -p no:pytest-ansible tests/unit/plugins \
    || failed+=("ansible-core $ver: unit tests")
  echo "compat: ansible-core $ver: sanity"
  SANITY_VENV="$venv" bash tools/sanity.sh --test ansible-doc --test validate-modules \
    --test runtime-metadata --test import --test action-plugin-docs \
    || failed+=("ansible-core $ver: sanity")
done < <(grep '^ansible-core==' requirements-compat.txt)

for py in "${pythons[@]}"; do
  bin=""
  for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$py".*/bin; do
    [ -x "$d/python$py" ] && bin=$d
  done
  if [ -z "$bin" ]; then
    failed+=("Python $py: no interpreter in ${PYENV_ROOT:-$HOME/.pyenv}/versions")
    continue
  fi
  echo "compat: Python $py ($bin): sanity compile and import"
  PATH="$bin:$PATH" SANITY_PYTHON="$py" bash tools/sanity.sh --test compile --test import \
    || failed+=("Python $py: sanity compile/import")
done

if [ ${#failed[@]} -gt 0 ]; then
  printf 'compat: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "compat: ansible-core $(grep '^ansible-core==' requirements-compat.txt | sed 's/ansible-core==//' | tr '\n' ' ')and Pythons ${pythons[*]} passed"
