# vmlab's Make targets: each is one `vmlab TASK` call (the logic lives in vmlab).
# `vmlab init` puts this file beside a project's Makefile and includes it; `make vm-help`
# lists the targets, and a `vm-test-NAME` for each suite of vmlab.yaml (one pattern rule
# runs them; a target of the project's own with such a name is the project's).
# VM=name picks a VM (default: the first in vmlab.yaml); VM_CMD='...' gives vm-ssh a
# command, VM_SNAPSHOT=... a snapshot (default clean), VM_SUITE=... the suite of vm-test.
# (Prefixed, so they cannot clash with the project's own variables.) VMLAB_RAW=1 shows a
# suite's output as it comes, not a line per test or package.
# Make reports any failure as exit status 2; `vmlab TASK` itself returns 0 passed or
# done, 1 failed, 2 did not finish (a prerequisite is missing, and it says which).

# The vmlab command: a project venv's, else the one on PATH.
VMLAB ?= $(firstword $(wildcard .venv/bin/vmlab) vmlab)
# What every target needs first (vmlab's own checkout sets it to its venv).
VMLAB_READY ?=
VM ?=
VM_CMD ?=
VM_SNAPSHOT ?= clean
VM_SUITE ?=
export VM VM_CMD

# First, so that in a Makefile of nothing else a plain `make` only lists the targets.
# The suites are vmlab's to read from vmlab.yaml (it says what is wrong with the file).
vm-help: ## List every vm-* target with what it does, and a vm-test-NAME per suite
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@if command -v $(VMLAB) >/dev/null 2>&1; then $(VMLAB) suites --make || true; else \
	  printf "  make %-20s %s\n" vm-test-NAME "Run suite NAME of vmlab.yaml (once vmlab is installed, listed here)"; fi

vm-start: $(VMLAB_READY) ## Start the VM (building its image if needed) and wait for SSH
	$(VMLAB) start

vm-stop: $(VMLAB_READY) ## Stop the VM: ACPI power-off, then quit, then kill
	$(VMLAB) stop

vm-status: $(VMLAB_READY) ## Show every VM: state, pid, SSH port, accelerator
	$(VMLAB) status

vm-ssh: $(VMLAB_READY) ## Open a shell in the VM (VM_CMD='...' runs one command instead)
	$(VMLAB) ssh $(if $(VM_CMD),-c "$$VM_CMD")

vm-console: $(VMLAB_READY) ## Attach to the VM's serial console (Ctrl-] detaches)
	$(VMLAB) console

vm-destroy: $(VMLAB_READY) ## Stop the VM and delete its disk and state (asks first)
	$(VMLAB) destroy

vm-image: $(VMLAB_READY) ## Build (or find cached) the image the VM starts from
	$(VMLAB) image

vm-reset: $(VMLAB_READY) ## Give the VM a fresh disk from its golden (or base) image (asks first)
	$(VMLAB) reset

vm-snapshot: $(VMLAB_READY) ## Save the running VM's whole state as a snapshot (VM_SNAPSHOT=clean)
	$(VMLAB) snapshot --name $(VM_SNAPSHOT)

vm-snapshots: $(VMLAB_READY) ## List the VM's snapshots
	$(VMLAB) snapshots

vm-restore: $(VMLAB_READY) ## Put the VM back to a snapshot in seconds (VM_SNAPSHOT=clean)
	$(VMLAB) restore --name $(VM_SNAPSHOT)

vm-suspend: $(VMLAB_READY) ## Save the VM's running state to disk and stop QEMU
	$(VMLAB) suspend

vm-resume: $(VMLAB_READY) ## Bring a suspended VM back, same SSH port
	$(VMLAB) resume

vm-golden: $(VMLAB_READY) ## Make the VM's golden image: provisioned, verified, with a clean snapshot
	$(VMLAB) golden

vm-setup: $(VMLAB_READY) ## Fetch (or build) the installer and create the VM's disk
	$(VMLAB) setup

vm-install: $(VMLAB_READY) ## Install the guest from its ISO over the serial console
	$(VMLAB) install

vm-provision: $(VMLAB_READY) ## Install the config's packages in a VM started afresh from its base
	$(VMLAB) provision

vm-sync: $(VMLAB_READY) ## rsync the project into the guest
	$(VMLAB) sync

vm-quick: $(VMLAB_READY) ## The edit-test loop: start the VM if needed, sync, run the 'quick' suite
	$(VMLAB) quick

vm-watch: $(VMLAB_READY) ## Run the 'quick' suite on every save until Ctrl-C (VM_SUITE=name for another)
	$(VMLAB) watch $(if $(VM_SUITE),--suite "$(VM_SUITE)")

vm-build: $(VMLAB_READY) ## Run the configured build command in the guest
	$(VMLAB) build

vm-test: $(VMLAB_READY) ## Run one suite of vmlab.yaml in the guest (VM_SUITE=name)
	$(VMLAB) test $(if $(VM_SUITE),--suite "$(VM_SUITE)")

# vm-test-NAME: vm-quick for suite NAME: start the VM if needed, sync what changed, run NAME
# (vmlab names the configured suites if there is none of that name).
vm-test-%: $(VMLAB_READY)
	$(VMLAB) quick --suite "$*"

vm-test-all: $(VMLAB_READY) ## Run every suite in vmlab.yaml
	$(VMLAB) test-all

vm-demo: $(VMLAB_READY) ## Boot the VM afresh, prove SSH and the serial console, stop it
	$(VMLAB) demo

vm-doctor: $(VMLAB_READY) ## Check the host, config, cache and VMs; say what to fix
	$(VMLAB) doctor

.PHONY: vm-start vm-stop vm-status vm-ssh vm-console vm-destroy vm-image vm-reset vm-snapshot \
	vm-snapshots vm-restore vm-suspend vm-resume vm-golden vm-setup vm-install vm-provision vm-sync \
	vm-quick vm-watch vm-build vm-test vm-test-all vm-demo vm-doctor vm-help
