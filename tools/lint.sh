#!/usr/bin/env bash
# ansible-lint, production profile, over the roles and playbooks of the collection.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
targets=()
for d in roles playbooks; do
  [ -n "$(find "$d" -name '*.yml' 2>/dev/null | head -1)" ] && targets+=("$d")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "lint: no roles or playbooks yet: ansible-lint has nothing to check"
  exit 0
fi
exec .venv/bin/ansible-lint --profile production --offline "${targets[@]}"
