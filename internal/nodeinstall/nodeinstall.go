// Package nodeinstall holds the node installer that the Kubernetes
// DaemonSet runs (`autofs-restore-hook node install`): it puts the binary,
// the OCI hook's hooks.d JSON and the CRIU plugin on a node's root where
// CRI-O and CRIU read them, on writable paths where the node's /usr is
// read-only (image-based node OSes), records what it wrote, and takes
// exactly that away again (`node uninstall`).
package nodeinstall

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Host paths (below the node's root) of the two layouts.
const (
	// The Debian package's layout, where /usr is writable: CRI-O and
	// podman read /usr/share/containers/oci/hooks.d by default, CRIU
	// loads the plugins of /usr/lib/criu, and the plugin runs the binary
	// at /usr/libexec/oci/hooks.d.
	PackageBinary = "/usr/libexec/oci/hooks.d/autofs-restore-hook"
	PackageJSON   = "/usr/share/containers/oci/hooks.d/autofs-restore-hook.json"
	PackagePlugin = "/usr/lib/criu/autofs-restore-hook.so"
	// Where /usr is read-only: the binary in /opt (writable on Fedora
	// CoreOS, where it is /var/opt, and on Flatcar), the JSON in
	// /etc/containers/oci/hooks.d, which CRI-O reads only where its
	// hooks_dir names it: hence a drop-in naming CRI-O's default and that
	// directory. No plugin: CRIU loads plugins from /usr/lib/criu only,
	// and the plugin would run a binary at /usr/libexec.
	OptBinary  = "/opt/autofs-restore-hook/autofs-restore-hook"
	EtcJSON    = "/etc/containers/oci/hooks.d/autofs-restore-hook.json"
	CRIODropIn = "/etc/crio/crio.conf.d/90-autofs-restore-hook.conf"
	// Manifest records what an install wrote, for uninstall; Lock is
	// held through an install and an uninstall.
	Manifest = "/var/lib/autofs-restore-hook/node-install.json"
	Lock     = "/var/lib/autofs-restore-hook/node-install.lock"
	// dpkgList is there where the Debian package is installed.
	dpkgList = "/var/lib/dpkg/info/autofs-restore-hook.list"
)

// maxJSON bounds a manifest or hooks.d JSON read.
const maxJSON = 1 << 16

// trace, where a test sets it, sees each file made or removed, in order.
var trace func(op, path string)

// crioDropIn sets CRI-O's hooks_dir to its default and
// /etc/containers/oci/hooks.d. It replaces a hooks_dir set in an earlier
// file of CRI-O's configuration: a node that names other directories must
// name them here too.
const crioDropIn = `# Written by autofs-restore-hook node install; removed by node uninstall.
# CRI-O's default hooks_dir and the directory the node's read-only /usr
# leaves for the hook's JSON.
[crio.runtime]
hooks_dir = [
	"/usr/share/containers/oci/hooks.d",
	"/etc/containers/oci/hooks.d",
]
`

// Layout is where an install puts each file, as host paths; empty: not
// installed.
type Layout struct {
	// ID names the install: an uninstall given another ID (an older pod
	// of the DaemonSet, ending after a newer one installed) leaves it.
	ID         string `json:"id"`
	Binary     string `json:"binary"`
	HookJSON   string `json:"hook_json"`
	Plugin     string `json:"plugin,omitempty"`
	CRIODropIn string `json:"crio_drop_in,omitempty"`
}

// Sources are the files to install.
type Sources struct {
	// Binary is the binary (the running one, /proc/self/exe).
	Binary string
	// Plugin is the CRIU plugin, built for PackageBinary; "" for none.
	Plugin string
}

// plan chooses the layout: the package's where /usr is writable, else /opt
// and /etc with a CRI-O drop-in.
func (r hostRoot) plan() Layout {
	if r.writable(filepath.Dir(PackageBinary)) && r.writable(filepath.Dir(PackageJSON)) {
		l := Layout{Binary: PackageBinary, HookJSON: PackageJSON}
		if r.writable(filepath.Dir(PackagePlugin)) {
			l.Plugin = PackagePlugin
		}
		return l
	}
	return Layout{Binary: OptBinary, HookJSON: EtcJSON, CRIODropIn: CRIODropIn}
}

// Install puts the sources on the node whose root is root, in the order
// that never leaves a hooks.d JSON naming a missing binary: the binary,
// the plugin, the CRI-O drop-in, the JSON; each file is written beside its
// directory and renamed into it. It records the layout, with a new ID, in
// Manifest, and returns it; run again, it replaces the files. Where the
// package is installed (dpkg's list of it, or its JSON without a manifest
// of ours), it installs nothing and returns an empty layout.
func Install(root string, src Sources, logf func(string, ...any)) (Layout, error) {
	r, err := openRoot(root)
	if err != nil {
		return Layout{}, err
	}
	defer r.close()
	unlock, err := r.lock()
	if err != nil {
		return Layout{}, err
	}
	defer unlock()
	if r.exists(dpkgList) || (r.exists(PackageJSON) && !r.exists(Manifest)) {
		logf("the node has autofs-restore-hook already (the package, or an install not of this installer: %s): nothing installed", PackageJSON)
		return Layout{}, nil
	}
	l := r.plan()
	l.ID = strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.Itoa(os.Getpid())
	if src.Plugin == "" {
		l.Plugin = ""
	}
	if l.CRIODropIn != "" && !r.exists("/etc/crio") {
		// No CRI-O here (containerd, say): nothing reads a drop-in.
		logf("no /etc/crio: no CRI-O drop-in; a runtime that reads %s finds the hook", filepath.Dir(l.HookJSON))
		l.CRIODropIn = ""
	}
	// The manifest first: an uninstall after a failure below still finds
	// what was written (a missing file is no error to it).
	m, err := json.Marshal(l)
	if err != nil {
		return l, err
	}
	if err := r.writeFile(Manifest, m, 0o644); err != nil {
		return l, err
	}
	if err := r.copyFile(l.Binary, src.Binary, 0o755); err != nil {
		return l, err
	}
	logf("binary: %s", l.Binary)
	if l.Plugin != "" {
		if err := r.copyFile(l.Plugin, src.Plugin, 0o644); err != nil {
			return l, err
		}
		logf("CRIU plugin: %s", l.Plugin)
	} else if src.Plugin != "" {
		logf("CRIU plugin: not installed (the node's /usr is read-only; CRIU loads plugins from /usr/lib/criu only)")
	}
	if l.CRIODropIn != "" {
		if err := r.writeFile(l.CRIODropIn, []byte(crioDropIn), 0o644); err != nil {
			return l, err
		}
		logf("CRI-O drop-in: %s (hooks_dir: CRI-O's default and %s, in place of a hooks_dir set before it; CRI-O reads it when it starts)", l.CRIODropIn, filepath.Dir(l.HookJSON))
	}
	if err := r.writeFile(l.HookJSON, HookJSON(l.Binary), 0o644); err != nil {
		return l, err
	}
	logf("OCI hook: %s", l.HookJSON)
	return l, nil
}

// Uninstall removes what the install recorded in Manifest: the JSON first
// (a JSON naming a missing binary breaks every container start), and
// nothing else if that fails; then the drop-in, the plugin, the binary
// (kept while another hooks.d JSON names it) and the manifest. Given an
// id, it leaves an install with another one (a newer pod's). Without a
// manifest it removes nothing.
func Uninstall(root, id string, logf func(string, ...any)) error {
	r, err := openRoot(root)
	if err != nil {
		return err
	}
	defer r.close()
	unlock, err := r.lock()
	if err != nil {
		return err
	}
	defer unlock()
	b, err := r.readFile(Manifest, maxJSON)
	if errors.Is(err, unix.ENOENT) {
		logf("nothing to remove: no %s", Manifest)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", Manifest, err)
	}
	var l Layout
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("%s: %w", Manifest, err)
	}
	if id != "" && l.ID != id {
		logf("%s is another install's (%s, not %s): left as it is", Manifest, l.ID, id)
		return nil
	}
	for _, p := range []string{l.HookJSON, l.CRIODropIn, l.Plugin, l.Binary} {
		if p != "" && !ours(p) {
			return fmt.Errorf("%s: %q is not a path of ours: nothing removed", Manifest, p)
		}
	}
	if err := r.remove(l.HookJSON); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w: nothing else removed (the binary stays for it)", l.HookJSON, err)
	}
	logf("removed %s", l.HookJSON)
	var errs []error
	for _, p := range []string{l.CRIODropIn, l.Plugin, l.Binary, Manifest} {
		if p == "" {
			continue
		}
		if p == l.Binary {
			if other := r.jsonNaming(p); other != "" {
				errs = append(errs, fmt.Errorf("%s names %s: the binary stays", other, p))
				continue
			}
		}
		if err := r.remove(p); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			continue
		}
		logf("removed %s", p)
	}
	for _, d := range []string{filepath.Dir(OptBinary), filepath.Dir(Manifest)} {
		r.rmdirIfEmpty(d)
	}
	return errors.Join(errs...)
}

// hooksDirs are the hooks.d directories podman and CRI-O read.
var hooksDirs = []string{"/etc/containers/oci/hooks.d", "/usr/share/containers/oci/hooks.d", "/run/containers/oci/hooks.d"}

// jsonNaming is a hooks.d JSON of the node that names binary (one an
// earlier installer or an operator wrote), or "".
func (r hostRoot) jsonNaming(binary string) string {
	for _, d := range hooksDirs {
		fd, err := r.open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			continue
		}
		f := os.NewFile(uintptr(fd), d)
		names, _ := f.Readdirnames(4096)
		f.Close()
		for _, n := range names {
			if !strings.HasSuffix(n, ".json") {
				continue
			}
			b, err := r.readFile(filepath.Join(d, n), maxJSON)
			var h struct {
				Hook struct {
					Path string `json:"path"`
				} `json:"hook"`
			}
			if err == nil && json.Unmarshal(b, &h) == nil && h.Hook.Path == binary {
				return filepath.Join(d, n)
			}
		}
	}
	return ""
}

// ours tells whether p is one of the paths an install writes: a manifest
// that says otherwise does not make uninstall remove another file.
func ours(p string) bool {
	switch p {
	case PackageBinary, PackageJSON, PackagePlugin, OptBinary, EtcJSON, CRIODropIn, Manifest:
		return true
	}
	return false
}

// HookJSON is the OCI hook's hooks.d configuration naming binary: the
// shipped hooks.d/autofs-restore-hook.json with its path.
func HookJSON(binary string) []byte {
	type hook struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
	}
	b, _ := json.MarshalIndent(struct {
		Version string          `json:"version"`
		Hook    hook            `json:"hook"`
		When    map[string]bool `json:"when"`
		Stages  []string        `json:"stages"`
	}{"1.0.0", hook{binary, []string{"autofs-restore-hook"}}, map[string]bool{"always": true}, []string{"createRuntime"}}, "", "  ")
	return append(b, '\n')
}

// hostRoot is the node's root, open. Every path below it is resolved as
// the node resolves it: a symlink of the node (Fedora CoreOS's /opt, say)
// is followed with the node's / as root (RESOLVE_IN_ROOT), never to the
// installer's own files.
type hostRoot struct{ fd int }

func openRoot(root string) (hostRoot, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return hostRoot{}, fmt.Errorf("the node's root %s: %w", root, err)
	}
	return hostRoot{fd}, nil
}

func (r hostRoot) close() { unix.Close(r.fd) }

// open opens p below the root.
func (r hostRoot) open(p string, flags int, mode uint32) (int, error) {
	rel := strings.TrimPrefix(p, "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(r.fd, rel, &unix.OpenHow{
		Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// dir opens directory d below the root, made (0755) where missing.
func (r hostRoot) dir(d string) (int, error) {
	fd, err := r.open(d, unix.O_PATH|unix.O_DIRECTORY, 0)
	if !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	parent, err := r.dir(filepath.Dir(d))
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	if err := unix.Mkdirat(parent, filepath.Base(d), 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %s: %w", d, err)
	}
	return r.open(d, unix.O_PATH|unix.O_DIRECTORY, 0)
}

// writable tells whether a file can be made in d (made if missing): an
// unnamed one (O_TMPFILE), or, where the file system has none, a named one
// removed at once.
func (r hostRoot) writable(d string) bool {
	fd, err := r.dir(d)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	f, err := unix.Openat(fd, ".", unix.O_WRONLY|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		unix.Close(f)
		return true
	}
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return false
	}
	name := ".autofs-restore-hook-probe-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	f, err = unix.Openat(fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return false
	}
	unix.Close(f)
	unix.Unlinkat(fd, name, 0)
	return true
}

// exists tells whether p is there below the root.
func (r hostRoot) exists(p string) bool {
	fd, err := r.open(p, unix.O_PATH, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// lock takes Lock (made where missing), and returns its release.
func (r hostRoot) lock() (func(), error) {
	d, err := r.dir(filepath.Dir(Lock))
	if err != nil {
		return nil, err
	}
	defer unix.Close(d)
	fd, err := unix.Openat(d, filepath.Base(Lock), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Lock, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", Lock, err)
	}
	return func() { unix.Close(fd) }, nil
}

// rmdirIfEmpty removes directory d below the root if it is empty (its
// lock file aside: Lock stays for the next install).
func (r hostRoot) rmdirIfEmpty(d string) {
	p, err := r.open(filepath.Dir(d), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return
	}
	defer unix.Close(p)
	unix.Unlinkat(p, filepath.Base(d), unix.AT_REMOVEDIR)
}

func (r hostRoot) copyFile(dst, src string, mode uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return r.write(dst, f, mode)
}

func (r hostRoot) writeFile(dst string, b []byte, mode uint32) error {
	return r.write(dst, bytes.NewReader(b), mode)
}

// write makes dst from rd: a file in the directory above dst's, synced,
// renamed into place, so that a file left by a crash is never in dst's
// directory (CRI-O reads every file of its drop-in directory).
func (r hostRoot) write(dst string, rd io.Reader, mode uint32) error {
	d, err := r.dir(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer unix.Close(d)
	up, err := r.dir(filepath.Dir(filepath.Dir(dst)))
	if err != nil {
		return err
	}
	defer unix.Close(up)
	tmp := ".autofs-restore-hook." + filepath.Base(dst) + ".new-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	fd, err := unix.Openat(up, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	f := os.NewFile(uintptr(fd), dst)
	_, err = io.Copy(f, rd)
	if err == nil {
		err = f.Chmod(os.FileMode(mode))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(up, tmp, d, filepath.Base(dst))
	}
	if err == nil {
		// The rename on disk before what comes after it (the JSON after
		// the binary).
		var sd int
		if sd, err = unix.Openat(d, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			err = unix.Fsync(sd)
			unix.Close(sd)
		}
	}
	if err != nil {
		unix.Unlinkat(up, tmp, 0)
		return fmt.Errorf("%s: %w", dst, err)
	}
	if trace != nil {
		trace("made", dst)
	}
	return nil
}

// readFile reads p below the root, at most max bytes.
func (r hostRoot) readFile(p string, max int64) ([]byte, error) {
	fd, err := r.open(p, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("over %d bytes", max)
	}
	return b, err
}

// remove unlinks p below the root (the link itself, not what it names).
func (r hostRoot) remove(p string) error {
	d, err := r.open(filepath.Dir(p), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	if err := unix.Unlinkat(d, filepath.Base(p), 0); err != nil {
		return err
	}
	if trace != nil {
		trace("removed", p)
	}
	return nil
}
