# vmlab's own checkout: set-up, its tests, the main job, and every vm-* target
# (vmlab/vmlab.mk, the same file `vmlab init` gives other projects). `make vm-help`
# lists them. Make reports any failure as exit status 2; `.venv/bin/vmlab TASK` (or
# scripts/test) returns vmlab's own 0 passed / 1 failed / 2 did not finish.

HERE        := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
VENV        ?= $(HERE).venv
VMLAB       := $(VENV)/bin/vmlab
VMLAB_READY := $(VENV)/.ready

.DEFAULT_GOAL := vm-help
.PHONY: setup test vm-main

$(VENV)/.ready: $(HERE)pyproject.toml
	$(HERE)scripts/setup

setup: ## Install the Debian packages (as root) and the Python venv vmlab runs from
	$(HERE)scripts/setup

test: ## Run vmlab's own tests on a real guest (same as scripts/test)
	$(HERE)scripts/test

vm-main: $(VMLAB_READY) ## The main job: DragonFly's golden image from scratch (offline: the rehearsal guest's)
	$(VMLAB) golden --from-scratch --vm $(or $(VM),dragonfly)

include $(HERE)vmlab/vmlab.mk
