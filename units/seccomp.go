package units

// The automount daemon's seccomp filters: read from the old daemon through
// ptrace (PTRACE_SECCOMP_GET_FILTER, as CRIU dumps them) while held.go's
// task holds it, checked for what a copy cannot reproduce, and installed
// again, in the order they were, on the thread that starts the new daemon.

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SeccompFilter is one classic BPF seccomp program.
type SeccompFilter struct {
	// Insns are its instructions, each [code, jt, jf, k].
	Insns [][4]uint32 `json:"insns"`
	// Log is SECCOMP_FILTER_FLAG_LOG.
	Log bool `json:"log,omitempty"`
}

// ptraceGetSeccompMetadata is PTRACE_GET_SECCOMP_METADATA (linux/ptrace.h).
const ptraceGetSeccompMetadata = 0x420d

// filtersOfHeld reads the seccomp filters of pid, which the calling
// thread holds in a ptrace stop, oldest first.
func filtersOfHeld(pid int) ([]SeccompFilter, error) {
	var filters []SeccompFilter
	for i := 0; ; i++ {
		if i == 512 {
			return nil, fmt.Errorf("pid %d has more than 512 seccomp filters", pid)
		}
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), uintptr(i), 0, 0, 0)
		if e == unix.ENOENT {
			break
		}
		if e != 0 {
			return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: %w", i, pid, e)
		}
		if n == 0 || n > 4096 {
			return nil, fmt.Errorf("seccomp filter %d of %d has %d instructions", i, pid, n)
		}
		prog := make([]unix.SockFilter, n)
		if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), uintptr(i), uintptr(unsafe.Pointer(&prog[0])), 0, 0); e != 0 {
			return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d of %d: %w", i, pid, e)
		}
		md := struct{ FilterOff, Flags uint64 }{FilterOff: uint64(i)}
		if _, _, e := unix.Syscall6(unix.SYS_PTRACE, ptraceGetSeccompMetadata, uintptr(pid), unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md)), 0, 0); e != 0 {
			return nil, fmt.Errorf("PTRACE_GET_SECCOMP_METADATA %d of %d: %w", i, pid, e)
		}
		f := SeccompFilter{Log: md.Flags&unix.SECCOMP_FILTER_FLAG_LOG != 0}
		for _, in := range prog {
			f.Insns = append(f.Insns, [4]uint32{uint32(in.Code), uint32(in.Jt), uint32(in.Jf), in.K})
		}
		filters = append(filters, f)
	}
	return filters, nil // index 0 is the oldest (get_nth_filter): the order of installation
}

// seccompReproducible says why filters cannot be installed again with
// the same effect, or safely, or returns nil. The copies are installed on
// the thread that starts the new daemon, before Go's fork and exec (and,
// for a daemon that is neither root nor no_new_privs, before its
// credentials), so they also judge the hook's own syscalls of the start
// (dup3, write, setsid; setgroups, setresgid, setresuid in that one
// case): a filter that can make a syscall fail is fine (the
// start fails, and is reported), one that can make a syscall seem to
// succeed without running it (SECCOMP_RET_ERRNO with errno 0, or a
// return value computed at run time) could have the new daemon keep the
// hook's root or its fds, and is refused. A filter that hands syscalls to
// a supervisor (SECCOMP_RET_USER_NOTIF) needs the supervisor's listener,
// which belongs to the container's runtime; a copy would fail those
// syscalls instead.
func seccompReproducible(filters []SeccompFilter, count int) error {
	if count >= 0 && len(filters) != count {
		return fmt.Errorf("it has %d seccomp filters and %d were read", count, len(filters))
	}
	for i, f := range filters {
		for _, in := range f.Insns {
			if in[0]&0x07 != unix.BPF_RET {
				continue
			}
			switch {
			case in[0] != unix.BPF_RET|unix.BPF_K:
				return fmt.Errorf("its seccomp filter %d returns a value computed at run time, which could make a syscall seem to succeed", i)
			case in[3]&unix.SECCOMP_RET_ACTION_FULL == unix.SECCOMP_RET_USER_NOTIF:
				return fmt.Errorf("its seccomp filter %d hands syscalls to a supervisor (user notification), which a copy cannot reach", i)
			case in[3]&unix.SECCOMP_RET_ACTION_FULL == unix.SECCOMP_RET_ERRNO && in[3]&unix.SECCOMP_RET_DATA == 0:
				return fmt.Errorf("its seccomp filter %d answers a syscall with errno 0, as if it succeeded", i)
			}
		}
	}
	return nil
}

// installSeccomp installs filters, oldest first, on the calling thread
// (locked), which the new daemon is forked from: a fork keeps them and an
// exec keeps them. Installing needs no_new_privs or CAP_SYS_ADMIN.
func installSeccomp(filters []SeccompFilter) error {
	for i, f := range filters {
		if len(f.Insns) == 0 || len(f.Insns) > 4096 {
			return fmt.Errorf("seccomp filter %d: %d instructions", i, len(f.Insns))
		}
		prog := make([]unix.SockFilter, len(f.Insns))
		for j, in := range f.Insns {
			prog[j] = unix.SockFilter{Code: uint16(in[0]), Jt: uint8(in[1]), Jf: uint8(in[2]), K: in[3]}
		}
		fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		flags := uintptr(0)
		if f.Log {
			flags |= unix.SECCOMP_FILTER_FLAG_LOG
		}
		_, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
		runtime.KeepAlive(prog)
		if e != 0 {
			return fmt.Errorf("install seccomp filter %d: %w", i, e)
		}
	}
	return nil
}
