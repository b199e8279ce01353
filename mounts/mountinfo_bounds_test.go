package mounts

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// stackedMountinfo is a table with n autofs mounts stacked on /srv/s,
// each with a tmpfs on top and the next autofs mounted on that tmpfs.
func stackedMountinfo(n int) string {
	var sb strings.Builder
	sb.WriteString("1 0 0:1 / / rw - overlay overlay rw\n2 1 0:2 / /srv rw - tmpfs tmpfs rw\n")
	parent := 2
	for i := range n {
		a, top := 10+2*i, 11+2*i
		fmt.Fprintf(&sb, "%d %d 0:%d / /srv/s rw,relatime - autofs systemd-1 rw,fd=27,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=%d\n", a, parent, a, a)
		fmt.Fprintf(&sb, "%d %d 0:%d / /srv/s rw,relatime - tmpfs tmpfs rw\n", top, a, top)
		parent = top
	}
	return sb.String()
}

// nestedMountinfo is a chain of n autofs mounts, each one level below
// the one before (/n/d, /n/d/d, ...): mostly direct ones with a tmpfs on
// top, the next mounted on that tmpfs; every third an indirect one with
// nothing on top, the next mounted on it as a key. Its size grows as the
// square of n, as the paths do.
func nestedMountinfo(n int) string {
	var sb strings.Builder
	sb.WriteString("1 0 0:1 / / rw - overlay overlay rw\n")
	parent, mp := 1, "/n"
	for i := range n {
		mp += "/d"
		a, top := 10+2*i, 11+2*i
		if i%3 == 2 {
			fmt.Fprintf(&sb, "%d %d 0:%d / %s rw,relatime - autofs /etc/auto.x rw,fd=5,pgrp=40,timeout=300,minproto=5,maxproto=5,indirect,pipe_ino=%d\n", a, parent, a, mp, a)
			parent = a
			continue
		}
		fmt.Fprintf(&sb, "%d %d 0:%d / %s rw,relatime - autofs systemd-1 rw,fd=27,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=%d\n", a, parent, a, mp, a)
		fmt.Fprintf(&sb, "%d %d 0:%d / %s rw,relatime - tmpfs tmpfs rw\n", top, a, top, mp)
		parent = top
	}
	return sb.String()
}

// referenceAutofs is what the table's autofs mounts should hold, by
// the plain definition (the recursive walk NewTable once did for each
// autofs mount): for each, in mountinfo order, its id, the id of what
// is on top (0 for none) and the ids of its submounts.
func referenceAutofs(all []*mountinfo.Info) [][]int {
	children := map[int][]*mountinfo.Info{}
	for _, m := range all {
		if m.Parent != m.ID {
			children[m.Parent] = append(children[m.Parent], m)
		}
	}
	var below func(id int, out []int) []int
	below = func(id int, out []int) []int {
		for _, c := range children[id] {
			out = below(c.ID, append(out, c.ID))
		}
		return out
	}
	var ref [][]int
	for _, m := range all {
		if m.FSType != "autofs" {
			continue
		}
		top := 0
		for _, c := range children[m.ID] {
			if c.Mountpoint == m.Mountpoint {
				top = c.ID
				break
			}
		}
		var sub []int
		switch {
		case top != 0:
			sub = below(top, nil)
		case strings.Contains(m.VFSOptions, "indirect"):
			sub = below(m.ID, nil)
		}
		ref = append(ref, append([]int{m.ID, top}, sub...))
	}
	return ref
}

// checkAgainstReference compares a parsed table with referenceAutofs,
// in mountinfo order (Autofs is sorted by mount point, stably).
func checkAgainstReference(t *testing.T, tab *Table) {
	t.Helper()
	ref := referenceAutofs(tab.All)
	at := map[*mountinfo.Info]int{}
	for i, m := range tab.All {
		at[m] = i
	}
	got := slices.Clone(tab.Autofs)
	slices.SortFunc(got, func(a, b *Autofs) int { return at[a.Info] - at[b.Info] })
	if len(got) != len(ref) {
		t.Fatalf("%d autofs mounts, want %d", len(got), len(ref))
	}
	for i, a := range got {
		top := 0
		if a.OnTop != nil {
			top = a.OnTop.ID
		}
		ids := []int{a.Info.ID, top}
		for _, m := range a.Submounts {
			ids = append(ids, m.ID)
		}
		if !slices.Equal(ids, ref[i]) {
			t.Fatalf("autofs %d: id, on top, submounts %v, want %v", a.Info.ID, ids, ref[i])
		}
		if a.Submounts != nil && len(a.Submounts) == 0 {
			t.Fatalf("autofs %d: empty submounts that are not nil", a.Info.ID)
		}
	}
}

func TestNewTableMatchesReference(t *testing.T) {
	for name, text := range map[string]string{
		"sample":  sampleMountinfo,
		"stacked": stackedMountinfo(40),
		"nested":  nestedMountinfo(40),
		// Two trees side by side, and a child listed before its parent.
		"forest": "1 0 0:1 / / rw - overlay overlay rw\n" +
			"7 5 0:7 / /b/k rw - tmpfs tmpfs rw\n" +
			"5 1 0:5 / /b rw - autofs a rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,indirect,pipe_ino=1\n" +
			"3 99 0:3 / /x rw - autofs a rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=1\n" +
			"4 3 0:4 / /x rw - tmpfs tmpfs rw\n" +
			"6 4 0:6 / /x/y rw - tmpfs tmpfs rw\n",
	} {
		t.Run(name, func(t *testing.T) {
			tab, err := ParseTable(strings.NewReader(text))
			if err != nil {
				t.Fatal(err)
			}
			checkAgainstReference(t, tab)
		})
	}
}

// The stacked table's own expectations: the autofs mount i has tmpfs i
// on top and the 2(n-1-i) mounts of the stack above it below that.
func checkStacked(t *testing.T, tab *Table, n int) {
	t.Helper()
	if len(tab.All) != 2+2*n || len(tab.Autofs) != n {
		t.Fatalf("%d mounts, %d autofs; want %d, %d", len(tab.All), len(tab.Autofs), 2+2*n, n)
	}
	for i, a := range tab.Autofs {
		want := 2 * (n - 1 - i)
		if a.Info.ID != 10+2*i || a.OnTop == nil || a.OnTop.ID != 11+2*i || len(a.Submounts) != want {
			t.Fatalf("autofs %d: id %d, on top %v, %d submounts; want %d, %d, %d", i, a.Info.ID, a.OnTop, len(a.Submounts), 10+2*i, 11+2*i, want)
		}
		if want > 0 && (a.Submounts[0].ID != 12+2*i || a.Submounts[want-1].ID != 11+2*(n-1)) {
			t.Fatalf("autofs %d: submounts from %d to %d", i, a.Submounts[0].ID, a.Submounts[want-1].ID)
		}
	}
	if a := tab.Find("/srv/s"); a != tab.Autofs[0] {
		t.Fatalf("Find: %v, want the lowest of the stack", a.Info)
	}
}

// parseCost parses text and returns the table and the bytes allocated.
// The time it takes is logged, never asserted: under TCG 8,000 stacked
// pairs take half a second with nothing else running, close to the
// second a test once allowed them, with the other guest on the same two
// CPUs. BenchmarkParseTable measures it.
func parseCost(t *testing.T, text string) (*Table, uint64, time.Duration) {
	t.Helper()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	tab, err := ParseTable(strings.NewReader(text))
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	return tab, after.TotalAlloc - before.TotalAlloc, took
}

// Autofs mounts stacked on one mount point, each with a tmpfs on top
// (what a container can make in a loop): the parse allocates in
// proportion to the mounts. It once allocated 24 MiB for 1,000 pairs and
// 2 GiB for 8,000, each autofs mount getting its own copy of the stack
// above it.
func TestParseTableStackedIsLinear(t *testing.T) {
	small, large := stackedMountinfo(1000), stackedMountinfo(8000)
	tab, allocSmall, tookSmall := parseCost(t, small)
	checkStacked(t, tab, 1000)
	tab, allocLarge, tookLarge := parseCost(t, large)
	checkStacked(t, tab, 8000)
	t.Logf("1,000 pairs: %d KiB allocated, %s; 8,000: %d KiB, %s", allocSmall>>10, tookSmall, allocLarge>>10, tookLarge)
	if allocLarge > 10*allocSmall || allocLarge > 64<<20 {
		t.Errorf("8,000 pairs allocated %d KiB, 1,000 %d KiB: want under 10 times as much, and under 64 MiB", allocLarge>>10, allocSmall>>10)
	}
}

// Autofs mounts each one level below the last: the table itself grows
// as the square of their number (the paths do), the parse's allocations
// in proportion to the table; 8,000 levels are over MaxTableSize and refused, without
// reading past it.
func TestParseTableNestedIsLinear(t *testing.T) {
	small, large := nestedMountinfo(1000), nestedMountinfo(2000)
	tab, allocSmall, tookSmall := parseCost(t, small)
	checkAgainstReference(t, tab)
	if len(tab.Autofs) != 1000 || len(tab.Autofs[0].Submounts) != len(tab.All)-3 {
		t.Fatalf("%d autofs, the first with %d submounts, of %d mounts", len(tab.Autofs), len(tab.Autofs[0].Submounts), len(tab.All))
	}
	tab, allocLarge, tookLarge := parseCost(t, large)
	if len(tab.Autofs) != 2000 {
		t.Fatalf("%d autofs, want 2000", len(tab.Autofs))
	}
	t.Logf("1,000 levels (%d KiB): %d KiB allocated, %s; 2,000 (%d KiB): %d KiB, %s", len(small)>>10, allocSmall>>10, tookSmall, len(large)>>10, allocLarge>>10, tookLarge)
	if allocLarge > 4*uint64(len(large))+(1<<20) || allocSmall > 4*uint64(len(small))+(1<<20) {
		t.Errorf("allocated %d and %d KiB for tables of %d and %d KiB: want under 4 times the table", allocSmall>>10, allocLarge>>10, len(small)>>10, len(large)>>10)
	}

	huge := nestedMountinfo(8000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err := ParseTable(strings.NewReader(huge))
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("8,000 levels (%d MiB): %v, %d MiB allocated, %s", len(huge)>>20, err, alloc>>20, took)
	if !errors.Is(err, ErrTableTooLarge) || !strings.Contains(err.Error(), "16 MiB") {
		t.Errorf("8,000 levels: %v, want the refusal of a table over 16 MiB", err)
	}
	if alloc > 64<<20 {
		t.Errorf("8,000 levels: %d MiB allocated, want under 64 MiB", alloc>>20)
	}
}

// A table over either bound is refused, naming the bound; one at the
// bound of mounts is not.
func TestParseTableBounds(t *testing.T) {
	line := func(i int, mp string) string {
		return fmt.Sprintf("%d 1 0:%d / %s rw - tmpfs tmpfs rw\n", i, i, mp)
	}
	var big strings.Builder
	long := "/" + strings.Repeat("x", 4000)
	for i := 2; big.Len() <= MaxTableSize; i++ {
		big.WriteString(line(i, long))
	}
	_, err := ParseTable(strings.NewReader(big.String()))
	if !errors.Is(err, ErrTableTooLarge) || !strings.Contains(err.Error(), "more than 16 MiB") {
		t.Errorf("a table of %d bytes: %v, want the refusal of more than 16 MiB", big.Len(), err)
	}

	many := func(n int) string {
		var sb strings.Builder
		sb.WriteString("1 0 0:1 / / rw - overlay overlay rw\n")
		for i := 2; i <= n; i++ {
			sb.WriteString(line(i, "/m"))
		}
		return sb.String()
	}
	if tab, err := ParseTable(strings.NewReader(many(MaxTableMounts))); err != nil || len(tab.All) != MaxTableMounts {
		t.Errorf("a table of %d mounts: %v", MaxTableMounts, err)
	}
	over := many(MaxTableMounts + 1)
	_, err = ParseTable(strings.NewReader(over))
	if !errors.Is(err, ErrTableTooLarge) || !strings.Contains(err.Error(), "more than 100000 mounts") {
		t.Errorf("a table of %d mounts: %v, want the refusal of more than 100000 mounts", MaxTableMounts+1, err)
	}
	// The same without its last newline is refused all the same.
	if _, err := ParseTable(strings.NewReader(strings.TrimSuffix(over, "\n"))); !errors.Is(err, ErrTableTooLarge) {
		t.Errorf("a table of %d mounts, no last newline: %v", MaxTableMounts+1, err)
	}
}

// Parents in a loop, which no kernel writes: the walk ends, each mount
// walked once.
func TestNewTableParentLoop(t *testing.T) {
	tab, err := ParseTable(strings.NewReader("1 0 0:1 / / rw - overlay overlay rw\n" +
		"5 6 0:5 / /a rw - autofs a rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,indirect,pipe_ino=1\n" +
		"6 5 0:6 / /a/k rw - tmpfs tmpfs rw\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := tab.Find("/a"); a == nil || len(a.Submounts) != 1 || a.Submounts[0].ID != 6 {
		t.Fatalf("autofs of a loop: %+v", a)
	}
}
