package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// hookProcs lists the running processes of the binary bin (the hook, its
// workers and helpers), excluding zombies.
func hookProcs(bin string) []string {
	return strs(procsWhere(func(p aProc) bool { return p.exe == bin }))
}

// startFix starts `bin fix --pid PID --no-syslog ARGS...` with env added
// to the test's environment, and returns it with its stderr. The process
// is killed at cleanup if it still runs.
func startFix(t testing.TB, bin string, env []string, pid int, args ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"fix", "--pid", strconv.Itoa(pid), "--no-syslog"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, stderr
}

// readUntil reads r into b until b holds want; it fails the test if r
// ends first.
func readUntil(t testing.TB, r io.Reader, b *strings.Builder, want string) {
	t.Helper()
	buf := make([]byte, 4096)
	for !strings.Contains(b.String(), want) {
		n, err := r.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			t.Fatalf("output ended before %q: %v\n%s", want, err, b.String())
		}
	}
}

// The container exits while fix waits for its (stopped) systemd: fix
// notices within a couple of seconds, says the container exited, exits 1,
// and leaves no process of its own behind.
func TestContainerExitsDuringFix(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-exits", lab.Systemd)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	cmd, stderr := startFix(t, bin, nil, pid, "--timeout", "60s")
	var out strings.Builder
	readUntil(t, stderr, &out, "pre-resume finished")
	time.Sleep(testenv.Scale(2 * time.Second)) // fix now waits for systemd
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	rest, _ := io.ReadAll(stderr)
	out.Write(rest)
	err := cmd.Wait()
	took := time.Since(stopped)
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("fix exited %d (%v) when the container exited, want 1", code, err)
	}
	if !strings.Contains(out.String(), "container exited during post-resume") {
		t.Errorf("the error does not say the container exited:\n%s", out.String())
	}
	if took > testenv.Scale(10*time.Second) {
		t.Errorf("fix ended %v after the container was stopped (--timeout 60s)", took)
	}
	if left := hookProcs(bin); len(left) > 0 {
		t.Errorf("processes of the hook left behind: %v", left)
	}
	t.Logf("fix ended %v after the stop: %s", took.Round(time.Millisecond), lastLineOf(out.String()))
}

// The hook is killed in the middle of post-resume, with the filesystem
// on top of /srv/a moved into its staging tmpfs and the old mounts
// released, right before the restart is sent (a pause point of a
// failpoints build holds it there): no process of it is left, and a
// second run completes the job, restarting each unit once and keeping
// what was on top. The shipped binary has no pause point.
func TestKilledDuringPostResumeAndRerun(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	if b, err := os.ReadFile(bin); err != nil || bytes.Contains(b, []byte(failpoint.Env)) {
		t.Fatalf("%s mentions %s (or cannot be read: %v): pause points in the shipped build", bin, failpoint.Env, err)
	}
	fp := failpointBinary(t)
	c, pid := restoredWithoutHook(t, "hook-killed-post", lab.Systemd)
	cmd, stderr := startFix(t, fp, []string{failpoint.Env + "=staged"}, pid)
	var first strings.Builder
	readUntil(t, stderr, &first, "failpoint staged: paused")
	// The worker's line, at its level, with its fields (the mount as a
	// field of the hook's log line, not inside the text).
	staged := false
	for _, l := range strings.Split(first.String(), "\n") {
		staged = staged || strings.Contains(l, "info: moved the filesystem on top aside") && strings.Contains(l, " fstype=tmpfs") && strings.Contains(l, " mount=/srv/a")
	}
	if !staged {
		t.Fatalf("paused before /srv/a was staged:\n%s", first.String())
	}
	tab, err := mounts.ReadTable(pid)
	if err != nil || !mounts.StagingMounted(tab) {
		t.Fatalf("no staging tmpfs in the container while paused (%v)", err)
	}
	workerConfined(t, fp, pid)
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(testenv.Scale(5 * time.Second))
	for len(hookProcs(fp)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := hookProcs(fp); len(left) > 0 {
		t.Errorf("processes of the hook left after it was killed: %v", left)
	}
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil {
		t.Fatalf("second fix: %v\n%s", err, out)
	}
	for _, unit := range []string{"srv-a.automount", "srv-b.automount", "srv-c.automount"} {
		if n := strings.Count(string(out), "unit="+unit); n != 1 {
			t.Errorf("%s restarted %d times by the second run, want 1:\n%s", unit, n, out)
		}
	}
	systemdWorks(t, c)
	allOK(t, c, 3)
	if tab, err := mounts.ReadTable(pid); err != nil || mounts.StagingMounted(tab) {
		t.Errorf("staging tmpfs left in the container (or mount table unreadable: %v)", err)
	}
	t.Logf("first run killed while paused:\n%s\nsecond run:\n%s", first.String(), out)
}

// The respawned automount exits at once (here: the container's /tmp is
// read-only, and automount cannot make its test mount): fix reports it
// without waiting for its deadline, the mounts fail fast instead of
// hanging, and once the cause is gone a second fix starts the daemon
// again from what the first run recorded.
func TestRespawnedDaemonExitsAtOnce(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-amexit", lab.Automount)
	before := automountDaemons(t, c)
	if len(before) != 1 {
		t.Fatalf("%d automount daemons after restore, want 1", len(before))
	}
	mustWork(t, c, "mount", "-t", "tmpfs", "-o", "ro", "tmpfs", "/tmp")
	start := time.Now()
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "20s").CombinedOutput()
	took := time.Since(start)
	if err == nil || !strings.Contains(string(out), "before it served") {
		t.Fatalf("fix with a daemon that cannot start: err %v, output:\n%s", err, out)
	}
	if took > testenv.Scale(10*time.Second) {
		t.Errorf("fix took %v to notice the daemon exited (--timeout 20s)", took)
	}
	t.Logf("fix failed after %v: %s", took.Round(time.Millisecond), lastLineOf(string(out)))
	if ds := automountDaemons(t, c); len(ds) != 0 {
		t.Fatalf("automount daemons %v after the failed start, want none", ds)
	}
	// No master, but no hang either: the mounts were made catatonic.
	for _, p := range []string{"/srv/direct1/", "/ind/k1/"} {
		out, timedOut, err := c.Exec(okWait, "stat", p)
		if timedOut {
			t.Fatalf("stat %s hung with no daemon:\n%s", p, c.Describe())
		}
		t.Logf("stat %s with no daemon: %v %s", p, err, strings.TrimSpace(out))
	}
	noWaiters(t, c)
	// status tells the operator what is pending, and why.
	r := status(t, c)
	// All five of the daemon's mounts: the indirect /ind loses its
	// master with the kill too.
	if len(r.Pending) != 1 || len(r.Pending[0].Mounts) != 5 || len(r.LastErrors) == 0 || !strings.Contains(strings.Join(r.LastErrors, " "), "before it served") {
		t.Errorf("status after the failed start: pending %+v, last errors %q", r.Pending, r.LastErrors)
	}
	text, err := exec.Command(bin, "status", "--pid", strconv.Itoa(pid), "--no-syslog").Output()
	if err != nil || !strings.Contains(string(text), "killed by the hook and not running again") || !strings.Contains(string(text), "last run failed: ") {
		t.Errorf("status text (%v):\n%s", err, text)
	}
	mustWork(t, c, "umount", "/tmp")
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil {
		t.Fatalf("fix once /tmp is writable: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "started again from the record") {
		t.Errorf("second fix did not start the daemon again:\n%s", out)
	}
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%d automount daemons after the second fix, want 1", len(ds))
	}
	for _, k := range privilegeFields {
		if ds[0].status[k] != before[0].status[k] {
			t.Errorf("daemon started again: %s = %q, the original had %q", k, ds[0].status[k], before[0].status[k])
		}
	}
	allOK(t, c, 5)
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "ls", "/ind/multi/sub")
	if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/ind/k1/state: %q", got)
	}
	noWaiters(t, c)
	if r := status(t, c); len(r.Pending) != 0 || len(r.LastErrors) != 0 {
		t.Errorf("status after the second fix: pending %+v, last errors %q", r.Pending, r.LastErrors)
	}
	// A third run has nothing left to do.
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil || strings.Contains(string(out), "started again") {
		t.Errorf("third fix: %v\n%s", err, out)
	}
}

// The new automount fails the hook's checks of it (here injected by a
// failpoint right after its credentials and fds are compared): the hook
// kills it rather than leave a daemon it could not vouch for, says so,
// and the mounts fail fast; the next fix starts the daemon again from the
// record.
func TestRespawnedDaemonFailingVerificationIsKilled(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	fp := failpointBinary(t)
	c, pid := restoredWithoutHook(t, "hook-amverify", lab.Automount)
	cmd := exec.Command(fp, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "30s")
	cmd.Env = append(os.Environ(), failpoint.Env+"=verify")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "failpoint verify: injected failure: it was killed") {
		t.Fatalf("fix with a new daemon that fails its checks: err %v, output:\n%s", err, out)
	}
	t.Logf("fix failed: %s", lastLineOf(string(out)))
	// Killed; its reaping by the container's init may take a moment.
	for deadline := time.Now().Add(testenv.Scale(5 * time.Second)); len(automountDaemons(t, c)) != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("automount daemons %+v after the failed check, want none", automountDaemons(t, c))
		}
	}
	for _, p := range []string{"/srv/direct1/", "/ind/k1/"} {
		if _, timedOut, _ := c.Exec(okWait, "stat", p); timedOut {
			t.Fatalf("stat %s hung after the new daemon was killed:\n%s", p, c.Describe())
		}
	}
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "started again from the record") {
		t.Fatalf("second fix: %v\n%s", err, out)
	}
	for _, w := range []string{"/srv/direct1/", "/ind/multi/sub/"} {
		mustWork(t, c, "stat", w)
	}
	stageHadNoMoreThanTheDaemon(t, c, string(out))
}

// stageHadNoMoreThanTheDaemon checks, from the hook's log line, that the
// spawner's container stage (a process of ours in the container's pid
// namespace, which the container could trace) ran with the daemon's
// bounding set, and a permitted set within it.
func stageHadNoMoreThanTheDaemon(t testing.TB, c *lab.Container, out string) {
	t.Helper()
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%d automount daemons, want 1", len(ds))
	}
	bnd, err := strconv.ParseUint(ds[0].status["CapBnd"], 16, 64)
	if err != nil {
		t.Fatalf("daemon CapBnd %q: %v", ds[0].status["CapBnd"], err)
	}
	i := strings.Index(out, "stage_caps=bnd:")
	if i < 0 {
		t.Fatalf("no stage_caps in the hook's log:\n%s", out)
	}
	var sb, sp uint64
	if _, err := fmt.Sscanf(out[i:], "stage_caps=bnd:%x,prm:%x", &sb, &sp); err != nil {
		t.Fatalf("stage_caps %q: %v", out[i:min(len(out), i+60)], err)
	}
	if sb != bnd || sp&^bnd != 0 {
		t.Fatalf("the container stage ran with bounding %016x and permitted %016x; the daemon's bounding set is %016x", sb, sp, bnd)
	}
	t.Logf("container stage: bounding %016x, permitted %016x (daemon's bounding %016x)", sb, sp, bnd)
}

// A node restoring many containers at once makes every step of the fix
// slow. Here the worker that reads the daemon's seccomp filters and
// securebits (it stops the daemon with ptrace) takes 8 s each time, more
// than the fixed 5 s that step once had: with 10 containers restored at
// once, the node-scale benchmark saw the hook refuse every automount
// container that way. The step's bound is now a share of the fix's
// deadline: fix starts the daemon again within its default deadline and
// every path works. The same container first shows that steps before the
// kill that run past their share stop the kill (lateChecksDoNotKill).
func TestAutomountFixWithASlowStep(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	fp := failpointBinary(t)
	c, pid := restoredWithoutHook(t, "hook-amslow", lab.Automount)
	before := oneDaemon(t, c)
	// First the steps before the kill made late (lateChecksDoNotKill's
	// half of this container), then a slow step that still fits.
	lateChecksDoNotKill(t, c, fp, pid, before)
	start := time.Now()
	cmd := exec.Command(fp, "fix", "--pid", strconv.Itoa(pid), "--no-syslog")
	cmd.Env = append(os.Environ(), failpoint.Env+"=slow-held")
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("fix with a slow step: %v, output:\n%s", err, out)
	}
	// Both reads were slow: the old daemon's before the kill, the new
	// one's in its check.
	if took < 16*time.Second {
		t.Fatalf("fix took %v: the 8 s delay of the failpoint did not apply twice, so this test proves nothing; output:\n%s", took, out)
	}
	after := automountWorksAgain(t, c, "after a slow fix", &before)
	t.Logf("fixed in %v with two 8 s steps; the daemon is pid %s in the container (was %s)", took.Round(time.Millisecond), nsPid(after), nsPid(before))
}

// The kill of the old automount cannot be taken back, so it happens only
// with the steps before it done in their share of the deadline, checked
// right before it: here a failpoint delays them 6 s under --timeout 8s
// (half of it is theirs), and the daemon is not killed ("ran ... past
// their time: not killed"), the same process runs on, and no record of a
// killed daemon is left. Before, the kill went ahead after checks that had run past
// the deadline (seen: "no answer within -1.721s", then the kill).
// It runs on TestAutomountFixWithASlowStep's container, whose fix with a
// slow step that fits then fixes it.
func lateChecksDoNotKill(t testing.TB, c *lab.Container, fp string, pid int, before daemonInfo) {
	t.Helper()
	cmd := exec.Command(fp, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "8s")
	cmd.Env = append(os.Environ(), failpoint.Env+"=slow-before-kill")
	out, err := cmd.CombinedOutput()
	if !strings.Contains(string(out), "failpoint slow-before-kill: delayed") {
		t.Fatalf("the failpoint's delay did not apply, so this test proves nothing (exit %v); output:\n%s", err, out)
	}
	if err == nil || !strings.Contains(string(out), "past their time: not killed") {
		t.Fatalf("fix with steps past their time: %v, want a failure saying the daemon was not killed; output:\n%s", err, out)
	}
	if strings.Contains(string(out), "killed automount") || strings.Contains(string(out), "new_pid=") {
		t.Fatalf("the daemon was killed or replaced after the steps ran late; output:\n%s", out)
	}
	if now := oneDaemon(t, c); now.pid != before.pid {
		t.Fatalf("the daemon is pid %d now, was %d: it was killed after the steps ran past their time", now.pid, before.pid)
	}
	if r := status(t, c); len(r.Pending) > 0 {
		t.Fatalf("a record of a killed daemon is left for a daemon that runs on: %+v", r.Pending)
	}
}

// workerConfined checks the worker of bin that runs the systemd restart
// task in the container of init pid (paused there): it holds
// CAP_SYS_ADMIN alone, effective, permitted and bounding (its D-Bus dial
// child starts from another thread), and sits in the container init's
// cgroups
// (a cgroup v1 freezer aside), its device cgroup included. Before, it
// held every capability in the hook's own cgroups, outside the
// container's device cgroup.
func workerConfined(t testing.TB, bin string, pid int) {
	t.Helper()
	// The worker runs a copy of the executable (a memfd): found by its
	// command line.
	var wpid int
	for _, p := range procsWhere(func(p aProc) bool { return p.role() == units.SystemdRestart.Role() }) {
		wpid = p.pid
	}
	if wpid == 0 {
		t.Fatalf("no worker running %s (the hook's processes: %q)", units.SystemdRestart.Name(), hookProcs(bin))
	}
	st, err := proc.ReadStatus(wpid)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%016x", uint64(worker.WorkerCaps))
	if st["CapEff"] != want || st["CapPrm"] != want || st["CapInh"] != "0000000000000000" {
		t.Errorf("the worker's capabilities: effective %s, permitted %s, inheritable %s; want %s, %s and none",
			st["CapEff"], st["CapPrm"], st["CapInh"], want, want)
	}
	// Its bounding set too: it never execs (its connect child is
	// started from another thread, with a bounding set of its own).
	if st["CapBnd"] != want {
		t.Errorf("the worker's bounding set %s holds more than CAP_SYS_ADMIN", st["CapBnd"])
	}
	read := func(p int) map[string]string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && !strings.Contains(f[1], "freezer") {
				m[f[1]] = f[2]
			}
		}
		return m
	}
	w, c := read(wpid), read(pid)
	for ctrl, path := range c {
		if w[ctrl] != path {
			t.Errorf("the worker's cgroup of hierarchy %q is %q, the container's %q", ctrl, w[ctrl], path)
		}
	}
	t.Logf("worker %d: CapEff %s, CapBnd %s, cgroups %v", wpid, st["CapEff"], st["CapBnd"], w)
}
