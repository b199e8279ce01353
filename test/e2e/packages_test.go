package e2e

// The packages: the .deb and the .rpm are made from one description
// (packaging/nfpm.yaml, `make deb rpm`). This test needs no autofs and no
// container: test/tests.sh runs it on the host (TestNoAutofs...). The
// .deb is installed, used and removed in the lab by
// TestDebPackageInstallsAHookPodmanFinds.

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// Both packages hold exactly the files an operator is told about, with
// the same modes, and the same prerm: it removes the hooks.d JSON and the
// CRIU plugin before the binary goes, except on an rpm upgrade (the old
// package's %preun runs after the new files are in place, with 1).
func TestNoAutofsPackagesHoldTheSameFiles(t *testing.T) {
	deb, rpmFile := os.Getenv("AUTOFS_RESTORE_HOOK_DEB"), os.Getenv("AUTOFS_RESTORE_HOOK_RPM")
	if deb == "" || rpmFile == "" {
		testenv.Skip(t, "AUTOFS_RESTORE_HOOK_DEB and AUTOFS_RESTORE_HOOK_RPM are not both set (make test builds them with make deb rpm)")
	}
	for _, tool := range []string{"dpkg-deb", "rpm"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(t, "%s is not installed (make test-deps installs rpm)", tool)
		}
	}
	root := filepath.Join(lab.Dir(), "..", "..")
	const doc = "/usr/share/doc/autofs-restore-hook/"
	want := map[string]string{
		"/usr/libexec/oci/hooks.d/autofs-restore-hook":               "-rwxr-xr-x",
		"/usr/share/containers/oci/hooks.d/autofs-restore-hook.json": "-rw-r--r--",
		"/usr/lib/criu/autofs-restore-hook.so":                       "-rw-r--r--",
		"/usr/share/man/man8/autofs-restore-hook.8.gz":               "-rw-r--r--",
		doc + "README.md":                           "-rw-r--r--",
		doc + "RELIABILITY.md":                      "-rw-r--r--",
		doc + "criu-action-script.conf":             "-rw-r--r--",
		doc + "runc-config-snippet.json":            "-rw-r--r--",
		doc + "autofs-restore-hook-annotation.json": "-rw-r--r--",
		doc + "kubernetes-daemonset.yaml":           "-rw-r--r--",
	}
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if len(docs) == 0 {
		t.Fatalf("no docs/*.md under %s", root)
	}
	for _, d := range docs {
		want[doc+"docs/"+filepath.Base(d)] = "-rw-r--r--"
	}

	// dpkg-deb -c: "MODE OWNER/GROUP SIZE DATE TIME ./PATH"; regular files only.
	debFiles := map[string]string{}
	for _, l := range strings.Split(mustRun(t, "dpkg-deb", "-c", deb), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.HasPrefix(f[0], "-") {
			continue
		}
		if f[1] != "root/root" {
			t.Errorf(".deb: %s is owned by %s, want root/root", f[5], f[1])
		}
		debFiles[strings.TrimPrefix(f[5], ".")] = f[0]
	}
	rpmFiles := map[string]string{}
	for _, l := range strings.Split(mustRun(t, "rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]", rpmFile), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || !strings.HasPrefix(f[0], "-") {
			continue
		}
		if f[1] != "root" {
			t.Errorf(".rpm: %s is owned by %s, want root", f[2], f[1])
		}
		rpmFiles[f[2]] = f[0]
	}
	for name, got := range map[string]map[string]string{".deb": debFiles, ".rpm": rpmFiles} {
		for path, mode := range want {
			if got[path] != mode {
				t.Errorf("%s: %s has mode %q, want %q", name, path, got[path], mode)
			}
		}
		for path := range got {
			if _, ok := want[path]; !ok {
				t.Errorf("%s holds %s, which no one was told about", name, path)
			}
		}
	}
	// The shipped JSON names the binary where the packages put it.
	if b, err := os.ReadFile(filepath.Join(root, "hooks.d", "autofs-restore-hook.json")); err != nil || !strings.Contains(string(b), `"/usr/libexec/oci/hooks.d/autofs-restore-hook"`) {
		t.Errorf("hooks.d/autofs-restore-hook.json does not name /usr/libexec/oci/hooks.d/autofs-restore-hook (%v)", err)
	}

	// One prerm for both.
	prerm := mustRun(t, "dpkg-deb", "-I", deb, "prerm")
	scripts := mustRun(t, "rpm", "-qp", "--scripts", rpmFile)
	for _, line := range []string{
		"rm -f /usr/share/containers/oci/hooks.d/autofs-restore-hook.json",
		"rm -f /usr/lib/criu/autofs-restore-hook.so",
		`[ "${1:-}" = 1 ] && exit 0`,
	} {
		if !strings.Contains(prerm, line) || !strings.Contains(scripts, line) {
			t.Errorf("the prerm of each package must hold %q:\n.deb:\n%s\n.rpm:\n%s", line, prerm, scripts)
		}
	}
	if !strings.Contains(scripts, "preuninstall scriptlet") {
		t.Errorf("the .rpm's prerm is not its %%preun:\n%s", scripts)
	}
	t.Logf(".deb and .rpm: %d files each: %v", len(want), slices.Sorted(maps.Keys(want)))
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
