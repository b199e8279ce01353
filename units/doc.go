// Package units knows the masters of autofs mounts: systemd, with its
// .automount units, and the autofs automount daemon. It names units,
// classifies a master process, restarts systemd units over the
// container's private D-Bus socket, and respawns an automount daemon with
// exactly the privileges it had.
package units
