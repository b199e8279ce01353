package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

const wmemDefault = "/proc/sys/net/core/wmem_default"

// raiseSendBuffer raises net.core.wmem_default for the test and puts it
// back afterwards. CRIU hands each restored task its fds over a unix
// datagram socket, and a task sends those it shares with itself before it
// receives any: with some 280 or more (an automount daemon's ioctl fds on
// 1,000 direct mounts) the default send buffer (212992 bytes) fills and
// the restore hangs for good, before any hook runs (seen here: 279 "Send
// fd" lines in restore.log, the task blocked in sock_alloc_send_pskb).
// README documents the setting for operators.
func raiseSendBuffer(t testing.TB) {
	t.Helper()
	old, err := os.ReadFile(wmemDefault)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(wmemDefault, old, 0); err != nil {
			t.Errorf("put back %s: %v", wmemDefault, err)
		}
	})
	if err := os.WriteFile(wmemDefault, []byte("4194304"), 0); err != nil {
		t.Fatal(err)
	}
}

// A restored container whose automount daemon serves 1,004 autofs mounts:
// one fix reconnects all of them, and the far ends of the map work.
func TestThousandMountsRestored(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	raiseSendBuffer(t)
	c := lab.Up(t, "hook-1000", lab.Automount, lab.Options{Count: 1000, NoTrigger: true})
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	if r := status(t, c); len(r.Mounts) != 1004 {
		t.Fatalf("%d autofs mounts after the restore, want 1004", len(r.Mounts))
	}
	start := time.Now()
	cmd := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog")
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fix: %v\n%s", err, out)
	}
	t.Logf("fix of 1,004 mounts took %v: %s", time.Since(start).Round(time.Millisecond), lastLineOf(string(out)))
	// 1,003 cached (direct and offset) mounts fixed, and /ind waited for.
	if !strings.Contains(string(out), "mounts=1004") {
		t.Errorf("the daemon was not respawned for its 1,004 mounts:\n%s", out)
	}
	allOK(t, c, 1004)
	for _, p := range []string{"/srv/d1", "/srv/d500", "/srv/d1000", "/srv/direct1", "/ind/k1"} {
		mustWork(t, c, "ls", p+"/")
	}
	noWaiters(t, c)
}

// A restored container whose systemd has 1,003 automount units, one of
// them covered by a tmpfs with state: one fix restarts all of them in one
// batch and keeps what was on top.
func TestThousandSystemdUnitsRestored(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	raiseSendBuffer(t)
	c := lab.Up(t, "hook-1000sd", lab.Systemd, lab.Options{Count: 1000})
	checkpointRestore(t, c)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command(bin, "fix", "--pid", strconv.Itoa(pid), "--no-syslog")
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fix: %v\n%s", err, lastLineOf(string(out)))
	}
	t.Logf("fix of 1,003 units took %v: %s", time.Since(start).Round(time.Millisecond), lastLineOf(string(out)))
	if n := strings.Count(string(out), " restarted"); n != 1003 {
		t.Errorf("%d units restarted, want 1003", n)
	}
	allOK(t, c, 1003)
	systemdWorks(t, c)
	for _, p := range []string{"/srv/u1", "/srv/u500", "/srv/u1000"} {
		mustWork(t, c, "ls", p+"/")
	}
	noWaiters(t, c)
	// The last test of a run must not leave the hook's record on the host.
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(hook.StateDir, strconv.Itoa(pid)+"-*")); len(left) > 0 {
		t.Errorf("lab down left the hook's state on the host: %v", left)
	}
}
