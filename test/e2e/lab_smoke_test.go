// Package e2e holds the end-to-end tests of autofs-restore-hook: real runc
// containers checkpointed and restored with CRIU (see test/lab).
//
// The smoke tests in this file prove the bug without any hook: after a
// restore, an untriggered automount point hangs its first user. Every access
// has a hard deadline, so a test that expects the path to work (with the
// hook) fails in bounded time instead of hanging.
package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// hangWait is how long an access must block to count as hung, and okWait
// bounds an access that must work; lab.Container.Exec stretches both by
// testenv.Scale.
const (
	hangWait = 3 * time.Second
	okWait   = 10 * time.Second
)

func timed(t testing.TB, what string, f func() error) {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("TIMING %s: %v", what, time.Since(start).Round(time.Millisecond))
}

// mustWork runs args in c and fails the test if it times out or fails.
func mustWork(t testing.TB, c *lab.Container, args ...string) string {
	t.Helper()
	start := time.Now()
	out, timedOut, err := c.Exec(okWait, args...)
	if timedOut {
		t.Fatalf("%q hung for %v in %s; processes:\n%s", args, okWait, c.Name, c.Describe())
	}
	if err != nil {
		t.Fatalf("%q in %s: %v", args, c.Name, err)
	}
	t.Logf("%q worked in %v: %s", args, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	return out
}

// mustHang runs args in c and fails the test unless it blocks for hangWait
// with a process of the container in autofs_wait. The waiters are killed
// afterwards.
func mustHang(t testing.TB, c *lab.Container, args ...string) {
	t.Helper()
	out, timedOut, err := c.Exec(hangWait, args...)
	if !timedOut {
		t.Fatalf("%q did not hang in %s (err %v, output %q): the bug is not reproduced", args, c.Name, err, out)
	}
	w, err := c.AutofsWaiters()
	if err != nil {
		t.Fatal(err)
	}
	if len(w) == 0 {
		t.Fatalf("%q timed out but no process of %s is in autofs_wait:\n%s", args, c.Name, c.Describe())
	}
	t.Logf("%q hung for %v as expected; processes of %s (pids %v in autofs_wait):\n%s", args, hangWait, c.Name, w, c.Describe())
	if err := c.KillWaiters(); err != nil {
		t.Fatal(err)
	}
}

func checkpointRestore(t testing.TB, c *lab.Container) {
	t.Helper()
	timed(t, "checkpoint "+c.Name, c.Checkpoint)
	timed(t, "restore "+c.Name, c.Restore)
}

// TestSystemdRestoreWithoutHookHangs shows the bug on a systemd container
// restored without the hook, then, on the same container, that the
// accesses it breaks do work after the known manual fix, so that tests
// of the hook can pass and fail.
func TestSystemdRestoreWithoutHookHangs(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	var c *lab.Container
	timed(t, "up systemd", func() error { c = lab.Up(t, "smoke-systemd", lab.Systemd, lab.Options{}); return nil })
	if got := mustWork(t, c, "cat", "/srv/a/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/srv/a/state before checkpoint: %q", got)
	}
	checkpointRestore(t, c)

	// The automount point that was mounted at checkpoint time keeps its content.
	if got := mustWork(t, c, "cat", "/srv/a/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/srv/a/state after restore: %q", got)
	}
	// An untriggered one hangs: systemd compares the request with its stale
	// dev_id ("Automount point already active?") and never answers.
	mustHang(t, c, "stat", "/srv/c/")
	out, _, _ := c.Exec(okWait, "journalctl", "--no-pager", "-u", "srv-c.automount", "-n", "5")
	t.Logf("journal of srv-c.automount:\n%s", out)
	if !strings.Contains(out, "Automount point already active?") {
		t.Errorf("journal lacks %q", "Automount point already active?")
	}

	// The manual fix (once TestSystemdManualFixWorks, on a container of
	// its own): a restart of the unit, in the container, makes its mount
	// point work; the others stay broken.
	mustWork(t, c, "systemctl", "restart", "srv-b.automount")
	mustWork(t, c, "sh", "-c", "echo after-restore > /srv/b/x && cat /srv/b/x")
	mustWork(t, c, "cat", "/srv/a/state")
	mustHang(t, c, "stat", "/srv/c/")
}

func TestAutomountRestoreWithoutHookHangs(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	var c *lab.Container
	timed(t, "up automount", func() error { c = lab.Up(t, "smoke-automount", lab.Automount, lab.Options{}); return nil })
	checkpointRestore(t, c)

	// Indirect: mounted keys keep their content, new keys are served by name.
	if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/ind/k1/state after restore: %q", got)
	}
	mustWork(t, c, "sh", "-c", "echo new > /ind/k2/x && cat /ind/k2/x")
	// Direct and offset mounts are looked up by (dev, ino): stale after restore.
	mustHang(t, c, "stat", "/srv/direct1/")
	mustHang(t, c, "ls", "/ind/multi/sub")
	out, _, _ := c.Exec(okWait, "grep", "can't find map entry", "/run/automount.log")
	t.Logf("automount log:\n%s", out)
	if !strings.Contains(out, "can't find map entry") {
		t.Errorf("automount log lacks %q", "can't find map entry")
	}
}
