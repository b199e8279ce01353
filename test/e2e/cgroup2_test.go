package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/cgtree"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/criuimg"
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
// one's cgroup and with its privileges. New, because its pid inside the
// container differs from the one CRIU restored (host pids always change on
// a restore) and the hook's log says it started it.
func restartedInItsCgroup(t testing.TB, c *lab.Container, what string, orig daemonInfo, log func() string) {
	t.Helper()
	allOK(t, c, 5)
	d := automountWorksAgain(t, c, what, &orig)
	fixedPerStateFile(t, c, what)
	samePrivileges(t, d, orig)
	if d.cgroup != orig.cgroup {
		t.Errorf("%s: the new daemon's cgroup is %q, the original's %q", what, d.cgroup, orig.cgroup)
	}
	if !strings.HasPrefix(orig.cgroup, "0::/") {
		t.Errorf("%s: the daemon's /proc/PID/cgroup is %q: not a cgroup v2 line", what, orig.cgroup)
	}
}

// nsPid is the daemon's pid in the container's pid namespace.
func nsPid(d daemonInfo) string {
	f := strings.Fields(d.status["NSpid"])
	if len(f) == 0 {
		return "?"
	}
	return f[len(f)-1]
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
	// The bug on this stack: without the hook a direct mount hangs.
	tt.Run("no-hook-hangs", func(tt *testing.T) {
		t := lab.Record(tt)
		c := lab.Up(t, "v2-runc-none", lab.Automount, lab.Options{Rootfs: "trixie"})
		checkpointRestore(t, c)
		mustHang(t, c, "stat", "/srv/direct1/")
	})
	tt.Run("action-script", func(tt *testing.T) {
		t := lab.Record(tt)
		log := logFile(t)
		c := lab.Up(t, "v2-runc-as", lab.Automount, lab.Options{Rootfs: "trixie", ActionScript: bin})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		restartedInItsCgroup(t, c, "runc, action script", orig, log)
	})
	tt.Run("oci-hook", func(tt *testing.T) {
		t := lab.Record(tt)
		logPath, log := ociLog(t)
		c := lab.Up(t, "v2-runc-oci", lab.Automount, lab.Options{Rootfs: "trixie", Hook: bin,
			HookEnv: hookLogEnv(logPath)})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		waitFixed(t, c, 5, log)
		restartedInItsCgroup(t, c, "runc, OCI hook", orig, log)
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
	forkyVersions(t)
	tt.Run("annotation", func(tt *testing.T) {
		t := lab.Record(tt)
		log := logFile(t)
		c := lab.Up(t, "v2-crun-ann", lab.Automount, lab.Options{Rootfs: "trixie", Runtime: "crun-forky", ActionScript: bin})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		restartedInItsCgroup(t, c, "crun, org.criu.config", orig, log)
	})
	// crun 1.28 with CRIU 4.2.1 and the CRIU plugin as the only wiring:
	// crun's libcriu runs criu swrk with crun's environment, and so
	// CRIU_LIBS_DIR. (A container of its own: one whose direct mounts
	// were triggered after a restore cannot be checkpointed again, CRIU
	// refusing the daemon's ioctl fds on overmounted mounts.)
	tt.Run("plugin", func(tt *testing.T) {
		t := lab.Record(tt)
		log := pluginOnly(t)
		c := lab.Up(t, "v2-crun-plugin", lab.Automount, lab.Options{Rootfs: "trixie", Runtime: "crun-forky", NoCRIUAnnotation: true})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		pid, err := c.Pid()
		if err != nil {
			t.Fatal(err)
		}
		waitOutcome(t, pid, hook.WiringPlugin)
		restartedInItsCgroup(t, c, "crun, the CRIU plugin", orig, log)
		preResumeByPlugin(t, c, log(), pid)
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
			if pid, err := c.Pid(); err != nil {
				t.Fatal(err)
			} else if o, _, err := hook.ReadOutcome(pid); err != nil || o == nil || o.PreResume == nil || o.PreResume.Wiring != hook.WiringScript {
				t.Errorf("the state file records no pre-resume by the action script (%v, %+v): was %s read?\n%s", err, o, conf, log())
			}
			restartedInItsCgroup(t, c, "crun, "+conf, orig, log)
		})
	}
}

// forkyVersions fails unless the lab's forky crun and CRIU are at least
// the versions the crun.conf wiring needs (crun 1.26, CRIU 4.2), and logs
// them: Debian forky is a moving target.
func forkyVersions(t testing.TB) {
	t.Helper()
	version := func(tool, prefix string) (int, int) {
		out, err := exec.Command(filepath.Join(lab.CacheDir(), "bin-forky", tool), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", tool, err, out)
		}
		var major, minor int
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, prefix); ok {
				if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err == nil {
					t.Logf("forky's %s: %s", tool, strings.TrimSpace(l))
					return major, minor
				}
			}
		}
		t.Fatalf("%s --version: no %q line:\n%s", tool, prefix, out)
		return 0, 0
	}
	if maj, min := version("crun", "crun version "); maj < 1 || maj == 1 && min < 26 {
		t.Fatalf("forky's crun is %d.%d: the crun.conf wiring needs 1.26 or later", maj, min)
	}
	if maj, min := version("criu", "Version: "); maj < 4 || maj == 4 && min < 2 {
		t.Fatalf("forky's CRIU is %d.%d: crun's crun.conf needs libcriu 4.2 or later", maj, min)
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
	restartedInItsCgroup(t, c, "podman", orig, log)
}

// podmanSeccompWithoutBPF is podman's default seccomp profile with bpf
// taken out of every rule: the default action (an error) then answers it.
func podmanSeccompWithoutBPF(t testing.TB) string {
	t.Helper()
	const path = "/usr/share/containers/seccomp.json"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("podman's default seccomp profile: %v", err)
	}
	var prof map[string]any
	if err := json.Unmarshal(b, &prof); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if prof["defaultAction"] == "SCMP_ACT_ALLOW" {
		t.Fatalf("%s allows what it does not name: taking bpf out would allow it", path)
	}
	rules, _ := prof["syscalls"].([]any)
	forSysAdmin := false
	var keptRules []any
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		names, _ := rule["names"].([]any)
		var kept []any
		for _, n := range names {
			if n == "bpf" {
				inc, _ := rule["includes"].(map[string]any)
				caps, _ := inc["caps"].([]any)
				forSysAdmin = forSysAdmin || rule["action"] == "SCMP_ACT_ALLOW" && slices.Contains(caps, any("CAP_SYS_ADMIN"))
				continue
			}
			kept = append(kept, n)
		}
		if len(names) > 0 && len(kept) == 0 {
			continue // a rule for bpf alone
		}
		if len(names) > 0 {
			rule["names"] = kept
		}
		keptRules = append(keptRules, r)
	}
	prof["syscalls"] = keptRules
	if !forSysAdmin {
		t.Fatalf("%s has no rule allowing bpf to CAP_SYS_ADMIN: the README's podman row (deny bpf yourself) must change", path)
	}
	out, err := json.Marshal(prof)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// The dump side of issue 32: on cgroup v2 a container's systemd that may
// call bpf() (podman's and Docker's default seccomp profiles allow it to
// CAP_SYS_ADMIN, which a container that mounts autofs holds) attaches BPF
// programs to its units' cgroups and keeps their fds, and CRIU cannot
// dump such an fd: the checkpoint fails, before any hook of ours could
// run. This is why the README asks for a profile that denies bpf(). If a
// CRIU learns to dump them, this test fails and says so.
func TestCgroup2SystemdWithBPFCannotBeCheckpointed(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	allowAll := `{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": []}`
	c := lab.Up(t, "v2-sd-bpf", lab.Systemd, lab.Options{Rootfs: "trixie", Seccomp: allowAll})
	err := c.Checkpoint()
	dump, _ := os.ReadFile(filepath.Join(c.Bundle, "work", "dump.log"))
	if err == nil {
		t.Fatalf("a systemd container that may call bpf() was checkpointed on cgroup v2: the README's bpf() rows are wrong; make them and this test say what works")
	}
	if !strings.Contains(string(dump), "bpf-prog") {
		t.Fatalf("the checkpoint failed (%v), but not at a BPF program's fd:\n%s", err, tail(string(dump), 25))
	}
	t.Logf("as documented: %s", grepLines(string(dump), "bpf-prog"))
}

// A Debian 13 container with systemd 257 as PID 1 cannot be restored on
// cgroup v2 by runc 1.1.5 with CRIU 4.1.1 wired with the OCI hook alone
// (no CRIU plugin), nor by crun 1.28 with CRIU 4.2.1 and the action
// script. The checkpoint works. With runc the restore fails inside CRIU
// before the tasks are resumed, so before the hook has anything to fix:
// systemd keeps inotify watches on cgroup files of its units
// (init.scope/memory.events, system.slice/srv-a.mount/cgroup.events), and
// CRIU recreates only the cgroups that hold tasks, without the controllers
// systemd enabled in their parents (the post-setup-namespaces step of the
// plugin or the action script makes them:
// TestCgroup2SystemdRestoredAndFixed; the OCI hook runs too early for
// it). With crun, the action script makes them and CRIU's restore ends,
// then crun itself fails (see below). The test pins those rows of the
// README's matrix: if a restore starts to work, it fails and says so, and
// the row must become a real check of the fix.
func TestCgroup2SystemdRestoreFailsInCRIU(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	bin := hookBinary(t)
	// No plugin, whatever CRIU's plugin directory holds.
	t.Setenv("CRIU_LIBS_DIR", libsDir(t))
	for _, rt := range []string{"runc", "crun-forky"} {
		tt.Run(rt, func(tt *testing.T) {
			t := lab.Record(tt)
			// Wired as each runtime can be: runc with the OCI hook,
			// crun with the action script.
			opts := lab.Options{Rootfs: "trixie", Runtime: rt}
			var log func() string
			if rt == "runc" {
				var logPath string
				logPath, log = ociLog(t)
				opts.Hook, opts.HookEnv = bin, hookLogEnv(logPath)
			} else {
				log = logFile(t)
				opts.ActionScript = bin
			}
			c := lab.Up(t, "v2-systemd-"+strings.TrimSuffix(rt, "-forky"), lab.Systemd, opts)
			if v := mustWork(t, c, "systemctl", "--version"); !strings.Contains(v, "systemd 257") {
				t.Fatalf("the container's systemd is not 257: %q", firstLine(v))
			}
			timed(t, "checkpoint "+c.Name, c.Checkpoint)
			err := c.Restore()
			restoreLog, _ := os.ReadFile(filepath.Join(c.Bundle, "work", "restore.log"))
			if err == nil {
				t.Fatalf("the restore of systemd 257 on cgroup v2 worked with %s: the README's matrix is wrong; make this test check the fix", rt)
			}
			if rt == "crun-forky" {
				// The action script made the cgroups (issue 32) and
				// CRIU restored the container; then crun 1.28 writes the
				// restored init into the container's cgroup, which now
				// has memory enabled for its children: EBUSY, and crun
				// fails the restore (src/libcrun/container.c,
				// libcrun_container_restore, then enter_cgroup_v2).
				runLog, _ := os.ReadFile(filepath.Join(c.Bundle, "log", "restore.log"))
				if !strings.Contains(string(restoreLog), "Restore finished successfully") || !strings.Contains(string(runLog), "cgroup.procs`: Device or resource busy") {
					t.Fatalf("crun's restore failed (%v), but not as documented (CRIU done, then crun's EBUSY):\n%s\n%s", err, tail(string(restoreLog), 10), runLog)
				}
				if !strings.Contains(log(), "cgroups prepared for") {
					t.Errorf("the hook did not prepare the cgroups at post-setup-namespaces:\n%s", log())
				}
				t.Logf("as documented: %s", strings.TrimSpace(string(runLog)))
				return
			}
			if !strings.Contains(string(restoreLog), "fsnotify: Unable to open /sys/fs/cgroup/") {
				t.Fatalf("the restore failed (%v), but not at a cgroup file's inotify watch:\n%s", err, tail(string(restoreLog), 25))
			}
			t.Logf("as documented: %s", grepLines(string(restoreLog), "fsnotify: Unable to open"))
			// CRIU failed before the tasks were resumed: the hook had
			// nothing to fix, and said so (the OCI hook's follower).
			if strings.Contains(log(), "pre-resume finished") {
				t.Errorf("the hook ran its pre-resume phase although CRIU failed before it:\n%s", log())
			}
			if rt == "runc" {
				deadline := time.Now().Add(testenv.Scale(30 * time.Second))
				for !strings.Contains(log(), "the restore failed; nothing to do") && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
				if !strings.Contains(log(), "the restore failed; nothing to do") {
					t.Errorf("the OCI hook's follower did not report the failed restore:\n%s", log())
				}
			}
		})
	}
}

// Issue 32: Debian 12 and Debian 13 systemd containers (systemd 252 and
// 257) on a cgroup v2 host, CRIU 4.1.1, restored by runc 1.1.5 and by
// podman 4.3.1 with runc, with the package installed and nothing else
// wired: CRIU loads the plugin from /usr/lib/criu. At CRIU's
// post-setup-namespaces action (the plugin adds the binary as the
// restore's action script for it) the hook makes the cgroups systemd
// watched (the empty srv-a.mount, memory enabled where memory.events is
// watched, CRIU moved out of the container's cgroup first), so that
// CRIU's restore of the watches does not fail (without it:
// TestCgroup2SystemdRestoreFailsInCRIU/runc). At pre-resume it writes
// again the memory pressure triggers of systemd 257 (PID 1 and journald),
// which CRIU reopens without them and on which PID 1 then spins. Then it
// fixes the automount units as on cgroup v1, and every path works.
//
// The containers' seccomp profile denies bpf(): CRIU cannot dump the BPF
// programs systemd makes on cgroup v2. The lab's runc containers deny it;
// podman's default profile lets a container with CAP_SYS_ADMIN call it,
// so the podman ones run with that profile less bpf()
// (podmanSeccompWithoutBPF), as the README says. The runc Debian 13
// container is then checkpointed again and restored with the action
// script and no plugin (the wiring for a CRIU before 3.19, which takes no
// script from a plugin): the same, by the script.
func TestCgroup2SystemdRestoredAndFixed(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: provisioning should have installed it: %v", err)
	}
	installDeb(t)
	// The binary's log: in the file of CRIU's environment where the
	// runtime passes its own on (runc), else in syslog (podman's CRIU).
	file := logFile(t)
	syslog := syslogListener(t)
	log := func() string { return file() + strings.Join(syslog(), "") }
	bin := hookBinary(t)
	for _, rt := range []string{"runc", "podman"} {
		for _, tc := range []struct{ rootfs, systemd string }{{"bookworm", "systemd 252"}, {"trixie", "systemd 257"}} {
			tt.Run(rt+"/"+tc.rootfs, func(tt *testing.T) {
				t := lab.Record(tt)
				var c *lab.Container
				criuLog := func() string {
					b, _ := os.ReadFile(filepath.Join(c.Bundle, "work", "restore.log"))
					return string(b)
				}
				if rt == "runc" {
					c = lab.Up(t, "v2-sd-"+tc.rootfs, lab.Systemd, lab.Options{Rootfs: tc.rootfs})
				} else {
					c = lab.PodmanUp(t, "v2-pod-sd-"+tc.rootfs, lab.Systemd, lab.Options{Rootfs: tc.rootfs, SystemHooks: true, Seccomp: podmanSeccompWithoutBPF(t)})
					criuLog = func() string {
						b, _ := os.ReadFile(filepath.Join(c.Bundle, "log", "criu-restore.log"))
						return string(b)
					}
				}
				if v := mustWork(t, c, "systemctl", "--version"); !strings.Contains(v, tc.systemd) {
					t.Fatalf("the container's systemd is not %s: %q", tc.systemd, firstLine(v))
				}
				n := len(allOK(t, c, 3))
				v2SystemdRestoredAndFixed(t, c, criuLog, log, hook.WiringPlugin, n, tc.rootfs == "trixie")
				if rt != "runc" || tc.rootfs != "trixie" {
					return
				}
				t.Setenv("CRIU_LIBS_DIR", libsDir(t))
				if err := c.Wire(lab.Options{ActionScript: bin}); err != nil {
					t.Fatal(err)
				}
				v2SystemdRestoredAndFixed(t, c, criuLog, log, hook.WiringScript, n, true)
			})
		}
	}
}

// v2SystemdRestoredAndFixed checkpoints and restores c on a cgroup v2 host
// and checks that wiring made its cgroups, fixed its n autofs mounts and
// left systemd running and idle. criuLog reads CRIU's log of the restore
// (nil where there is none: CRI-O removes it), log the binary's.
func v2SystemdRestoredAndFixed(t testing.TB, c *lab.Container, criuLog, log func() string, wiring string, n int, pressure bool) {
	t.Helper()
	from := len(log())
	if err := c.Checkpoint(); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	err := c.Restore()
	restoreLog := ""
	if criuLog != nil {
		restoreLog = criuLog()
	}
	if err != nil {
		t.Fatalf("restore (%s): %v\n%s\nhook log:\n%s", wiring, err, tail(restoreLog, 25), log()[from:])
	}
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	o := waitOutcome(t, pid, wiring)
	if o.PreResume == nil || o.PreResume.Wiring != wiring {
		t.Errorf("the pre-resume phase was not run by %s: %+v", wiring, o.PreResume)
	}
	added := regexp.MustCompile(`autofs-restore-hook plugin: \S+ added as action script for post-setup-namespaces`).MatchString(restoreLog)
	if criuLog == nil {
		// Without CRIU's log, the binary's says who ran the step at
		// post-setup-namespaces (checked below): only the script the
		// plugin adds logs it with wiring=criu-plugin.
		t.Logf("no CRIU log of this restore to read")
	} else if added != (wiring == hook.WiringPlugin) {
		t.Errorf("CRIU's log says the plugin added the binary as action script: %v, want %v with %s:\n%s", added, wiring == hook.WiringPlugin, wiring, grepLines(restoreLog, "autofs-restore-hook"))
	}
	l := log()[from:]
	prepared := grepLines(l, "cgroups prepared for")
	// The cgroups of the mount units that were inactive at the checkpoint
	// (srv-a.mount the first time; srv-b and srv-c, mounted after a
	// first restore, the second).
	if !regexp.MustCompile(`created [^;]*/system\.slice/srv-[abc]\.mount`).MatchString(prepared) || !strings.Contains(prepared, "+memory in") || !strings.Contains(prepared, "wiring="+wiring) {
		t.Errorf("the hook's log does not say that %s made the cgroup of a mount unit and enabled memory:\n%s", wiring, l)
	}
	if pressure && !strings.Contains(l, "memory pressure triggers written again") {
		t.Errorf("the hook's log does not say it wrote systemd 257's memory pressure triggers again:\n%s", l)
	}
	systemdWorks(t, c)
	allOK(t, c, n)
	if s, _, _ := c.Exec(okWait, "systemctl", "is-system-running"); strings.TrimSpace(s) != "running" {
		failed, _, _ := c.Exec(okWait, "systemctl", "--failed", "--no-pager")
		t.Errorf("systemd is %q after the restore:\n%s", strings.TrimSpace(s), failed)
	}
	// PID 1 idles: it does not spin on a pressure file without its
	// trigger (a whole CPU before the triggers were written).
	cpu := func() time.Duration {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		u, _ := strconv.Atoi(f[11])
		s, _ := strconv.Atoi(f[12])
		return time.Duration(u+s) * time.Second / 100
	}
	c0, w0 := cpu(), time.Now()
	time.Sleep(5 * time.Second)
	if used, wall := cpu()-c0, time.Since(w0); used > wall/2 {
		t.Errorf("the container's PID 1 used %s of CPU in %s after the restore: it spins", used, wall.Round(time.Millisecond))
	}
	// systemd's view of its units' cgroups is whole again: a service
	// restarted after the restore gets its cgroup (the lab's containers
	// have no D-Bus: systemctl talks to PID 1 on its private socket).
	mustWork(t, c, "systemctl", "restart", "systemd-journald.service")
	if s := mustWork(t, c, "systemctl", "is-active", "systemd-journald.service"); strings.TrimSpace(s) != "active" {
		t.Errorf("journald restarted after the restore is %q", strings.TrimSpace(s))
	}
	t.Logf("hook log (%s):\n%s", wiring, l)
}

// Debian 12's crun 1.8.1 is built without CRIU: it cannot checkpoint at
// all, so no wiring of ours can run with it. In the cgroup v2 pass because
// crun 1.8.1 runs no container on the first pass's hybrid layout ("cgroups
// in hybrid mode not supported").
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

// cgtree.Prepare on the host's real cgroup v2 hierarchy, as the action
// script runs it at post-setup-namespaces: it creates the missing
// cgroups and enables memory in the container's cgroup after moving the
// processes there that are not the container's (runc's CRIU); a process
// it may not move is left, and nothing is enabled; a cgroup path outside
// the hierarchy's root is refused.
func TestCgroup2PrepareStaysInTheContainersCgroup(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	if os.Geteuid() != 0 {
		t.Fatal("needs root")
	}
	hostRoot, err := unix.Open("/sys/fs/cgroup", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(hostRoot)
	for _, mayMove := range []bool{true, false} {
		name := fmt.Sprintf("arh-cgtree-%d-%t", os.Getpid(), mayMove)
		dir := filepath.Join("/sys/fs/cgroup", name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// The container's root task in init.scope, "CRIU" in the
		// container's cgroup itself.
		if err := os.Mkdir(filepath.Join(dir, "init.scope"), 0o755); err != nil {
			t.Fatal(err)
		}
		task, criu := exec.Command("sleep", "600"), exec.Command("sleep", "600")
		for _, c := range []*exec.Cmd{task, criu} {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, c := range []*exec.Cmd{task, criu} {
				os.WriteFile("/sys/fs/cgroup/cgroup.procs", []byte(fmt.Sprint(c.Process.Pid)), 0)
				c.Process.Kill()
				c.Wait()
			}
			for _, d := range []string{"system.slice/srv-a.mount", "system.slice", "init.scope", ""} {
				os.Remove(filepath.Join(dir, d))
			}
		})
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.WriteFile(filepath.Join(dir, "init.scope", "cgroup.procs"), []byte(fmt.Sprint(task.Process.Pid)), 0))
		must(os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(criu.Process.Pid)), 0))
		needs, err := cgtree.Plan([]criuimg.Watch{
			{Path: "/sys/fs/cgroup/init.scope/memory.events", MntID: 72},
			{Path: "/sys/fs/cgroup/init.scope/cgroup.events", MntID: 72},
			{Path: "/sys/fs/cgroup/system.slice/srv-a.mount/cgroup.events", MntID: 72},
		}, []cgtree.Mount{{Mountpoint: "/tmp/.criu.mntns.Ab12Cd/mnt-0000000072", Root: "/" + name, ImageID: 72}}, map[uint32]string{72: "/sys/fs/cgroup"})
		must(err)
		done, err := cgtree.Prepare(hostRoot, needs, func(pid int) bool { return mayMove && pid == criu.Process.Pid }, hostRoot)
		_, memErr := os.Stat(filepath.Join(dir, "init.scope", "memory.events"))
		_, unitErr := os.Stat(filepath.Join(dir, "system.slice", "srv-a.mount", "cgroup.events"))
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		t.Logf("may move %t: done %+v, err %v", mayMove, done, err)
		if mayMove {
			if err != nil || memErr != nil || unitErr != nil || strings.TrimSpace(string(procs)) != "" {
				t.Errorf("prepared: err %v; memory.events: %v; srv-a.mount: %v; processes left in the container's cgroup: %q", err, memErr, unitErr, procs)
			}
			if !slices.Equal(done.Moved, []int{criu.Process.Pid}) || done.Present != 1 {
				t.Errorf("done %+v: want CRIU's process moved and cgroup.events present", done)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "not ours to move") || memErr == nil {
			t.Errorf("a process not ours in the container's cgroup: err %v, memory.events %v; want it refused and memory not enabled", err, memErr)
		}
		if strings.TrimSpace(string(procs)) != fmt.Sprint(criu.Process.Pid) {
			t.Errorf("the process was moved: %q left in the container's cgroup", procs)
		}
	}
	// A cgroup that is not below the hierarchy's root.
	_, err = cgtree.Prepare(hostRoot, []cgtree.Need{{Root: "/../../tmp", Dirs: []string{"x"}, File: "cgroup.events"}}, func(int) bool { return true }, hostRoot)
	if err == nil {
		t.Error("a cgroup above the hierarchy's root was not refused")
	}
	if _, err := os.Stat("/tmp/x"); err == nil {
		t.Error("/tmp/x was created")
	}
}
