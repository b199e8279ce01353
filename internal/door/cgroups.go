package door

// Joining a container process's cgroups, for a child that lives in the
// container.

import (
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
		root := ""
		for _, m := range mnts {
			switch {
			case ctrls == "" && m.FSType == "cgroup2":
				root = m.Mountpoint
			case ctrls != "" && m.FSType == "cgroup" && hasAllOptions(m.VFSOptions, strings.Split(ctrls, ",")):
				root = m.Mountpoint
			}
			if root != "" {
				break
			}
		}
		if root == "" {
			continue // hierarchy not mounted on the host: nothing to join
		}
		procs := filepath.Join(root, filepath.Clean("/"+path), "cgroup.procs")
		if err := os.WriteFile(procs, pid, 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", procs, err)
		}
	}
	return nil
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
