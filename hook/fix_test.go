package hook

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

const planMountinfo = `1 0 0:60 / / rw - overlay overlay rw
10 1 0:66 / /srv/a rw - autofs systemd-1 rw,fd=27,pgrp=100,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=1
11 1 0:67 / /srv/b rw - autofs systemd-1 rw,fd=28,pgrp=100,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=2
12 10 0:69 / /srv/a rw - tmpfs tmpfs rw
13 1 0:71 / /ind rw - autofs auto.ind rw,fd=5,pgrp=200,timeout=300,minproto=5,maxproto=5,indirect,pipe_ino=3
14 1 0:72 / /srv/d rw - autofs auto.direct rw,fd=6,pgrp=200,timeout=300,minproto=5,maxproto=5,direct,pipe_ino=3
15 1 0:73 / /srv/x rw - autofs other rw,fd=7,pgrp=300,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=4
16 1 0:74 / /srv/cat rw - autofs systemd-1 rw,fd=-1,pgrp=100,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=-1
17 1 0:75 / /srv/n rw - autofs systemd-1 rw,fd=29,pgrp=100,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=5
`

// fakeContainer classifies planMountinfo as inspect would, with the
// masters given by pgrp: 100 systemd, 200 automount, 300 unknown.
func fakeContainer(t *testing.T, restored bool, rec record) *Container {
	t.Helper()
	tab, err := mounts.ParseTable(strings.NewReader(planMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[int]units.Kind{100: units.Systemd, 200: units.Automount, 300: units.Unknown}
	c := &Container{Table: tab, Evidence: Evidence{OwnTimeNS: restored}}
	for _, a := range tab.Autofs {
		m := &Mount{Autofs: a, Master: proc.Ref{Pid: a.Options.PGrp}, Kind: kinds[a.Options.PGrp], Fixed: rec.knownGood(a.Dev())}
		if a.Mountpoint() == "/srv/n" {
			m.NestedPids = []int{555}
		}
		m.State = stateOf(m, restored)
		c.Mounts = append(c.Mounts, m)
	}
	return c
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func mountpoints(ms []*Mount) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint())
	}
	return strings.Join(out, " ")
}

func TestStateOf(t *testing.T) {
	want := map[string]MountState{
		"/srv/a": StateStale, "/srv/b": StateStale, "/ind": StateOK, "/srv/d": StateStale,
		"/srv/x": StateOK, "/srv/cat": StateCatatonic, "/srv/n": StateStale,
	}
	for _, m := range fakeContainer(t, true, record{}).Mounts {
		if m.State != want[m.Mountpoint()] {
			t.Errorf("restored %s: %s, want %s", m.Mountpoint(), m.State, want[m.Mountpoint()])
		}
	}
	for _, m := range fakeContainer(t, false, record{}).Mounts {
		if m.State == StateStale {
			t.Errorf("not restored %s: stale", m.Mountpoint())
		}
	}
	for _, m := range fakeContainer(t, true, record{Fixed: []uint64{67}}).Mounts {
		if m.Mountpoint() == "/srv/b" && m.State != StateOK {
			t.Errorf("fixed /srv/b: %s, want ok", m.State)
		}
	}
	// Found at restore: /srv/a and /srv/b only; the others appeared later
	// (a live master mounted them) and are not stale.
	for _, m := range fakeContainer(t, true, record{Restored: []uint64{66, 67}}).Mounts {
		wantStale := m.Mountpoint() == "/srv/a" || m.Mountpoint() == "/srv/b"
		if (m.State == StateStale) != wantStale {
			t.Errorf("%s: %s, stale want %v", m.Mountpoint(), m.State, wantStale)
		}
	}
	orphan := &Mount{Autofs: &mounts.Autofs{Options: mounts.Options{FD: 3}}, Kind: units.None}
	if s := stateOf(orphan, true); s != StateOrphaned {
		t.Errorf("no master: %s, want orphaned", s)
	}
}

func TestPlanPreResume(t *testing.T) {
	tests := []struct {
		name     string
		restored bool
		opts     Options
		want     string
	}{
		// /srv/a is covered (cannot hang), /ind is indirect, /srv/x has an
		// unknown master, /srv/cat is catatonic already.
		{"restored", true, Options{}, "/srv/b /srv/d /srv/n"},
		{"nested skip", true, Options{Config: Config{SkipNested: true}}, "/srv/b /srv/d"},
		{"fresh start", false, Options{}, ""},
	}
	for _, tt := range tests {
		got := mountpoints(planPreResume(fakeContainer(t, tt.restored, record{}).Mounts, tt.opts, quietLog()))
		if got != tt.want {
			t.Errorf("%s: picked %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestPlanPostResume(t *testing.T) {
	c := fakeContainer(t, true, record{})
	prepared := []preparedMount{
		{Mountpoint: "/srv/cat", Dev: 74, Kind: "systemd"},
		// Detached by systemd after it was made catatonic: gone from the table.
		{Mountpoint: "/srv/gone", Dev: 99, Kind: "systemd", Unit: "srv-gone.automount"},
	}
	sd, daemons := planPostResume(c, prepared, Options{}, quietLog())
	var got []string
	for _, t := range sd {
		got = append(got, t.Where)
	}
	if want := "/srv/a /srv/b /srv/cat /srv/n /srv/gone"; strings.Join(got, " ") != want {
		t.Errorf("systemd targets %q, want %q", strings.Join(got, " "), want)
	}
	if len(daemons) != 1 || mountpoints(daemons[proc.Ref{Pid: 200}]) != "/srv/d" {
		t.Errorf("daemons %v, want 200: /srv/d", daemons)
	}
	// Not prepared: a catatonic mount is nobody's business.
	sd, _ = planPostResume(c, nil, Options{Config: Config{SkipNested: true}}, quietLog())
	got = got[:0]
	for _, t := range sd {
		got = append(got, t.Where)
	}
	if want := "/srv/a /srv/b"; strings.Join(got, " ") != want {
		t.Errorf("without prepared, nested skipped: %q, want %q", strings.Join(got, " "), want)
	}
}

// The daemon 200 is respawned for its stale /srv/d; its indirect /ind
// loses its master too, so the respawn must wait for it as well.
func TestAlsoServedBy(t *testing.T) {
	c := fakeContainer(t, true, record{})
	_, daemons := planPostResume(c, nil, Options{}, quietLog())
	skip := map[uint64]bool{}
	for _, m := range daemons[proc.Ref{Pid: 200}] {
		skip[m.Dev()] = true
	}
	var got []string
	for _, tg := range alsoServedBy(c, proc.Ref{Pid: 200}, skip) {
		got = append(got, tg.Where)
	}
	if strings.Join(got, " ") != "/ind" {
		t.Errorf("also waited for %q, want /ind", got)
	}
	if also := alsoServedBy(c, proc.Ref{Pid: 300}, nil); len(also) != 1 || also[0].Where != "/srv/x" {
		t.Errorf("daemon 300: %v, want /srv/x", also)
	}
	// Another process that got pid 300 later serves nothing of it.
	if also := alsoServedBy(c, proc.Ref{Pid: 300, StartTime: 1}, nil); len(also) != 0 {
		t.Errorf("a later process 300: %v, want none", also)
	}
	// A catatonic mount has no master to lose.
	if also := alsoServedBy(c, proc.Ref{Pid: 100}, nil); strings.Contains(fmt.Sprint(also), "/srv/cat") {
		t.Errorf("daemon 100: %v includes the catatonic /srv/cat", also)
	}
}

// The default deadline of a restart grows with the number of mounts to
// fix (a container's systemd restarting 1,003 units took more than the old
// fixed 20 s on an emulated CPU), from a base a loaded node needs (60 s),
// within a bound; --timeout is taken as given, and 0 given is refused.
func TestRestartTimeoutGrowsWithTheWork(t *testing.T) {
	def := Options{}
	for _, tt := range []struct {
		n    int
		want time.Duration
	}{{0, 60 * time.Second}, {3, 60*time.Second + 150*time.Millisecond}, {1003, 60*time.Second + 1003*50*time.Millisecond}, {100000, 3 * time.Minute}} {
		if got := def.timeout(tt.n); got != tt.want {
			t.Errorf("default for %d mounts: %s, want %s", tt.n, got, tt.want)
		}
	}
	if got := (Options{Config: Config{Timeout: 3 * time.Second}}).timeout(1003); got != 3*time.Second {
		t.Errorf("--timeout 3s for 1003 mounts: %s", got)
	}
	if _, err := LoadConfig("fix", []string{"--timeout", "0s"}, func(string) string { return "" }); err == nil {
		t.Error("--timeout 0s accepted")
	}
	inv, err := LoadConfig("fix", nil, func(string) string { return "" })
	if err != nil || inv.Config.Timeout != 0 {
		t.Errorf("no --timeout: %v, %v; want the default (0)", inv.Config.Timeout, err)
	}
}
