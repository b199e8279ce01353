package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

func TestDaemonReproducible(t *testing.T) {
	full := uint64(0x1ffffffffff)
	root := func() *Daemon {
		unlimited := make([][2]uint64, len(limitNames))
		for i := range unlimited {
			unlimited[i] = [2]uint64{unix.RLIM_INFINITY, unix.RLIM_INFINITY}
		}
		return &Daemon{Argv: []string{"/usr/sbin/automount", "-f"}, UID: []uint32{0, 0, 0, 0}, GID: []uint32{0, 0, 0, 0}, CapPrm: full, CapEff: full, CapBnd: full,
			Rlimits: unlimited, SeccompFilterCount: -1}
	}
	denyPtrace := []SeccompFilter{{Insns: [][4]uint32{
		{unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, 0, 0, 0},
		{unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, 0, 1, unix.SYS_PTRACE},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW},
	}}}
	allow := []SeccompFilter{{Insns: [][4]uint32{{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW}}}}
	notify := []SeccompFilter{{Insns: [][4]uint32{{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_USER_NOTIF}}}}
	// A filter that makes every syscall "succeed" without running it:
	// installed before the new daemon's setuid and dup3, it would keep the
	// hook's root and fds.
	fakeSuccess := []SeccompFilter{{Insns: [][4]uint32{{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ERRNO}}}}
	eperm := []SeccompFilter{{Insns: [][4]uint32{{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)}}}}
	computed := []SeccompFilter{{Insns: [][4]uint32{{unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, 0, 0, 0}, {unix.BPF_RET | unix.BPF_A, 0, 0, 0}}}}
	tests := []struct {
		name string
		mod  func(d *Daemon)
		want string // "" = reproducible
	}{
		{"root with all caps", func(d *Daemon) {}, ""},
		{"root, reduced bounding set", func(d *Daemon) { d.CapBnd, d.CapPrm, d.CapEff = 0xff, 0xff, 0xff }, ""},
		{"no_new_privs", func(d *Daemon) { d.NoNewPriv = true }, ""},
		{"seccomp strict", func(d *Daemon) { d.Seccomp = 1 }, ""},
		{"seccomp filters not read", func(d *Daemon) { d.Seccomp = 2 }, "seccomp filters that were not read"},
		{"seccomp filters read", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, allow }, ""},
		{"seccomp filters, fewer read than the kernel counts", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 2, allow }, "2 seccomp filters and 1 were read"},
		{"seccomp user notification", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, notify }, "supervisor"},
		{"seccomp errno 0 (fake success)", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, fakeSuccess }, "errno 0"},
		{"seccomp return computed at run time", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, computed }, "computed at run time"},
		{"seccomp EPERM", func(d *Daemon) { d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, eperm }, ""},
		{"non-root under a fake-success filter", func(d *Daemon) {
			d.UID, d.GID = []uint32{1000, 1000, 1000, 1000}, []uint32{1000, 1000, 1000, 1000}
			d.CapPrm, d.CapEff, d.NoNewPriv = 0, 0, true
			d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, fakeSuccess
		}, "errno 0"},
		{"seccomp filters, nothing could install them", func(d *Daemon) {
			d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, allow
			d.CapBnd, d.CapPrm, d.CapEff = 0xff, 0xff, 0xff
		}, "no_new_privs or CAP_SYS_ADMIN"},
		{"limits not read", func(d *Daemon) { d.Rlimits = nil }, "resource limits were not read"},
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
		{"address-space limit", func(d *Daemon) { d.Rlimits[unix.RLIMIT_AS] = [2]uint64{512 << 20, 512 << 20} }, ""},
		{"address-space limit, filters allow ptrace", func(d *Daemon) {
			d.Rlimits[unix.RLIMIT_AS] = [2]uint64{512 << 20, 512 << 20}
			d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, allow
		}, ""},
		{"data limit, filters deny ptrace", func(d *Daemon) {
			d.Rlimits[unix.RLIMIT_DATA] = [2]uint64{unix.RLIM_INFINITY, 1 << 30}
			d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, denyPtrace
		}, "ptrace(PTRACE_TRACEME)"},
		{"no late limit, filters deny ptrace", func(d *Daemon) {
			d.Seccomp, d.SeccompFilterCount, d.SeccompFilters = 2, 1, denyPtrace
		}, ""},
		{"securebits", func(d *Daemon) { b := uint32(1<<2 | 1<<5 | 1<<6); d.Securebits = &b }, ""},
		{"securebits, keep_caps only (an exec clears it)", func(d *Daemon) {
			b := uint32(1 << 4)
			d.Securebits, d.CapBnd, d.CapPrm, d.CapEff = &b, 0xff, 0xff, 0xff
		}, ""},
		{"securebits noroot", func(d *Daemon) { b := uint32(1 << 0); d.Securebits = &b }, "SECBIT_NOROOT"},
		{"securebits without CAP_SETPCAP to set them", func(d *Daemon) {
			b := uint32(1 << 2)
			d.Securebits, d.CapBnd, d.CapPrm, d.CapEff = &b, 0xff, 0xff, 0xff // CAP_SETPCAP is 8
		}, "CAP_SETPCAP"},
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

// The daemon's path is resolved inside the container's root: an absolute
// symlink there does not lead to the host's file of the same name.
func TestSameBinaryStaysInRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	// In the "container", automount is a link to an absolute path that,
	// on the host, is a program the "daemon" runs: a copy of /bin/true in
	// another directory of the same filesystem as the root, so that it can
	// be hard-linked into the root below (/bin and the test's temporary
	// directory may be different filesystems).
	host := filepath.Join(t.TempDir(), "daemon")
	if b, err := os.ReadFile("/bin/true"); err != nil || os.WriteFile(host, b, 0o755) != nil {
		t.Fatalf("copy /bin/true to %s: %v", host, err)
	}
	if err := os.Symlink(host, filepath.Join(root, "usr/sbin/automount")); err != nil {
		t.Fatal(err)
	}
	rootF, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rootF.Close()
	exe, err := os.OpenFile(host, unix.O_PATH, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	id, err := fileID(exe)
	if err != nil {
		t.Fatal(err)
	}
	dev, ino := id.Dev, id.Ino
	rootFD := int(rootF.Fd())
	if err := sameBinary(rootFD, "/usr/sbin/automount", dev, ino); err == nil || !strings.Contains(err.Error(), "gone from the container") {
		t.Fatalf("a symlink out of the root was followed: err = %v", err)
	}
	// The same binary inside the root is accepted; another one is not.
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(host)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(host, filepath.Join(root, host)); err != nil {
		t.Fatalf("hard-link %s into %s: %v", host, root, err)
	}
	if err := sameBinary(rootFD, "/usr/sbin/automount", dev, ino); err != nil {
		t.Fatalf("the daemon's own binary, through a link inside the root: %v", err)
	}
	other, _ := os.OpenFile("/bin/true", unix.O_PATH, 0)
	defer other.Close()
	oid, err := fileID(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameBinary(rootFD, "/usr/sbin/automount", oid.Dev, oid.Ino); err == nil || !strings.Contains(err.Error(), "no longer the binary") {
		t.Fatalf("another binary: err = %v", err)
	}
}

// A pid outside the container's pid namespace (given by mistake, or a
// daemon's pid reused by a host process) is refused before anything is
// done to it: the process lives on.
func TestRespawnRefusesProcessOutsideContainer(t *testing.T) {
	testenv.RequireRoot(t, "a stand-in container in its own pid namespace")
	init := testenv.InOwnPidNamespace(t, "sleep", "300")
	host := exec.Command("sleep", "300")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Process.Kill(); host.Wait() })
	c, err := proc.OpenProcess(init)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := proc.ReadStat(host.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_, err = RespawnAutomount(c, proc.Ref{Pid: host.Process.Pid, StartTime: st.StartTime}, nil, RespawnOptions{Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "not in the container's pid namespace") {
		t.Fatalf("respawn of a host process: err = %v, want a refusal", err)
	}
	if err := unix.Kill(host.Process.Pid, 0); err != nil {
		t.Fatalf("the host process was touched: %v", err)
	}
	if st, err := proc.ReadStat(host.Process.Pid); err != nil || st.Exited() {
		t.Fatalf("the host process is gone: %v", err)
	}
}

// The daemon was chosen by pid and start time; by the time of the respawn
// the pid names another process of the container (the daemon exited while
// the container's systemd was answered, its pid reused). That process is
// refused, never killed.
func TestRespawnRefusesReusedPid(t *testing.T) {
	testenv.RequireRoot(t, "a stand-in container in its own pid namespace")
	init := testenv.InOwnPidNamespace(t, "sh", "-c", "sleep 300 & wait")
	other := testenv.WaitChild(t, init)
	c, err := proc.OpenProcess(init)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := proc.ReadStat(other)
	if err != nil {
		t.Fatal(err)
	}
	_, err = RespawnAutomount(c, proc.Ref{Pid: other, StartTime: st.StartTime - 1}, nil, RespawnOptions{Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "pid reused") {
		t.Fatalf("respawn of a reused pid: err = %v, want a refusal", err)
	}
	if st, err := proc.ReadStat(other); err != nil || st.Exited() {
		t.Fatalf("the process that reused the pid is gone: %v", err)
	}
}
