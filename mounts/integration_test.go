package mounts_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/autofstest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

func TestMain(m *testing.M) {
	autofstest.MaybeRunMaster()
	if code, ok := door.Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// stageTarget decodes a Target and moves what covers it into the staging
// tmpfs, as the systemd worker does.
func stageTarget(env *worker.Env, t mounts.Target) (mounts.Target, *mounts.Staging, string, error) {
	st, err := mounts.OpenStaging(env.InNS)
	if err != nil {
		return t, nil, "", err
	}
	staged, err := st.MoveAside(env.InNS, t.Where, t.Dev)
	return t, st, staged, err
}

// A task for the move test: stage what is on top of the mount, check it
// is gone from the mount point, move it back, read it again.
var testMove = worker.NewTask("test-move", func(env *worker.Env, args mounts.Target, logf door.Logf) ([]string, error) {
	t, st, staged, err := stageTarget(env, args)
	if err != nil {
		return nil, err
	}
	aside, err := os.ReadFile(filepath.Join(st.Path(staged), "hello"))
	if err != nil {
		return nil, fmt.Errorf("read staged file: %w", err)
	}
	tab, err := env.ReadTable()
	if err != nil {
		return nil, err
	}
	if a := tab.Find(t.Where); a == nil || a.OnTop != nil {
		return nil, errors.New("after MoveAside the autofs mount is missing or still covered")
	}
	if err := st.MoveBack(env.InNS, staged, t.Where); err != nil {
		return nil, err
	}
	back, err := os.ReadFile(filepath.Join(t.Where, "hello"))
	if err != nil {
		return nil, fmt.Errorf("read file after move back: %w", err)
	}
	if err := st.Close(); err != nil {
		return nil, err
	}
	return []string{string(aside), string(back)}, nil
})

var (
	// A run killed between move aside and move back: stage only.
	testStageOnly = worker.NewTask("test-stage-only", func(env *worker.Env, args mounts.Target, logf door.Logf) (string, error) {
		_, _, staged, err := stageTarget(env, args)
		return staged, err
	})
	testRecover = worker.NewTask("test-recover", func(env *worker.Env, rec *mounts.StagingRecord, logf door.Logf) ([]string, error) {
		var lines []string
		_, _, err := mounts.RecoverStaged(env.InNS, rec, nil, func(_ door.Level, s string, _ door.Fields) { lines = append(lines, s) })
		return lines, err
	})
)

// testCatatonic makes the targets catatonic in a worker, as the hook's
// pre-resume does.
var testCatatonic = worker.NewTask("test-catatonic", func(env *worker.Env, targets []mounts.Target, _ door.Logf) ([]mounts.TargetResult, error) {
	return env.MakeCatatonic(targets), nil
})

// stagingRecorder keeps the staging events of a worker as the hook does.
type stagingRecorder struct{ rec *mounts.StagingRecord }

func (r *stagingRecorder) event(raw json.RawMessage) error {
	next, err := mounts.ApplyStagingEvent(r.rec, raw)
	if err == nil {
		r.rec = next
	}
	return err
}

// The pre-resume step: a stale mount made catatonic before anything is
// pending; a later access fails at once instead of hanging.
func TestCatatonicBeforeAccessFailsFast(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, "b", "c")
	for _, pt := range points {
		if err := m.Remount(pt); err != nil {
			t.Fatal(err)
		}
	}
	var targets []mounts.Target
	for _, pt := range points {
		targets = append(targets, mounts.Target{Where: pt, Dev: autofstest.At(t, m.Pid, pt).Dev()})
	}
	res, err := testCatatonic.Run(p, targets, testenv.Scale(5*time.Second), func(_ door.Level, s string, _ door.Fields) { t.Log(s) })
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Error != "" {
			t.Fatalf("catatonic %s: %s", r.Where, r.Error)
		}
	}
	for _, pt := range points {
		if a := autofstest.At(t, m.Pid, pt); !a.Options.Catatonic() {
			t.Fatalf("%s not catatonic: %+v", pt, a.Options)
		}
		req, err := m.Access(pt)
		if err != nil {
			// The requester ended before we saw it: it did not hang.
			continue
		}
		if w := autofstest.WaitWchan(req, "", testenv.Scale(3*time.Second)); w != "" {
			t.Fatalf("access to catatonic %s still sleeping in %q", pt, w)
		}
	}
}

// Moving the filesystem on top aside and back keeps its content.
func TestMoveAsideAndBackKeepsContent(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, "d")
	req, err := m.Access(points[0])
	if err == nil {
		autofstest.WaitWchan(req, "", testenv.Scale(3*time.Second))
	}
	a := autofstest.At(t, m.Pid, points[0])
	if a.OnTop == nil || a.OnTop.FSType != "tmpfs" {
		t.Fatalf("the master did not mount a tmpfs on %s: %+v", points[0], a.OnTop)
	}
	var rec stagingRecorder
	out, err := testMove.RunEvents(p, mounts.Target{Where: points[0], Dev: a.Dev()}, testenv.Scale(5*time.Second), func(_ door.Level, s string, _ door.Fields) { t.Log(s) }, rec.event)
	if err != nil {
		t.Fatal(err)
	}
	if rec.rec != nil {
		t.Errorf("staging still recorded after the move back and Close: %+v", rec.rec)
	}
	want := "hello from " + points[0] + "\n"
	if len(out) != 2 || out[0] != want || out[1] != want {
		t.Fatalf("content aside/back = %q, want %q twice", out, want)
	}
	if b := autofstest.At(t, m.Pid, points[0]); b.OnTop == nil || b.OnTop.ID != a.OnTop.ID {
		t.Fatalf("the same tmpfs is not back on top: before %+v after %+v", a.OnTop, b.OnTop)
	}
}

// A thousand autofs mounts: the mount table is read and every mount made
// catatonic by one worker, within its deadline.
func TestThousandMounts(t *testing.T) {
	autofstest.Require(t)
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("m%04d", i)
	}
	m, p, points := autofstest.Start(t, names...)
	start := time.Now()
	targets := targetsAt(t, m.Pid, points)
	read := time.Since(start)
	makeCatatonic(t, p, targets, testenv.Scale(30*time.Second))
	tab, err := mounts.ReadTable(m.Pid)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range tab.Autofs {
		if a.Options.Catatonic() {
			n++
		}
	}
	if n != 1000 {
		t.Fatalf("%d of 1000 mounts catatonic", n)
	}
	t.Logf("1000 mounts: table read in %v, all catatonic after %v", read, time.Since(start))
}

// A run killed after moving a filesystem aside: the next run finds it in
// the staging tmpfs and puts it back, content intact.
func TestRecoverStagedAfterInterruptedRun(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, "e")
	if req, err := m.Access(points[0]); err == nil {
		autofstest.WaitWchan(req, "", testenv.Scale(3*time.Second))
	}
	a := autofstest.At(t, m.Pid, points[0])
	if a.OnTop == nil {
		t.Fatal("nothing mounted on top")
	}
	var rec stagingRecorder
	staged, err := testStageOnly.RunEvents(p, mounts.Target{Where: points[0], Dev: a.Dev()}, testenv.Scale(5*time.Second), nil, rec.event)
	if err != nil || staged == "" {
		t.Fatalf("staged %q: %v", staged, err)
	}
	if rec.rec == nil || len(rec.rec.Entries) != 1 || rec.rec.Entries[0].Where != points[0] {
		t.Fatalf("recorded %+v, want the staging and %s", rec.rec, points[0])
	}
	tab, _ := mounts.ReadTable(m.Pid)
	if !mounts.StagingMounted(tab) || tab.Find(points[0]).OnTop != nil {
		t.Fatalf("after the interrupted run: staging mounted %v, on top %v", mounts.StagingMounted(tab), tab.Find(points[0]).OnTop)
	}
	lines, err := testRecover.RunEvents(p, rec.rec, testenv.Scale(5*time.Second), nil, rec.event)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "put back") {
		t.Fatalf("recovery said %q", lines)
	}
	tab, _ = mounts.ReadTable(m.Pid)
	b := tab.Find(points[0])
	if b.OnTop == nil || b.OnTop.ID != a.OnTop.ID {
		t.Fatalf("the same tmpfs is not back on top: before %+v after %+v", a.OnTop, b.OnTop)
	}
	if mounts.StagingMounted(tab) {
		t.Fatal("staging tmpfs left mounted after recovery")
	}
	if rec.rec != nil {
		t.Fatalf("staging still recorded after recovery: %+v", rec.rec)
	}
}

// oddNames are mount point names that mountinfo escapes or that stretch
// its limits: a space, a tab, a newline, a backslash and an escape-like
// text, UTF-8, and a path of about 3,900 bytes (PATH_MAX is 4,096).
func oddNames() []string {
	long := ""
	for i := 0; i < 19; i++ {
		long = filepath.Join(long, fmt.Sprintf("%02d-%s", i, strings.Repeat("d", 197)))
	}
	return []string{"with space", "tab\there", "new\nline", `back\slash \040`, "ünï-cødé", long}
}

// Odd mount points are found in the mount table under their exact
// (decoded) path, escaped to one line for logs, and released by the
// worker like any other.
func TestOddMountPoints(t *testing.T) {
	autofstest.Require(t)
	m, p, points := autofstest.Start(t, oddNames()...)
	targets := targetsAt(t, m.Pid, points)
	for _, pt := range points {
		if e := mounts.Escape(pt); strings.ContainsAny(e, " \t\n") {
			t.Errorf("Escape(%q) = %q: not one word", pt, e)
		}
	}
	t.Logf("longest mount point: %d bytes", len(points[len(points)-1]))
	makeCatatonic(t, p, targets, testenv.Scale(10*time.Second))
	tab, err := mounts.ReadTable(m.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range points {
		if a := tab.Find(pt); a == nil || !a.Options.Catatonic() {
			t.Errorf("%q not catatonic after the worker: %+v", pt, a)
		}
	}
}

// makeCatatonic runs the catatonic worker on targets and fails the test
// on any error.
func makeCatatonic(t *testing.T, p *proc.Process, targets []mounts.Target, timeout time.Duration) {
	t.Helper()
	res, err := testCatatonic.Run(p, targets, timeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Error != "" {
			t.Fatalf("%q: %s", r.Where, r.Error)
		}
	}
}

// targetsAt finds the autofs mount at each of points in pid's mount
// table (under its exact path) and returns them as worker targets.
func targetsAt(t *testing.T, pid int, points []string) []mounts.Target {
	t.Helper()
	tab, err := mounts.ReadTable(pid)
	if err != nil {
		t.Fatal(err)
	}
	var targets []mounts.Target
	for _, pt := range points {
		a := tab.Find(pt)
		if a == nil {
			t.Fatalf("%q missing from the mount table", pt)
		}
		targets = append(targets, mounts.Target{Where: pt, Dev: a.Dev()})
	}
	return targets
}
