package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/fusetest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// plantedProc is what a hostile container puts over its /proc: a tmpfs
// with an executable at self/fd/3 (the path the hook once executed after
// joining the container's mount namespace) and a cap_last_cap of -1 (which
// once gave a respawned daemon the full bounding set). The script leaves
// a mark in the container's root if anything runs it.
const plantedProc = `mount -t tmpfs -o mode=0755 arh-hostile /proc &&
mkdir -p /proc/self/fd /proc/sys/kernel &&
printf '#!/bin/sh\necho "pwned: $0 $*" >/pwned\n' >/proc/self/fd/3 &&
chmod 0755 /proc/self/fd/3 &&
echo -1 >/proc/sys/kernel/cap_last_cap`

// runHook runs the hook with a deadline; it must end by itself.
func runHook(t testing.TB, bin string, d time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scale(d))
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not end within %v:\n%s", bin, args, testenv.Scale(d), out)
	}
	return string(out), err
}

func noMark(t testing.TB, pid int, after string) {
	t.Helper()
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/pwned", pid)); err == nil {
		t.Fatalf("after %s the container's planted /proc/self/fd/3 ran: %s", after, b)
	}
}

// A restored container whose /proc is the container's forgery: status and
// fix never run what it planted, and once /proc is procfs again fix works.
func hostileProc(tt *testing.T, kind lab.Kind, works ...string) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hostile-"+string(kind), kind)
	if out, timedOut, err := c.Exec(10*time.Second, "sh", "-c", plantedProc); err != nil || timedOut {
		t.Fatalf("plant /proc (timed out %v): %v %s", timedOut, err, out)
	}
	p := strconv.Itoa(pid)
	out, err := runHook(t, bin, 60*time.Second, "status", "--pid", p, "--no-syslog")
	t.Logf("status with the planted /proc (err %v):\n%s", err, out)
	noMark(t, pid, "status")
	out, err = runHook(t, bin, 60*time.Second, "fix", "--pid", p, "--assume-restored", "--no-syslog", "--timeout", "20s")
	t.Logf("fix with the planted /proc (err %v):\n%s", err, out)
	noMark(t, pid, "fix")
	// The container's own /proc again (the tmpfs was on top of it).
	if o, err := exec.Command("nsenter", "-t", p, "-m", "umount", "/proc").CombinedOutput(); err != nil {
		t.Fatalf("remove the planted /proc: %v %s", err, o)
	}
	out, err = runHook(t, bin, 60*time.Second, "fix", "--pid", p, "--assume-restored", "--force", "--no-syslog", "--timeout", "20s")
	if err != nil {
		t.Fatalf("fix once /proc is procfs again: %v\n%s", err, out)
	}
	t.Logf("fix once /proc is procfs again: %s", lastLineOf(out))
	noMark(t, pid, "the second fix")
	for _, w := range works {
		mustWork(t, c, "stat", w)
	}
	if strings.Contains(out, "pwned") {
		t.Fatalf("the hook's output mentions the planted script:\n%s", out)
	}
}

func TestHostileProcSystemd(t *testing.T) {
	hostileProc(t, lab.Systemd, "/srv/b/", "/srv/c/")
}

func TestHostileProcAutomount(t *testing.T) {
	hostileProc(t, lab.Automount, "/srv/direct1/", "/ind/multi/sub/")
}

// fuseOverDaemonLog mounts a FUSE server of the test's over the automount
// daemon's log (/run/automount.log, its stdout and stderr) in the
// restored container, as the container itself could: the respawned
// daemon opens it again. The server is aborted at the end, before the
// container is torn down.
func fuseOverDaemonLog(t testing.TB, pid int, answer func(op, reqPid uint32) bool) *fusetest.Server {
	t.Helper()
	return fuseOver(t, pid, "/run/automount.log", answer)
}

// fuseOver mounts a FUSE server of the test's over the file path of the
// container of pid.
func fuseOver(t testing.TB, pid int, path string, answer func(op, reqPid uint32) bool) *fusetest.Server {
	t.Helper()
	srv, err := fusetest.Mount(path, fusetest.Options{MntNSOf: pid, Answer: answer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// inPidNS tells whether pid is a process of the pid namespace of init.
func inPidNS(init int) func(pid uint32) bool {
	want, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", init))
	return func(pid uint32) bool {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
		return err == nil && got == want
	}
}

// oursLeft lists the processes of the hook's binary that still run.
func oursLeft(t testing.TB) []string {
	t.Helper()
	return strs(procsWhere(func(p aProc) bool { return strings.HasPrefix(p.role(), "__autofs-restore-hook") }))
}

func daemonFD(t testing.TB, c *lab.Container, n int) string {
	t.Helper()
	d := automountDaemons(t, c)
	if len(d) != 1 {
		t.Fatalf("want one automount daemon, have %d", len(d))
	}
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", d[0].pid, n))
	return l
}

// The container serves the daemon's log path from FUSE and answers only
// its own processes: the hook, a host process, gets nothing. The
// respawned daemon logs there again, and the hook never waits on it. It
// once copied every fd of the new daemon to compare it with its own, and
// hung in the GETATTR of the copy (and would have in its FLUSH, past
// SIGKILL).
func TestHostileFUSELogAnswersOnlyContainer(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hostile-fuse-log", lab.Automount)
	mine := inPidNS(pid)
	srv := fuseOverDaemonLog(t, pid, func(op, reqPid uint32) bool { return op == fusetest.OpInit || mine(reqPid) })
	out, err := runHook(t, bin, 90*time.Second, "fix", "--pid", strconv.Itoa(pid), "--assume-restored", "--no-syslog", "--timeout", "30s")
	t.Logf("fix (err %v):\n%s", err, out)
	if err != nil {
		t.Fatalf("fix: %v", err)
	}
	for _, w := range []string{"/srv/direct1/", "/ind/multi/sub/"} {
		mustWork(t, c, "stat", w)
	}
	if l := daemonFD(t, c, 1); l != "/run/automount.log" {
		t.Fatalf("the new daemon's stdout is %q, want its log /run/automount.log", l)
	}
	if srv.Written() == "" {
		t.Fatal("the new daemon wrote nothing to its log")
	}
	if u := srv.UnansweredAll(); len(u) > 0 {
		t.Fatalf("requests from outside the container reached the FUSE server (opcode: count): %v", u)
	}
	if left := oursLeft(t); len(left) > 0 {
		t.Fatalf("processes of the hook left: %v", left)
	}
}

// The container's FUSE server answers nothing at all: the daemon's log
// cannot be opened. The respawn starts it with /dev/null instead, says so,
// and leaves nothing behind; it once waited for the open until its own
// deadline, failed, and left the spawner blocked in the container, where
// it started a daemon once released.
func TestHostileFUSELogNeverAnswers(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hostile-fuse-stall", lab.Automount)
	srv := fuseOverDaemonLog(t, pid, func(op, reqPid uint32) bool { return false })
	out, err := runHook(t, bin, 90*time.Second, "fix", "--pid", strconv.Itoa(pid), "--assume-restored", "--no-syslog", "--timeout", "30s")
	t.Logf("fix (err %v):\n%s", err, out)
	if err != nil {
		t.Fatalf("fix: %v", err)
	}
	if !strings.Contains(out, "were not opened within") || !strings.Contains(out, "/dev/null instead") {
		t.Fatalf("no warning that the daemon's stdio went to /dev/null:\n%s", out)
	}
	for _, w := range []string{"/srv/direct1/", "/ind/multi/sub/"} {
		mustWork(t, c, "stat", w)
	}
	if l := daemonFD(t, c, 1); l != "/dev/null" {
		t.Fatalf("the new daemon's stdout is %q, want /dev/null", l)
	}
	if left := oursLeft(t); len(left) > 0 {
		t.Fatalf("processes of the hook left while the FUSE server still stalls: %v", left)
	}
	// Released now: nothing of ours wakes up and starts a second daemon.
	srv.Close()
	time.Sleep(testenv.Scale(2 * time.Second))
	if d := automountDaemons(t, c); len(d) != 1 {
		t.Fatalf("%d automount daemons after the FUSE server went away, want 1", len(d))
	}
}

// The container mounts a FUSE file that never answers over the daemon's
// binary path. The check that the path still names the running binary is
// made by a worker with a deadline, and refuses: the daemon is not
// touched, and nothing of ours is left. The hook once made that check
// itself, and its fstat waited for the server.
func TestHostileFUSEOverDaemonBinary(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c, pid := restoredWithoutHook(t, "hostile-fuse-exe", lab.Automount)
	before := automountDaemons(t, c)
	if len(before) != 1 {
		t.Fatalf("want one automount daemon, have %d", len(before))
	}
	srv := fuseOver(t, pid, "/usr/sbin/automount", func(op, reqPid uint32) bool { return false })
	start := time.Now()
	out, err := runHook(t, bin, 90*time.Second, "fix", "--pid", strconv.Itoa(pid), "--assume-restored", "--no-syslog", "--timeout", "30s")
	t.Logf("fix after %s (err %v):\n%s", time.Since(start).Round(time.Millisecond), err, out)
	if err == nil || !strings.Contains(out, "check /usr/sbin/automount in the container") || !strings.Contains(out, "refused") {
		t.Fatalf("want fix to refuse the respawn, because the binary could not be checked; err %v", err)
	}
	after := automountDaemons(t, c)
	if len(after) != 1 || after[0].pid != before[0].pid {
		t.Fatalf("the daemon was touched: before %+v, after %+v", before, after)
	}
	if left := oursLeft(t); len(left) > 0 {
		t.Fatalf("processes of the hook left while the FUSE server still stalls: %v", left)
	}
	if u := srv.UnansweredAll(); len(u) == 0 {
		t.Fatal("nothing asked the FUSE server: the test did not put the binary path on it")
	}
}

// The spawner's container stage is a process of ours in the container's
// pid namespace, which a process of the container with CAP_SYS_PTRACE
// could trace: it runs with no capability the daemon's bounding set lacks.
// Here the daemon runs with sys_module, sys_rawio and sys_chroot dropped
// from its bounding set (setpriv) before the checkpoint; the stage once
// had them. Without sys_chroot, as in CRI-O's default set,
// the stage takes it to enter the container's mount namespace and root
// and drops it before it runs (door.Entry.DropAfter); it once could not
// enter at all ("join the container's mount namespace: Operation not
// permitted", the daemon not started again).
func TestSpawnerStageHasTheDaemonsBoundingSet(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	c := lab.Up(t, "hostile-caps", lab.Automount, lab.Options{})
	restart := `old=$(cat /run/automount.pid) && kill -TERM "$old" &&
while [ -e /proc/"$old" ]; do sleep 0.1; done &&
setpriv --bounding-set=-sys_module,-sys_rawio,-sys_chroot setsid /usr/sbin/automount -f -d -p /run/automount.pid </dev/null >/run/automount.log 2>&1 &`
	if out, timedOut, err := c.Exec(30*time.Second, "sh", "-c", restart); err != nil || timedOut {
		t.Fatalf("restart automount with a smaller bounding set (timed out %v): %v %s", timedOut, err, out)
	}
	deadline := time.Now().Add(testenv.Scale(20 * time.Second))
	for {
		ds := automountDaemons(t, c)
		if len(ds) == 1 && ds[0].status["CapBnd"] != "000001ffffffffff" && len(status(t, c).Mounts) >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("automount did not come back with a smaller bounding set: %+v", ds)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	out, err := runHook(t, bin, 90*time.Second, "fix", "--pid", strconv.Itoa(pid), "--no-syslog", "--timeout", "30s")
	if err != nil {
		t.Fatalf("fix: %v\n%s", err, out)
	}
	mustWork(t, c, "stat", "/srv/direct1/")
	stageHadNoMoreThanTheDaemon(t, c, out)
}

// swappedBeforeTheExec swaps the daemon's binary for a script of the
// container's between the spawner's check of the path and the exec (a
// failpoints build holds the container stage right there until the
// swap), twice: a script of its own, then one whose interpreter is the
// checked binary itself. Nothing of either runs. The new daemon is held at its exec,
// before its first instruction, the program the kernel loaded is
// compared with the binary that was checked, and it is killed; the fix
// fails and says why. With the binary back (the same inode, kept as
// /usr/sbin/automount.real by the caller), the next fix starts the
// daemon from the record and every path works. Before, the stage exec'd
// whatever the path named then, and the script ran as the daemon.
func swappedBeforeTheExec(t testing.TB, c *lab.Container, pid int) {
	t.Helper()
	bin, fp := hookBinary(t), failpointBinary(t)
	p := strconv.Itoa(pid)
	for _, swap := range []struct {
		name, script, refused string
	}{
		// A program of the container's own.
		{"a script", `#!/bin/sh\necho "$0 $*" >/run/swapped-ran\nexec sleep 600\n`, "is not the daemon's binary that was checked"},
		// The checked binary itself as the interpreter of a script: the
		// same program, other arguments (the script's path as its
		// master map).
		{"a script run by the daemon's binary", `#!/usr/sbin/automount.real -f\n`, "runs with another command line than the daemon's"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Scale(3*time.Minute))
		defer cancel()
		cmd := exec.CommandContext(ctx, fp, "fix", "--pid", p, "--no-syslog", "--timeout", "60s")
		cmd.Env = append(os.Environ(), failpoint.Env+"=swap-before-exec")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		held := fmt.Sprintf("/proc/%d/root/run/arh-failpoint-swap-before-exec", pid)
		for end := time.Now().Add(testenv.Scale(90 * time.Second)); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(held); err == nil {
				break
			}
			if time.Now().After(end) {
				cancel()
				cmd.Wait()
				t.Fatalf("%s: the container stage never reached the point after its check of the binary:\n%s", swap.name, out.String())
			}
		}
		sh := `printf '` + swap.script + `' >/usr/sbin/automount.swap && chmod 0755 /usr/sbin/automount.swap && mv /usr/sbin/automount.swap /usr/sbin/automount`
		if o, timedOut, err := c.Exec(10*time.Second, "sh", "-c", sh); err != nil || timedOut {
			t.Fatalf("%s: swap the binary (timed out %v): %v %s", swap.name, timedOut, err, o)
		}
		if err := os.Remove(held); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		t.Logf("%s: fix with the binary swapped after the check (err %v):\n%s", swap.name, err, out.String())
		if ctx.Err() != nil {
			t.Fatalf("%s: the fix did not end", swap.name)
		}
		if err == nil || !strings.Contains(out.String(), swap.refused) {
			t.Errorf("%s: the fix did not refuse the swapped program (err %v)", swap.name, err)
		}
		time.Sleep(testenv.Scale(time.Second))
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/swapped-ran", pid)); err == nil {
			t.Fatalf("%s: the container's script ran in the daemon's place: %s", swap.name, b)
		}
		for _, d := range automountDaemons(t, c) {
			if !strings.HasPrefix(d.status["State"], "Z") {
				t.Fatalf("%s: an automount runs after the refusal: pid %d (%s)", swap.name, d.pid, d.status["State"])
			}
		}
		if o, timedOut, err := c.Exec(10*time.Second, "ln", "-f", "/usr/sbin/automount.real", "/usr/sbin/automount"); err != nil || timedOut {
			t.Fatalf("put the binary back (timed out %v): %v %s", timedOut, err, o)
		}
	}
	o, err := runHook(t, bin, 90*time.Second, "fix", "--pid", p, "--no-syslog", "--timeout", "60s")
	if err != nil {
		t.Fatalf("fix with the binary back: %v\n%s", err, o)
	}
	t.Logf("fix with the binary back: %s", lastLineOf(o))
	mustWork(t, c, "stat", "/srv/direct1/")
	mustWork(t, c, "stat", "/ind/multi/sub/")
}
