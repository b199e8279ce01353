#!/bin/bash
# baseline.sh PID - the shell baseline of the benchmark: the job of the hook
# for a systemd container done the way CRIU's systemd-autofs-restart.sh does
# it, with nsenter, systemctl and mount processes per step and per unit:
# for every autofs mount of systemd, move what covers it aside, restart its
# unit, put it back. Written for the benchmark only; it makes no attempt at
# the hook's safety (no catatonic step, no deadline).
set -eu
pid=$1
ns() { nsenter -t "$pid" -m -p -- "$@"; }
# "MOUNTPOINT FSTYPE SOURCE" of every mount (the fields after " - ").
table() { sed -E 's/^[0-9]+ [0-9]+ [^ ]+ [^ ]+ ([^ ]+) .* - ([^ ]+) ([^ ]+) .*/\1 \2 \3/' "/proc/$pid/mountinfo"; }
stage=/run/.arh-baseline
ns mkdir -p "$stage"
ns mount -t tmpfs none "$stage"
ns mount --make-private "$stage"
i=0
for mp in $(table | awk '$2 == "autofs" && $3 ~ /^systemd/ {print $1}'); do
	i=$((i + 1))
	unit=$(ns systemd-escape --path --suffix=automount "$mp")
	covered=$(table | awk -v m="$mp" '$1 == m && $2 != "autofs"' | wc -l)
	if [ "$covered" -gt 0 ]; then
		ns mkdir -p "$stage/$i"
		ns mount --make-private "$mp"
		ns mount --move "$mp" "$stage/$i"
	fi
	ns systemctl restart "$unit"
	if [ "$covered" -gt 0 ]; then
		ns mount --move "$stage/$i" "$mp"
	fi
done
ns umount -l "$stage"
