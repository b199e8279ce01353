package door

// Joining a container process's cgroups, for a child that lives in the
// container.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// JoinCgroups moves the calling process into the cgroups that lines name
// (the lines of a /proc/PID/cgroup read on the host), in every hierarchy
// mounted in our mount namespace, which must be the host's: a child of
// the door that lives in a container's pid namespace calls it first, so
// that it is held by the container's cgroups (devices, pids, memory) and
// no others. A hierarchy the host does not mount is skipped; one it
// mounts but through no mount that shows the cgroup is an error, as is a
// cgroup path with "..": the child must not stay in our cgroups.
//
// A hierarchy can be mounted more than once: CRIU mounts every hierarchy
// again in a directory of its own while it restores (".criu.cgyard.*"),
// and unmounts it when done; a mount can show only a subtree of the
// hierarchy (its root in the mount table). Every mount that shows the
// cgroup is tried in turn until one takes us: a mount gone under our
// feet is no reason to stay out of the container's cgroups. Only a
// cgroup file system's cgroup.procs is written, never created.
func JoinCgroups(lines []string) error {
	mnts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return fmt.Errorf("join cgroups: read our mount table: %w", err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	return eachCgroup(mnts, lines, func(procs []string) error {
		var errs []error
		for _, p := range procs {
			err := writeProcs(p, pid)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// openCgroupProcs opens, for a child that its C constructor moves into
// the cgroups that lines name (Entry.Cgroups), the cgroup.procs file of
// each, as JoinCgroups finds them; the calling thread must be in the
// host's mount namespace (its own mount table is read, not the
// process's: a worker's main thread is in a container's).
func openCgroupProcs(lines []string) ([]*os.File, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("join cgroups: read our mount table: %w", err)
	}
	mnts, err := mountinfo.GetMountsFromReader(f, mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("join cgroups: read our mount table: %w", err)
	}
	var files []*os.File
	err = eachCgroup(mnts, lines, func(procs []string) error {
		var errs []error
		for _, p := range procs {
			fd, err := openProcs(p)
			if err == nil {
				files = append(files, os.NewFile(uintptr(fd), p))
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		closeAll(files)
		return nil, err
	}
	return files, nil
}

// eachCgroup calls join with the cgroup.procs files that may take us
// into each cgroup lines name, in the hierarchies mounted in mnts.
func eachCgroup(mnts []*mountinfo.Info, lines []string, join func(procs []string) error) error {
	for _, l := range lines {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		if !strings.HasPrefix(path, "/") || slices.Contains(strings.Split(path, "/"), "..") {
			return fmt.Errorf("join cgroup %q of hierarchy %q: not a path under the hierarchy's root", path, ctrls)
		}
		dirs, mounted := cgroupDirs(mnts, ctrls, path)
		if !mounted {
			continue // hierarchy not mounted on the host: nothing to join
		}
		if len(dirs) == 0 {
			return fmt.Errorf("join cgroup %s of hierarchy %q: no mount of the hierarchy shows it", path, ctrls)
		}
		var procs []string
		for _, dir := range dirs {
			procs = append(procs, filepath.Join(dir, "cgroup.procs"))
		}
		if err := join(procs); err != nil {
			return err
		}
	}
	return nil
}

// cgroupDirs returns, in mount table order, the directories that show the
// cgroup path of the hierarchy of the controllers ctrls (a field of a
// /proc/PID/cgroup line: empty for cgroup2), one per mount of the
// hierarchy whose root is path or above it; mounted says whether the
// hierarchy is mounted at all.
func cgroupDirs(mnts []*mountinfo.Info, ctrls, path string) (dirs []string, mounted bool) {
	want := strings.Split(ctrls, ",")
	for _, m := range mnts {
		switch {
		case ctrls == "" && m.FSType == "cgroup2":
		case ctrls != "" && m.FSType == "cgroup" && hasAllOptions(m.VFSOptions, want):
		default:
			continue
		}
		mounted = true
		var rel string
		switch {
		case m.Root == "/":
			rel = path
		case path == m.Root:
			rel = "/"
		case strings.HasPrefix(path, m.Root+"/"):
			rel = path[len(m.Root):]
		default:
			continue // a subtree without the cgroup
		}
		dirs = append(dirs, filepath.Join(m.Mountpoint, rel))
	}
	return dirs, mounted
}

// writeProcs writes pid to procs (openProcs).
func writeProcs(procs string, pid []byte) error {
	fd, err := openProcs(procs)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, pid); err != nil {
		return fmt.Errorf("join cgroup %s: %w", procs, err)
	}
	return nil
}

// openProcs opens procs for writing; it must be on a cgroup file system:
// a directory left where a mount was, or a file system mounted over one,
// takes no write.
func openProcs(procs string) (int, error) {
	fd, err := unix.Open(procs, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("join cgroup %s: %w", procs, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("join cgroup %s: %w", procs, err)
	}
	if st.Type != unix.CGROUP_SUPER_MAGIC && st.Type != unix.CGROUP2_SUPER_MAGIC {
		unix.Close(fd)
		return -1, fmt.Errorf("join cgroup %s: not on a cgroup file system (type %#x)", procs, st.Type)
	}
	return fd, nil
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
