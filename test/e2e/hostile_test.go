package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

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
