package units

import (
	"os"
	"path"
	"strconv"
	"strings"
)

// Kind is the kind of program that serves an autofs mount.
type Kind string

const (
	// None: nobody serves the mount (catatonic or orphaned).
	None Kind = "none"
	// Systemd: the container's systemd, through a .automount unit.
	Systemd Kind = "systemd"
	// Automount: the autofs package's automount daemon.
	Automount Kind = "automount"
	// Unknown: some other program; the hook leaves its mounts alone.
	Unknown Kind = "unknown"
)

// Classify tells what kind of program pid (host numbering) is, from its
// executable name and its command name. nsPid is its pid inside the
// container: systemd serves automounts only as the container's init.
func Classify(pid, nsPid int, comm string) Kind {
	if pid <= 0 {
		return None
	}
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	exe = strings.TrimSuffix(exe, " (deleted)")
	return classify(path.Base(exe), comm, nsPid)
}

func classify(exeBase, comm string, nsPid int) Kind {
	switch {
	case nsPid == 1 && (exeBase == "systemd" || comm == "systemd"):
		return Systemd
	case exeBase == "automount" || comm == "automount":
		return Automount
	}
	return Unknown
}
