package cstart

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// The constructor reads the variables the spawner and the door set: the
// C source and the Go constants must name the same ones.
func TestVariablesMatch(t *testing.T) {
	b, err := os.ReadFile("enter.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{units.EnvTimeNSFD, 2}, {door.EnvEnter, 1}} {
		if n := strings.Count(string(b), `"`+v.name+`"`); n != v.n {
			t.Errorf("enter.go names %q %d times, want %d", v.name, n, v.n)
		}
	}
}

// The constructor answers a CRIU action before Go starts unless the
// binary acts at it: run again, this test binary (which links the
// constructor) reaches its helper test only for the actions that act.
// Added by the CRIU plugin for post-setup-namespaces
// (AUTOFS_RESTORE_HOOK_SCRIPT_ONLY), it leaves pre-resume to the plugin.
func TestConstructorAnswersTheActionsItDoesNotAct(t *testing.T) {
	for _, c := range []struct {
		action, only string
		reached      bool
	}{
		{"pre-resume", "", true},
		{"post-resume", "", true},
		{"pre-restore", "", false},
		{"pre-resume", "post-setup-namespaces", false},
		{"post-resume", "post-setup-namespaces", false},
		{"pre-restore", "post-setup-namespaces", false},
	} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+c.action, hook.EnvScriptOnly+"="+c.only, "ARH_CSTART_HELPER=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s (only %q): %v\n%s", c.action, c.only, err, out)
		}
		if reached := strings.Contains(string(out), "helper reached"); reached != c.reached {
			t.Errorf("action %s, %s=%q: Go reached: %v, want %v\n%s", c.action, hook.EnvScriptOnly, c.only, reached, c.reached, out)
		}
	}
}

// TestMain is the helper of TestConstructorAnswersTheActionsItDoesNotAct
// when that test runs this binary again.
func TestMain(m *testing.M) {
	if os.Getenv("ARH_CSTART_HELPER") == "1" {
		fmt.Println("helper reached")
		os.Exit(0)
	}
	os.Exit(m.Run())
}
