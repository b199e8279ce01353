package hook

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/nodeinstall"
)

// node install --wait: installs this binary (the test binary here) and the
// plugin, waits (here: returns at once, as at SIGTERM), then uninstalls.
func TestNodeInstallWaitsThenUninstalls(t *testing.T) {
	root := t.TempDir()
	plugin := filepath.Join(t.TempDir(), "p.so")
	if err := os.WriteFile(plugin, []byte("so"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	waited := false
	code := nodeMain([]string{"install", "--root", root, "--plugin", plugin, "--wait"}, &out, &errb, func() {
		waited = true
		for _, p := range []string{nodeinstall.PackageBinary, nodeinstall.PackageJSON, nodeinstall.PackagePlugin} {
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("while waiting: %v", err)
			}
		}
	})
	if code != ExitOK || !waited {
		t.Fatalf("exit %d, waited %v; stdout %q stderr %q", code, waited, out.String(), errb.String())
	}
	for _, p := range []string{nodeinstall.PackageBinary, nodeinstall.PackageJSON, nodeinstall.PackagePlugin, nodeinstall.Manifest} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s after the wait: %v, want removed", p, err)
		}
	}
	if !strings.Contains(out.String(), "removed "+nodeinstall.PackageJSON) {
		t.Errorf("stdout does not say what was removed:\n%s", out.String())
	}
}

func TestNodeUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"remove"}, {"install", "extra"}, {"uninstall", "--plugin", "x"}, {"install", "--root", "/nonexistent-root"}} {
		var out, errb bytes.Buffer
		if code := nodeMain(args, &out, &errb, func() {}); code != ExitUsage {
			t.Errorf("node %q: exit %d, want %d (stderr %q)", args, code, ExitUsage, errb.String())
		}
	}
}
