# kvmops.migration: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(PY) tests/lab/lab.py
LAB_DIR ?= /var/lib/kvmops-lab
INVENTORY := $(LAB_DIR)/inventory.yml
VM ?= migratetest2
export KVMOPS_LAB_DIR := $(LAB_DIR)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test units sanity lint integration lab-up lab-down lab-status build collection bench \
  docs docs-test compat

setup:  ## Debian packages, the pinned .venv, and the collection link for running from a checkout
	bash tools/bootstrap.sh
	mkdir -p .cache/collections/ansible_collections/kvmops
	ln -sfn $(CURDIR) .cache/collections/ansible_collections/kvmops/migration

lab-up: setup
	$(LAB) up

lab-down:
	@if [ -x $(PY) ]; then $(LAB) down; else python3 tests/lab/lab.py down; fi

lab-status:
	$(LAB) status

demo: setup  ## the user's journey: bare Debian hosts, prepare_hosts.yml, a demo guest, the main job
	$(LAB) up --no-guest
	ansible-playbook -i $(INVENTORY) playbooks/prepare_hosts.yml
	$(LAB) guest --name $(VM) --recreate --wait
	ansible-playbook -i $(INVENTORY) playbooks/migrate.yml -e vm=$(VM)

test: setup units sanity lint compat collection docs-test integration  ## everything CI runs

units:
	$(PY) -m pytest -q -rs tests/unit

sanity:
	bash tools/sanity.sh

lint:
	bash tools/lint.sh

compat: setup  ## the claims hold: older ansible-core releases (units, sanity) and Pythons 3.9-3.13 (compile, import)
	KVMOPS_COMPAT=1 bash tools/bootstrap.sh
	bash tools/compat.sh

docs:  ## HTML docs of the modules, roles and filters (antsibull-docs + Sphinx): .cache/docs/html
	bash tools/docs.sh

docs-test: docs  ## the built pages render their options tables in headless Chromium
	$(PY) -m pytest -q -rs -p no:cacheprovider -p no:pytest-ansible tests/docs

# The lab tests call modules through pytest-ansible (its ansible_adhoc fixture), which pytest.ini
# blocks for the unit tests: loaded here, on the lab inventory, the collection found through
# ANSIBLE_COLLECTIONS_PATH (--ansible-unit-inject-only: no collections/ link tree in the checkout).
TESTS ?= tests/integration
LAB_PYTEST := -p no:cacheprovider -p pytest-ansible --ansible-unit-inject-only --inventory $(INVENTORY)

integration: export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
integration: setup  ## the lab tests (TESTS=tests/integration/test_x.py::test_y for one)
	$(PY) -m pytest -q -rs --durations=30 $(LAB_PYTEST) $(TESTS)

bench: lab-up  ## issues 9, 15: ours against raw virsh, the link's limit, plain against TLS; writes docs/performance.md
	$(PY) tests/bench/bench.py $(BENCH_ARGS)

build:
	$(VENV)/bin/ansible-galaxy collection build --force --output-path .cache/build .

collection: build  ## the built tarball installs (offline, --no-deps) and its modules load
	rm -rf .cache/install
	$(VENV)/bin/ansible-galaxy collection install --force --no-deps -p .cache/install \
	  .cache/build/kvmops-migration-$$(sed -n 's/^version: //p' galaxy.yml).tar.gz
	for m in $$(ls plugins/modules | sed -n 's/\.py$$//p'); do \
	  ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/.cache/install ANSIBLE_CONFIG=  \
	    $(VENV)/bin/ansible-doc -t module kvmops.migration.$$m >/dev/null || exit 1; \
	done
	@echo "collection: built, installed into .cache/install, every module's docs load from there"
