package testenv

// Stand-ins for a container's processes: an init in namespaces of its own,
// and waiting for a child.

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// InOwnPidNamespace starts args in pid and mount namespaces of their own
// (unshare -p -m --fork --mount-proc), a stand-in for a container's init
// that needs no autofs, kills them when the test ends, and returns the
// host pid of their init (pid 1 in that namespace).
func InOwnPidNamespace(t testing.TB, args ...string) int {
	t.Helper()
	cmd := exec.Command("unshare", append([]string{"-p", "-m", "--fork", "--mount-proc"}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return WaitChild(t, cmd.Process.Pid)
}

// WaitChild waits (10 s, scaled) until pid has a child and returns it.
func WaitChild(t testing.TB, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(Scale(10 * time.Second)); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	t.Fatalf("pid %d started no child within %v", pid, Scale(10*time.Second))
	return 0
}

// ChildrenRunning lists this process's children (zombies included) whose
// command line holds arg: the hook's children that a test checks are
// gone. The one scan of /proc for them in the unit tests.
func ChildrenRunning(arg string) []int {
	ents, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b)[i+1:])
		if len(f) < 2 || f[1] != self {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(cmd), arg) {
			out = append(out, pid)
		}
	}
	return out
}
