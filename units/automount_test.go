package units

import (
	"strings"
	"testing"
)

func TestDaemonReproducible(t *testing.T) {
	full := uint64(0x1ffffffffff)
	root := func() *Daemon {
		return &Daemon{Argv: []string{"/usr/sbin/automount", "-f"}, UID: []uint32{0, 0, 0, 0}, GID: []uint32{0, 0, 0, 0}, CapPrm: full, CapEff: full, CapBnd: full}
	}
	tests := []struct {
		name string
		mod  func(d *Daemon)
		want string // "" = reproducible
	}{
		{"root with all caps", func(d *Daemon) {}, ""},
		{"root, reduced bounding set", func(d *Daemon) { d.CapBnd, d.CapPrm, d.CapEff = 0xff, 0xff, 0xff }, ""},
		{"no_new_privs", func(d *Daemon) { d.NoNewPriv = true }, ""},
		{"seccomp strict", func(d *Daemon) { d.Seccomp = 1 }, ""},
		{"seccomp filter", func(d *Daemon) { d.Seccomp = 2 }, "seccomp filter"},
		{"root, caps dropped after exec", func(d *Daemon) { d.CapPrm = 0x1 }, "not what exec gives root"},
		{"ambient caps", func(d *Daemon) { d.CapAmb = 0x1 }, "ambient"},
		{"setuid leftovers", func(d *Daemon) { d.UID = []uint32{1000, 0, 0, 0} }, "mixed"},
		{"user with caps", func(d *Daemon) {
			d.UID, d.GID = []uint32{1000, 1000, 1000, 1000}, []uint32{1000, 1000, 1000, 1000}
		}, "capabilities"},
		{"user without caps", func(d *Daemon) {
			d.UID, d.GID = []uint32{1000, 1000, 1000, 1000}, []uint32{1000, 1000, 1000, 1000}
			d.CapPrm, d.CapEff = 0, 0
		}, ""},
		{"empty argv", func(d *Daemon) { d.Argv = nil }, "command line is empty"},
	}
	for _, tt := range tests {
		d := root()
		tt.mod(d)
		err := d.Reproducible()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}
