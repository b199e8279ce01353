package door

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
)

func TestCgroupDirs(t *testing.T) {
	mnt := func(point, root, fstype, opts string) *mountinfo.Info {
		return &mountinfo.Info{Mountpoint: point, Root: root, FSType: fstype, VFSOptions: opts}
	}
	// A node in the middle of a restore: CRIU's yard of another restore
	// comes first; a subtree of a hierarchy is bound elsewhere; one
	// hierarchy is mounted only through a subtree (as in a host that is
	// itself a container).
	table := []*mountinfo.Info{
		mnt("/run/criu/.criu.cgyard.X/net_cls,net_prio", "/", "cgroup", "rw,net_cls,net_prio"),
		mnt("/sys/fs/cgroup/net_cls,net_prio", "/", "cgroup", "rw,net_cls,net_prio"),
		mnt("/srv/sub", "/system.slice", "cgroup", "rw,cpu,cpuacct"),
		mnt("/sys/fs/cgroup/cpu,cpuacct", "/", "cgroup", "rw,cpu,cpuacct"),
		mnt("/sys/fs/cgroup/devices", "/lxc/host", "cgroup", "rw,devices"),
		mnt("/srv/sub2", "/user.slice", "cgroup2", "rw"),
		mnt("/sys/fs/cgroup/unified", "/", "cgroup2", "rw,nsdelegate"),
	}
	for _, tc := range []struct {
		ctrls, path string
		want        []string
		mounted     bool
	}{
		{"net_cls,net_prio", "/arh/c1", []string{"/run/criu/.criu.cgyard.X/net_cls,net_prio/arh/c1", "/sys/fs/cgroup/net_cls,net_prio/arh/c1"}, true},
		{"net_prio", "/arh/c1", []string{"/run/criu/.criu.cgyard.X/net_cls,net_prio/arh/c1", "/sys/fs/cgroup/net_cls,net_prio/arh/c1"}, true},
		{"cpu,cpuacct", "/arh/c1", []string{"/sys/fs/cgroup/cpu,cpuacct/arh/c1"}, true},
		{"cpu,cpuacct", "/system.slice/c2", []string{"/srv/sub/c2", "/sys/fs/cgroup/cpu,cpuacct/system.slice/c2"}, true},
		{"cpu,cpuacct", "/system.slice", []string{"/srv/sub", "/sys/fs/cgroup/cpu,cpuacct/system.slice"}, true},
		{"cpu,cpuacct", "/system.slicer", []string{"/sys/fs/cgroup/cpu,cpuacct/system.slicer"}, true},
		// Only a subtree is mounted: the cgroup inside it is reached
		// through it, one outside it is not reached at all.
		{"devices", "/lxc/host/arh/c1", []string{"/sys/fs/cgroup/devices/arh/c1"}, true},
		{"devices", "/arh/c1", nil, true},
		{"", "/arh/c1", []string{"/sys/fs/cgroup/unified/arh/c1"}, true},
		{"memory", "/arh/c1", nil, false},
	} {
		got, mounted := cgroupDirs(table, tc.ctrls, tc.path)
		if !slices.Equal(got, tc.want) || mounted != tc.mounted {
			t.Errorf("cgroupDirs(%q, %q) = %q, %v; want %q, %v", tc.ctrls, tc.path, got, mounted, tc.want, tc.mounted)
		}
	}
}

// TestWriteProcsOnlyOnCgroupFS: a cgroup.procs that is not there is not
// created, and one that is not on a cgroup file system is not written.
func TestWriteProcsOnlyOnCgroupFS(t *testing.T) {
	dir := t.TempDir()
	procs := filepath.Join(dir, "cgroup.procs")
	if err := writeProcs(procs, []byte("1")); err == nil {
		t.Fatal("writeProcs of a missing cgroup.procs succeeded")
	}
	if _, err := os.Stat(procs); err == nil {
		t.Fatal("writeProcs created cgroup.procs")
	}
	if err := os.WriteFile(procs, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := writeProcs(procs, []byte("1"))
	if err == nil || !strings.Contains(err.Error(), "not on a cgroup file system") {
		t.Fatalf("writeProcs on %s: %v, want a refusal", dir, err)
	}
	if b, _ := os.ReadFile(procs); len(b) != 0 {
		t.Fatalf("writeProcs wrote %q to a file outside cgroupfs", b)
	}
}

func TestJoinCgroupsRefusesDotDot(t *testing.T) {
	err := JoinCgroups([]string{"0::/../../host"})
	if err == nil || !strings.Contains(err.Error(), "not a path under") {
		t.Fatalf("JoinCgroups with ..: %v, want a refusal", err)
	}
}
