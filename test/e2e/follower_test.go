package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// The OCI hook's detached worker gets the options the hook was given
// (flags here; the hooks.d JSON's env works the same way, through the
// hook's own parsing), no fd the hook inherited from the runtime, and no
// variable of the runtime's environment.
func TestFollowerGetsOnlyItsConfiguration(tt *testing.T) {
	t := lab.Record(tt)
	testenv.RequireRoot(t, "the OCI hook acts on a process in its own pid and mount namespaces")
	bin := hookBinary(t)
	// A stand-in for a container's init being restored: own pid and mount
	// namespaces, no autofs mount.
	initPid := testenv.InOwnPidNamespace(t, "sleep", "300")
	t.Cleanup(func() {
		m, _ := filepath.Glob(filepath.Join(hook.StateDir, strconv.Itoa(initPid)+"-*"))
		for _, f := range m {
			os.Remove(f)
		}
	})
	// The options as flags (a runc config.json hook's args), and as the
	// environment a hooks.d JSON's "env" gives.
	for _, how := range []struct {
		name      string
		args, env []string
	}{
		{"flags", []string{"--log-level", "debug", "--no-syslog", "--nested", "skip", "--timeout", "7s", "--restore-timeout", "9s"}, nil},
		{"environment", []string{"--timeout", "7s", "--restore-timeout", "9s"}, []string{hook.EnvLogLevel + "=debug", hook.EnvNoSyslog + "=1", hook.EnvNested + "=skip"}},
	} {
		line := followerStart(t, bin, initPid, how.args, how.env)
		t.Logf("%s: %s", how.name, line)
		for _, want := range []string{`"skip_nested":true`, `"timeout":7000000000`, `"restore_timeout":9000000000`, `"Level":"debug"`, `"NoSyslog":true`} {
			if !strings.Contains(line, want) {
				t.Errorf("%s: the follower's configuration lacks %s", how.name, want)
			}
		}
		if strings.Contains(line, "pipe:") {
			t.Errorf("%s: the follower holds a pipe it inherited", how.name)
		}
		if strings.Contains(line, "ARH_TEST_RUNTIME_SECRET") || !strings.Contains(line, `environment ["PATH=`) {
			t.Errorf("%s: the follower's environment is not PATH only", how.name)
		}
	}
}

// followerStart runs the OCI hook on a "stopped" state for initPid, with a
// pipe it inherits without close-on-exec and a variable of the "runtime",
// and returns the follower's start line from the hook's log.
func followerStart(t testing.TB, bin string, initPid int, args, env []string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "hook.log")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	state, _ := json.Marshal(map[string]any{"ociVersion": "1.0.2", "id": "arh-follower-test", "status": "stopped", "pid": initPid, "bundle": "/"})
	cmd := exec.Command(bin, append([]string{"--log-file", logPath}, args...)...)
	cmd.Env = append(append(os.Environ(), "ARH_TEST_RUNTIME_SECRET=from-the-runtime"), env...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin = strings.NewReader(string(state))
	out, err := cmd.CombinedOutput()
	w.Close()
	if err != nil {
		t.Fatalf("OCI hook: %v\n%s", err, out)
	}
	deadline := time.Now().Add(testenv.Scale(10 * time.Second))
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(logPath)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "follow: started with configuration") {
				if !strings.Contains(l, logPath) {
					t.Errorf("the follower's configuration lacks the log file %s", logPath)
				}
				return l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	t.Fatalf("the follower logged no start line:\n%s", b)
	return ""
}
