package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// seccompPrograms reads the seccomp filters of pid through ptrace
// (PTRACE_SECCOMP_GET_FILTER), oldest first, each as its instructions
// printed: the test's own reading, not the hook's.
func seccompPrograms(t testing.TB, pid int) []string {
	t.Helper()
	type result struct {
		progs []string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // ptrace requests come from the tracer thread
		var r result
		defer func() {
			if r.err == nil {
				runtime.UnlockOSThread()
			}
			done <- r
		}()
		if r.err = unix.PtraceSeize(pid); r.err != nil {
			return
		}
		defer unix.PtraceDetach(pid)
		if r.err = unix.PtraceInterrupt(pid); r.err != nil {
			return
		}
		var ws unix.WaitStatus
		if _, r.err = unix.Wait4(pid, &ws, unix.WALL, nil); r.err != nil {
			return
		}
		for i := 0; ; i++ {
			n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), uintptr(i), 0, 0, 0)
			if e == unix.ENOENT {
				return
			}
			if e != 0 || n == 0 {
				r.err = fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %v (%d)", i, e, n)
				return
			}
			prog := make([]unix.SockFilter, n)
			if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), uintptr(i), uintptr(unsafe.Pointer(&prog[0])), 0, 0); e != 0 {
				r.err = e
				return
			}
			r.progs = append(r.progs, fmt.Sprint(prog))
		}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("read the seccomp filters of %d: %v", pid, r.err)
	}
	return r.progs
}

// confinement is what a container gives its processes beyond credentials,
// read from the host's /proc.
func confinement(t testing.TB, pid int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range []string{"limits", "oom_score_adj", "personality"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		out[f] = string(b)
	}
	// The LSM label: none where the kernel has no module that gives one.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/attr/current", pid))
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		t.Fatal(err)
	}
	out["attr/current"] = string(b)
	return out
}

// confined is what the test compares of a confined automount daemon.
type confined struct {
	d     daemonInfo
	progs []string          // its seccomp filters, read through ptrace
	conf  map[string]string // confinement()
}

// confinedDaemon reads the confinement of the container's original
// daemon o, and fails unless the container is confined as the lab's
// --confined asks, and otherwise than the test: else a copy of the hook's
// own state would go unseen.
func confinedDaemon(t testing.TB, o daemonInfo) confined {
	t.Helper()
	w := confined{d: o, progs: seccompPrograms(t, o.pid), conf: confinement(t, o.pid)}
	if o.status["Seccomp"] != "2" || len(w.progs) == 0 || o.status["Umask"] != "0027" || strings.TrimSpace(w.conf["oom_score_adj"]) != "500" {
		t.Fatalf("the container is not confined as asked: Seccomp %s, %d filters, Umask %s, oom_score_adj %s", o.status["Seccomp"], len(w.progs), o.status["Umask"], w.conf["oom_score_adj"])
	}
	self := confinement(t, os.Getpid())
	if self["limits"] == w.conf["limits"] {
		t.Fatalf("the container's limits are the test's own: the test would not see a copy of the hook's")
	}
	if appArmorOn() {
		if w.conf["attr/current"] != "arh-lab-confined (enforce)\n" || self["attr/current"] == w.conf["attr/current"] {
			t.Fatalf("AppArmor is on but the daemon runs under %q (the test under %q), not the lab's profile", w.conf["attr/current"], self["attr/current"])
		}
	} else {
		t.Logf("this kernel has no AppArmor: the label is not part of this run (the VM's Debian kernel has it)")
	}
	return w
}

// keptItsConfinement checks, after a restore fixed by the hook, that every
// path of the automount container works and that its one daemon runs with
// the original's privileges, seccomp filters, limits, oom_score_adj,
// umask, personality and LSM label.
func keptItsConfinement(t testing.TB, c *lab.Container, round int, want confined) {
	t.Helper()
	d := automountWorksAgain(t, c, fmt.Sprintf("round %d", round), nil)
	for _, k := range append(privilegeFields, "Umask") {
		if d.status[k] != want.d.status[k] {
			t.Errorf("round %d: new daemon %s = %q, the original had %q", round, k, d.status[k], want.d.status[k])
		}
	}
	if got := seccompPrograms(t, d.pid); fmt.Sprint(got) != fmt.Sprint(want.progs) {
		t.Errorf("round %d: the new daemon's seccomp filters\n%v\ndiffer from the original's\n%v", round, got, want.progs)
	}
	for k, v := range confinement(t, d.pid) {
		if v != want.conf[k] {
			t.Errorf("round %d: new daemon's %s\n%s\nthe original's\n%s", round, k, v, want.conf[k])
		}
	}
	t.Logf("round %d: daemon %d, Seccomp %s with %d filters (%d instructions in the first), Umask %s, label %q", round, d.pid, d.status["Seccomp"], len(want.progs), strings.Count(want.progs[0], "{"), d.status["Umask"], strings.TrimSpace(want.conf["attr/current"]))
}

// automountWorksAgain checks, after a restore of the automount container,
// a direct, an offset and an indirect path, that nothing waits on autofs,
// and that one automount daemon runs, another process than before (unless
// nil): its pid inside the container differs, since CRIU restores that pid
// and only a daemon started again gets a new one (host pids change on
// every restore). It returns that daemon. what names the check in
// messages.
func automountWorksAgain(t testing.TB, c *lab.Container, what string, before *daemonInfo) daemonInfo {
	t.Helper()
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "ls", "/srv/dmulti/sub")
	if got := mustWork(t, c, "cat", "/ind/k1/state"); !strings.Contains(got, "state-before-checkpoint") {
		t.Fatalf("%s: /ind/k1/state: %q", what, got)
	}
	noWaiters(t, c)
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%s: %d automount daemons, want 1", what, len(ds))
	}
	if before != nil && nsPid(ds[0]) == nsPid(*before) {
		t.Fatalf("%s: the daemon has the pid %s in the container, as before the checkpoint: CRIU restored it, nothing started it again", what, nsPid(ds[0]))
	}
	return ds[0]
}

// samePrivileges checks the new daemon's privilege fields against the
// original's.
func samePrivileges(t testing.TB, got, want daemonInfo) {
	t.Helper()
	for _, k := range privilegeFields {
		if got.status[k] != want.status[k] {
			t.Errorf("new daemon %s = %q, the original had %q", k, got.status[k], want.status[k])
		}
	}
}

// appArmorOn says whether the kernel enforces AppArmor, as runc tells.
func appArmorOn() bool {
	b, _ := os.ReadFile("/sys/module/apparmor/parameters/enabled")
	return strings.TrimSpace(string(b)) == "Y"
}

// A container confined as podman and Kubernetes confine them (a seccomp
// filter from config.json, oomScoreAdj, lower limits, the daemon's
// umask, on a kernel with AppArmor the lab's profile), restored by runc
// and CRIU with the action script: the automount daemon is started again
// with the very same seccomp filters (read back by the test through
// ptrace), limits, oom_score_adj, umask, personality and AppArmor
// profile, every path works, and the container checkpoints and
// restores again. The hook once refused such a daemon ("runs under a
// seccomp filter, which the hook cannot copy"), and the paths stayed
// catatonic; before that, it respawned it unconfined with the hook's own
// limits, and without its AppArmor profile.
func TestConfinedAutomountKeepsItsConfinement(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	log := logFile(t)
	c := lab.Up(t, "hook-confined", lab.Automount, lab.Options{ActionScript: bin, Confined: true})
	allOK(t, c, 5)
	orig := automountDaemons(t, c)
	if len(orig) != 1 {
		t.Fatalf("%d automount daemons before checkpoint", len(orig))
	}
	want := confinedDaemon(t, orig[0])
	for round := 1; round <= 2; round++ {
		checkpointRestore(t, c)
		allOK(t, c, 5)
		keptItsConfinement(t, c, round, want)
		// As TestAutomountActionScript: expire the direct mounts (CRIU
		// refuses a triggered one) and trigger /ind/k1 again.
		expireAndRetrigger(t, c, automountDaemons(t, c)[0].pid)
	}
	if l := log(); strings.Count(l, "automount killed and started again") != 2 {
		t.Errorf("daemon respawned %d times in 2 restores, want 2:\n%s", strings.Count(l, "automount killed and started again"), l)
	}
}

// A daemon whose seccomp filter cannot be copied exactly (here one that
// makes kexec_load seem to succeed without running it: errno 0, which a
// copy would also apply to the hook's own steps) is refused before the
// kill: fix says why, the daemon keeps running as it was, and no access to
// its mounts hangs (pre-resume made the stale ones catatonic before the
// refusal). The refusal had only unit tests (TestDaemonReproducible).
func TestUncopyableFilterRefusedBeforeTheKill(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	const fakeSuccess = `{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
		"syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0}]}`
	c, pid := restoredWithoutHookOpts(t, "hook-refused", lab.Automount, lab.Options{Seccomp: fakeSuccess})
	before := automountDaemons(t, c)
	if len(before) != 1 || before[0].status["Seccomp"] != "2" {
		t.Fatalf("automount daemons after restore: %+v, want one under a seccomp filter", before)
	}
	// The bug, first: without the hook the direct mount hangs.
	mustHang(t, c, "stat", "/srv/direct1/")
	out, err := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "30s").CombinedOutput()
	after := automountDaemons(t, c)
	if len(after) != 1 || after[0].pid != before[0].pid {
		t.Fatalf("automount daemons after the refusal: %+v, want the original %d untouched", after, before[0].pid)
	}
	for _, p := range []string{"/srv/direct1/", "/srv/direct2/", "/srv/dmulti/", "/ind/k2/"} {
		sout, timedOut, serr := c.Exec(okWait, "stat", p)
		if timedOut {
			t.Fatalf("stat %s hung after the refusal (fix: %v, %s):\n%s", p, err, lastLineOf(string(out)), c.Describe())
		}
		t.Logf("stat %s after the refusal: %v %s", p, serr, lastLineOf(sout))
	}
	noWaiters(t, c)
	if err == nil || !strings.Contains(string(out), "errno 0") || !strings.Contains(string(out), "refused rather than respawn it") {
		t.Fatalf("fix of a daemon whose filter cannot be copied: err %v, output:\n%s", err, out)
	}
	t.Logf("fix refused: %s", lastLineOf(string(out)))
}

// podman with its default seccomp profile (no --security-opt seccomp=),
// the lab's AppArmor profile (podman's default one denies every mount, so
// no automount works under it), --oom-score-adj and lower limits: the
// automount daemon of a container checkpointed and restored by podman is
// started again inside the very same confinement, through the shipped
// hooks.d JSON and through the CRIU action script. The hook once refused
// such a daemon ("runs under a seccomp filter, which the hook cannot
// copy"), and the container's paths stayed catatonic.
func TestPodmanAutomountKeepsItsConfinement(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: provisioning should have installed it: %v", err)
	}
	for _, wiring := range []string{"hooks.d", "action-script"} {
		t.Run(wiring, func(tt *testing.T) {
			t := lab.Record(tt)
			lab.Require(t)
			bin := hookBinary(t)
			// podman runs CRIU's action script with no environment of
			// the caller: that path's log goes to syslog, and the fix is
			// done when the restore returns.
			log := func() string { return "automount killed and started again" }
			opts := lab.Options{Confined: true}
			if wiring == "hooks.d" {
				log = useShippedHooksJSON(t)
			} else {
				opts.ActionScript = bin
			}
			c := lab.PodmanUp(t, "pod-am-"+wiring[:1], lab.Automount, opts)
			allOK(t, c, 5)
			orig := automountDaemons(t, c)
			if len(orig) != 1 {
				t.Fatalf("%d automount daemons before checkpoint", len(orig))
			}
			want := confinedDaemon(t, orig[0])
			// podman's default profile is hundreds of instructions; the
			// lab's runc one a few dozen.
			if n := strings.Count(want.progs[len(want.progs)-1], "{"); n < 200 {
				t.Fatalf("the daemon's last seccomp filter has %d instructions: not podman's default profile", n)
			}
			checkpointRestore(t, c)
			// The hooks.d path fixes from a detached worker.
			deadline := time.Now().Add(testenv.Scale(30 * time.Second))
			for {
				pid, err := c.Pid()
				if err != nil {
					t.Fatal(err)
				}
				if o, _, err := hook.ReadOutcome(pid); err == nil && o != nil && o.PostResume != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the state file records no post-resume 30 s on; log:\n%s", log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			allOK(t, c, 5)
			keptItsConfinement(t, c, 1, want)
		})
	}
}

// A container whose filter denies setgroups, setgid and setuid (with
// no_new_privs, so that runc installs it after the credentials, as CRIU
// restores it): the new daemon gets its credentials before the copied
// filters, as the old one did, and starts. The hook once installed the
// filters first and let Go's fork set the credentials under them: setgroups
// failed with EPERM after the old daemon was killed.
func TestFilterDenyingSetuidStillRespawns(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	log := logFile(t)
	const denyCreds = `{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
		"syscalls": [{"names": ["setgroups", "setgid", "setuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}`
	c := lab.Up(t, "hook-nosetuid", lab.Automount, lab.Options{ActionScript: bin, Seccomp: denyCreds, NoNewPrivs: true})
	orig := automountDaemons(t, c)
	if len(orig) != 1 || orig[0].status["Seccomp"] != "2" || orig[0].status["NoNewPrivs"] != "1" {
		t.Fatalf("automount daemons: %+v, want one with a filter and no_new_privs", orig)
	}
	progs := seccompPrograms(t, orig[0].pid)
	checkpointRestore(t, c)
	allOK(t, c, 5)
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "ls", "/srv/dmulti/sub")
	noWaiters(t, c)
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%d automount daemons after the restore, want 1; log:\n%s", len(ds), log())
	}
	for _, k := range privilegeFields {
		if ds[0].status[k] != orig[0].status[k] {
			t.Errorf("new daemon %s = %q, the original had %q", k, ds[0].status[k], orig[0].status[k])
		}
	}
	if got := seccompPrograms(t, ds[0].pid); fmt.Sprint(got) != fmt.Sprint(progs) {
		t.Errorf("the new daemon's seccomp filters\n%v\ndiffer from the original's\n%v", got, progs)
	}
	fixedPerStateFile(t, c, "after the fix")
}
