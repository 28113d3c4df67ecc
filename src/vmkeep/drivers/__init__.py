"""Implementations of the ports over libvirt, QEMU tools and the host: the only package that
imports libvirt or libnbd or runs qemu-img. Imports vmkeep.ports and vmkeep.domain only."""
