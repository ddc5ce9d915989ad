"""Backups of VMs: taking points (:mod:`.backup`), the on-disk repository (:mod:`.repository`),
verifying (:mod:`.verify`) and restoring (:mod:`.restore`) them, over one host's connection."""
