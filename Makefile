# vmlab: each target is one `invoke vm.*` call (the logic lives in vmlab/).
# VM=name picks the VM (default: the first in vmlab.yaml).
# Note: make reports any failure as exit status 2; call `.venv/bin/invoke vm.TASK`
# (or scripts/test) directly when you need vmlab's 0 passed / 1 failed / 2 missing.

VENV   ?= .venv
INVOKE := $(VENV)/bin/invoke
VM     ?=
CMD    ?=
export VM CMD

.DEFAULT_GOAL := vm-help
.PHONY: setup test vm-demo vm-start vm-stop vm-status vm-ssh vm-console vm-destroy vm-image vm-help

$(VENV)/.ready: pyproject.toml
	scripts/setup

setup: ## Install the Debian packages (as root) and the Python venv vmlab runs from
	scripts/setup

test: ## Run vmlab's own tests on a real guest (same as scripts/test)
	scripts/test

vm-demo: $(VENV)/.ready ## The main job: boot the VM from scratch, prove SSH and the console, stop it
	$(INVOKE) vm.demo

vm-start: $(VENV)/.ready ## Start the VM (building its image if needed) and wait for SSH
	$(INVOKE) vm.start

vm-stop: $(VENV)/.ready ## Stop the VM: ACPI power-off, then quit, then kill
	$(INVOKE) vm.stop

vm-status: $(VENV)/.ready ## Show every VM: state, pid, SSH port, accelerator
	$(INVOKE) vm.status

vm-ssh: $(VENV)/.ready ## Open a shell in the VM (CMD="..." runs one command instead)
	$(INVOKE) vm.ssh $(if $(CMD),-c "$$CMD")

vm-console: $(VENV)/.ready ## Attach to the VM's serial console (Ctrl-] detaches)
	$(INVOKE) vm.console

vm-destroy: $(VENV)/.ready ## Stop the VM and delete its disk and state (asks first)
	$(INVOKE) vm.destroy

vm-image: $(VENV)/.ready ## Build (or find cached) the image the VM starts from
	$(INVOKE) vm.image

vm-help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
