package hook

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"golang.org/x/sys/unix"
)

// envTrace turns the re-executed test binary into a tracer of the pid it
// names (see maybeTrace): it seizes it and holds it until stdin closes.
const envTrace = "ARH_TEST_TRACE"

func maybeTrace() {
	pid, err := strconv.Atoi(os.Getenv(envTrace))
	if err != nil {
		return
	}
	if err := unix.PtraceSeize(pid); err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("traced\n")
	b := make([]byte, 1)
	os.Stdin.Read(b)
	os.Exit(0)
}

// traceAs traces pid from a copy of the test binary called name, until
// the test ends.
func traceAs(t *testing.T, name string, pid int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = []string{envTrace + "=" + strconv.Itoa(pid)}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "traced" {
		t.Fatalf("%s could not trace %d: %s", name, pid, line)
	}
}

// Only CRIU's hold on the tasks is evidence of a restore: a container's
// init that an operator traces (strace, gdb) is not restored, and its
// running-state hook call changes nothing.
func TestTracerEvidenceIsCRIUOnly(t *testing.T) {
	testenv.RequireRoot(t, "a stand-in container in its own pid namespace, and ptrace")
	for _, tc := range []struct {
		tracer string
		want   bool
	}{{"strace", false}, {"gdb", false}, {"criu", true}} {
		t.Run(tc.tracer, func(t *testing.T) {
			init := testenv.InOwnPidNamespace(t, "sleep", "300")
			traceAs(t, tc.tracer, init)
			ev, err := evidenceOf(init)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Traced != tc.want || ev.Restored() != tc.want {
				t.Fatalf("traced by %s: evidence %+v, want traced=%v", tc.tracer, ev, tc.want)
			}
		})
	}
}

func TestLoadedProgram(t *testing.T) {
	for _, tc := range []struct {
		cmdline []string
		want    string
	}{
		{[]string{"/lib64/ld-linux-x86-64.so.2", "--library-path", "/d/usr/lib", "/d/usr/sbin/criu", "swrk", "3"}, "criu"},
		{[]string{"ld.so", "--inhibit-cache", "--argv0", "criu", "/usr/bin/strace", "-p", "1"}, "strace"},
		{[]string{"ld.so", "--list"}, ""},
		{[]string{"ld.so"}, ""},
	} {
		if got := loadedProgram(tc.cmdline); got != tc.want {
			t.Errorf("loadedProgram(%q) = %q, want %q", tc.cmdline, got, tc.want)
		}
	}
}
