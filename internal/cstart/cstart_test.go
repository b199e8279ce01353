package cstart

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// The constructor reads the variables the door sets: the
// C source and the Go constants must name the same ones.
func TestVariablesMatch(t *testing.T) {
	b, err := os.ReadFile("enter.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{door.EnvEnterTimeNS, 2}, {door.EnvEnter, 1}, {door.EnvEnterDrop, 1}} {
		if n := strings.Count(string(b), `"`+v.name+`"`); n != v.n {
			t.Errorf("enter.go names %q %d times, want %d", v.name, n, v.n)
		}
	}
}

// The constructor answers a CRIU action before Go starts unless the
// binary acts at it: run again, this test binary (which links the
// constructor) reaches its helper only for the actions that act. Where
// the CRIU plugin of the restore runs pre-resume and post-resume
// (AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS), an action script leaves them to
// it; where the plugin only added the cgroup step, it does them itself.
func TestConstructorAnswersTheActionsItDoesNotAct(t *testing.T) {
	all := "post-setup-namespaces pre-resume post-resume"
	for _, c := range []struct {
		action, plugin string
		reached        bool
	}{
		{"pre-resume", "", true},
		{"post-resume", "", true},
		{"pre-restore", "", false},
		{"pre-resume", all, false},
		{"post-resume", all, false},
		{"post-resume", "pre-resume post-resume", false},
		{"pre-restore", all, false},
		{"pre-resume", "post-setup-namespaces", true},
		{"post-resume", "post-setup-namespaces", true},
		{"pre-resume", "pre-resumex post-resume", true},
		// Not the unified hierarchy here: the cgroup step is answered.
		{"post-setup-namespaces", all, !hostV1(t)},
	} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+c.action, hook.EnvPluginActions+"="+c.plugin, "ARH_CSTART_HELPER=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s (plugin %q): %v\n%s", c.action, c.plugin, err, out)
		}
		if reached := strings.Contains(string(out), "helper reached"); reached != c.reached {
			t.Errorf("action %s, %s=%q: Go reached: %v, want %v\n%s", c.action, hook.EnvPluginActions, c.plugin, reached, c.reached, out)
		}
	}
}

// hostV1 tells whether /sys/fs/cgroup is not the unified hierarchy.
func hostV1(t *testing.T) bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		return true
	}
	return st.Type != unix.CGROUP2_SUPER_MAGIC
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
