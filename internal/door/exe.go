package door

// The executable children are started from: a sealed memfd copy that makes
// them non-dumpable from their exec.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A child exec'd from a file it may read is dumpable until its first
// step (Begin) says otherwise: in that window a process of the container
// whose pid namespace the child joined (same uid, no CAP_SYS_PTRACE
// needed) could open /proc/CHILD/root, the host's root, or the child's
// exe and fds. The kernel makes an exec non-dumpable from its first
// instruction when the exec'ing process cannot read the file
// (BINPRM_FLAGS_ENFORCE_NONDUMP: dumpable becomes fs.suid_dumpable). So
// children are exec'd from a sealed memfd copy of our executable with
// mode 0111, by a thread without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
// in its effective set (see Call). The copy also keeps the host's binary
// out of reach of /proc/CHILD/exe.

var (
	selfOnce sync.Once
	selfFile *os.File
	selfErr  error
)

// sealedSelf returns the sealed, unreadable memfd copy of our executable,
// made once per process. It is opened on the host: callers check the
// thread's /proc first (HostProcOK).
func sealedSelf() (*os.File, error) {
	selfOnce.Do(func() { selfFile, selfErr = makeSealedSelf() })
	return selfFile, selfErr
}

func makeSealedSelf() (*os.File, error) {
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		return nil, fmt.Errorf("open our executable: %w", err)
	}
	defer src.Close()
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate("autofs-restore-hook", flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3: no MFD_EXEC
		fd, err = unix.MemfdCreate("autofs-restore-hook", flags)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd for our executable: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:autofs-restore-hook")
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		return nil, fmt.Errorf("copy our executable: %w", err)
	}
	if err := unix.Fchmod(fd, 0o111); err != nil {
		f.Close()
		return nil, fmt.Errorf("chmod the copy of our executable: %w", err)
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal the copy of our executable: %w", err)
	}
	return f, nil
}

// suidDumpableOK refuses a host whose fs.suid_dumpable is 1: there an
// exec of an unreadable file leaves the child dumpable all the same.
func suidDumpableOK() error {
	b, err := os.ReadFile("/proc/sys/fs/suid_dumpable")
	if err != nil {
		return fmt.Errorf("read fs.suid_dumpable: %w", err)
	}
	if v := strings.TrimSpace(string(b)); v == "1" {
		return errors.New("fs.suid_dumpable is 1: a child of the hook in the container's pid namespace could be traced by the container before it protects itself; refused (set it to 0 or 2)")
	}
	return nil
}

// withoutDAC drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
// calling thread's effective set (they stay permitted: the child, root,
// gets its effective set anew at exec), so that an exec from it cannot
// read the 0111 copy. It returns the sets as they were, for restoreCaps.
func withoutDAC() (*[2]unix.CapUserData, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data, was [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	was = data
	data[0].Effective &^= 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_DAC_READ_SEARCH
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("drop the DAC capabilities from the starting thread: %w", err)
	}
	return &was, nil
}

// restoreCaps sets the calling thread's capability sets back to was.
func restoreCaps(was *[2]unix.CapUserData) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	return unix.Capset(&hdr, &was[0])
}
