package mounts

// A process's mount table read from /proc/PID/mountinfo, with its autofs
// mounts and what sits on them.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/procfile"
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

// The bounds of a mount table. A container makes its own mounts, as many
// as its mount namespace takes (fs.mount-max: 100,000 by default), on
// paths as long as it likes; the hook parses the table in its own
// memory, so it reads no more than this.
const (
	// MaxTableSize is the most bytes of a mountinfo file read: 16 MiB
	// is some 80,000 lines of a usual length (about 200 bytes); a
	// longer table is refused.
	MaxTableSize = 16 << 20
	// MaxTableMounts is the most mounts (lines) of a table: the
	// kernel's default fs.mount-max for one mount namespace. A table
	// with more is refused.
	MaxTableMounts = 100000
)

// ErrTableTooLarge is what errors of ParseTable for a table over
// MaxTableSize or MaxTableMounts match (errors.Is).
var ErrTableTooLarge = errors.New("mount table too large")

// boundedTable passes on a mountinfo stream and fails the read as soon
// as it holds more than MaxTableSize bytes or MaxTableMounts lines.
type boundedTable struct {
	r     io.Reader
	size  int   // bytes passed on so far
	lines int   // newlines among them
	err   error // the bound passed, once it is
}

func (b *boundedTable) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) > MaxTableSize+1-b.size {
		p = p[:MaxTableSize+1-b.size]
	}
	n, err := b.r.Read(p)
	b.size += n
	b.lines += bytes.Count(p[:n], []byte{'\n'})
	switch {
	case b.size > MaxTableSize:
		b.err = fmt.Errorf("%w: more than %s: refused", ErrTableTooLarge, procfile.Size(MaxTableSize))
	case b.lines > MaxTableMounts:
		b.err = fmt.Errorf("%w: more than %d mounts: refused", ErrTableTooLarge, MaxTableMounts)
	}
	if b.err != nil {
		return 0, b.err
	}
	return n, err
}

// ParseTable parses a mountinfo stream and indexes its autofs mounts. It
// reads at most MaxTableSize bytes and MaxTableMounts lines of it: a
// larger table is an error (ErrTableTooLarge) naming the bound.
func ParseTable(r io.Reader) (*Table, error) {
	b := &boundedTable{r: r}
	all, err := mountinfo.GetMountsFromReader(b, nil)
	// Over a bound, the parser may have seen the line the bound cut
	// and failed on it: the bound is the error.
	if b.err != nil {
		return nil, b.err
	}
	if err != nil {
		return nil, err
	}
	if len(all) > MaxTableMounts {
		return nil, fmt.Errorf("%w: more than %d mounts: refused", ErrTableTooLarge, MaxTableMounts)
	}
	return NewTable(all)
}

// NewTable indexes an already parsed mount list. Its work is linear in
// the number of mounts, however they stack: the mounts below each one
// are a range of one walk of the whole tree, shared by the Submounts of
// every autofs mount in it.
func NewTable(all []*mountinfo.Info) (*Table, error) {
	t := &Table{All: all}
	w := walkTree(all)
	for i, m := range all {
		if m.FSType != "autofs" {
			continue
		}
		opts, err := ParseOptions(m.VFSOptions)
		if err != nil {
			return nil, fmt.Errorf("mount %d at %q: %w", m.ID, m.Mountpoint, err)
		}
		a := &Autofs{Info: m, Options: opts}
		top := -1
		for _, c := range w.children[m.ID] {
			if all[c].Mountpoint == m.Mountpoint {
				top = c
				break
			}
		}
		switch {
		case top >= 0:
			a.OnTop = all[top]
			a.Submounts = w.below(top)
		case opts.Mode == ModeIndirect:
			a.Submounts = w.below(i)
		}
		t.Autofs = append(t.Autofs, a)
	}
	sort.SliceStable(t.Autofs, func(i, j int) bool {
		return t.Autofs[i].Info.Mountpoint < t.Autofs[j].Info.Mountpoint
	})
	return t, nil
}

// treeWalk is the mounts of a table in one depth-first walk, each
// before the mounts below it and those in mountinfo order: the mounts
// below one are the range of the walk from just after it to its end.
// Mounts are named by their index in the table.
type treeWalk struct {
	// children are the mounts on each mount, by its id, in table order.
	children map[int][]int
	order    []*mountinfo.Info
	// at is the position of each mount in order (-1 before it is
	// walked); end is, by position, where the mounts below it end.
	at  []int
	end []int
}

// walkTree walks the tree of mounts from its roots (mounts whose parent
// is not in the table, or themselves), then from any mount not reached
// (which only a table with a loop of parents has), each mount once.
func walkTree(all []*mountinfo.Info) *treeWalk {
	w := &treeWalk{
		children: make(map[int][]int, len(all)),
		order:    make([]*mountinfo.Info, 0, len(all)),
		at:       make([]int, len(all)),
		end:      make([]int, 0, len(all)),
	}
	for i, m := range all {
		w.at[i] = -1
		if m.Parent != m.ID {
			w.children[m.Parent] = append(w.children[m.Parent], i)
		}
	}
	// A mount whose id is a key of children has mounts on it: a root
	// is one whose parent is not such a mount of the table.
	present := make(map[int]bool, len(w.children))
	for _, m := range all {
		if _, ok := w.children[m.ID]; ok {
			present[m.ID] = true
		}
	}
	type frame struct {
		i    int // the mount
		next int // the next of its children to walk
	}
	var stack []frame
	visit := func(i int) {
		w.at[i] = len(w.order)
		w.order = append(w.order, all[i])
		w.end = append(w.end, 0)
		stack = append(stack, frame{i: i})
	}
	from := func(root int) {
		visit(root)
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if kids := w.children[all[top.i].ID]; top.next < len(kids) {
				c := kids[top.next]
				top.next++
				if w.at[c] < 0 {
					visit(c)
				}
				continue
			}
			w.end[w.at[top.i]] = len(w.order)
			stack = stack[:len(stack)-1]
		}
	}
	for i, m := range all {
		if w.at[i] < 0 && (m.Parent == m.ID || !present[m.Parent]) {
			from(i)
		}
	}
	for i := range all {
		if w.at[i] < 0 {
			from(i)
		}
	}
	return w
}

// below is the mounts below mount i, parents first, nil for none. The
// slice is part of the walk, shared: its capacity ends with it, so that
// an append to it copies.
func (w *treeWalk) below(i int) []*mountinfo.Info {
	p := w.at[i]
	if w.end[p] == p+1 {
		return nil
	}
	return w.order[p+1 : w.end[p] : w.end[p]]
}

// Find returns the autofs mount at mount point mp, or nil: of several
// stacked there, the first in mountinfo order (the lowest). A binary
// search of Autofs, so that callers looking up each of many mount points
// do not scan the table for each.
func (t *Table) Find(mp string) *Autofs {
	i := sort.Search(len(t.Autofs), func(i int) bool { return t.Autofs[i].Info.Mountpoint >= mp })
	if i < len(t.Autofs) && t.Autofs[i].Info.Mountpoint == mp {
		return t.Autofs[i]
	}
	return nil
}
