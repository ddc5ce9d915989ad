"""Host-level setup: checks, distribution packages, bridges, libvirt daemons."""
