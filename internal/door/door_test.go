package door

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// The test binary is its own child: roles first.
func TestMain(m *testing.M) {
	Register("__door-test-echo", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		var s string
		if err := ReadRequest(&s); err != nil {
			return r.Done(nil, err)
		}
		r.Log("got " + s)
		f, err := os.Open("/dev/null")
		if err != nil {
			return r.Done(nil, err)
		}
		return r.Done(s+"!", nil, f)
	})
	Register("__door-test-sleep", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		r.Log("sleeping")
		time.Sleep(time.Hour)
		return 0
	})
	Register("__door-test-state", func([]string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var sig int
		unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafePtr(&sig)), 0, 0, 0)
		flags, _ := unix.FcntlInt(3, unix.F_GETFD, 0)
		last, _ := LastCap()
		return r.Done(map[string]any{"dumpable": dumpable, "pdeathsig": sig, "fd3_cloexec": flags&unix.FD_CLOEXEC != 0, "caps": Caps(last), "env": os.Environ()}, nil)
	})
	Register("__door-test-lie", func([]string) int {
		r, _ := Begin()
		f, _ := os.Open("/dev/null")
		r.send(Msg{Done: true, Result: []byte(`"x"`), Files: 3}, []*os.File{f})
		return 0
	})
	if code, ok := Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func TestCallPassesFilesBack(t *testing.T) {
	var logs []string
	var res string
	files, err := Call(Spec{Role: "__door-test-echo", Request: "hi", Deadline: time.Now().Add(10 * time.Second), Log: func(s string) { logs = append(logs, s) }}, &res)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(files)
	if res != "hi!" || len(logs) != 1 || logs[0] != "got hi" {
		t.Fatalf("result %q, logs %q", res, logs)
	}
	if len(files) != 1 {
		t.Fatalf("%d files back, want 1", len(files))
	}
	var got, want unix.Stat_t
	unix.Fstat(int(files[0].Fd()), &got)
	unix.Stat("/dev/null", &want)
	if got.Rdev != want.Rdev {
		t.Fatalf("the file back is not /dev/null (rdev %x)", got.Rdev)
	}
	if flags, _ := unix.FcntlInt(files[0].Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("a file passed back is not close-on-exec")
	}
}

// A child that never answers is killed at the deadline and reaped.
func TestCallEndsByTheDeadline(t *testing.T) {
	start := time.Now()
	_, err := Call(Spec{Role: "__door-test-sleep", Deadline: time.Now().Add(500 * time.Millisecond)}, nil)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "no answer within") || !strings.Contains(err.Error(), "last step: sleeping") {
		t.Fatalf("err %v", err)
	}
	if took > 500*time.Millisecond+ExitGrace {
		t.Fatalf("returned after %s", took)
	}
	if left := childrenRunning("__door-test-sleep"); len(left) > 0 {
		t.Fatalf("children left after the call: %v", left)
	}
}

// Every child starts not dumpable, with a parent-death signal, with its
// inherited fds close-on-exec and PATH as its only environment besides
// what Spec.Env names; what Prepare does to the starting thread reaches
// the child and not the caller.
func TestBeginAndPrepare(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "(not root): drops a capability from a bounding set")
	}
	before := Caps(mustLastCap(t))
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var res struct {
		Dumpable  int      `json:"dumpable"`
		Pdeathsig int      `json:"pdeathsig"`
		Cloexec   bool     `json:"fd3_cloexec"`
		Caps      string   `json:"caps"`
		Env       []string `json:"env"`
	}
	last := mustLastCap(t)
	var bnd uint64
	fmt.Sscanf(before, "bnd:%x", &bnd)
	if bnd&(1<<unix.CAP_MKNOD) == 0 {
		testenv.Skip(t, "this machine's bounding set has no CAP_MKNOD to drop (%s)", before)
	}
	want := bnd &^ (1 << unix.CAP_MKNOD)
	_, err = Call(Spec{Role: "__door-test-state", Files: []*os.File{f}, Env: []string{"A=b"}, Deadline: time.Now().Add(10 * time.Second),
		Prepare: func() error { return LimitCaps(want, 0, last) }}, &res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Dumpable != 0 || res.Pdeathsig != int(unix.SIGKILL) || !res.Cloexec {
		t.Errorf("dumpable %d, pdeathsig %d, fd 3 close-on-exec %v; want 0, 9, true", res.Dumpable, res.Pdeathsig, res.Cloexec)
	}
	if strings.Join(res.Env, " ") != "PATH=/usr/sbin:/usr/bin:/sbin:/bin A=b" {
		t.Errorf("environment %q", res.Env)
	}
	if !strings.HasPrefix(res.Caps, "bnd:"+hex16(want)+",") {
		t.Errorf("the child's caps %s: Prepare's bounding set did not reach it", res.Caps)
	}
	if after := Caps(last); after != before {
		t.Errorf("the caller's thread changed: %s, was %s", after, before)
	}
}

// A child that announces more files than it passes gets none accepted.
func TestCallRefusesFilesNotAsAnnounced(t *testing.T) {
	files, err := Call(Spec{Role: "__door-test-lie", Deadline: time.Now().Add(10 * time.Second)}, nil)
	closeAll(files)
	if err == nil || !strings.Contains(err.Error(), "announced 3 files and passed 1") {
		t.Fatalf("err %v, files %d", err, len(files))
	}
}

func TestCallWithoutDeadlineIsRefused(t *testing.T) {
	if _, err := Call(Spec{Role: "__door-test-echo"}, nil); err == nil {
		t.Fatal("a call without a deadline ran")
	}
}

func mustLastCap(t *testing.T) int {
	t.Helper()
	n, err := LastCap()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
