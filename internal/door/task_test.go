package door

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type namedReq struct {
	Want []string `json:"want"`
}

type namedRes struct {
	// Inodes of the files handed, by name; Env is the child's
	// EnvFiles once it took them.
	Inodes map[string]uint64 `json:"inodes"`
	Env    string            `json:"env"`
}

// namedFiles is a task that reports the inode of each file it was handed
// under a name it was asked for, and passes the first one back.
var namedFiles = NewTask("__door-test-named", func(c *Child, req namedReq) (namedRes, error) {
	res := namedRes{Inodes: map[string]uint64{}, Env: os.Getenv(EnvFiles)}
	files, err := c.Take(req.Want...)
	if err != nil {
		return res, err
	}
	for name, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return res, err
		}
		res.Inodes[name] = st.Ino
	}
	c.Log().Warn("taken")
	fd, err := unix.Open("/", unix.O_PATH|unix.O_CLOEXEC, 0) // a kind a parent keeps
	if err != nil {
		return res, err
	}
	c.PassBack(os.NewFile(uintptr(fd), "/"))
	return res, nil
})

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A typed task gets each file under the name the caller handed it,
// whatever their order, its request and result typed, its warning as a
// warning.
func TestTaskFilesByName(t *testing.T) {
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	null, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	var warned []string
	res, back, err := namedFiles.Call(Spec{
		// "z" sorts after "a": the child must not care.
		Files:    Files{"z-dir": dir, "a-null": null},
		Deadline: time.Now().Add(10 * time.Second),
		Log: func(l Level, s string, _ Fields) {
			if l == LevelWarn {
				warned = append(warned, s)
			}
		},
	}, namedReq{Want: []string{"z-dir", "a-null"}})
	if err != nil {
		t.Fatal(err)
	}
	closeAll(back)
	if res.Inodes["z-dir"] != inode(t, dir) || res.Inodes["a-null"] != inode(t, null) {
		t.Errorf("the child got %v, want z-dir %d and a-null %d", res.Inodes, inode(t, dir), inode(t, null))
	}
	if res.Env != "" {
		t.Errorf("the child's environment still names its files: %q", res.Env)
	}
	if len(back) != 1 || strings.Join(warned, ",") != "taken" {
		t.Errorf("%d files back, warnings %q; want 1 and \"taken\"", len(back), warned)
	}
	// A name not handed is an error that names it, not another file.
	_, _, err = namedFiles.Call(Spec{Files: Files{"a-null": null}, Deadline: time.Now().Add(10 * time.Second)}, namedReq{Want: []string{"a-null", "cwd"}})
	if err == nil || !strings.Contains(err.Error(), "cwd") {
		t.Errorf("a task asking for a file it was not handed: %v", err)
	}
	// Names the door cannot pass are refused before a child starts.
	for _, bad := range []Files{{"": null}, {"a,b": null}, {"a=b": null}, {"nil": nil}} {
		if _, _, err := namedFiles.Call(Spec{Files: bad, Deadline: time.Now().Add(10 * time.Second)}, namedReq{}); err == nil {
			t.Errorf("files %v: no error", bad)
		}
	}
}

// A Spec cannot set the door's own variables: the names of the files
// handed, the entry into a container.
func TestSpecEnvCannotSetTheDoorsVariables(t *testing.T) {
	for _, kv := range []string{EnvFiles + "=x=3", EnvEnter + "=3,4,5", EnvEnterTimeNS + "=3"} {
		if _, _, err := namedFiles.Call(Spec{Env: []string{kv}, Deadline: time.Now().Add(10 * time.Second)}, namedReq{}); err == nil {
			t.Errorf("Spec.Env %q: no error", kv)
		}
	}
}

// A poll of the protocol socket that a signal interrupts is asked again.
// A child once reported "the parent is gone" to a parent that was reading
// its answer (CI, the catatonic worker of 1,000 mounts): the socket was
// not hung up, so the poll itself had failed, most likely with EINTR,
// which the previous code took for a parent that is gone.
func TestParentGoneAsksAgainAfterEINTR(t *testing.T) {
	calls := 0
	poll := func(fds []unix.PollFd, _ int) (int, error) {
		calls++
		if calls < 3 {
			return -1, unix.EINTR
		}
		return 0, nil
	}
	if err := parentGone(poll); err != nil || calls != 3 {
		t.Errorf("after two EINTR: %v, %d polls; want nil after 3", err, calls)
	}
	hup := func(fds []unix.PollFd, _ int) (int, error) { fds[0].Revents = unix.POLLHUP; return 1, nil }
	if err := parentGone(hup); err == nil || !strings.Contains(err.Error(), "the parent is gone") {
		t.Errorf("a hung-up socket: %v", err)
	}
	bad := func([]unix.PollFd, int) (int, error) { return -1, unix.EBADF }
	if err := parentGone(bad); err == nil {
		t.Error("a poll that fails: no error")
	}
}
