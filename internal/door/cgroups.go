package door

// Joining a container process's cgroups, for a child that lives in the
// container.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// JoinCgroups moves the calling process into the cgroups that lines name
// (the lines of a /proc/PID/cgroup read on the host), in every hierarchy
// mounted in our mount namespace, which must be the host's: a child of
// the door that lives in a container's pid namespace calls it first, so
// that it is held by the container's cgroups (devices, pids, memory) and
// no others. A hierarchy the host does not mount is skipped.
//
// A hierarchy can be mounted more than once: CRIU mounts every hierarchy
// again in a directory of its own while it restores (".criu.cgyard.*"),
// and unmounts it when done; another mount can show only a subtree of
// the hierarchy. Only mounts of the hierarchy's root are used, and each
// in turn until one takes us: a mount gone under our feet is no reason
// to stay out of the container's cgroups.
func JoinCgroups(lines []string) error {
	mnts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return fmt.Errorf("join cgroups: read our mount table: %w", err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, l := range lines {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		roots := hierarchyRoots(mnts, ctrls)
		if len(roots) == 0 {
			continue // hierarchy not mounted on the host: nothing to join
		}
		var errs []error
		for _, root := range roots {
			procs := filepath.Join(root, filepath.Clean("/"+path), "cgroup.procs")
			err := os.WriteFile(procs, pid, 0)
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, fmt.Errorf("join cgroup %s: %w", procs, err))
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	return nil
}

// hierarchyRoots returns the mount points, in mount table order, that
// show the whole hierarchy of the controllers ctrls (a field of a
// /proc/PID/cgroup line: empty for cgroup2).
func hierarchyRoots(mnts []*mountinfo.Info, ctrls string) []string {
	var roots []string
	for _, m := range mnts {
		if m.Root != "/" {
			continue
		}
		switch {
		case ctrls == "" && m.FSType == "cgroup2":
			roots = append(roots, m.Mountpoint)
		case ctrls != "" && m.FSType == "cgroup" && hasAllOptions(m.VFSOptions, strings.Split(ctrls, ",")):
			roots = append(roots, m.Mountpoint)
		}
	}
	return roots
}

func hasAllOptions(opts string, want []string) bool {
	have := map[string]bool{}
	for _, o := range strings.Split(opts, ",") {
		have[o] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}
