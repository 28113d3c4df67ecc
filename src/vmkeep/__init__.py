"""vmkeep: snapshots and incremental-forever backups for running libvirt/KVM virtual machines.

Layers (see docs/architecture.md): cli -> services -> engine -> ports -> domain, with drivers
implementing ports. Dependencies point downwards only; import-linter enforces it.
"""

__version__ = "0.1.0"
