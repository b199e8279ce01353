package door

import (
	"slices"
	"testing"

	"github.com/moby/sys/mountinfo"
)

func TestHierarchyRoots(t *testing.T) {
	mnt := func(point, root, fstype, opts string) *mountinfo.Info {
		return &mountinfo.Info{Mountpoint: point, Root: root, FSType: fstype, VFSOptions: opts}
	}
	// A node in the middle of a restore: CRIU's yard of another restore
	// comes first, and a subtree of a hierarchy is bound elsewhere.
	table := []*mountinfo.Info{
		mnt("/run/criu/.criu.cgyard.X/net_cls,net_prio", "/", "cgroup", "rw,net_cls,net_prio"),
		mnt("/sys/fs/cgroup/net_cls,net_prio", "/", "cgroup", "rw,net_cls,net_prio"),
		mnt("/srv/sub", "/system.slice", "cgroup", "rw,cpu,cpuacct"),
		mnt("/sys/fs/cgroup/cpu,cpuacct", "/", "cgroup", "rw,cpu,cpuacct"),
		mnt("/srv/sub2", "/user.slice", "cgroup2", "rw"),
		mnt("/sys/fs/cgroup/unified", "/", "cgroup2", "rw,nsdelegate"),
	}
	for _, tc := range []struct {
		ctrls string
		want  []string
	}{
		{"net_cls,net_prio", []string{"/run/criu/.criu.cgyard.X/net_cls,net_prio", "/sys/fs/cgroup/net_cls,net_prio"}},
		{"net_prio", []string{"/run/criu/.criu.cgyard.X/net_cls,net_prio", "/sys/fs/cgroup/net_cls,net_prio"}},
		{"cpu,cpuacct", []string{"/sys/fs/cgroup/cpu,cpuacct"}},
		{"", []string{"/sys/fs/cgroup/unified"}},
		{"memory", nil},
	} {
		if got := hierarchyRoots(table, tc.ctrls); !slices.Equal(got, tc.want) {
			t.Errorf("hierarchyRoots(%q) = %q, want %q", tc.ctrls, got, tc.want)
		}
	}
}
