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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// The build products the tests use: each is the path that `make test`
// sets in its variable, or is built once by the test process into
// binDir (removed by TestMain).
var (
	hookArtifact      = &artifact{env: "AUTOFS_RESTORE_HOOK_BIN", build: func(dir string) (string, error) { return buildHook(dir, "autofs-restore-hook") }}
	failpointArtifact = &artifact{env: "AUTOFS_RESTORE_HOOK_FP_BIN", build: func(dir string) (string, error) { return buildHook(dir, "autofs-restore-hook", "failpoints") }}
	binDir            string
	binMu             sync.Mutex
)

// artifact is one build product: the path in the variable env, else
// what build makes in a new directory under binDir.
type artifact struct {
	env   string
	build func(dir string) (string, error)
	once  sync.Once
	path  string
	err   error
}

// get returns the artifact's path, or fails the test.
func (a *artifact) get(t testing.TB) string {
	t.Helper()
	a.once.Do(func() {
		if p := os.Getenv(a.env); p != "" {
			a.path = p
			return
		}
		binMu.Lock()
		defer binMu.Unlock()
		if binDir == "" {
			d, err := os.MkdirTemp("", "arh-e2e-bin-")
			if err != nil {
				a.err = err
				return
			}
			binDir = d
		}
		dir, err := os.MkdirTemp(binDir, "build-")
		if err != nil {
			a.err = err
			return
		}
		a.path, a.err = a.build(dir)
	})
	if a.err != nil {
		t.Fatal(a.err)
	}
	return a.path
}

func TestMain(m *testing.M) {
	// The test binary is also the child the hook's packages start for
	// their tasks (units.Securebits holds a daemon from one).
	if code, ok := door.Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// hookBinary is the binary under test: $AUTOFS_RESTORE_HOOK_BIN (set by
// `make test` to what `make build` made), or a static build of the tree.
func hookBinary(t testing.TB) string { return hookArtifact.get(t) }

// failpointBinary is a build of the tree with the pause points of package
// failpoint compiled in, for the tests that kill the hook at a step:
// $AUTOFS_RESTORE_HOOK_FP_BIN (set by test/tests.sh, which builds it on the
// host), or a static build of the tree.
func failpointBinary(t testing.TB) string { return failpointArtifact.get(t) }

// buildHook builds the binary statically, as `make build` does, with
// the given build tags, into dir.
func buildHook(dir, name string, tags ...string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-tags", strings.Join(append([]string{"osusergo", "netgo"}, tags...), ","), "-ldflags", "-linkmode external -extldflags -static", "-o", out, "./cmd/autofs-restore-hook")
	cmd.Dir = filepath.Join(lab.Dir(), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %v: %v\n%s", tags, err, b)
	}
	return out, nil
}

// logFile points the hook's log at a file of the test (CRIU passes runc's
// environment on to its action scripts) and returns a reader for it.
func logFile(t testing.TB) func() string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook.log")
	t.Setenv(hook.EnvLogFile, p)
	t.Setenv(hook.EnvNoSyslog, "1")
	return logReader(t, p)
}

// logReader reads the hook's log at path, and shows it when the test
// fails.
func logReader(t testing.TB, path string) func() string {
	t.Helper()
	read := func() string {
		b, _ := os.ReadFile(path)
		return string(b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the hook's log at the failure:\n%s", read())
		}
	})
	return read
}

func status(t testing.TB, c *lab.Container) hook.Report {
	t.Helper()
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(hookBinary(t), "status", "--pid", strconv.Itoa(pid), "--json", "--no-syslog").Output()
	if err != nil {
		t.Fatalf("status --pid %d: %v", pid, err)
	}
	var r hook.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return r
}

// allOK fails unless every autofs mount of c is served and not stale, and
// (want >= 0) there are want of them; it returns the mount points.
func allOK(t testing.TB, c *lab.Container, want int) []string {
	t.Helper()
	r := status(t, c)
	var mps []string
	for _, m := range r.Mounts {
		mps = append(mps, m.Mountpoint)
		if m.State != string(hook.StateOK) {
			t.Errorf("%s: state %q (master %s %d)", m.Mountpoint, m.State, m.Master, m.MasterPid)
		}
	}
	if want >= 0 && len(r.Mounts) != want {
		t.Errorf("%d autofs mounts %v, want %d", len(r.Mounts), mps, want)
	}
	return mps
}

func noWaiters(t testing.TB, c *lab.Container) {
	t.Helper()
	w, err := c.AutofsWaiters()
	if err != nil {
		t.Fatal(err)
	}
	if len(w) > 0 {
		t.Errorf("processes %v of %s in autofs_wait:\n%s", w, c.Name, c.Describe())
		c.KillWaiters()
	}
}

// systemdWorks checks what a user of the systemd container sees: every
// automount path answers, the filesystem that was on top kept its file.
func systemdWorks(t testing.TB, c *lab.Container) {
	t.Helper()
	if got := mustWork(t, c, "cat", "/srv/a/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("/srv/a/state after restore: %q", got)
	}
	mustWork(t, c, "sh", "-c", "echo written-after-restore > /srv/b/x && cat /srv/b/x")
	mustWork(t, c, "stat", "/srv/c/")
	noWaiters(t, c)
}

func TestSystemdActionScript(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	log := logFile(t)
	c := lab.Up(t, "hook-sd", lab.Systemd, lab.Options{ActionScript: bin})
	before := allOK(t, c, 3)
	for round := 1; round <= 2; round++ {
		checkpointRestore(t, c)
		// At once after the restore: no wait, no retry.
		systemdWorks(t, c)
		allOK(t, c, len(before))
		t.Logf("round %d hook log:\n%s", round, log())
		// Each unit restarted once, though CRIU runs every action twice
		// (the second run finds the phase done and keeps its outcome);
		// the filesystem on /srv/a preserved.
		ph := fixedPerStateFile(t, c, fmt.Sprintf("restore %d", round))
		if got := slices.Sorted(slices.Values(ph.Fixed)); !slices.Equal(got, []string{"/srv/a", "/srv/b", "/srv/c"}) || ph.Wiring != hook.WiringScript {
			t.Errorf("restore %d: post-resume by %s fixed %q, want /srv/a, /srv/b, /srv/c by the action script", round, ph.Wiring, ph.Fixed)
		}
		// Round 1: only /srv/a had a filesystem on top at the checkpoint;
		// round 2: /srv/b and /srv/c too (systemdWorks mounted them).
		want := []string{"/srv/a"}
		if round == 2 {
			want = []string{"/srv/a", "/srv/b", "/srv/c"}
		}
		if got := slices.Sorted(slices.Values(ph.Preserved)); !slices.Equal(got, want) {
			t.Errorf("restore %d: preserved %q, want %q", round, got, want)
		}
	}
	out, _, _ := c.Exec(okWait, "journalctl", "--no-pager", "-o", "cat", "-u", "srv-b.automount")
	if strings.Contains(out, "Automount point already active?") {
		t.Errorf("systemd saw a request on the stale mount:\n%s", out)
	}
}

// restoredWithoutHook starts a container with no hook wired, checkpoints
// and restores it, and returns it with its init's pid: the state an
// operator meets before running fix by hand.
func restoredWithoutHook(t testing.TB, name string, kind lab.Kind) (*lab.Container, int) {
	t.Helper()
	return restoredWithoutHookOpts(t, name, kind, lab.Options{})
}

// restoredWithoutHookOpts is restoredWithoutHook for a container made with
// opts (no wiring among them).
func restoredWithoutHookOpts(t testing.TB, name string, kind lab.Kind, opts lab.Options) (*lab.Container, int) {
	t.Helper()
	c := lab.Up(t, name, kind, opts)
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	return c, pid
}

// daemonInfo is what the test compares of the automount daemon.
type daemonInfo struct {
	pid, pgid, sid int
	status         map[string]string
	cgroup         string
	fds            []string
}

func automountDaemons(t testing.TB, c *lab.Container) []daemonInfo {
	t.Helper()
	pids, err := c.Pids()
	if err != nil {
		t.Fatal(err)
	}
	var out []daemonInfo
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if strings.TrimSpace(string(comm)) != "automount" {
			continue
		}
		st, err := proc.ReadStat(p)
		if err != nil {
			t.Fatal(err)
		}
		status, err := proc.ReadStatus(p)
		if err != nil {
			t.Fatal(err)
		}
		d := daemonInfo{pid: p, pgid: st.PGrp, sid: st.Session, status: status}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p))
		d.cgroup = string(cg)
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, e.Name()))
			d.fds = append(d.fds, e.Name()+" -> "+l)
		}
		out = append(out, d)
	}
	return out
}

var privilegeFields = []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"}

func TestAutomountActionScript(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	log := logFile(t)
	c := lab.Up(t, "hook-am", lab.Automount, lab.Options{ActionScript: bin})
	allOK(t, c, 5)
	orig := automountDaemons(t, c)
	if len(orig) != 1 {
		t.Fatalf("%d automount daemons before checkpoint", len(orig))
	}
	initPid, _ := c.Pid()
	initCg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", initPid))
	for round := 1; round <= 2; round++ {
		checkpointRestore(t, c)
		// Right after the restore, before any access: every mount served.
		allOK(t, c, 5)
		mustWork(t, c, "stat", "/srv/direct1/")
		mustWork(t, c, "sh", "-c", "echo d2 > /srv/direct2/x && cat /srv/direct2/x")
		mustWork(t, c, "ls", "/srv/dmulti/sub")
		mustWork(t, c, "ls", "/ind/multi/sub")
		if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
			t.Fatalf("/ind/k1/state: %q", got)
		}
		mustWork(t, c, "ls", "/ind/k3")
		noWaiters(t, c)
		// /srv/dmulti, once triggered, has its offset /srv/dmulti/sub.
		allOK(t, c, 6)
		ds := automountDaemons(t, c)
		if len(ds) != 1 {
			t.Fatalf("round %d: %d automount daemons, want 1", round, len(ds))
		}
		d := ds[0]
		if d.pgid != d.pid || d.sid != d.pid {
			t.Errorf("new daemon %d: pgid %d sid %d, want a session leader", d.pid, d.pgid, d.sid)
		}
		for _, k := range privilegeFields {
			if d.status[k] != orig[0].status[k] {
				t.Errorf("new daemon %s = %q, the original had %q", k, d.status[k], orig[0].status[k])
			}
		}
		if d.cgroup != string(initCg) {
			t.Errorf("new daemon cgroups:\n%s\ncontainer init:\n%s", d.cgroup, initCg)
		}
		for _, fd := range d.fds {
			_, target, _ := strings.Cut(fd, " -> ")
			for _, bad := range []string{"mnt:[", "pid:[", "net:[", "ipc:[", "uts:[", "cgroup:[", "time:[", "user:[", bin} {
				if strings.HasPrefix(target, bad) {
					t.Errorf("new daemon holds %s: a file of the hook's", fd)
				}
			}
		}
		t.Logf("round %d: daemon %d, fds %v", round, d.pid, d.fds)
		expireAndRetrigger(t, c, d.pid)
	}
	l := log()
	if n := strings.Count(l, "automount killed and started again"); n != 2 {
		t.Errorf("daemon respawned %d times in 2 restores, want 2:\n%s", n, l)
	}
}

// expireAndRetrigger prepares an automount container for its next
// checkpoint: CRIU refuses to dump a triggered direct mount, so the daemon
// (pid) expires what is unused (SIGUSR1), which also shows that it serves
// its mounts; then the indirect keys are triggered again.
func expireAndRetrigger(t testing.TB, c *lab.Container, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testenv.Scale(10 * time.Second))
	for {
		covered := 0
		for _, m := range status(t, c).Mounts {
			if m.OnTop != "" || strings.HasPrefix(m.Mountpoint, "/srv/dmulti/") {
				covered++
			}
		}
		if covered == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new daemon did not expire its direct mounts: %+v", status(t, c).Mounts)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mustWork(t, c, "sh", "-c", "echo state-before-checkpoint > /ind/k1/state && ls /ind/multi")
}

// A container without autofs, restored with the action script wired: the
// hook says nothing. It needs no autofs: it runs on the host (TestNoAutofs).
func TestNoAutofsPlainContainerIsQuiet(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	bin := hookBinary(t)
	log := logFile(t)
	c := lab.Up(t, "hook-plain", lab.Plain, lab.Options{ActionScript: bin})
	checkpointRestore(t, c)
	mustWork(t, c, "true")
	if l := log(); strings.TrimSpace(l) != "" {
		t.Errorf("the hook logged on a container without autofs:\n%s", l)
	}
	allOK(t, c, 0)
}

// Two `fix` runs at once for one restored container (no hook wired):
// every unit is restarted once, both runs succeed, every path works.
func TestConcurrentFixRunsRestartOnce(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-concurrent", lab.Systemd)
	type res struct {
		out string
		err error
	}
	// One run is given the init, the other another process of the
	// container: both must take the init's lock.
	pids, err := c.Pids()
	if err != nil || len(pids) < 2 {
		t.Fatalf("pids of %s: %v %v", c.Name, pids, err)
	}
	other := pids[0]
	if other == pid {
		other = pids[1]
	}
	ch := make(chan res, 2)
	for _, p := range []int{pid, other} {
		go func() {
			out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(p), "--no-syslog").CombinedOutput()
			ch <- res{string(out), err}
		}()
	}
	var all string
	for i := 0; i < 2; i++ {
		r := <-ch
		if r.err != nil {
			t.Errorf("fix: %v\n%s", r.err, r.out)
		}
		all += r.out
	}
	for _, unit := range []string{"srv-a.automount", "srv-b.automount", "srv-c.automount"} {
		if n := strings.Count(all, "unit="+unit); n != 1 {
			t.Errorf("%s restarted %d times by two concurrent runs, want 1:\n%s", unit, n, all)
		}
	}
	if !strings.Contains(all, fmt.Sprintf("pid %d is not the init of its pid namespace: acting on its init, pid %d", other, pid)) {
		t.Errorf("the run given pid %d did not act on the init %d:\n%s", other, pid, all)
	}
	systemdWorks(t, c)
	allOK(t, c, 3)
}

// A follower whose container never finishes restoring (its process is
// gone) exits quietly at once.
func TestFollowerExitsWhenRestoreFails(tt *testing.T) {
	t := lab.Record(tt)
	bin := hookBinary(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := proc.ReadStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	start := strconv.FormatUint(st.StartTime, 10)
	cmd.Process.Kill()
	cmd.Wait()
	logPath := filepath.Join(t.TempDir(), "log")
	cfg := fmt.Sprintf(`{"init":{"pid":%d,"start_time":%s},"config":{"log":{"File":%q,"NoSyslog":true},"timeout":20000000000,"restore_timeout":30000000000}}`, cmd.Process.Pid, start, logPath)
	follow := exec.Command(bin, "__autofs-restore-hook-follow", cfg)
	follow.Env = []string{}
	begin := time.Now()
	if out, err := follow.CombinedOutput(); err != nil {
		t.Fatalf("follower: %v %s", err, out)
	}
	if d := time.Since(begin); d > testenv.Scale(5*time.Second) {
		t.Errorf("follower took %v to notice the restore failed", d)
	}
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), "restore failed or ended; nothing to do") {
		t.Errorf("follower log: %q", b)
	}
}

// A service of the container in its own mount namespace without
// propagation holds copies of the autofs mounts: --nested=skip leaves
// those mounts alone, the default fixes them and warns that the copies
// become catatonic (and they do).
func TestNestedMountNamespace(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c := lab.Up(t, "hook-nested", lab.Systemd, lab.Options{})
	mustWork(t, c, "systemd-run", "--unit", "nested", "unshare", "-m", "--propagation", "private", "sleep", "1000")
	checkpointRestore(t, c)
	var nested []int
	for _, m := range status(t, c).Mounts {
		if len(m.Nested) == 0 {
			t.Errorf("%s: no nested copy seen", m.Mountpoint)
		}
		nested = m.Nested
	}
	pid, _ := c.Pid()
	fix := func(args ...string) string {
		out, err := exec.Command(bin, append([]string{"fix", "--pid", strconv.Itoa(pid), "--no-syslog"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("fix %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := fix("--nested=skip")
	if n := strings.Count(out, "left alone (--nested=skip)"); n < 3 {
		t.Errorf("--nested=skip: %d mounts left alone, want 3:\n%s", n, out)
	}
	for _, m := range status(t, c).Mounts {
		if m.State != string(hook.StateStale) {
			t.Errorf("%s after --nested=skip: %q, want still stale", m.Mountpoint, m.State)
		}
	}
	out = fix("--force")
	if n := strings.Count(out, "their copies become catatonic"); n < 3 {
		t.Errorf("default: %d warnings about nested copies, want 3:\n%s", n, out)
	}
	systemdWorks(t, c)
	allOK(t, c, 3)
	if len(nested) == 0 {
		t.Fatal("no nested process")
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", nested[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, " - autofs ") && !strings.Contains(l, "fd=-1") {
			t.Errorf("nested copy not catatonic: %s", l)
		}
	}
}

// The container's systemd does not answer (stopped): fix gives up at its
// deadline with an error naming the cause; once systemd runs again, the
// next fix finishes the job (the failed phase was not marked done).
func TestSystemdNotAnsweringHitsDeadline(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-stopped", lab.Systemd)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	start := time.Now()
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "3s").CombinedOutput()
	took := time.Since(start)
	if err == nil || !strings.Contains(string(out), "does not answer") {
		t.Fatalf("fix with systemd stopped: err %v, output:\n%s", err, out)
	}
	if took > testenv.Scale(8*time.Second) {
		t.Errorf("fix took %v with --timeout 3s", took)
	}
	t.Logf("fix gave up after %v: %s", took.Round(time.Millisecond), lastLineOf(string(out)))
	syscall.Kill(pid, syscall.SIGCONT)
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil {
		t.Fatalf("fix after SIGCONT: %v\n%s", err, out)
	}
	systemdWorks(t, c)
	allOK(t, c, 3)
}

// The automount binary is missing, or was replaced since the daemon
// started: the hook refuses before it kills anything, and says why. Then,
// with the binary back, it is swapped between the spawner's check and
// the exec (swappedBeforeTheExec), in the same container.
func TestAutomountBinaryReplacedIsRefused(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-replaced", lab.Automount)
	before := automountDaemons(t, c)
	// Missing first: removed (a copy kept aside, a new inode; the binary
	// itself kept as automount.real, a hard link), then the copy put in
	// its place: replaced.
	mustWork(t, c, "sh", "-c", "ln /usr/sbin/automount /usr/sbin/automount.real && cp -p /usr/sbin/automount /usr/sbin/automount.keep && rm /usr/sbin/automount")
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/usr/sbin/automount is gone from the container") {
		t.Fatalf("fix with the binary missing: err %v, output:\n%s", err, out)
	}
	if after := automountDaemons(t, c); len(after) != 1 || after[0].pid != before[0].pid {
		t.Fatalf("the daemon was touched with its binary missing")
	}
	t.Logf("missing binary refused: %s", lastLineOf(string(out)))
	mustWork(t, c, "mv", "/usr/sbin/automount.keep", "/usr/sbin/automount")
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no longer the binary the daemon ran") {
		t.Fatalf("fix: err %v, output:\n%s", err, out)
	}
	after := automountDaemons(t, c)
	if len(before) != 1 || len(after) != 1 || before[0].pid != after[0].pid {
		t.Fatalf("the daemon was touched: before %d, after %d", len(before), len(after))
	}
	t.Logf("refused: %s", lastLineOf(string(out)))
	mustWork(t, c, "ln", "-f", "/usr/sbin/automount.real", "/usr/sbin/automount")
	swappedBeforeTheExec(t, c, pid)
}

// Killing the daemon leaves every mount it serves masterless, the
// indirect /ind included, which needs no fix of its own: the hook waits
// until the new daemon serves it too, and says so when it does not (here
// /ind was dropped from the master map since the daemon started).
func TestAutomountIndirectMountWaitedFor(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	// Untriggered: /ind has no offset mount of its own to wait for.
	c := lab.Up(t, "hook-indirect", lab.Automount, lab.Options{NoTrigger: true})
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	mustWork(t, c, "sed", "-i", `/^\/ind\t/d`, "/etc/auto.master")
	start := time.Now()
	var out []byte
	out, err = exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--timeout", "3s", "--no-syslog").CombinedOutput()
	t.Logf("fix took %v: %s", time.Since(start).Round(time.Millisecond), out)
	if err == nil {
		t.Fatalf("fix succeeded though the new daemon does not serve /ind")
	}
	last := lastLineOf(string(out))
	if !strings.Contains(last, "/ind before the deadline") || !strings.Contains(last, "does not serve them") {
		t.Errorf("fix output does not name /ind and the cause:\n%s", out)
	}
	if strings.Contains(last, "/srv/direct1") {
		t.Errorf("fix blames a mount the new daemon serves: %s", last)
	}
	// The direct mounts work, and status says so; /ind fails at once, it
	// does not hang, and status says it is not served.
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "ls", "/srv/dmulti/sub")
	o, timedOut, _ := c.Exec(5*time.Second, "ls", "/ind/k2")
	if timedOut {
		t.Fatalf("/ind/k2 hangs after the fix")
	}
	t.Logf("ls /ind/k2: %s", strings.TrimSpace(o))
	for _, m := range status(t, c).Mounts {
		underInd := m.Mountpoint == "/ind" || strings.HasPrefix(m.Mountpoint, "/ind/")
		if ok := m.State == string(hook.StateOK); ok == underInd {
			t.Errorf("%s: state %q", m.Mountpoint, m.State)
		}
	}
}

func lastLineOf(s string) string { return tail(strings.TrimSpace(s), 1) }

// tail is the last n lines of s.
func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// The hook killed between the two phases and run again finishes the job
// from its state file: pre-resume is not redone, each unit restarted once.
func TestKilledBetweenPhasesAndRerun(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hook-killed", lab.Systemd)
	cmd, stderr := startFix(t, bin, nil, pid)
	var first strings.Builder
	readUntil(t, stderr, &first, "pre-resume finished")
	cmd.Process.Kill()
	cmd.Wait()
	if strings.Contains(first.String(), "restarted") {
		t.Fatalf("killed too late, it already restarted:\n%s", first.String())
	}
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog").CombinedOutput()
	if err != nil {
		t.Fatalf("second fix: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "made catatonic") {
		t.Errorf("pre-resume done twice:\n%s", out)
	}
	for _, unit := range []string{"srv-a.automount", "srv-b.automount", "srv-c.automount"} {
		if n := strings.Count(string(out), "unit="+unit); n != 1 {
			t.Errorf("%s restarted %d times by the second run, want 1:\n%s", unit, n, out)
		}
	}
	systemdWorks(t, c)
	allOK(t, c, 3)
}
