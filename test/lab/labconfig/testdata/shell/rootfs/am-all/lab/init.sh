#!/bin/sh
# arh-lab init (kind automount): stdio inside the container, automount as a
# process-group leader, then a reaping sleep loop as PID 1.
exec </dev/null >/dev/null 2>&1
umask 027; setpriv --securebits +no_setuid_fixup,+keep_caps_locked -- prlimit --as=536870912 -- setsid /usr/sbin/automount -d -p /run/automount.pid </dev/null >/dev/null 2>&1
while :; do sleep 3600; done
