package units

import "testing"

func TestClassify(t *testing.T) {
	tests := []struct {
		exe, comm string
		nsPid     int
		want      Kind
	}{
		{"systemd", "systemd", 1, Systemd},
		{"", "systemd", 1, Systemd},         // exe unreadable
		{"systemd", "systemd", 57, Unknown}, // a user manager: not the init
		{"automount", "automount", 12, Automount},
		{"automount", "automount", 1, Automount}, // automount as the container's init
		{"sh", "sh", 1, Unknown},
		{"mydaemon", "automount-x", 3, Unknown},
	}
	for _, tt := range tests {
		if got := classify(tt.exe, tt.comm, tt.nsPid); got != tt.want {
			t.Errorf("classify(%q, %q, %d) = %s, want %s", tt.exe, tt.comm, tt.nsPid, got, tt.want)
		}
	}
	if got := Classify(0, 0, ""); got != None {
		t.Errorf("Classify(0) = %s, want none", got)
	}
}
