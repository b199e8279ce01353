package mounts

import (
	"os"

	"golang.org/x/sys/unix"
)

// CatatonicThroughFDs makes each target catatonic through an fd that
// process p holds on it (the automount daemon keeps an ioctl fd on every
// direct and offset mount), copied with pidfd_getfd. This works even when
// a request is pending, when no path walk can reach the mount; the
// waiters are released at once. It returns the mount points released.
func CatatonicThroughFDs(ctl *ControlDevice, p *Process, targets []Target) []string {
	want := make(map[uint64]string, len(targets))
	for _, t := range targets {
		want[t.Dev] = t.Where
	}
	var released []string
	p.EachFD(func(_ int, f *os.File) bool {
		var st unix.Stat_t
		var sf unix.Statfs_t
		fd := int(f.Fd())
		if unix.Fstatfs(fd, &sf) == nil && sf.Type == unix.AUTOFS_SUPER_MAGIC && unix.Fstat(fd, &st) == nil {
			if where, ok := want[st.Dev]; ok && ctl.Catatonic(f) == nil {
				delete(want, st.Dev)
				released = append(released, where)
			}
		}
		return len(want) > 0
	})
	return released
}
