// Package nodeinstall holds the node installer that the Kubernetes
// DaemonSet runs (`autofs-restore-hook node install`): it puts the binary,
// the OCI hook's hooks.d JSON and the CRIU plugin on a node's root where
// CRI-O and CRIU read them, on writable paths where the node's /usr is
// read-only (image-based node OSes), records what it wrote, and takes
// exactly that away again (`node uninstall`).
package nodeinstall

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
	// Manifest records what an install wrote, for uninstall.
	Manifest = "/var/lib/autofs-restore-hook/node-install.json"
)

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

// Plan chooses the layout for the node whose root is root: the package's
// where /usr is writable, else /opt and /etc with a CRI-O drop-in.
func Plan(root string) Layout {
	if writable(root, filepath.Dir(PackageBinary)) && writable(root, filepath.Dir(PackageJSON)) {
		l := Layout{Binary: PackageBinary, HookJSON: PackageJSON}
		if writable(root, filepath.Dir(PackagePlugin)) {
			l.Plugin = PackagePlugin
		}
		return l
	}
	return Layout{Binary: OptBinary, HookJSON: EtcJSON, CRIODropIn: CRIODropIn}
}

// writable tells whether a file can be made in dir below root (made if
// missing), by making one.
func writable(root, dir string) bool {
	d := filepath.Join(root, dir)
	if os.MkdirAll(d, 0o755) != nil {
		return false
	}
	f, err := os.CreateTemp(d, ".autofs-restore-hook-probe-*")
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

// Install puts the sources on the node whose root is root, in the order
// that never leaves a hooks.d JSON naming a missing binary: the binary,
// the plugin, the CRI-O drop-in, the JSON; each file is written beside its
// place and renamed into it. It records the layout in Manifest, and
// returns it. Run again, it replaces the files.
func Install(root string, src Sources, logf func(string, ...any)) (Layout, error) {
	l := Plan(root)
	if src.Plugin == "" {
		l.Plugin = ""
	}
	if err := copyFile(root, l.Binary, src.Binary, 0o755); err != nil {
		return l, err
	}
	logf("binary: %s", l.Binary)
	if l.Plugin != "" {
		if err := copyFile(root, l.Plugin, src.Plugin, 0o644); err != nil {
			return l, err
		}
		logf("CRIU plugin: %s", l.Plugin)
	} else if src.Plugin != "" {
		logf("CRIU plugin: not installed (the node's /usr is read-only; CRIU loads plugins from /usr/lib/criu only)")
	}
	if l.CRIODropIn != "" {
		if err := writeFile(root, l.CRIODropIn, []byte(crioDropIn), 0o644); err != nil {
			return l, err
		}
		logf("CRI-O drop-in: %s (hooks_dir: CRI-O's default and %s; CRI-O reads it when it starts)", l.CRIODropIn, filepath.Dir(l.HookJSON))
	}
	// The manifest before the JSON: an uninstall after a failure here
	// still finds what was written.
	m, err := json.Marshal(l)
	if err != nil {
		return l, err
	}
	if err := writeFile(root, Manifest, m, 0o644); err != nil {
		return l, err
	}
	if err := writeFile(root, l.HookJSON, HookJSON(l.Binary), 0o644); err != nil {
		return l, err
	}
	logf("OCI hook: %s", l.HookJSON)
	return l, nil
}

// Uninstall removes what the install recorded in Manifest, the JSON first
// (a JSON naming a missing binary breaks every container start), then the
// drop-in, the plugin, the binary and the manifest. Without a manifest it
// removes nothing.
func Uninstall(root string, logf func(string, ...any)) error {
	b, err := os.ReadFile(filepath.Join(root, Manifest))
	if errors.Is(err, os.ErrNotExist) {
		logf("nothing to remove: no %s", Manifest)
		return nil
	}
	if err != nil {
		return err
	}
	var l Layout
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("%s: %w", Manifest, err)
	}
	var errs []error
	for _, p := range []string{l.HookJSON, l.CRIODropIn, l.Plugin, l.Binary, Manifest} {
		if !ours(p) {
			if p != "" {
				errs = append(errs, fmt.Errorf("%s: %q is not a path of ours: left alone", Manifest, p))
			}
			continue
		}
		if err := os.Remove(filepath.Join(root, p)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		logf("removed %s", p)
	}
	return errors.Join(errs...)
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

func copyFile(root, dst, src string, mode os.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return write(root, dst, f, mode)
}

func writeFile(root, dst string, b []byte, mode os.FileMode) error {
	return write(root, dst, strings.NewReader(string(b)), mode)
}

// write makes dst below root from r: a file beside it, synced, renamed.
func write(root, dst string, r io.Reader, mode os.FileMode) error {
	p := filepath.Join(root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".new-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return fmt.Errorf("%s: %w", dst, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
