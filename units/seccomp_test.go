package units

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// envSeccompHolder makes the test binary a process that installs the
// seccomp filters in the JSON file it names, says "ready" and sleeps.
const envSeccompHolder = "ARH_TEST_SECCOMP_HOLDER"

// On the main thread (init runs locked to it): the filters are then those
// of the thread whose tid is the pid, which ptrace reads.
func init() {
	path := os.Getenv(envSeccompHolder)
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	var filters []SeccompFilter
	if err == nil {
		err = json.Unmarshal(b, &filters)
	}
	if err == nil {
		err = installSeccomp(filters)
	}
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("ready\n")
	time.Sleep(10 * time.Minute)
	os.Exit(0)
}

// seccompHolder starts a process under filters and returns it pinned.
func seccompHolder(t *testing.T, filters []SeccompFilter) *proc.Process {
	t.Helper()
	path := t.TempDir() + "/filters.json"
	b, _ := json.Marshal(filters)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = []string{envSeccompHolder + "=" + path}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("the holder did not install its filters: %q", line)
	}
	p, err := proc.OpenProcess(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// The filters of a process are read back as they were installed (order,
// programs, the log flag), and installing what was read gives another
// process the very same filters: what a respawned daemon gets.
func TestSeccompFiltersCopied(t *testing.T) {
	testenv.RequireRoot(t, "ptrace and PTRACE_SECCOMP_GET_FILTER need CAP_SYS_ADMIN")
	// Filter 1: getppid fails with EPERM. Filter 2 (logged): allow all.
	getppid := SeccompFilter{Insns: [][4]uint32{
		{unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, 0, 0, 0}, // seccomp_data.nr
		{unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, 0, 1, unix.SYS_GETPPID},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW},
	}}
	allow := SeccompFilter{Insns: [][4]uint32{{unix.BPF_RET | unix.BPF_K, 0, 0, unix.SECCOMP_RET_ALLOW}}, Log: true}
	want := []SeccompFilter{getppid, allow}
	a := seccompHolder(t, want)
	st, err := proc.ReadStatus(a.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if st["Seccomp"] != "2" || st["Seccomp_filters"] != "2" {
		t.Fatalf("the holder: Seccomp %s, Seccomp_filters %s; want 2, 2", st["Seccomp"], st["Seccomp_filters"])
	}
	h, err := readHeld(a, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := h.Filters
	if !h.SecurebitsRead || h.Securebits != 0 {
		t.Errorf("securebits of the holder: %#x (read: %v, %s); want 0, read", h.Securebits, h.SecurebitsRead, h.SecurebitsWhy)
	}
	same := func(x, y []SeccompFilter) bool {
		return slices.EqualFunc(x, y, func(a, b SeccompFilter) bool { return a.Log == b.Log && slices.Equal(a.Insns, b.Insns) })
	}
	if !same(got, want) {
		t.Fatalf("read %+v, installed %+v", got, want)
	}
	if err := seccompReproducible(got, 2); err != nil {
		t.Fatal(err)
	}
	if a.Check() != nil {
		t.Fatal("the holder is gone after its filters were read")
	}
	b := seccompHolder(t, got)
	hb, err := readHeld(b, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if again := hb.Filters; !same(again, want) {
		t.Fatalf("the copy has %+v, want %+v", hb.Filters, want)
	}
}
