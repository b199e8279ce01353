#!/bin/sh
# arh-lab init (kind automount): stdio inside the container, automount as a
# process-group leader, then a reaping sleep loop as PID 1.
exec </dev/null >/dev/null 2>&1
setsid /usr/sbin/automount -f -d -p /run/automount.pid </dev/null >/run/automount.log 2>&1 &
while :; do sleep 3600; done
