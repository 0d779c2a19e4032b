#!/usr/bin/env bash
# ansible-test sanity on a clean copy of the collection placed under
# ansible_collections/kvmops/migration (as ansible-test requires), offline (--local):
# its requirements are in .venv/sanity, installed by tools/bootstrap.sh.
# SANITY_VENV (default .venv/sanity) and SANITY_PYTHON (default 3.11) select another ansible-core
# and target Python (tools/compat.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="${SANITY_VENV:-$here/.venv/sanity}"
python="${SANITY_PYTHON:-3.11}"
suffix=""
[ "$venv" = "$here/.venv/sanity" ] && [ "$python" = 3.11 ] || suffix="-$(basename "$venv")-py$python"
tree="$here/.cache/sanity$suffix"
dest="$tree/ansible_collections/kvmops/migration"
rm -rf "$tree"
mkdir -p "$dest"
cd "$here"
# tracked and new (not ignored) files only: no venvs, no lab state, no test output
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue
  mkdir -p "$dest/$(dirname "$f")"
  cp -a "$f" "$dest/$f"
done
# ansible-test keeps its per-test venvs under ~/.ansible/test: a HOME of our own keeps them
# apart from other runs. It bootstraps pip in them with a get-pip script it would download from
# a host these machines cannot reach; a cached stand-in installs the same pip (and setuptools
# and wheel, where that ansible-test asks for them) from PyPI's wheels.
export HOME="$here/.cache/sanity-home$suffix"
# The versions ansible-test puts into its venvs: pip, and (before ansible-core 2.18) setuptools
# and wheel, the first of each in get_venv_packages (the one for current Pythons).
reqs_py=$(ls "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py)
wheels="$here/.cache/wheels"
for pkg in pip setuptools wheel; do
  pkgver=$(sed -n "s/^ *$pkg='\([0-9.]*\)',.*$/\1/p" "$reqs_py" | head -1)
  [ -n "$pkgver" ] || continue
  [ "$pkg" = pip ] && pipver=$pkgver
  if ! ls "$wheels/$pkg-$pkgver"-*.whl >/dev/null 2>&1; then
    "$venv/bin/pip" download -q --no-deps --only-binary :all: -d "$wheels" "$pkg==$pkgver"
  fi
done
mkdir -p "$HOME/.ansible/test/cache"
cat > "$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py" <<PY
# Offline stand-in for get-pip.py $pipver (kvmops tools/sanity.sh): installs pip $pipver from
# its wheel fetched from PyPI; get-pip's own options (--no-setuptools, --no-wheel) are dropped.
import glob, sys
wheel = glob.glob("$wheels/pip-$pipver-*.whl")[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--no-index", "--find-links", "$wheels"] + args))
PY
cd "$dest"
# ansible-test lists files with git when inside a work tree: give the copy its own
git init -q . && git add -A
export PATH="$venv/bin:$PATH"
# Every sanity test must run: ansible-test only warns when it skips one (a missing program such
# as shellcheck, a Python it cannot find, no virtualenv support), so its warnings are read back.
log="$tree.log"
status=0
ansible-test sanity --local --python "$python" --color no "$@" 2>&1 | tee "$log" || status=$?
if grep -E '^WARNING: (Skipping sanity test|Required program)' "$log"; then
  echo "sanity: ansible-test skipped a test (above); install what it names (tools/bootstrap.sh)" >&2
  [ "$status" = 0 ] && status=1
fi
exit "$status"
