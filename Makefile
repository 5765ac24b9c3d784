# vmlab: each target is one `invoke vm.*` call (the logic lives in vmlab/).
# VM=name picks the VM (default: the first in vmlab.yaml). It works from any project
# folder (make -f path/to/this/Makefile). Make reports any failure as exit status 2;
# call `.venv/bin/invoke vm.TASK` (or scripts/test) for vmlab's 0 passed / 1 failed / 2 missing.

HERE   := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
VENV   ?= $(HERE).venv
INVOKE := $(VENV)/bin/invoke
VM     ?=
CMD    ?=
export VM CMD

.DEFAULT_GOAL := vm-help
.PHONY: $(shell awk -F: '/^[a-z][a-z0-9-]*:/ {print $$1}' $(firstword $(MAKEFILE_LIST)))

$(VENV)/.ready: $(HERE)pyproject.toml
	$(HERE)scripts/setup

setup: ## Install the Debian packages (as root) and the Python venv vmlab runs from
	$(HERE)scripts/setup

test: ## Run vmlab's own tests on a real guest (same as scripts/test)
	$(HERE)scripts/test

vm-main: $(VENV)/.ready ## The main job: DragonFly's golden image from scratch (offline: the rehearsal guest's)
	$(INVOKE) vm.golden --from-scratch --vm $(or $(VM),dragonfly)

vm-demo: $(VENV)/.ready ## Boot the VM afresh, prove SSH and the serial console, stop it
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

vm-reset: $(VENV)/.ready ## Give the VM a fresh disk from its golden (or base) image (asks first)
	$(INVOKE) vm.reset

vm-snapshot: $(VENV)/.ready ## Save the running VM's whole state as a snapshot (NAME=clean)
	$(INVOKE) vm.snapshot --name $(or $(NAME),clean)

vm-snapshots: $(VENV)/.ready ## List the VM's snapshots
	$(INVOKE) vm.snapshots

vm-restore: $(VENV)/.ready ## Put the VM back to a snapshot in seconds (NAME=clean)
	$(INVOKE) vm.restore --name $(or $(NAME),clean)

vm-suspend: $(VENV)/.ready ## Save the VM's running state to disk and stop QEMU
	$(INVOKE) vm.suspend

vm-resume: $(VENV)/.ready ## Bring a suspended VM back, same SSH port
	$(INVOKE) vm.resume

vm-golden: $(VENV)/.ready ## Make the VM's golden image: provisioned, verified, with a clean snapshot
	$(INVOKE) vm.golden

vm-setup: $(VENV)/.ready ## Fetch (or build) the installer and create the VM's disk
	$(INVOKE) vm.setup

vm-install: $(VENV)/.ready ## Install the guest from its ISO over the serial console
	$(INVOKE) vm.install

vm-provision: $(VENV)/.ready ## Run the profile's provision script in the freshly installed VM
	$(INVOKE) vm.provision

vm-sync: $(VENV)/.ready ## rsync the project into the guest
	$(INVOKE) vm.sync

vm-quick: $(VENV)/.ready ## The edit-test loop: sync, then run the 'quick' suite
	$(INVOKE) vm.quick

vm-build: $(VENV)/.ready ## Run the configured build command in the guest
	$(INVOKE) vm.build

vm-test-unit: $(VENV)/.ready ## Run the 'unit' suite in the guest
	$(INVOKE) vm.test --suite unit

vm-test-integration: $(VENV)/.ready ## Run the 'integration' suite in the guest
	$(INVOKE) vm.test --suite integration

vm-test-phase4: $(VENV)/.ready ## Run the 'phase4' suite in the guest
	$(INVOKE) vm.test --suite phase4

vm-test-e2e: $(VENV)/.ready ## Run the 'e2e' suite in the guest
	$(INVOKE) vm.test --suite e2e

vm-test-all: $(VENV)/.ready ## Run every suite in vmlab.yaml
	$(INVOKE) vm.test-all

vm-doctor: $(VENV)/.ready ## Check the host, config, cache and VMs; say what to fix
	$(INVOKE) vm.doctor

vm-help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
