package mounts

import (
	"fmt"
	"strconv"
	"strings"
)

// Mode is the kind of an autofs mount, as the kernel reports it in the
// superblock options.
type Mode int

const (
	// ModeUnknown means that the options named no mode (kernels before
	// 4.x did not print it).
	ModeUnknown Mode = iota
	// ModeIndirect mounts serve keys below the mount point.
	ModeIndirect
	// ModeDirect mounts trigger on the mount point itself (all systemd
	// .automount units are direct mounts).
	ModeDirect
	// ModeOffset mounts are the inner points of a multi-mount map entry.
	ModeOffset
)

func (m Mode) String() string {
	switch m {
	case ModeIndirect:
		return "indirect"
	case ModeDirect:
		return "direct"
	case ModeOffset:
		return "offset"
	}
	return "unknown"
}

// CachesDevice reports whether masters of this mode identify the mount by
// its device number (and, for the automount daemon, its inode), which a
// restore changes. Indirect mounts are served by key name.
func (m Mode) CachesDevice() bool { return m == ModeDirect || m == ModeOffset }

// Options are the superblock options of one autofs mount, as printed by
// the kernel in the last field of mountinfo.
type Options struct {
	// FD is the kernel's pipe fd number in the master at mount time; -1
	// when the mount is catatonic (no master any more).
	FD int
	// PGrp is the process group of the master, in the pid namespace of
	// the process that read mountinfo.
	PGrp int
	// Timeout is the expire timeout in seconds.
	Timeout int
	// MinProto and MaxProto are the protocol versions.
	MinProto, MaxProto int
	// Mode is direct, indirect or offset.
	Mode Mode
	// PipeIno is the inode of the pipe whose read end the master holds
	// (0 on kernels that do not print it, and for catatonic mounts).
	PipeIno uint64
	// StrictExpire is set when the mount was made with strictexpire.
	StrictExpire bool
	// Ignore is set for mounts marked "ignore" (hidden from df).
	Ignore bool
}

// Catatonic reports whether the mount has no master: every access fails
// at once with ENOENT and nothing can hang on it.
func (o Options) Catatonic() bool { return o.FD == -1 }

// ParseOptions decodes the superblock options of an autofs mount, e.g.
// "rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=12345".
// Unknown options are ignored; a malformed number of a known option is an
// error naming it.
func ParseOptions(s string) (Options, error) {
	o := Options{FD: -1, PGrp: -1}
	sawFD := false
	all := s
	for s != "" {
		var opt string
		opt, s, _ = strings.Cut(s, ",")
		key, val, hasVal := strings.Cut(opt, "=")
		if !hasVal {
			switch key {
			case "direct":
				o.Mode = ModeDirect
			case "indirect":
				o.Mode = ModeIndirect
			case "offset":
				o.Mode = ModeOffset
			case "strictexpire":
				o.StrictExpire = true
			case "ignore":
				o.Ignore = true
			}
			continue
		}
		var err error
		switch key {
		case "fd":
			o.FD, err = strconv.Atoi(val)
			sawFD = true
		case "pgrp":
			o.PGrp, err = strconv.Atoi(val)
		case "timeout":
			o.Timeout, err = strconv.Atoi(val)
		case "minproto":
			o.MinProto, err = strconv.Atoi(val)
		case "maxproto":
			o.MaxProto, err = strconv.Atoi(val)
		case "pipe_ino":
			// A catatonic mount has no pipe: the kernel prints -1.
			if val == "-1" {
				o.PipeIno = 0
				break
			}
			o.PipeIno, err = strconv.ParseUint(val, 10, 64)
		default:
			continue
		}
		if err != nil {
			return Options{}, fmt.Errorf("autofs option %q: bad number %q", key, val)
		}
	}
	if !sawFD {
		return Options{}, fmt.Errorf("autofs options %q: no fd= option", all)
	}
	return o, nil
}
