"""The guest machine: QEMU, its monitor, the accelerator, disks and snapshots, what a failure leaves."""
