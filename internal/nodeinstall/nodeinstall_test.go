package nodeinstall

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// sources are a binary and a plugin to install.
func sources(t *testing.T) Sources {
	t.Helper()
	d := t.TempDir()
	s := Sources{Binary: filepath.Join(d, "bin"), Plugin: filepath.Join(d, "plugin.so")}
	if err := os.WriteFile(s.Binary, []byte("the binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Plugin, []byte("the plugin"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// installed lists the regular files below root, with their modes.
func installed(t *testing.T, root string) map[string]os.FileMode {
	t.Helper()
	got := map[string]os.FileMode{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		got[strings.TrimPrefix(p, root)] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func logTo(t *testing.T) func(string, ...any) {
	return func(f string, a ...any) { t.Logf(f, a...) }
}

// A node whose /usr is writable gets the package's layout, the plugin
// included, the JSON naming the binary; uninstall leaves nothing of it.
func TestInstallWhereUsrIsWritable(t *testing.T) {
	root := t.TempDir()
	l, err := Install(root, sources(t), logTo(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{PackageBinary: 0o755, PackagePlugin: 0o644, PackageJSON: 0o644, Manifest: 0o644, Lock: 0o600}
	if got := installed(t, root); !reflect.DeepEqual(got, want) {
		t.Fatalf("installed %v, want %v", got, want)
	}
	if b, _ := os.ReadFile(filepath.Join(root, PackageBinary)); string(b) != "the binary" {
		t.Errorf("the binary holds %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, PackageJSON)); string(b) != string(HookJSON(PackageBinary)) {
		t.Errorf("the JSON is %s", b)
	}
	if l.CRIODropIn != "" {
		t.Errorf("a CRI-O drop-in where the default hooks dir is writable: %s", l.CRIODropIn)
	}
	// Again: the files are replaced, nothing else appears.
	if _, err := Install(root, sources(t), logTo(t)); err != nil {
		t.Fatal(err)
	}
	if got := installed(t, root); !reflect.DeepEqual(got, want) {
		t.Fatalf("installed twice: %v, want %v", got, want)
	}
	if err := Uninstall(root, "", logTo(t)); err != nil {
		t.Fatal(err)
	}
	if got := installed(t, root); !reflect.DeepEqual(got, map[string]os.FileMode{Lock: 0o600}) {
		t.Fatalf("left after uninstall: %v, want the lock alone", got)
	}
	if err := Uninstall(root, "", logTo(t)); err != nil {
		t.Fatalf("uninstall without a manifest: %v", err)
	}
}

// A node whose /usr is read-only (a real read-only bind mount, as on an
// image-based node OS): the binary goes to /opt, the JSON to
// /etc/containers/oci/hooks.d with a CRI-O drop-in naming that directory,
// no plugin; nothing is written below /usr.
func TestInstallWhereUsrIsReadOnly(t *testing.T) {
	testenv.RequireRoot(t, "a read-only bind mount")
	root := readOnlyUsr(t)
	if err := os.MkdirAll(filepath.Join(root, "etc/crio"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := Install(root, sources(t), logTo(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{OptBinary: 0o755, EtcJSON: 0o644, CRIODropIn: 0o644, Manifest: 0o644, Lock: 0o600}
	if got := installed(t, root); !reflect.DeepEqual(got, want) {
		t.Fatalf("installed %v, want %v", got, want)
	}
	if l.Plugin != "" {
		t.Errorf("a plugin where /usr is read-only: %s", l.Plugin)
	}
	if b, _ := os.ReadFile(filepath.Join(root, EtcJSON)); string(b) != string(HookJSON(OptBinary)) {
		t.Errorf("the JSON is %s", b)
	}
	dropIn, _ := os.ReadFile(filepath.Join(root, CRIODropIn))
	for _, want := range []string{"[crio.runtime]", `"/usr/share/containers/oci/hooks.d"`, `"/etc/containers/oci/hooks.d"`} {
		if !strings.Contains(string(dropIn), want) {
			t.Errorf("the CRI-O drop-in has no %s:\n%s", want, dropIn)
		}
	}
	if err := Uninstall(root, "", logTo(t)); err != nil {
		t.Fatal(err)
	}
	if got := installed(t, root); !reflect.DeepEqual(got, map[string]os.FileMode{Lock: 0o600}) {
		t.Fatalf("left after uninstall: %v, want the lock alone", got)
	}
}

// The node's symlinks are the node's: on Fedora CoreOS /opt is a symlink
// into /var. One that is absolute here, resolved by the installer as it
// is, would lead out of the node's root into the installer's own files
// (in the DaemonSet: the container's), and the JSON would name a binary
// the node does not have. It is resolved with the node's / as root.
func TestInstallFollowsTheNodesSymlinksInsideIt(t *testing.T) {
	testenv.RequireRoot(t, "a read-only bind mount")
	root := readOnlyUsr(t)
	// An absolute target that exists nowhere outside the root.
	target := "/arh-nodeinstall-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { os.RemoveAll(target) })
	if err := os.MkdirAll(filepath.Join(root, target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(root, "opt")); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(root, sources(t), logTo(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); err == nil {
		t.Errorf("%s was made outside the node's root", target)
	}
	inside := filepath.Join(root, target, "autofs-restore-hook", "autofs-restore-hook")
	if b, err := os.ReadFile(inside); err != nil || string(b) != "the binary" {
		t.Errorf("the binary is not at %s, where the node's /opt leads: %q %v", inside, b, err)
	}
	if err := Uninstall(root, "", logTo(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inside); !os.IsNotExist(err) {
		t.Errorf("after uninstall: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "opt")); err != nil {
		t.Errorf("the node's /opt symlink is gone: %v", err)
	}
}

// readOnlyUsr is a node root whose /usr is a read-only bind mount.
func readOnlyUsr(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	usr := filepath.Join(root, "usr")
	if err := os.MkdirAll(usr, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(usr, usr, "", unix.MS_BIND, ""); err != nil {
		testenv.Skip(t, "bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(usr, unix.MNT_DETACH) })
	if err := unix.Mount("", usr, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	return root
}

// The JSON an install writes is the shipped hooks.d JSON with its path.
func TestHookJSONIsTheShippedOne(t *testing.T) {
	shipped, err := os.ReadFile("../../hooks.d/autofs-restore-hook.json")
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(shipped, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(HookJSON(PackageBinary), &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("HookJSON(%s) = %v, the shipped JSON %v", PackageBinary, b, a)
	}
}

// A manifest that names a file that is not one of ours does not make
// uninstall remove it.
func TestUninstallRemovesOnlyOurPaths(t *testing.T) {
	root := t.TempDir()
	victim := filepath.Join(root, "etc", "passwd")
	if err := os.MkdirAll(filepath.Dir(victim), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("root:x:0:0"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(Layout{Binary: "/etc/passwd", HookJSON: "/etc/../etc/passwd"})
	if err := os.MkdirAll(filepath.Dir(filepath.Join(root, Manifest)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, Manifest), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(root, "", logTo(t)); err == nil || !strings.Contains(err.Error(), "not a path of ours") {
		t.Errorf("uninstall with a manifest naming /etc/passwd: %v", err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("/etc/passwd was removed: %v", err)
	}
}

// The order that never leaves a hooks.d JSON naming a missing binary: the
// manifest, then the binary before the JSON; at uninstall the JSON first,
// the binary after it.
func TestInstallAndUninstallOrder(t *testing.T) {
	root := t.TempDir()
	var ops []string
	trace = func(op, p string) { ops = append(ops, op+" "+p) }
	defer func() { trace = nil }()
	if _, err := Install(root, sources(t), logTo(t)); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(root, "", logTo(t)); err != nil {
		t.Fatal(err)
	}
	want := []string{"made " + Manifest, "made " + PackageBinary, "made " + PackagePlugin, "made " + PackageJSON,
		"removed " + PackageJSON, "removed " + PackagePlugin, "removed " + PackageBinary, "removed " + Manifest}
	if !reflect.DeepEqual(ops, want) {
		t.Errorf("operations:\n%s\nwant:\n%s", strings.Join(ops, "\n"), strings.Join(want, "\n"))
	}
}

// Where the package is installed (dpkg's list, or its JSON without a
// manifest of ours), install writes nothing and uninstall removes nothing
// of it.
func TestInstallLeavesThePackageAlone(t *testing.T) {
	for _, pkg := range []string{"/var/lib/dpkg/info/autofs-restore-hook.list", PackageJSON} {
		root := t.TempDir()
		p := filepath.Join(root, pkg)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("the package's"), 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := Install(root, sources(t), logTo(t))
		if err != nil || l.ID != "" {
			t.Fatalf("with %s: layout %+v, %v; want nothing installed", pkg, l, err)
		}
		if got := installed(t, root); !reflect.DeepEqual(got, map[string]os.FileMode{pkg: 0o644, Lock: 0o600}) {
			t.Errorf("with %s: %v", pkg, got)
		}
		if err := Uninstall(root, "", logTo(t)); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != "the package's" {
			t.Errorf("%s after uninstall: %q", pkg, b)
		}
	}
}

// Two pods of the DaemonSet at once (a rolling update): the older one's
// uninstall, after the newer one installed, leaves the newer install.
func TestUninstallLeavesANewerInstall(t *testing.T) {
	root := t.TempDir()
	old, err := Install(root, sources(t), logTo(t))
	if err != nil {
		t.Fatal(err)
	}
	newer, err := Install(root, sources(t), logTo(t))
	if err != nil {
		t.Fatal(err)
	}
	if old.ID == newer.ID || old.ID == "" {
		t.Fatalf("IDs %q and %q", old.ID, newer.ID)
	}
	if err := Uninstall(root, old.ID, logTo(t)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{PackageBinary, PackageJSON, Manifest} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("the newer install lost %s: %v", p, err)
		}
	}
	if err := Uninstall(root, newer.ID, logTo(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, PackageJSON)); !os.IsNotExist(err) {
		t.Errorf("the newer pod's uninstall left its JSON: %v", err)
	}
}

// A JSON that cannot be removed stops the uninstall: the binary it names
// stays. A hooks.d JSON of another (an earlier installer's) naming the
// binary keeps it too.
func TestUninstallKeepsTheBinaryWhileAJSONNamesIt(t *testing.T) {
	testenv.RequireRoot(t, "a read-only bind mount")
	root := t.TempDir()
	if _, err := Install(root, sources(t), logTo(t)); err != nil {
		t.Fatal(err)
	}
	hooks := filepath.Join(root, filepath.Dir(PackageJSON))
	if err := unix.Mount(hooks, hooks, "", unix.MS_BIND, ""); err != nil {
		testenv.Skip(t, "bind mount: %v", err)
	}
	if err := unix.Mount("", hooks, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(hooks, unix.MNT_DETACH)
		t.Fatal(err)
	}
	err := Uninstall(root, "", logTo(t))
	unix.Unmount(hooks, unix.MNT_DETACH)
	if err == nil {
		t.Fatal("uninstall with a JSON it cannot remove: no error")
	}
	for _, p := range []string{PackageBinary, PackageJSON, Manifest} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s after the failed uninstall: %v", p, err)
		}
	}
	// An earlier installer's JSON in /etc names the same binary.
	etc := filepath.Join(root, "/etc/containers/oci/hooks.d/autofs-restore-hook.json")
	if err := os.MkdirAll(filepath.Dir(etc), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(etc, HookJSON(PackageBinary), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(root, "", logTo(t)); err == nil || !strings.Contains(err.Error(), "the binary stays") {
		t.Errorf("uninstall with another JSON naming the binary: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, PackageBinary)); err != nil {
		t.Errorf("the binary another JSON names was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, PackageJSON)); !os.IsNotExist(err) {
		t.Errorf("our JSON: %v, want removed", err)
	}
}

// No /etc/crio (a containerd node): no CRI-O drop-in.
func TestNoDropInWithoutCRIO(t *testing.T) {
	testenv.RequireRoot(t, "a read-only bind mount")
	root := readOnlyUsr(t)
	l, err := Install(root, sources(t), logTo(t))
	if err != nil {
		t.Fatal(err)
	}
	if l.CRIODropIn != "" {
		t.Errorf("a drop-in without /etc/crio: %s", l.CRIODropIn)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/crio")); !os.IsNotExist(err) {
		t.Errorf("/etc/crio made: %v", err)
	}
}
