"""Bootable images kvmgr builds itself (the demo/test ISO)."""
