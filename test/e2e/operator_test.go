package e2e

// What an operator meets: log lines that name their container, the
// journal's syslog lines, status by a container's name and for the whole
// node. The checks run inside the tests that restore a container anyway.

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// everyLineNames fails unless every line of log (the hook's text log)
// carries container=id, mode= and, if name is set, name=name.
func everyLineNames(t testing.TB, log, id, name string) {
	t.Helper()
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if l == "" {
			continue
		}
		n++
		if !strings.Contains(l, " container="+id) || !strings.Contains(l, " mode=") || name != "" && !strings.Contains(l, " name="+name) {
			t.Errorf("a line of the hook's log does not name container=%s name=%q mode=: %s", id, name, l)
		}
	}
	if n == 0 {
		t.Errorf("the hook's log is empty")
	}
}

// syslogListener stands in for the journal's /dev/log (the test VM boots
// without one) for the rest of the test, and returns what the hook's
// processes sent to it, the message part of each datagram.
func syslogListener(t testing.TB) func() []string {
	t.Helper()
	const dev = "/dev/log"
	if _, err := os.Lstat(dev); err == nil {
		t.Fatalf("%s exists: this test needs the test VM, whose guest has no syslog", dev)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dev, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		os.Remove(dev)
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// syslogMessages are the messages of the hook's datagrams: the text
// after "autofs-restore-hook[PID]: ".
func syslogMessages(dgrams []string) []string {
	var out []string
	for _, d := range dgrams {
		if _, msg, ok := strings.Cut(d, "autofs-restore-hook["); ok {
			if _, m, ok := strings.Cut(msg, "]: "); ok {
				out = append(out, strings.TrimRight(m, "\n"))
			}
		}
	}
	return out
}

// podmanID is the full id podman gives the container named name.
func podmanID(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command("podman", "container", "inspect", "--format", "{{.ID}}", name).Output()
	if err != nil {
		t.Fatalf("podman inspect %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// checkOperatorView checks, for a podman container restored and fixed
// by wiring, what an operator sees: `status --container NAME` finds it
// and names it; `status --all --json` lists it, healthy, with the last
// fix by wiring; every syslog line of the fix names the container by id
// and name and carries no second timestamp.
func checkOperatorView(t testing.TB, bin, name, wiring string, syslog func() []string) {
	t.Helper()
	id := podmanID(t, name)
	out, err := runHook(t, bin, time.Minute, "status", "--container", name, "--no-syslog")
	if err != nil {
		t.Fatalf("status --container %s: %v\n%s", name, err, out)
	}
	t.Logf("status --container %s:\n%s", name, out)
	if !strings.Contains(out, "container "+id+" ("+name+")") || !strings.Contains(out, "last fix: post-resume by "+wiring) {
		t.Errorf("status --container %s does not name the container (%s) and its last fix by %s", name, id, wiring)
	}
	out, err = runHook(t, bin, time.Minute, "status", "--all", "--json", "--no-syslog")
	if err != nil {
		t.Fatalf("status --all: %v\n%s", err, out)
	}
	var rows []hook.NodeRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --all --json: %v\n%s", err, out)
	}
	var row *hook.NodeRow
	for i := range rows {
		if rows[i].Container.ID == id {
			row = &rows[i]
		}
	}
	switch {
	case row == nil:
		t.Errorf("status --all does not list %s (%s):\n%s", name, id, out)
	case row.Container.Name != name || row.Health != "ok" || row.Mounts == 0 || row.LastFix == nil || row.LastFix.PostResume == nil || row.LastFix.PostResume.Wiring != wiring || len(row.LastFix.PostResume.Fixed) == 0:
		t.Errorf("status --all's row of %s: %+v, want its name, health ok, and a post-resume by %s that fixed mounts", name, *row, wiring)
	}
	table, _ := runHook(t, bin, time.Minute, "status", "--all", "--no-syslog")
	t.Logf("status --all:\n%s", table)
	if !strings.Contains(table, id[:12]) || !strings.Contains(table, name) {
		t.Errorf("status --all's table does not show %s (%s)", name, id[:12])
	}
	msgs := syslogMessages(syslog())
	var fix int
	for _, m := range msgs {
		if !strings.Contains(m, "mode=criu") && !strings.Contains(m, "mode=oci") && !strings.Contains(m, "mode=follow") {
			continue
		}
		fix++
		if !strings.Contains(m, "container="+id) || !strings.Contains(m, "name="+name) {
			t.Errorf("a syslog line of the fix does not name container=%s name=%s: %s", id, name, m)
		}
		if lv, _, _ := strings.Cut(m, ":"); lv != "info" && lv != "warning" && lv != "error" && lv != "debug" {
			t.Errorf("a syslog line does not start with its level (a second timestamp or tag?): %s", m)
		}
	}
	if fix == 0 {
		t.Errorf("no syslog line of the fix; the hook sent:\n%s", strings.Join(msgs, "\n"))
	}
}

// fixedPerStateFile fails unless the state file of c's init records a
// post-resume that fixed mounts (for an automount container: the respawn
// of its daemon) and left none, and returns it.
func fixedPerStateFile(t testing.TB, c *lab.Container, what string) *hook.PhaseOutcome {
	t.Helper()
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	o, _, err := hook.ReadOutcome(pid)
	if err != nil || o == nil || o.PostResume == nil {
		t.Fatalf("%s: the state file of pid %d records no post-resume (%v): %+v", what, pid, err, o)
	}
	if ph := o.PostResume; len(ph.Fixed) == 0 || len(ph.Left) > 0 || len(ph.Errors) > 0 {
		t.Errorf("%s: post-resume fixed %q, left %+v, errors %q: want mounts fixed and none left", what, ph.Fixed, ph.Left, ph.Errors)
	}
	return o.PostResume
}
