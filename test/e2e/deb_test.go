package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// The package's files, as an operator finds them.
const (
	debBinary = "/usr/libexec/oci/hooks.d/autofs-restore-hook"
	debJSON   = "/usr/share/containers/oci/hooks.d/autofs-restore-hook.json"
	debMan    = "/usr/share/man/man8/autofs-restore-hook.8.gz"
	// debPlugin is the CRIU plugin, loaded by every CRIU of the host.
	debPlugin = "/usr/lib/criu/autofs-restore-hook.so"
)

// The Debian package of `make deb` (AUTOFS_RESTORE_HOOK_DEB, set by
// `make test`), installed with dpkg -i: the binary, the hooks.d JSON, the
// CRIU plugin and the manual page are where the README says; podman, given no
// --hooks-dir, finds the hook in its own hooks dir and a systemd
// container it checkpoints and restores works at once; dpkg -r takes
// every file away again. In the test VM, dpkg writes to the guest's
// overlay of the host's root, never to the host.
func TestDebPackageInstallsAHookPodmanFinds(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	installDeb(t)
	dpkg := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("timeout", append([]string{"-s", "KILL", "120", "dpkg"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for _, f := range []string{debBinary, debJSON, debMan, debPlugin} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("after dpkg -i: %v", err)
		}
	}
	if out, err := exec.Command(debBinary, "version").Output(); err != nil || !strings.HasPrefix(string(out), "autofs-restore-hook ") {
		t.Fatalf("%s version: %q, %v", debBinary, out, err)
	}
	man := exec.Command("man", "-l", debMan)
	man.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=100")
	if out, err := man.CombinedOutput(); err != nil || !strings.Contains(string(out), "SYNOPSIS") || !strings.Contains(string(out), "autofs-restore-hook fix --pid PID") {
		t.Fatalf("man -l %s: %v\n%s", debMan, err, out)
	}
	c := lab.PodmanUp(t, "deb", lab.Systemd, lab.Options{SystemHooks: true})
	checkpointRestore(t, c)
	// The package's CRIU plugin fixes the restore; its post-resume runs
	// detached (CRIU does not wait for it): its end is in the state file.
	pid, err := c.Pid()
	if err != nil {
		t.Fatal(err)
	}
	waitOutcome(t, pid, hook.WiringPlugin)
	// /srv/b hangs after a restore that nothing fixed
	// (TestSystemdRestoreWithoutHookHangs).
	systemdWorks(t, c)
	allOK(t, c, 3)
	dpkg("-r", "autofs-restore-hook")
	for _, f := range []string{debBinary, debJSON, debMan, debPlugin} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("after dpkg -r: %s is still there", f)
		}
	}
}
