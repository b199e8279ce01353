package e2e

// The CRIU plugin as the only wiring (no action script, no OCI hook), on
// containers with autofs mounts: the lab's runc containers (CRIU loads
// the plugin from CRIU_LIBS_DIR, which runc passes on to `criu swrk`; it
// runs the binary under test) and podman with the package installed (the
// plugin in /usr/lib/criu, where CRIU finds it with nothing set).

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// pluginOnly wires the plugin alone for the lab's runc containers and
// returns a reader of the binary's log (the plugin passes the log
// settings of CRIU's environment on to it).
func pluginOnly(t testing.TB) func() string {
	t.Helper()
	t.Setenv("CRIU_LIBS_DIR", libsDir(t, pluginSO(t)))
	t.Setenv("AUTOFS_RESTORE_HOOK_PLUGIN_BIN", hookBinary(t))
	return logFile(t)
}

// preResumeByPlugin checks that the plugin ran the binary for pre-resume
// and post-resume of the container's init (wiring=criu-plugin), and, in
// CRIU's log of the restore, that its pre-resume ended before CRIU let
// the tasks run.
func preResumeByPlugin(t testing.TB, c *lab.Container, log string, pid int) {
	t.Helper()
	crlog, err := os.ReadFile(filepath.Join(c.Bundle, "work", "restore.log"))
	if err != nil {
		t.Fatalf("CRIU's log of the restore: %v", err)
	}
	done := strings.Index(string(crlog), "autofs-restore-hook plugin: pre-resume for pid "+strconv.Itoa(pid)+" done")
	resumed := strings.Index(string(crlog), "Tasks resumed")
	if done < 0 || resumed < 0 || done > resumed {
		t.Fatalf("CRIU's log: the plugin's pre-resume line at %d, \"Tasks resumed\" at %d: want the pre-resume done before the tasks ran; log:\n%s", done, resumed, grepLines(string(crlog), "autofs-restore-hook"))
	}
	for _, want := range []string{"wiring=criu-plugin", "pre-resume", "post-resume"} {
		if !strings.Contains(log, want) {
			t.Fatalf("the binary's log has no %q: the plugin did not run it as it should; log:\n%s", want, log)
		}
	}
	if !strings.Contains(log, "pid="+strconv.Itoa(pid)) {
		t.Fatalf("the binary's log does not name the restored init %d; log:\n%s", pid, log)
	}
}

// A systemd container restored with only the plugin: pre-resume ran
// while CRIU held the tasks, post-resume after; every path works, nobody
// is blocked. The gap: a process of the container that was sleeping at
// checkpoint time stats the never-mounted /srv/c the moment it is
// resumed (gapScript), when the OCI hook's follower may still be in its
// pre-resume: it gets an answer (data or an error) and never stays in
// autofs_wait, since the plugin's pre-resume ended before the tasks ran.
func TestPluginOnlySystemd(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	log := pluginOnly(t)
	c := lab.Up(t, "plugin-sd", lab.Systemd, lab.Options{})
	// It notices its resume by the jump of the wall clock against its own
	// boot time (CRIU restores the time namespace's clocks, not the wall
	// clock), 50 ms at most after it, and touches nothing of autofs
	// before.
	mustWork(t, c, "systemd-run", "--unit", "gap", "sh", "-c", gapScript)
	gapReady(t, c)
	timed(t, "checkpoint "+c.Name, c.Checkpoint)
	restoreStart := time.Now()
	timed(t, "restore "+c.Name, c.Restore)
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, pid, hook.WiringPlugin)
	var gap string
	deadline := time.Now().Add(testenv.Scale(30 * time.Second))
	for {
		out, _, err := c.Exec(testenv.Scale(10*time.Second), "cat", "/run/gap.log")
		if gap = strings.TrimSpace(out); err == nil && gap != "" {
			break
		}
		if time.Now().After(deadline) {
			w, _ := c.AutofsWaiters()
			ns, _, _ := c.Exec(testenv.Scale(10*time.Second), "sh", "-c", "echo $(cat /run/gap.ns) now $(cat /proc/self/timens_offsets)")
			t.Fatalf("the process that stats /srv/c after its resume gave no answer within 30 s: in autofs_wait: %v; its time namespace's offsets at its start and now: %s\n%s", w, strings.TrimSpace(ns), c.Describe())
		}
		time.Sleep(200 * time.Millisecond)
	}
	f := strings.Fields(gap)
	if len(f) != 3 {
		t.Fatalf("gap.log: %q", gap)
	}
	asked, _ := strconv.ParseFloat(f[0], 64)
	answered, _ := strconv.ParseFloat(f[1], 64)
	if asked < float64(restoreStart.UnixNano())/1e9 {
		t.Fatalf("the process asked at %.3f, before the restore began (%.3f): it did not wait for its resume, so this test proves nothing", asked, float64(restoreStart.UnixNano())/1e9)
	}
	t.Logf("the gap: /srv/c asked %.3f s after the restore began, answered (%s) in %.3f s", asked-float64(restoreStart.UnixNano())/1e9, f[2], answered-asked)
	systemdWorks(t, c)
	allOK(t, c, 3)
	noWaiters(t, c)
	preResumeByPlugin(t, c, log(), pid)

	// The same gap with the OCI hook alone (CRIU without the plugin): its
	// follower races CRIU's window, and may or may not close it. Shown,
	// not asserted: what the plugin is for.
	t.Setenv("CRIU_LIBS_DIR", libsDir(t))
	ociPath, ociLogOf := ociLog(t)
	if err := c.Wire(lab.Options{Hook: hookBinary(t), HookEnv: hookLogEnv(ociPath)}); err != nil {
		t.Fatal(err)
	}
	mustWork(t, c, "sh", "-c", "rm -f /run/gap.log /run/gap.ready /run/gap.ns; umount /srv/c 2>/dev/null; systemd-run --unit gap2 sh -c '"+strings.ReplaceAll(gapScript, "'", `'"'"'`)+"'")
	gapReady(t, c)
	timed(t, "checkpoint "+c.Name+" (OCI hook alone)", c.Checkpoint)
	timed(t, "restore "+c.Name+" (OCI hook alone)", c.Restore)
	deadline = time.Now().Add(testenv.Scale(30 * time.Second))
	for {
		out, _, err := c.Exec(testenv.Scale(10*time.Second), "cat", "/run/gap.log")
		if gap = strings.TrimSpace(out); err == nil && gap != "" {
			t.Logf("the gap with the OCI hook alone: answered (%s)", gap)
			break
		}
		if time.Now().After(deadline) {
			w, _ := c.AutofsWaiters()
			t.Logf("the gap with the OCI hook alone: no answer within 30 s, in autofs_wait: %v (the follower missed CRIU's window; the plugin closes it); the hook's log:\n%s", w, ociLogOf())
			if err := c.KillWaiters(); err != nil {
				t.Log(err)
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// gapReady waits until gapScript has read the clocks it compares: a
// checkpoint taken before that (the unit started, its shell not yet
// run: seen once under TCG) would leave it waiting for a jump that
// happened before it looked.
func gapReady(t testing.TB, c *lab.Container) {
	t.Helper()
	deadline := time.Now().Add(testenv.Scale(30 * time.Second))
	for {
		if _, _, err := c.Exec(testenv.Scale(10*time.Second), "test", "-e", "/run/gap.ready"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gap script did not start within 30 s:\n%s", c.Describe())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// gapScript waits for its own resume after a restore, then stats the
// never-mounted /srv/c at once and writes "asked answered data|error"
// (wall-clock seconds) to /run/gap.log. It knows its resume by the
// offsets of its time namespace (/proc/self/timens_offsets): CRIU
// restores a container's processes in a new time namespace whose offsets
// keep their clocks, which differ with every restore (they take the
// downtime), and no event of a running process changes them. (It
// compared the wall clock with the boot clock before: a jump was missed
// where the downtime was short (CI), and seen during a checkpoint where
// there was none. An inode of a namespace can come back the same, the
// kernel reuses the lowest free number.) /run/gap.ns holds the offsets
// it started with.
const gapScript = `o0=$(cat /proc/self/timens_offsets)
echo "$o0" >/run/gap.ns
: >/run/gap.ready
while [ "$(cat /proc/self/timens_offsets)" = "$o0" ]; do
	sleep 0.05
done
t0=$(date +%s.%N)
if stat /srv/c/ >/dev/null 2>&1; then r=data; else r=error; fi
echo "$t0 $(date +%s.%N) $r" >/run/gap.log`

// An automount container restored with only the plugin: the daemon is
// started again, every path works.
func TestPluginOnlyAutomount(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	log := pluginOnly(t)
	c, pid := restoredWithoutHook(t, "plugin-am", lab.Automount)
	waitOutcome(t, pid, hook.WiringPlugin)
	automountWorksAgain(t, c, "after a restore with only the plugin", nil)
	noWaiters(t, c)
	preResumeByPlugin(t, c, log(), pid)
	// runc's restore names the container: every line of the fix says it.
	everyLineNames(t, log(), c.Name, "")
	// runc's own state finds it by its id (runc state: its init and
	// start time).
	out, err := runHook(t, hookBinary(t), time.Minute, "status", "--container", c.Name, "--no-syslog")
	if err != nil || !strings.Contains(out, "container "+c.Name+", init pid "+strconv.Itoa(pid)+",") {
		t.Errorf("status --container %s (runc): %v\n%s", c.Name, err, out)
	}
}

// podman with the package installed and nothing else: podman reads the
// package's hooks.d JSON from its own hooks dir (no --hooks-dir), and
// CRIU, started by runc under podman, finds the plugin in /usr/lib/criu.
// One fix per restore: the OCI hook sees the plugin in the restoring CRIU
// and starts no follower; the plugin runs the package's binary in CRIU's
// window, and the state file says the plugin did both phases. An
// automount container's paths work after podman's checkpoint and restore.
func TestPluginFromPackagePodman(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	installDeb(t)
	if _, err := os.Stat(filepath.Join("/usr/lib/criu", pluginName)); err != nil {
		t.Fatalf("the package did not install the plugin: %v", err)
	}
	ociLog := logInstalledHook(t)
	c := lab.PodmanUp(t, "plugin-pod", lab.Automount, lab.Options{SystemHooks: true})
	syslog := syslogListener(t)
	checkpointRestore(t, c)
	// The plugin's post-resume runs detached: wait until status shows
	// every mount served again and post-resume done.
	deadline := time.Now().Add(testenv.Scale(90 * time.Second))
	var r hook.Report
	for {
		ok := true
		r = status(t, c)
		for _, m := range r.Mounts {
			ok = ok && m.State == string(hook.StateOK)
		}
		if ok && len(r.Mounts) > 0 && len(r.Blocked) == 0 && len(r.Phases) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("90 s after podman's restore with the package, the mounts are not all served and fixed: %+v\nthe OCI hook's log:\n%s", r, ociLog())
		}
		time.Sleep(500 * time.Millisecond)
	}
	automountWorksAgain(t, c, "after podman's restore with the package", nil)
	noWaiters(t, c)
	l := ociLog()
	t.Logf("the OCI hook's log:\n%s", l)
	for _, p := range r.Phases {
		if p.Wiring != hook.WiringPlugin {
			t.Errorf("%s was done by the %q, want the %s: %+v", p.Phase, p.Wiring, hook.WiringPlugin, r.Phases)
		}
	}
	if !strings.Contains(l, "handled by the CRIU plugin") {
		t.Errorf("the OCI hook did not leave podman's restore to the CRIU plugin")
	}
	if strings.Contains(l, "a detached worker follows it") || strings.Contains(l, "follow: ") {
		t.Errorf("the OCI hook started a follower for a restore the plugin handles")
	}
	if f := followers(); len(f) > 0 {
		t.Errorf("followers running after podman's restore with the plugin: %v", f)
	}
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	out, err := runHook(t, debBinary, testenv.Scale(time.Minute), "status", "--pid", fmt.Sprint(pid))
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	t.Logf("status after podman's restore:\n%s", out)
	if !strings.Contains(out, "post-resume done by the "+hook.WiringPlugin) {
		t.Errorf("status does not say the plugin did post-resume")
	}
	// The operator's view: by name, for the node, in the journal; and
	// the OCI hook's lines name the container too.
	checkOperatorView(t, debBinary, c.Name, hook.WiringPlugin, syslog)
	everyLineNames(t, l, podmanID(t, c.Name), "")
}
