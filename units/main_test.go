package units

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"golang.org/x/sys/unix"
)

// TestMain runs the children that tests start from the test binary
// itself: a role of ours, or a process with its command line in a file.
func TestMain(m *testing.M) {
	if p := os.Getenv(envMapArgv); p != "" {
		mapArgv(p)
	}
	if code, ok := door.Run(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// envMapArgv makes the test binary a process whose command line lives in
// a file of the path it names (see mapArgv).
const envMapArgv = "ARH_TEST_MAP_ARGV"

// mapArgv maps the file path into memory and makes that mapping this
// process's command line (prctl PR_SET_MM_ARG_START/END: what
// /proc/PID/cmdline is read from), says "mapped" and sleeps: a read of the
// command line would page it in from the file.
func mapArgv(path string) {
	fail := func(what string, err error) {
		fmt.Println("error:", what, err)
		os.Exit(1)
	}
	f, err := os.Open(path)
	if err != nil {
		fail("open", err)
	}
	page := os.Getpagesize()
	addr, _, e := unix.Syscall6(unix.SYS_MMAP, 0, uintptr(page), unix.PROT_READ, unix.MAP_SHARED, f.Fd(), 0)
	if e != 0 {
		fail("mmap", e)
	}
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_ARG_START, addr, 0, 0); err != nil {
		fail("PR_SET_MM_ARG_START", err)
	}
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_ARG_END, addr+64, 0, 0); err != nil {
		fail("PR_SET_MM_ARG_END", err)
	}
	fmt.Println("mapped")
	time.Sleep(10 * time.Minute)
	os.Exit(0)
}
