package units

import (
	"os"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// The record of a process (this test's own) leads back to files with the
// very identities it names; a record whose binary, working directory or
// namespace no process has is refused, never approximated.
func TestFilesLikePending(t *testing.T) {
	testenv.RequireRoot(t, "reads /proc/PID/ns of other processes")
	self := os.Getpid()
	info, err := CaptureDaemon(self)
	if err != nil {
		t.Fatal(err)
	}
	files, err := openDaemonFiles(self)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(files)
	p, err := newPending(self, info, nil, files)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := mounts.OpenProcess(self)
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	got, err := filesLike(proc, p)
	if err != nil {
		t.Fatalf("files like our own: %v", err)
	}
	for i, f := range got {
		a, _ := fileID(f)
		b, _ := fileID(files[i])
		if a != b {
			t.Errorf("%s: %+v, want %+v", daemonFileNames[i], a, b)
		}
	}
	closeAll(got)

	tests := []struct {
		name string
		mod  func(p *Pending)
		want string
	}{
		{"binary replaced", func(p *Pending) { p.Exe.Ino++ }, "no process of the container"},
		{"working directory replaced", func(p *Pending) { p.Cwd.Ino++ }, "no process of the container"},
		{"namespace gone", func(p *Pending) { p.NS["net"]++ }, "no process of the container"},
		{"binary removed", func(p *Pending) {
			d := *p.Daemon
			d.Exe = "/nonexistent/automount"
			p.Daemon = &d
		}, "/nonexistent/automount in the container"},
	}
	for _, tt := range tests {
		q := *p
		q.NS = map[string]uint64{}
		for k, v := range p.NS {
			q.NS[k] = v
		}
		tt.mod(&q)
		files, err := filesLike(proc, &q)
		closeAll(files)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.name, err, tt.want)
		}
	}
}
