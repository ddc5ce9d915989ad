"""kvmgr: take a bare Linux host to running KVM virtual machines, and manage them afterwards."""

__version__ = "0.1.0"
