package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// The TestCgroup2 tests are the stack matrix's cgroup v2 rows: they need a
// host with only the unified hierarchy, as every current distribution
// boots, and a Debian 13 container (lab.sh --rootfs trixie). tests.sh runs
// them in a second guest booted so (--cgroup 2), and leaves them out of
// the first, whose cgroups are v1.

// requireCgroup2 stops the test unless /sys/fs/cgroup is the unified
// hierarchy (under CI=true: fails).
func requireCgroup2(t testing.TB) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		testenv.Skip(t, "needs a host with only the cgroup v2 hierarchy at /sys/fs/cgroup (in the VM: test/tests.sh --cgroup 2)")
	}
}

// restartedInItsCgroup checks, after a restore that the hook fixed, that
// the automount container works with a new daemon, which runs in the old
// one's cgroup and with its privileges.
func restartedInItsCgroup(t testing.TB, c *lab.Container, what string, orig daemonInfo) {
	t.Helper()
	allOK(t, c, 5)
	d := automountWorksAgain(t, c, what, orig.pid)
	samePrivileges(t, d, orig)
	if d.cgroup != orig.cgroup {
		t.Errorf("%s: the new daemon's cgroup is %q, the original's %q", what, d.cgroup, orig.cgroup)
	}
	if !strings.HasPrefix(orig.cgroup, "0::/") {
		t.Errorf("%s: the daemon's /proc/PID/cgroup is %q: not a cgroup v2 line", what, orig.cgroup)
	}
}

func oneDaemon(t testing.TB, c *lab.Container) daemonInfo {
	t.Helper()
	ds := automountDaemons(t, c)
	if len(ds) != 1 {
		t.Fatalf("%d automount daemons before the checkpoint, want 1", len(ds))
	}
	return ds[0]
}

// runc 1.1.5 and CRIU 4.1.1 on cgroup v2, a Debian 13 automount container:
// the action script (org.criu.config) and the OCI hook both start the
// daemon again in its own cgroup (the hook joins the v2 cgroup the old
// daemon was in) and every path works.
func TestCgroup2AutomountRunc(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	bin := hookBinary(t)
	tt.Run("action-script", func(tt *testing.T) {
		t := lab.Record(tt)
		logFile(t)
		c := lab.Up(t, "v2-runc-as", lab.Automount, lab.Options{Rootfs: "trixie", ActionScript: bin})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		restartedInItsCgroup(t, c, "runc, action script", orig)
	})
	tt.Run("oci-hook", func(tt *testing.T) {
		t := lab.Record(tt)
		logPath, log := ociLog(t)
		c := lab.Up(t, "v2-runc-oci", lab.Automount, lab.Options{Rootfs: "trixie", Hook: bin,
			HookEnv: []string{hook.EnvLogFile + "=" + logPath, hook.EnvNoSyslog + "=1"}})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		waitFixed(t, c, 5, log)
		restartedInItsCgroup(t, c, "runc, OCI hook", orig)
	})
}

// crun 1.28 with CRIU and libcriu 4.2.1 (Debian forky) on cgroup v2: crun
// runs no OCI hook on restore, so only the action script can fix the
// container. All three ways to give it to CRIU work: the org.criu.config
// annotation, /etc/criu/crun.conf (read by crun from 1.26 on, with libcriu
// 4.2 or later) and CRIU's own /etc/criu/default.conf.
func TestCgroup2CrunActionScript(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	bin := hookBinary(t)
	tt.Run("annotation", func(tt *testing.T) {
		t := lab.Record(tt)
		logFile(t)
		c := lab.Up(t, "v2-crun-ann", lab.Automount, lab.Options{Rootfs: "trixie", Runtime: "crun-forky", ActionScript: bin})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		restartedInItsCgroup(t, c, "crun, org.criu.config", orig)
	})
	for _, conf := range []string{"crun.conf", "default.conf"} {
		tt.Run(strings.TrimSuffix(conf, ".conf"), func(tt *testing.T) {
			t := lab.Record(tt)
			log := logFile(t)
			c := lab.Up(t, "v2-crun-"+strings.TrimSuffix(conf, ".conf"), lab.Automount,
				lab.Options{Rootfs: "trixie", Runtime: "crun-forky", NoCRIUAnnotation: true})
			orig := oneDaemon(t, c)
			// Only for the checkpoint and the restore: a CRIU config
			// file is machine-wide.
			criuConfig(t, conf, "action-script "+bin+"\n")
			checkpointRestore(t, c)
			if !strings.Contains(log(), "pre-resume finished") {
				t.Errorf("the hook's log has no pre-resume run: was %s read?\n%s", conf, log())
			}
			restartedInItsCgroup(t, c, "crun, "+conf, orig)
		})
	}
}

// criuConfig writes /etc/criu/NAME for the rest of the test and puts back
// what was there (or nothing) afterwards, even when the test fails.
func criuConfig(t testing.TB, name, content string) {
	t.Helper()
	p := filepath.Join("/etc/criu", name)
	old, err := os.ReadFile(p)
	had := err == nil
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/etc/criu", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var err error
		if had {
			err = os.WriteFile(p, old, 0o644)
		} else {
			err = os.Remove(p)
		}
		if err != nil {
			t.Errorf("put %s back: %v", p, err)
		}
	})
}

// podman 4.3.1 with runc on cgroup v2, a Debian 13 automount container,
// the shipped hooks.d JSON: fixed on restore.
func TestCgroup2PodmanAutomount(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: provisioning should have installed it: %v", err)
	}
	log := useShippedHooksJSON(t)
	c := lab.PodmanUp(t, "v2-podman", lab.Automount, lab.Options{Rootfs: "trixie"})
	orig := oneDaemon(t, c)
	checkpointRestore(t, c)
	waitFixed(t, c, 5, log)
	restartedInItsCgroup(t, c, "podman", orig)
}

// A Debian 13 container with systemd 257 as PID 1 cannot be restored on
// cgroup v2, by runc 1.1.5 with CRIU 4.1.1 nor by crun 1.28 with CRIU
// 4.2.1: the checkpoint works, and the restore fails inside CRIU before
// any hook could run. systemd keeps inotify watches on cgroup files of its
// units (init.scope/memory.events, system.slice/srv-a.mount/cgroup.events),
// and CRIU recreates only the cgroups that hold tasks, without the
// controllers systemd enabled in their parents. The test pins that row of
// the README's matrix: if the restore starts to work, it fails and says
// so, and the row must become a real check of the fix.
func TestCgroup2SystemdRestoreFailsInCRIU(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	for _, rt := range []string{"runc", "crun-forky"} {
		tt.Run(rt, func(tt *testing.T) {
			t := lab.Record(tt)
			c := lab.Up(t, "v2-systemd-"+strings.TrimSuffix(rt, "-forky"), lab.Systemd, lab.Options{Rootfs: "trixie", Runtime: rt})
			if v := mustWork(t, c, "systemctl", "--version"); !strings.Contains(v, "systemd 257") {
				t.Fatalf("the container's systemd is not 257: %q", firstLine(v))
			}
			timed(t, "checkpoint "+c.Name, c.Checkpoint)
			err := c.Restore()
			restoreLog, _ := os.ReadFile(filepath.Join(c.Bundle, "work", "restore.log"))
			if err == nil {
				t.Fatalf("the restore of systemd 257 on cgroup v2 worked with %s: the README's matrix is wrong; make this test check the fix", rt)
			}
			if !strings.Contains(string(restoreLog), "fsnotify: Unable to open /sys/fs/cgroup/") {
				t.Fatalf("the restore failed (%v), but not at a cgroup file's inotify watch:\n%s", err, tail(string(restoreLog), 25))
			}
			t.Logf("as documented: %s", lineWith(string(restoreLog), "fsnotify: Unable to open"))
		})
	}
}

// Debian 12's crun 1.8.1 is built without CRIU: it cannot checkpoint at
// all, so no wiring of ours can run with it.
func TestCgroup2Debian12CrunCannotCheckpoint(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	out, err := exec.Command("crun", "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("crun --version: %v\n%s (provisioning installs Debian 12's crun)", err, out)
	}
	if !strings.Contains(string(out), "crun version 1.8.1") || strings.Contains(string(out), "+CRIU") {
		t.Fatalf("Debian 12's crun is no longer 1.8.1 without CRIU: update the README's matrix:\n%s", out)
	}
	c := lab.Up(t, "v2-crun-old", lab.Plain, lab.Options{Rootfs: "trixie", Runtime: "crun"})
	err = c.Checkpoint()
	b, _ := os.ReadFile(filepath.Join(c.Bundle, "log", "checkpoint.log"))
	if err == nil {
		t.Fatalf("crun 1.8.1 checkpointed a container: update the README's matrix")
	}
	if !strings.Contains(string(b), "unknown command checkpoint") {
		t.Fatalf("crun 1.8.1's checkpoint failed (%v), but not as documented:\n%s", err, b)
	}
	t.Logf("as documented: %s", strings.TrimSpace(string(b)))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// lineWith is the first line of s that holds sub.
func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
