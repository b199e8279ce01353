package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/nodeinstall"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// nodeInstalled installs the binary under test and its plugin on this
// machine as the node installer does in a DaemonSet's pod (`node install
// --root /`), and uninstalls them when t ends, checking that nothing of
// theirs stays. Where /usr is writable that is the package's layout:
// CRI-O's and podman's default hooks directory, CRIU's plugin directory.
func nodeInstalled(t testing.TB) {
	t.Helper()
	if st, ok := debInstalled(); ok {
		t.Fatalf("autofs-restore-hook is installed on this machine as a package (%s): the node installer would leave it alone", st)
	}
	bin := hookBinary(t)
	// The package's paths, which CRI-O, podman and CRIU read by default.
	files := []string{nodeinstall.PackageBinary, nodeinstall.PackageJSON, nodeinstall.PackagePlugin}
	out, err := exec.Command("timeout", "-s", "KILL", "60", bin, "node", "install", "--root", "/", "--plugin", pluginSO(t)).CombinedOutput()
	t.Logf("node install:\n%s", out)
	t.Cleanup(func() {
		out, err := exec.Command("timeout", "-s", "KILL", "60", bin, "node", "uninstall", "--root", "/").CombinedOutput()
		t.Logf("node uninstall:\n%s", out)
		if err != nil {
			t.Errorf("node uninstall: %v", err)
		}
		for _, f := range files {
			if _, err := os.Lstat(f); err == nil {
				t.Errorf("%s is still there after node uninstall", f)
			}
		}
	})
	if err != nil {
		t.Fatalf("node install --root /: %v", err)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("node install on a writable /usr: %v", err)
		}
	}
	var h struct {
		Hook struct{ Path string }
	}
	if b, err := os.ReadFile(nodeinstall.PackageJSON); err != nil || json.Unmarshal(b, &h) != nil || h.Hook.Path != nodeinstall.PackageBinary {
		t.Fatalf("the installed %s does not name %s: %v %+v", nodeinstall.PackageJSON, nodeinstall.PackageBinary, err, h)
	}
}

// TestCgroup2CRIORestoredAndFixed is issue 30's CRI-O row: CRI-O (the
// lab's, built from its Go module) checkpoints a container as the
// kubelet's checkpoint API does (crictl checkpoint --export) and restores
// it as Kubernetes does, by creating a container from the archive in a
// pod; the hook is installed as the node installer installs it and
// nothing else is wired. A systemd container (the plugin makes its
// cgroups, without which CRIU fails) and an automount container must come
// back whole. In the cgroup v2 pass: Kubernetes nodes are cgroup v2.
func TestCgroup2CRIORestoredAndFixed(tt *testing.T) {
	t := lab.Record(tt)
	requireCgroup2(t)
	lab.Require(t)
	nodeInstalled(t)
	// The binary's log: in syslog, as CRI-O passes no environment of its
	// own to the hook, runc or CRIU.
	syslog := syslogListener(t)
	log := func() string { return strings.Join(syslog(), "") }
	sdImage := lab.PodmanImage(t, "crio-sd", lab.Systemd, lab.Options{})
	amImage := lab.PodmanImage(t, "crio-am", lab.Automount, lab.Options{})
	lab.StartCRIO(t, sdImage)
	tt.Run("systemd", func(tt *testing.T) {
		t := lab.Record(tt)
		// Without bpf(): CRIU cannot dump the BPF programs systemd
		// attaches where it may (see TestCgroup2SystemdWithBPFCannotBeCheckpointed).
		c := lab.CRIOUp(t, "crio-sd", lab.Systemd, lab.Options{Image: sdImage, Seccomp: podmanSeccompWithoutBPF(t)})
		n := len(allOK(t, c, 3))
		// No CRIU log: CRI-O removes it after the restore.
		v2SystemdRestoredAndFixed(t, c, nil, log, hook.WiringPlugin, n, false)
	})
	tt.Run("automount", func(tt *testing.T) {
		t := lab.Record(tt)
		// CRI-O's own seccomp profile.
		c := lab.CRIOUp(t, "crio-am", lab.Automount, lab.Options{Image: amImage})
		orig := oneDaemon(t, c)
		checkpointRestore(t, c)
		waitFixed(t, c, 5, log)
		restartedInItsCgroup(t, c, "CRI-O", orig, log)
	})
}
