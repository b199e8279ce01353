#!/bin/sh
# Before the binary goes: a hooks.d JSON naming a missing binary breaks
# every container start, and a restore starting meanwhile would run the
# CRIU plugin without its binary. dpkg runs this with "remove", "upgrade"
# or "deconfigure" before the files change; rpm runs the old package's
# %preun after the new package's files are in place, with 1 on an upgrade:
# then the new files stay.
set -e
case "${1:-}" in [1-9]*) exit 0 ;; esac
rm -f /usr/share/containers/oci/hooks.d/autofs-restore-hook.json
rm -f /usr/lib/criu/autofs-restore-hook.so
