// Package procfile reads files of /proc whose size a process controls,
// with a bound on how much is read. The hook reads them as host root, in
// its own memory, for processes of a container: a process can point its
// environment or command line at a mapping of any size (prctl PR_SET_MM),
// and the kernel then serves the whole mapping, a page per read. A read
// here stops one byte past its bound, so neither the memory nor the time
// it takes depends on what the process did.
package procfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// The bounds, in bytes. Each is far above what a real automount daemon
// (or any process the hook asks about) has, and far below what would
// cost the hook anything.
const (
	// MaxCmdline bounds /proc/PID/cmdline. The kernel lets a process
	// exec with up to a quarter of its stack limit of arguments (2 MiB
	// with the usual 8 MiB stack), but automount runs with a handful of
	// options: a few hundred bytes. A command line over 256 KiB is not
	// one to start again.
	MaxCmdline = 256 << 10
	// MaxEnviron bounds /proc/PID/environ, as MaxCmdline does the
	// command line: automount's environment is a few lines (a systemd
	// unit's or an init script's), well under 16 KiB.
	MaxEnviron = 256 << 10
	// MaxStatus bounds /proc/PID/status: about 1.5 KiB, plus about 11
	// bytes per supplementary group on its Groups line, so 64 KiB holds
	// some 5,000 groups.
	MaxStatus = 64 << 10
	// MaxStat bounds /proc/PID/stat: 52 numbers and a name of at most 16
	// bytes, about 1 KiB at the most.
	MaxStat = 64 << 10
	// MaxCgroup bounds /proc/PID/cgroup: one line per hierarchy (at most
	// 16 with cgroup v1, one with v2), each with a path the kernel cuts
	// at PATH_MAX (4 KiB).
	MaxCgroup = 128 << 10
	// MaxSmall bounds the files of one short value or a few short lines:
	// oom_score_adj, personality, wchan (a kernel symbol, at most 512
	// bytes), limits (16 lines of about 80 bytes).
	MaxSmall = 4 << 10
	// MaxLSMLabel bounds attr/current: a security label, which the
	// hook refuses anyway past 4096 bytes.
	MaxLSMLabel = 8 << 10
	// FDInfoHead is how much of a /proc/PID/fdinfo/N file is read. Those
	// files grow with what the file watches (a line per fd an epoll
	// watches, per inotify watch), but the lines the hook uses (pos,
	// flags, mnt_id, ino) are the first ones, about 60 bytes.
	FDInfoHead = 4 << 10
)

// ErrTooLarge is what errors of Read over a bound match (errors.Is).
var ErrTooLarge = errors.New("file over its bound")

// TooLargeError says that a file held more than the bound it was read
// with, and names both.
type TooLargeError struct {
	// Path is the file.
	Path string
	// Limit is the bound, in bytes.
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %s: refused", e.Path, Size(e.Limit))
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// Read reads the file at path whole, if it holds at most limit bytes; a
// larger file is a *TooLargeError, after limit+1 bytes were read.
func Read(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, &TooLargeError{Path: path, Limit: limit}
	}
	return b, nil
}

// Head reads the first n bytes of the file at path (all of it when it is
// shorter), cut after its last whole line when the file is longer: for
// files whose useful lines come first.
func Head(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(n)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > n {
		b = b[:bytes.LastIndexByte(b[:n], '\n')+1]
	}
	return b, nil
}

// Size writes a bound in bytes the way people read it: "256 KiB".
func Size(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
