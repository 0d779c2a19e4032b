#!/usr/bin/env bash
# ansible-lint, production profile, over the roles and playbooks of the collection and the AWX
# configuration of docs/awx (awx.awx modules). The args rule (experimental, so in no profile)
# checks every module's arguments against its argument spec, and --strict makes its warnings fail.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
targets=()
for d in roles playbooks docs/awx; do
  [ -n "$(find "$d" -name '*.yml' 2>/dev/null | head -1)" ] && targets+=("$d")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "lint: no roles or playbooks yet: ansible-lint has nothing to check"
  exit 0
fi
exec .venv/bin/ansible-lint --profile production --enable-list args --strict --offline "${targets[@]}"
