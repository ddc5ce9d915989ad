#!/bin/sh
# ACPI power button (busybox acpid runs /etc/acpi/PWRF/00000080): power off cleanly.
exec /bin/poweroff
