package units

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/autofstest"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// TestMain runs the children that tests start from the test binary
// itself: a role of ours, or a process with its command line in a file.
func TestMain(m *testing.M) {
	autofstest.MaybeRunMaster()
	if p := os.Getenv(envMapArgv); p != "" {
		mapArgv(p)
	}
	if os.Getenv(envHugeEnviron) != "" {
		hugeEnviron()
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

// envHugeEnviron makes the test binary a process whose environment is a
// mapping of hugeEnvironSize bytes (see hugeEnviron).
const envHugeEnviron = "ARH_TEST_HUGE_ENVIRON"

// hugeEnvironSize is the size of hugeEnviron's environment: 1 GiB.
const hugeEnvironSize = 1 << 30

// hugeEnviron maps hugeEnvironSize bytes of anonymous memory, reserving
// none of it, writes a few pages of it, and makes that mapping this
// process's environment (what /proc/PID/environ is read from, NULs
// included), says "mapped" and sleeps. The pages not written read as
// zeros: a read of the environment copies all of them.
//
// It uses prctl PR_SET_MM_MAP, which asks for no capability (only
// PR_SET_MM_ENV_START and the other single fields ask for
// CAP_SYS_RESOURCE, which a container, and the sandbox these tests may
// run in, lacks): what any process of a container can do.
func hugeEnviron() {
	fail := func(what string, err error) {
		fmt.Println("error:", what, err)
		os.Exit(1)
	}
	mem, err := unix.Mmap(-1, 0, hugeEnvironSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		fail("mmap", err)
	}
	for i := range 4 * os.Getpagesize() {
		mem[i] = 'A'
	}
	m, err := currentMMMap()
	if err != nil {
		fail("read /proc/self/stat", err)
	}
	m.EnvStart = uint64(uintptr(unsafe.Pointer(&mem[0])))
	m.EnvEnd = m.EnvStart + hugeEnvironSize
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP, uintptr(unsafe.Pointer(&m)), unsafe.Sizeof(m), 0); err != nil {
		fail("PR_SET_MM_MAP", err)
	}
	fmt.Println("mapped")
	time.Sleep(10 * time.Minute)
	os.Exit(0)
}

// prctlMMMap is the kernel's struct prctl_mm_map (linux/prctl.h): the
// layout of a process's memory that PR_SET_MM_MAP sets all at once.
type prctlMMMap struct {
	StartCode, EndCode, StartData, EndData uint64
	StartBrk, Brk, StartStack              uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd     uint64
	Auxv                                   uint64 // a pointer; 0 with AuxvSize 0: left as it is
	AuxvSize                               uint32
	ExeFD                                  uint32 // ^0: left as it is
}

// currentMMMap is our own layout as it is, from /proc/self/stat (fields
// 26-28 and 45-51) and brk(0).
func currentMMMap() (prctlMMMap, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return prctlMMMap{}, err
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	field := func(n int) uint64 { // n is the field's number in proc(5)
		v, e := strconv.ParseUint(f[n-3], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("field %d: %q", n, f[n-3])
		}
		return v
	}
	if len(f) < 51-2 {
		return prctlMMMap{}, fmt.Errorf("%d fields", len(f)+2)
	}
	m := prctlMMMap{
		StartCode: field(26), EndCode: field(27), StartStack: field(28),
		StartData: field(45), EndData: field(46), StartBrk: field(47),
		ArgStart: field(48), ArgEnd: field(49), EnvStart: field(50), EnvEnd: field(51),
		ExeFD: ^uint32(0),
	}
	brk, _, _ := unix.RawSyscall(unix.SYS_BRK, 0, 0, 0)
	m.Brk = uint64(brk)
	return m, err
}
