package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// ociLog wires the hook's log file through the hook's environment (a
// runtime gives a hook only the environment of its configuration).
func ociLog(t testing.TB) (string, func() string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook.log")
	return p, logReader(t, p)
}

// hookLogEnv is the hook's environment that sends its log to path (see
// ociLog) and not to syslog, with extra variables ("K=V") after it.
func hookLogEnv(path string, extra ...string) []string {
	return append([]string{hook.EnvLogFile + "=" + path, hook.EnvNoSyslog + "=1"}, extra...)
}

// followers are the detached workers of the hook still running.
func followers() []string {
	return strs(procsWhere(func(p aProc) bool { return p.role() == "__autofs-restore-hook-follow" }))
}

// waitFixed waits until the detached worker is done and every autofs mount
// of c is ok, and returns how long that took after the restore returned.
func waitFixed(t testing.TB, c *lab.Container, want int, log func() string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(testenv.Scale(20 * time.Second))
	for {
		ok := len(followers()) == 0
		if ok {
			r := status(t, c)
			for _, m := range r.Mounts {
				ok = ok && m.State == string(hook.StateOK)
			}
			ok = ok && len(r.Mounts) == want
		}
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not fixed 20 s after the restore (workers %v); hook log:\n%s", followers(), log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// touchEarly starts an access to path right after the restore, before the
// fix can have run, and returns a function that fails the test if that
// access hung (it must be answered or fail, never stay blocked).
func touchEarly(t testing.TB, c *lab.Container, path string) func() {
	done := make(chan string, 1)
	go func() {
		out, timedOut, err := c.Exec(okWait, "stat", "-c", "%n", path)
		if timedOut {
			done <- "hung"
			return
		}
		done <- strings.TrimSpace(out) + " " + errString(err)
	}()
	return func() {
		t.Helper()
		r := <-done
		if r == "hung" {
			t.Fatalf("an access to %s made right after the restore hung for %v:\n%s", path, okWait, c.Describe())
		}
		t.Logf("early access to %s ended: %s", path, r)
	}
}

func errString(err error) string {
	if err == nil {
		return "(ok)"
	}
	return "(failed fast: " + err.Error() + ")"
}

func TestSystemdOCIHook(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	logPath, log := ociLog(t)
	c := lab.Up(t, "oci-sd", lab.Systemd, lab.Options{Hook: bin, HookEnv: hookLogEnv(logPath)})
	for round := 1; round <= 2; round++ {
		checkpointRestore(t, c)
		early := touchEarly(t, c, "/srv/b/")
		early()
		t.Logf("TIMING fixed after restore returned: %v", waitFixed(t, c, 3, log).Round(time.Millisecond))
		systemdWorks(t, c)
		windowEntered(t, c)
		if ph := fixedPerStateFile(t, c, fmt.Sprintf("restore %d", round)); !slices.Contains(ph.Fixed, "/srv/c") {
			t.Errorf("restore %d: srv-c.automount not restarted: post-resume fixed %q", round, ph.Fixed)
		}
	}
	t.Logf("hook log:\n%s", log())
	// The OCI hook and its follower name the container on every line.
	everyLineNames(t, log(), c.Name, "")
}

// windowEntered checks that the follower of c's last restore began
// pre-resume while CRIU still held the tasks, as its report in the state
// file says ("caught" if it also ended then, "entered" if the tasks ran
// before it ended: CRIU does not wait for the follower, and its window, 8
// to 45 ms in the test VM, is shorter than the step). The follower polls
// slowly until CRIU's restorer gives the init its own name back and reads
// the mount table only once the init is in a tracing stop: it must not
// miss the window for either. The report must also say that the name
// came back (the slow polling ended by it, not by the restore's end).
func windowEntered(t testing.TB, c *lab.Container) {
	t.Helper()
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	o := waitOutcome(t, pid, hook.WiringOCI)
	r := o.Follower
	if r.Window != "caught" && r.Window != "entered" {
		t.Errorf("the follower did not begin pre-resume inside the window: %+v", *r)
	}
	if r.NamedPolls == 0 {
		t.Errorf("the follower did not see the init's own name come back: %+v", *r)
	}
	if r.Ended != "fixed" || o.PostResume == nil || o.PostResume.Wiring != hook.WiringOCI || len(o.PostResume.Errors) > 0 {
		t.Errorf("the follower's fix did not end fixed: %+v, post-resume %+v", *r, o.PostResume)
	}
}

// waitOutcome waits until the state file of the container whose init is
// pid records the end of the fix by wiring (hook.Outcome.FixEnded), and
// returns it.
func waitOutcome(t testing.TB, pid int, wiring string) *hook.Outcome {
	t.Helper()
	began := time.Now()
	deadline := began.Add(testenv.Scale(90 * time.Second))
	for {
		o, _, err := hook.ReadOutcome(pid)
		if err == nil && o.FixEnded(wiring) {
			if o.PostResume != nil {
				t.Logf("TIMING post-resume by %s took %v, began %v after the wait began", o.PostResume.Wiring, time.Duration(o.PostResume.Took).Round(time.Millisecond), o.PostResume.Began.Sub(began).Round(time.Millisecond))
			}
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("90 s on, the state file of pid %d records no end of the fix by %s (%v): %+v", pid, wiring, err, o)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestAutomountOCIHook(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	logPath, log := ociLog(t)
	c := lab.Up(t, "oci-am", lab.Automount, lab.Options{Hook: bin, HookEnv: hookLogEnv(logPath)})
	checkpointRestore(t, c)
	early := touchEarly(t, c, "/srv/direct1/")
	early()
	t.Logf("TIMING fixed after restore returned: %v", waitFixed(t, c, 5, log).Round(time.Millisecond))
	mustWork(t, c, "sh", "-c", "echo d2 > /srv/direct2/x && cat /srv/direct2/x")
	mustWork(t, c, "ls", "/ind/multi/sub")
	if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/ind/k1/state: %q", got)
	}
	noWaiters(t, c)
	if ds := automountDaemons(t, c); len(ds) != 1 || ds[0].pgid != ds[0].pid {
		t.Fatalf("daemons after the fix: %+v", ds)
	}
	windowEntered(t, c)
	t.Logf("hook log:\n%s", log())
}

// A fresh start with the hook wired restarts nothing.
func TestFreshStartWithHookTouchesNothing(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	logPath, log := ociLog(t)
	c := lab.Up(t, "oci-fresh", lab.Systemd, lab.Options{Hook: bin, HookEnv: hookLogEnv(logPath, hook.EnvLogLevel+"=debug")})
	systemdWorks(t, c)
	if l := log(); !strings.Contains(l, "status=creating") || strings.Contains(l, "restarted") || strings.Contains(l, "catatonic") {
		t.Errorf("hook log of a fresh start:\n%s", l)
	}
	out := mustWork(t, c, "journalctl", "--no-pager", "-o", "cat", "-u", "srv-b.automount", "-u", "srv-c.automount")
	if strings.Contains(out, "Unset automount") || strings.Contains(out, "Failed") || strings.Contains(out, "hangup") {
		t.Errorf("journal shows a stop or failure:\n%s", out)
	}
}

// useShippedHooksJSON makes the lab's podman containers use the shipped
// hooks.d JSON, its path pointed at the binary under test and its log at a
// file of the test, and returns a reader of that log.
func useShippedHooksJSON(t testing.TB) func() string {
	t.Helper()
	bin := hookBinary(t)
	logPath, log := ociLog(t)
	shipped, err := os.ReadFile(filepath.Join(lab.Dir(), "..", "..", "hooks.d", "autofs-restore-hook.json"))
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(shipped, &h); err != nil {
		t.Fatal(err)
	}
	hk := h["hook"].(map[string]any)
	hk["path"] = bin
	hk["env"] = hookLogEnv(logPath)
	b, _ := json.Marshal(h)
	jsonPath := filepath.Join(t.TempDir(), "autofs-restore-hook.json")
	if err := os.WriteFile(jsonPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ARH_LAB_HOOKS_JSON", jsonPath)
	return log
}

// podman with --hooks-dir holding the shipped hooks.d JSON (its path
// pointed at the binary under test).
func TestPodmanHooksDir(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: provisioning should have installed it: %v", err)
	}
	log := useShippedHooksJSON(t)
	name := "arh-lab-pod-" + strings.TrimPrefix(filepath.Base(t.TempDir()), "00")
	labSh := filepath.Join(lab.Dir(), "lab.sh")
	sh := func(timeout time.Duration, args ...string) string {
		t.Helper()
		cmd := exec.Command("timeout", append([]string{"-s", "KILL", strconv.Itoa(int(testenv.Scale(timeout).Seconds())), "bash", labSh}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lab.sh %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { exec.Command("bash", labSh, "down", name).Run() })
	start := time.Now()
	sh(3*time.Minute, "podman-up", name)
	t.Logf("TIMING podman-up: %v", time.Since(start).Round(time.Millisecond))
	sh(2*time.Minute, "checkpoint", name)
	sh(2*time.Minute, "restore", name)
	deadline := time.Now().Add(testenv.Scale(20 * time.Second))
	for len(followers()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range []string{"/srv/b/", "/srv/c/"} {
		out := sh(15*time.Second, "exec", name, "--timeout", "5", "--", "stat", "-c", "%n", p)
		t.Logf("podman exec stat %s: %s", p, strings.TrimSpace(out))
	}
	if out := sh(15*time.Second, "exec", name, "--timeout", "5", "--", "cat", "/srv/a/state"); !strings.Contains(out, "state-before-checkpoint") {
		t.Fatalf("/srv/a/state after podman restore: %q", out)
	}
	pid, err := strconv.Atoi(lastLineOf(sh(15*time.Second, "pid", name)))
	if err != nil {
		t.Fatal(err)
	}
	if o, _, err := hook.ReadOutcome(pid); err != nil || o == nil || o.PostResume == nil || !slices.Contains(o.PostResume.Fixed, "/srv/b") {
		t.Fatalf("the shipped hooks.d JSON did not fix the container (state file: %+v, %v); hook log:\n%s", o, err, log())
	}
	t.Logf("hook log:\n%s", log())
}

// AUTOFS_RESTORE_HOOK_NESTED=skip in the hook's environment (what a
// hooks.d JSON's "env" gives it) reaches the detached worker that does the
// fix on a runc restore: the mounts with copies in a nested mount
// namespace are left alone. The worker once rebuilt its options and
// ignored it.
func TestOCIHookNestedSkipFromEnv(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	logPath, log := ociLog(t)
	c := lab.Up(t, "oci-nested", lab.Systemd, lab.Options{Hook: bin, HookEnv: hookLogEnv(logPath, hook.EnvNested+"=skip")})
	mustWork(t, c, "systemd-run", "--unit", "nested", "unshare", "-m", "--propagation", "private", "sleep", "1000")
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	o := waitOutcome(t, pid, hook.WiringOCI)
	if n := len(o.PostResume.Refused); n < 3 {
		t.Fatalf("%d mounts left alone by the worker, want 3: %+v; log:\n%s", n, o.PostResume.Refused, log())
	}
	for _, r := range o.PostResume.Refused {
		if !strings.Contains(r.Why, "--nested=skip") {
			t.Errorf("%s refused for %q, want --nested=skip", r.Mountpoint, r.Why)
		}
	}
	for _, m := range status(t, c).Mounts {
		if len(m.Nested) == 0 || m.State != string(hook.StateStale) {
			t.Errorf("%s: state %q, nested copies %v: want stale, with copies", m.Mountpoint, m.State, m.Nested)
		}
	}
}
