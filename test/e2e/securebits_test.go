package e2e

import (
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
	logFile(t)               // the hook logs there, shown if the test fails
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
	d := automountWorksAgain(t, c, "after the restore", &orig[0])
	if got := securebitsOf(t, d.pid); got != want {
		t.Errorf("the new daemon %d runs with securebits %#x, the original with %#x", d.pid, got, want)
	}
	samePrivileges(t, d, orig[0])
	fixedPerStateFile(t, c, "after the restore")
}
