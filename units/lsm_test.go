package units

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppArmorProfile(t *testing.T) {
	for label, want := range map[string]string{
		"unconfined":                    "unconfined",
		"arh-lab-confined (enforce)":    "arh-lab-confined",
		"containers-default (complain)": "containers-default",
		"/usr/sbin/automount (enforce)": "/usr/sbin/automount",
		"a (b) (enforce)":               "a (b)",
	} {
		if got := appArmorProfile(label); got != want {
			t.Errorf("appArmorProfile(%q) = %q, want %q", label, got, want)
		}
	}
}

// An attribute file's label is written back for the exec: text that
// could carry a second command is refused.
func TestReadLSMAttr(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		content, want string
		ok            bool
	}{
		{"unconfined\n", "unconfined", true},
		{"system_u:system_r:container_t:s0:c1,c2\x00", "system_u:system_r:container_t:s0:c1,c2", true},
		{"a (enforce)\nexec b\n", "", false},
		{"a\x00b", "", false},
		{strings.Repeat("x", 5000), "", false},
	} {
		p := filepath.Join(dir, "current")
		if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readLSMAttr(p)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("readLSMAttr(%q) = %q, %v; want %q, ok %v", c.content, got, err, c.want, c.ok)
		}
	}
	if got, err := readLSMAttr(filepath.Join(dir, "missing")); got != "" || err != nil {
		t.Errorf("a missing attribute file: %q, %v; want \"\", nil", got, err)
	}
}
