package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// securebitsOf reads a daemon's securebits as the hook does (the reader
// is checked against setpriv's in units.TestSecurebitsReadFromAHeldProcess).
func securebitsOf(t testing.TB, pid int) uint32 {
	t.Helper()
	b, err := units.Securebits(pid, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An automount daemon started with securebits (setpriv's
// no_setuid_fixup and keep_caps_locked), restored by runc and CRIU with
// the action script: the new daemon runs with the same securebits, and
// every path works. Before, the new daemon ran with none.
func TestAutomountKeepsItsSecurebits(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	log := logFile(t)
	const want = 1<<2 | 1<<5 // SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS_LOCKED
	c := lab.Up(t, "securebits", lab.Automount, lab.Options{ActionScript: bin, Securebits: "+no_setuid_fixup,+keep_caps_locked"})
	orig := automountDaemons(t, c)
	if len(orig) != 1 {
		t.Fatalf("%d automount daemons before checkpoint", len(orig))
	}
	if got := securebitsOf(t, orig[0].pid); got != want {
		t.Fatalf("the lab's daemon runs with securebits %#x, want %#x", got, want)
	}
	checkpointRestore(t, c)
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "ls", "/srv/dmulti/sub")
	if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/ind/k1/state: %q", got)
	}
	noWaiters(t, c)
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%d automount daemons after the restore, want 1", len(ds))
	}
	if ds[0].pid == orig[0].pid {
		t.Fatalf("the daemon %d was not started again", ds[0].pid)
	}
	if got := securebitsOf(t, ds[0].pid); got != want {
		t.Errorf("the new daemon %d runs with securebits %#x, the original with %#x", ds[0].pid, got, want)
	}
	for _, k := range privilegeFields {
		if ds[0].status[k] != orig[0].status[k] {
			t.Errorf("new daemon %s = %q, the original had %q", k, ds[0].status[k], orig[0].status[k])
		}
	}
	if l := log(); !strings.Contains(l, "automount killed and started again") {
		t.Errorf("the hook's log does not show the respawn:\n%s", l)
	}
}
