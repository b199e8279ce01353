package e2e

// The packages: the .deb and the .rpm are made from one description
// (packaging/nfpm.yaml, `make deb rpm`). This test needs no autofs and no
// container: test/tests.sh runs it on the host (TestNoAutofs...). The
// .deb is installed, used and removed in the lab by
// TestDebPackageInstallsAHookPodmanFinds.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
		`case "${1:-}" in [1-9]*) exit 0 ;; esac`,
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

// The node installer's image (`make image`, buildah from nothing): an OCI
// archive holding exactly the binary and the CRIU plugin under test, the
// ones make built, root-owned, with the DaemonSet's command as its own.
func TestNoAutofsImageHoldsTheInstaller(t *testing.T) {
	archive := os.Getenv("AUTOFS_RESTORE_HOOK_IMAGE")
	if archive == "" || os.Getenv("AUTOFS_RESTORE_HOOK_BIN") == "" || os.Getenv("AUTOFS_RESTORE_HOOK_PLUGIN") == "" {
		testenv.Skip(t, "AUTOFS_RESTORE_HOOK_IMAGE, _BIN and _PLUGIN are not all set (make test builds them and sets them)")
	}
	blobs := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", archive, err)
		}
		if h.Typeflag == tar.TypeReg && h.Size < 64<<20 {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			blobs[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
	blob := func(digest string) []byte {
		b, ok := blobs["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
		if !ok {
			t.Fatalf("%s: no blob %s", archive, digest)
		}
		return b
	}
	var index struct{ Manifests []struct{ Digest string } }
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v, %d manifests", err, len(index.Manifests))
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ MediaType, Digest string }
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Architecture string
		Config       struct{ Entrypoint, Cmd []string }
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want one: no base image", len(manifest.Layers))
	}
	var layer io.Reader = bytes.NewReader(blob(manifest.Layers[0].Digest))
	if strings.HasSuffix(manifest.Layers[0].MediaType, "+gzip") {
		if layer, err = gzip.NewReader(layer); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]struct {
		src  string
		mode int64
	}{
		"autofs-restore-hook":    {os.Getenv("AUTOFS_RESTORE_HOOK_BIN"), 0o755},
		"autofs-restore-hook.so": {os.Getenv("AUTOFS_RESTORE_HOOK_PLUGIN"), 0o644},
	}
	lr := tar.NewReader(layer)
	seen := 0
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		w, ok := want[name]
		if !ok {
			t.Errorf("the image holds %s (%c), which it should not", name, h.Typeflag)
			continue
		}
		seen++
		got, _ := io.ReadAll(lr)
		if src, err := os.ReadFile(w.src); err != nil || !bytes.Equal(src, got) {
			t.Errorf("/%s is not %s (%v)", name, w.src, err)
		}
		if h.Mode&0o7777 != w.mode || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("/%s: mode %o, owner %d:%d; want %o, root", name, h.Mode&0o7777, h.Uid, h.Gid, w.mode)
		}
	}
	if seen != len(want) {
		t.Errorf("the image holds %d of the %d files", seen, len(want))
	}
	// Its command is the DaemonSet's.
	ds, err := os.ReadFile(filepath.Join(lab.Dir(), "..", "..", "hooks.d", "kubernetes-daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := append(slices.Clone(config.Config.Entrypoint), config.Config.Cmd...)
	if !strings.Contains(string(ds), "            - "+strings.Join(cmd, "\n            - ")+"\n") {
		t.Errorf("the image runs %q, which is not the DaemonSet's command", cmd)
	}
	t.Logf("%s: %s, %q", filepath.Base(archive), config.Architecture, cmd)

	// Run as the DaemonSet runs it, by podman (a storage of its own) with a
	// directory as the node's /: it installs, and at SIGTERM (podman stop,
	// as when the DaemonSet is deleted) removes what it installed.
	var ref struct {
		Manifests []struct{ Annotations map[string]string }
	}
	if err := json.Unmarshal(blobs["index.json"], &ref); err != nil {
		t.Fatal(err)
	}
	name := ref.Manifests[0].Annotations["org.opencontainers.image.ref.name"]
	// podman wants a short runroot: not below t.TempDir.
	store, err := os.MkdirTemp("", "arh-pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(store) })
	storeArgs := []string{"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"), "--storage-driver", "vfs",
		"--events-backend", "file", "--runtime", "runc", "--cgroup-manager", "cgroupfs"}
	podman := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("podman", append(slices.Clone(storeArgs), args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	podman("load", "-i", archive)
	host := t.TempDir()
	// The limits as the other podman tests of the host give them (this
	// host refuses podman's own).
	ctr := podman("run", "-d", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "-v", host+":/host", "localhost/"+name)
	t.Cleanup(func() { exec.Command("podman", append(slices.Clone(storeArgs), "rm", "-f", ctr)...).Run() })
	manifestPath := filepath.Join(host, "var/lib/autofs-restore-hook/node-install.json")
	deadline := time.Now().Add(testenv.Scale(60 * time.Second))
	for {
		if _, err := os.Stat(filepath.Join(host, "usr/share/containers/oci/hooks.d/autofs-restore-hook.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the image's installer wrote no hooks.d JSON within 60 s:\n%s", podman("logs", ctr))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range []string{"usr/libexec/oci/hooks.d/autofs-restore-hook", "usr/lib/criu/autofs-restore-hook.so", "var/lib/autofs-restore-hook/node-install.json"} {
		if _, err := os.Stat(filepath.Join(host, p)); err != nil {
			t.Errorf("installed by the image: %v", err)
		}
	}
	podman("stop", "-t", "30", ctr)
	if code := podman("inspect", "-f", "{{.State.ExitCode}}", ctr); code != "0" {
		t.Errorf("the installer exited %s at SIGTERM, want 0:\n%s", code, podman("logs", ctr))
	}
	var left []string
	filepath.WalkDir(host, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, strings.TrimPrefix(p, host))
		}
		return nil
	})
	// The lock stays for the next install, and nothing else.
	if len(left) != 1 || left[0] != "/var/lib/autofs-restore-hook/node-install.lock" {
		t.Errorf("left on the node after SIGTERM: %v, want the lock alone", left)
	}
	if _, err := os.Stat(manifestPath); !os.IsNotExist(err) {
		t.Errorf("the manifest after SIGTERM: %v", err)
	}
	t.Logf("the image's installer:\n%s", podman("logs", ctr))
}
