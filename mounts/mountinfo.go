package mounts

// A process's mount table read from /proc/PID/mountinfo, with its autofs
// mounts and what sits on them.

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Autofs is one autofs mount of a mount table, with what sits on it.
type Autofs struct {
	// Info is the mountinfo line of the autofs mount itself.
	Info *mountinfo.Info
	// Options are its decoded superblock options.
	Options Options
	// OnTop is the filesystem mounted on the mount point of a direct or
	// offset mount (a triggered automount), or nil.
	OnTop *mountinfo.Info
	// Submounts are the mounts below OnTop (or, for an indirect mount,
	// the triggered keys and everything below them), parents first.
	Submounts []*mountinfo.Info
}

// Dev is the device number of the autofs superblock, as stat(2) returns
// it and as /dev/autofs OPENMOUNT expects it.
func (a *Autofs) Dev() uint64 { return unix.Mkdev(uint32(a.Info.Major), uint32(a.Info.Minor)) }

// Mountpoint is the path of the mount in its mount namespace.
func (a *Autofs) Mountpoint() string { return a.Info.Mountpoint }

// Table is a parsed mount table with its autofs mounts picked out.
type Table struct {
	// All holds every mount, in mountinfo order.
	All []*mountinfo.Info
	// Autofs holds the autofs mounts, sorted by mount point.
	Autofs []*Autofs

	children map[int][]*mountinfo.Info
}

// ReadTable reads /proc/PID/mountinfo. It reads the file from the caller's
// side: call it before joining any namespace.
func ReadTable(pid int) (*Table, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table of pid %d: %w", pid, err)
	}
	defer f.Close()
	t, err := ParseTable(f)
	if err != nil {
		return nil, fmt.Errorf("read mount table of pid %d: %w", pid, err)
	}
	return t, nil
}

// ParseTable parses a mountinfo stream and indexes its autofs mounts.
func ParseTable(r io.Reader) (*Table, error) {
	all, err := mountinfo.GetMountsFromReader(r, nil)
	if err != nil {
		return nil, err
	}
	return NewTable(all)
}

// NewTable indexes an already parsed mount list.
func NewTable(all []*mountinfo.Info) (*Table, error) {
	t := &Table{All: all, children: make(map[int][]*mountinfo.Info, len(all))}
	for _, m := range all {
		if m.Parent != m.ID {
			t.children[m.Parent] = append(t.children[m.Parent], m)
		}
	}
	for _, m := range all {
		if m.FSType != "autofs" {
			continue
		}
		opts, err := ParseOptions(m.VFSOptions)
		if err != nil {
			return nil, fmt.Errorf("mount %d at %q: %w", m.ID, m.Mountpoint, err)
		}
		a := &Autofs{Info: m, Options: opts}
		for _, c := range t.children[m.ID] {
			if c.Mountpoint == m.Mountpoint {
				a.OnTop = c
				break
			}
		}
		switch {
		case a.OnTop != nil:
			a.Submounts = t.descendants(a.OnTop.ID, nil)
		case opts.Mode == ModeIndirect:
			a.Submounts = t.descendants(m.ID, nil)
		}
		t.Autofs = append(t.Autofs, a)
	}
	sort.SliceStable(t.Autofs, func(i, j int) bool {
		return t.Autofs[i].Info.Mountpoint < t.Autofs[j].Info.Mountpoint
	})
	return t, nil
}

func (t *Table) descendants(id int, out []*mountinfo.Info) []*mountinfo.Info {
	for _, c := range t.children[id] {
		out = append(out, c)
		out = t.descendants(c.ID, out)
	}
	return out
}

// Find returns the autofs mount at mount point mp, or nil.
func (t *Table) Find(mp string) *Autofs {
	for _, a := range t.Autofs {
		if a.Info.Mountpoint == mp {
			return a
		}
	}
	return nil
}

// Escape makes a path printable on one log line: control characters,
// backslashes and spaces are written as octal escapes, as mountinfo does.
func Escape(p string) string {
	if !strings.ContainsFunc(p, func(r rune) bool { return r < 0x21 || r == '\\' || r == 0x7f }) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < 0x21 || c == '\\' || c == 0x7f {
			fmt.Fprintf(&b, "\\%03o", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
