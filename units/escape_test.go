package units

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

var escapeCases = []struct{ path, want string }{
	{"/", "-.automount"},
	{"/proc/sys/fs/binfmt_misc", "proc-sys-fs-binfmt_misc.automount"},
	{"/home/", "home.automount"},
	{"//srv//a/", "srv-a.automount"},
	{"/srv/my data", `srv-my\x20data.automount`},
	{"/srv/a-b", `srv-a\x2db.automount`},
	{"/.hidden/x", `\x2ehidden-x.automount`},
	{"/mnt/ünï", `mnt-\xc3\xbcn\xc3\xaf.automount`},
	{"/srv/a.b/c:d_e", "srv-a.b-c:d_e.automount"},
	{"/srv/tab\there", `srv-tab\x09here.automount`},
}

func TestPathUnitName(t *testing.T) {
	for _, tt := range escapeCases {
		if got := PathUnitName(tt.path, "automount"); got != tt.want {
			t.Errorf("PathUnitName(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

// TestPathUnitNameMatchesSystemd checks every case against the real
// systemd-escape, so the table cannot drift from systemd.
func TestPathUnitNameMatchesSystemd(t *testing.T) {
	bin, err := exec.LookPath("systemd-escape")
	if err != nil {
		testenv.Skip(t, "systemd-escape not installed (package systemd); the table above still runs")
	}
	for _, tt := range escapeCases {
		out, err := exec.Command(bin, "--path", "--suffix=automount", tt.path).Output()
		if err != nil {
			t.Fatalf("systemd-escape %q: %v", tt.path, err)
		}
		want := strings.TrimSuffix(string(out), "\n")
		if got := PathUnitName(tt.path, "automount"); got != want {
			t.Errorf("PathUnitName(%q) = %q, systemd-escape says %q", tt.path, got, want)
		}
	}
}
