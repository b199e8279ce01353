package cgtree

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/criuimg"
)

func TestPlan(t *testing.T) {
	mnts := []Mount{
		{Mountpoint: "/sys/fs/cgroup", Root: "/arh-lab/c"},
		{Mountpoint: "/sys/fs/cgroup/inner", Root: "/arh-lab/c/inner"},
		// As the mount table shows it while CRIU restores: in CRIU's
		// directory, named for its id in the checkpoint.
		{Mountpoint: "/tmp/.criu.mntns.Xa1b2/mnt-0000000072", Root: "/arh-lab/c/var", ImageID: 72},
	}
	image := map[uint32]string{72: "/var/lib/cg", 1: "/sys/fs/cgroup", 2: "/sys/fs/cgroup/inner", 5: "/"}
	w := func(paths ...string) []criuimg.Watch {
		var ws []criuimg.Watch
		for _, p := range paths {
			id := uint32(1)
			switch {
			case strings.HasPrefix(p, "/var/lib/cg/"):
				id = 72
			case strings.HasPrefix(p, "/sys/fs/cgroup/inner/"):
				id = 2
			case p == "/etc/passwd":
				id = 5
			}
			ws = append(ws, criuimg.Watch{Path: p, MntID: id})
		}
		return ws
	}
	needs, err := Plan(w(
		"/sys/fs/cgroup/init.scope/cgroup.events",
		"/sys/fs/cgroup/init.scope/memory.events",
		"/sys/fs/cgroup/system.slice/srv-a.mount/cgroup.events",
		"/sys/fs/cgroup/init.scope/memory.events",   // twice: once
		"/sys/fs/cgroup/init.scope/memory.pressure", // no controller
		"/sys/fs/cgroup/inner/x.service/pids.events",
		"/var/lib/cg/y.scope/cgroup.events",
		"/etc/passwd",           // not on a cgroup2 mount
		"/sys/fs/cgroupish/a/b", // not below the mount point
		"",                      // no path recorded
	), mnts, image)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range needs {
		got = append(got, fmt.Sprintf("%s %q %s [%s]", n.Root, n.Dirs, n.File, n.Controller))
	}
	want := []string{
		`/arh-lab/c ["init.scope"] cgroup.events []`,
		`/arh-lab/c ["init.scope"] memory.events [memory]`,
		`/arh-lab/c ["system.slice" "srv-a.mount"] cgroup.events []`,
		`/arh-lab/c ["init.scope"] memory.pressure []`,
		`/arh-lab/c/inner ["x.service"] pids.events [pids]`,
		`/arh-lab/c/var ["y.scope"] cgroup.events []`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("needs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(needs) < 3 {
		t.FailNow()
	}
	if s := needs[2].String(); s != "/arh-lab/c/system.slice/srv-a.mount/cgroup.events" {
		t.Errorf("String: %s", s)
	}
}

// The paths come from the checkpoint: a path that would leave the
// container's cgroup, or that is not a clean path, is refused and named;
// so are too deep a path and too many of them.
func TestPlanRefuses(t *testing.T) {
	mnts := []Mount{{Mountpoint: "/sys/fs/cgroup", Root: "/arh-lab/c"}}
	for _, p := range []string{
		"/sys/fs/cgroup/../../../etc/x",
		"/sys/fs/cgroup/a/../../b/cgroup.events",
		"/sys/fs/cgroup/./cgroup.events",
		"/sys/fs/cgroup//cgroup.events",
		"/sys/fs/cgroup/a/",
		"/sys/fs/cgroup/a\x00b/cgroup.events",
		"/sys/fs/cgroup/" + strings.Repeat("d/", MaxDepth+1) + "cgroup.events",
		"/sys/fs/cgroup/" + strings.Repeat("n", 256) + "/cgroup.events",
	} {
		needs, err := Plan([]criuimg.Watch{{Path: p, MntID: 1}}, mnts, map[uint32]string{1: "/sys/fs/cgroup"})
		if err == nil || len(needs) != 0 {
			t.Errorf("%q: needs %v, err %v; want it refused", p, needs, err)
		}
	}
	var many []criuimg.Watch
	for i := range MaxNeeds + 1 {
		many = append(many, criuimg.Watch{Path: fmt.Sprintf("/sys/fs/cgroup/u%d/cgroup.events", i), MntID: 1})
	}
	needs, err := Plan(many, mnts, map[uint32]string{1: "/sys/fs/cgroup"})
	if err == nil || len(needs) != MaxNeeds || !strings.Contains(err.Error(), "more than") {
		t.Errorf("%d watches: %d needs, err %v", len(many), len(needs), err)
	}
}

func TestImageID(t *testing.T) {
	for mp, want := range map[string]uint32{
		"/tmp/.criu.mntns.JxJ1m6/mnt-0000000072": 72,
		"/tmp/.criu.mntns.JxJ1m6/mnt-12":         12,
		"/sys/fs/cgroup":                         0,
		"/srv/mnt-0000000072":                    0,
		"/tmp/.criu.mntns.JxJ1m6/mnt-x":          0,
	} {
		if got := ImageID(mp); got != want {
			t.Errorf("ImageID(%q) = %d, want %d", mp, got, want)
		}
	}
}

// The plan is linear in the checkpoint: the largest one, with watches on
// no mount of ours, and many mounts, as a container can make them, is
// planned at once; and the errors of a checkpoint of bad watches stay
// short.
func TestPlanLinearAndBounded(t *testing.T) {
	var mnts []Mount
	image := map[uint32]string{}
	for i := range 2000 {
		mp := "/m/" + strings.Repeat("x", 2000) + fmt.Sprint(i)
		mnts = append(mnts, Mount{Mountpoint: mp, Root: "/arh-lab/c"})
		image[uint32(i+1)] = mp
	}
	deep := "/m/" + strings.Repeat("x/", 2000)
	var ws []criuimg.Watch
	for i := range criuimg.MaxWatches {
		ws = append(ws, criuimg.Watch{Path: deep + fmt.Sprint(i), MntID: uint32(i%3000 + 1)})
	}
	start := time.Now()
	needs, _ := Plan(ws, mnts, image)
	if d := time.Since(start); d > 5*time.Second || len(needs) != 0 {
		t.Errorf("%d watches, %d mounts: %d needs in %s", len(ws), len(mnts), len(needs), d)
	}
	bad := []criuimg.Watch{}
	for range 20000 {
		bad = append(bad, criuimg.Watch{Path: "/sys/fs/cgroup/" + strings.Repeat("\xff", 1000) + "/../cgroup.events", MntID: 1})
	}
	_, err := Plan(bad, []Mount{{Mountpoint: "/sys/fs/cgroup", Root: "/c"}}, map[uint32]string{1: "/sys/fs/cgroup"})
	if err == nil || len(err.Error()) > 16<<10 || !strings.Contains(err.Error(), "and 19990 more") {
		t.Errorf("20,000 bad watches: an error of %d bytes", len(fmt.Sprint(err)))
	}
}
