#!/usr/bin/env bash
# Install what kvmops.migration's demo, lab and tests need on a Debian 12 machine (root):
# Debian packages (QEMU/libvirt from bookworm-backports, see issue 2 / LAB_NOTES) and the
# pinned Python virtualenv .venv. Idempotent: does nothing that is already done.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

BACKPORTS_PKGS=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-daemon-driver-qemu
  libvirt-clients libvirt-dev python3-libvirt systemd-container debootstrap)
PKGS=(pkg-config gcc python3-dev python3-venv python3-lxml openssh-server openssh-client
  busybox-static cpio xz-utils kmod iproute2 iputils-ping iperf3 tcpdump lvm2 socat e2fsprogs
  dnsmasq-base nftables iptables util-linux procps git make apt-cacher-ng
  shellcheck chromium)
# Debian's shellcheck serves ansible-test's shellcheck sanity test (tools/sanity.sh fails when
# ansible-test skips a test); chromium (headless) the docs site test (make docs-test).

need_apt=0
for p in "${BACKPORTS_PKGS[@]}" "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
# QEMU must be the backports version (QEMU 7.2 corrupts busy TCG guests in multi-pass
# migrations: LAB_NOTES.md); libvirt 11.3 comes with it.
case "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)" in
  *bpo12*) ;;
  *) need_apt=1 ;;
esac

if [ "$need_apt" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  # No systemd here: keep package scripts from starting daemons (the lab starts its own).
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PKGS[@]}"
  apt-get install -y -q --no-install-recommends "${PKGS[@]}"
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# The venv uses Debian's python3 (the one the hypervisors' modules use too).
if [ ! -x .venv/bin/python ] || ! cmp -s requirements-dev.txt .venv/.requirements-dev.txt; then
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --upgrade 'pip==25.3'
  .venv/bin/pip install -q -r requirements-dev.txt
  cp requirements-dev.txt .venv/.requirements-dev.txt
fi
# ansible-test sanity runs --local in a venv of its own: its pinned linters (pylint, yamllint,
# voluptuous ...) conflict with ansible-lint's, so they do not go into .venv.
if [ ! -x .venv/sanity/bin/ansible-test ] || ! cmp -s requirements-dev.txt .venv/sanity/.requirements-dev.txt; then
  /usr/bin/python3 -m venv .venv/sanity
  .venv/sanity/bin/pip install -q --upgrade 'pip==25.3'
  core=$(grep '^ansible-core==' requirements-dev.txt)
  .venv/sanity/bin/pip install -q "$core" libvirt-python=="$(sed -n 's/^libvirt-python==//p' requirements-dev.txt)" \
    lxml=="$(sed -n 's/^lxml==//p' requirements-dev.txt)" \
    cryptography=="$(sed -n 's/^cryptography==//p' requirements-dev.txt)"
  reqdir=$(.venv/sanity/bin/python -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
  for f in "$reqdir"/sanity.*.txt; do
    .venv/sanity/bin/pip install -q -r "$f" -c "$reqdir/constraints.txt"
  done
  cp requirements-dev.txt .venv/sanity/.requirements-dev.txt
fi
# One venv per older ansible-core release the collection claims (requirements-compat.txt), for
# tools/compat.sh: that ansible-core and what the plugins' unit tests need (ansible-test installs
# its sanity tests' requirements into venvs of its own when they run). Only for make compat
# (KVMOPS_COMPAT=1; part of make test), so that make setup and make demo do not wait for them.
[ "${KVMOPS_COMPAT:-0}" = 1 ] || { echo "bootstrap: Debian packages and .venv ready"; exit 0; }
mapfile -t unit_reqs < <(grep -E '^(libvirt-python|lxml|pytest|cryptography)==' requirements-dev.txt)
while read -r core; do
  ver=${core#ansible-core==}
  venv=.venv/core-${ver%.*}
  stamp="$core ${unit_reqs[*]}"
  [ -x "$venv/bin/ansible-test" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$stamp" ] && continue
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade 'pip==25.3'
  "$venv/bin/pip" install -q "$core" "${unit_reqs[@]}"
  echo "$stamp" > "$venv/.stamp"
done < <(grep '^ansible-core==' requirements-compat.txt)
echo "bootstrap: Debian packages and .venv ready"
