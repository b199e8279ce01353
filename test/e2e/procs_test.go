package e2e

import (
	"os"
	"strconv"
	"strings"
)

// aProc is a running process as the scans of the hook's own processes
// see it: its pid, its command line and its executable ("" for a zombie
// or a process that ended meanwhile).
type aProc struct {
	pid  int
	argv []string
	exe  string
}

// String is "PID: ARGV" (space separated).
func (p aProc) String() string { return strconv.Itoa(p.pid) + ": " + strings.Join(p.argv, " ") }

// role is the process's first argument: a door role of the hook's
// children ("" when it has none).
func (p aProc) role() string {
	if len(p.argv) < 2 {
		return ""
	}
	return p.argv[1]
}

// procsWhere lists the running processes that keep accepts: the one
// scan of /proc behind every look for the hook's processes.
func procsWhere(keep func(aProc) bool) []aProc {
	var out []aProc
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		exe, _ := os.Readlink("/proc/" + e.Name() + "/exe")
		p := aProc{pid: pid, argv: strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), exe: strings.TrimSuffix(exe, " (deleted)")}
		if keep(p) {
			out = append(out, p)
		}
	}
	return out
}

// strs is each process's String.
func strs(ps []aProc) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
