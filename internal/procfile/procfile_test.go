package procfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadBound(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for _, n := range []int{0, 100, 4096} {
		if err := os.WriteFile(p, []byte(strings.Repeat("x", n)), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := Read(p, 4096); err != nil || len(b) != n {
			t.Errorf("%d bytes under a bound of 4 KiB: %d, %v", n, len(b), err)
		}
	}
	os.WriteFile(p, []byte(strings.Repeat("x", 4097)), 0o600)
	_, err := Read(p, 4096)
	if !errors.Is(err, ErrTooLarge) || err.Error() != p+" is larger than 4 KiB: refused" {
		t.Errorf("4097 bytes under a bound of 4 KiB: %v", err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none"), 10); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

func TestReadProcSelf(t *testing.T) {
	for _, f := range []struct {
		name  string
		limit int
	}{{"stat", MaxStat}, {"status", MaxStatus}, {"cmdline", MaxCmdline}, {"environ", MaxEnviron}, {"cgroup", MaxCgroup}, {"limits", MaxSmall}, {"oom_score_adj", MaxSmall}} {
		if b, err := Read("/proc/self/"+f.name, f.limit); err != nil || len(b) == 0 {
			t.Errorf("/proc/self/%s: %d bytes, %v", f.name, len(b), err)
		}
	}
}

func TestHead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t7\ntfd: 1 events: 19\n"), 0o600)
	for n, want := range map[int]string{
		1000: "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t7\ntfd: 1 events: 19\n",
		30:   "pos:\t0\nflags:\t02\nmnt_id:\t15\n",
		3:    "",
	} {
		if b, err := Head(p, n); err != nil || string(b) != want {
			t.Errorf("Head(%d) = %q, %v, want %q", n, b, err, want)
		}
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int]string{256 << 10: "256 KiB", 16 << 20: "16 MiB", 100: "100 bytes", 1500: "1500 bytes"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}
