package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// limitLine is the line of /proc/PID/limits for name.
func limitLine(t testing.TB, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	t.Fatalf("no %q in the limits of %d:\n%s", name, pid, b)
	return ""
}

// An automount daemon under an address-space limit (512 MiB) far below
// what the hook's Go stage reserves (about 1.2 GB), in a confined
// container (seccomp filter, AppArmor profile where the kernel has it),
// restored by runc and CRIU with the action script. The new daemon gets
// the limit at its exec: it is started traced, given the limit and let
// go. The same limit, with the same filters and label, and every path
// works.
//
// This test also passes with the previous binary, which set the limit on
// the stage before the fork (seen once). That worked only as long as the
// Go runtime made no new mapping between the setrlimit and the exec: a
// new OS thread's stack would fail under the limit, and the old daemon
// was already dead by then.
func TestAutomountUnderAnAddressSpaceLimit(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	logFile(t) // the hook logs there, shown if the test fails
	const limit = 512 << 20
	c := lab.Up(t, "aslimit", lab.Automount, lab.Options{ActionScript: bin, ASLimit: limit, Confined: true})
	orig := automountDaemons(t, c)
	if len(orig) != 1 {
		t.Fatalf("%d automount daemons before checkpoint", len(orig))
	}
	want := limitLine(t, orig[0].pid, "Max address space")
	if want != fmt.Sprintf("Max address space %d %d bytes", limit, limit) {
		t.Fatalf("the lab's daemon runs with %q, not the limit asked", want)
	}
	checkpointRestore(t, c)
	d := automountWorksAgain(t, c, "after the restore", &orig[0])
	if got := limitLine(t, d.pid, "Max address space"); got != want {
		t.Errorf("the new daemon runs with %q, the original with %q", got, want)
	}
	samePrivileges(t, d, orig[0])
	if st := d.status["TracerPid"]; st != "0" {
		t.Errorf("the new daemon is still traced (TracerPid %s)", st)
	}
	fixedPerStateFile(t, c, "after the restore")
}
