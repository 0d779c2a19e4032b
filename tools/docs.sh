#!/usr/bin/env bash
# The collection's HTML docs (issue 21 item 4): antsibull-docs writes the RST of every module,
# role (from its argument specs) and filter plugin of the checkout, Sphinx turns it into HTML.
# Output: .cache/docs/html/index.html. Offline; the tools come from .venv (requirements-dev.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out="$here/.cache/docs"
rm -rf "$out"
mkdir -p "$out/rst"
chmod 755 "$out" "$out/rst"  # antsibull-docs writes only into a directory no one else can write
# the checkout as the installed collection kvmops.migration (as make setup links it)
mkdir -p .cache/collections/ansible_collections/kvmops
ln -sfn "$here" .cache/collections/ansible_collections/kvmops/migration
export ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections" ANSIBLE_CONFIG=
export PATH="$here/.venv/bin:$PATH"
antsibull-docs --config-file docs/site/antsibull-docs.cfg collection --use-current \
  --squash-hierarchy --fail-on-error --dest-dir "$out/rst" kvmops.migration
# -W: a broken reference or markup in the docs fails the build
sphinx-build -q -b html -c docs/site -W --keep-going "$out/rst" "$out/html"
echo "docs: $out/html/index.html"
