package hook

// Containers as an operator names them: --container NAME|ID, found
// through the runtimes' own state and CLIs, and status --all, every
// container of the node that has autofs mounts.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// lookupTimeout bounds each runtime CLI asked for a container.
const lookupTimeout = 15 * time.Second

// found is a container a runtime knows by the name or id asked for.
type found struct {
	Pid     int
	ID      Identity
	Runtime string
}

// runtimeLookup is one way to find a container by name or id.
type runtimeLookup struct {
	name string
	find func(ref string) (found, error)
}

// cliLookups ask the runtimes that keep no state directory of the
// kind runtimeStateDirs lists; a runtime that is not installed finds
// nothing.
var cliLookups = []runtimeLookup{
	{"podman", podmanLookup},
	{"crictl", crictlLookup},
}

// runtimeLookups are every way to find a container: the runtimes' state
// directories (runtimeStateDirs), then their CLIs (cliLookups).
func runtimeLookups() []runtimeLookup {
	var ls []runtimeLookup
	for _, d := range runtimeStateDirs {
		ls = append(ls, runtimeLookup{d.name, func(ref string) (found, error) { return stateDirLookup(d, ref) }})
	}
	return append(ls, cliLookups...)
}

// errUnknown is a runtime not knowing the container (or not installed).
var errUnknown = errors.New("not known")

// lookupContainer finds the init of the container ref names (a name or
// an id, as runc, crun, podman or crictl take it). Two runtimes that know
// it by different inits are an error: the operator then gives --pid.
func lookupContainer(ref string) (found, error) {
	if !validName(ref) {
		return found{}, fmt.Errorf("--container %q: want a container name or id (letters, digits, . _ - : /)", ref)
	}
	var hits []found
	var errs []string
	for _, l := range runtimeLookups() {
		f, err := l.find(ref)
		switch {
		case errors.Is(err, errUnknown):
		case err != nil:
			errs = append(errs, l.name+": "+err.Error())
		default:
			f.Runtime = l.name
			// Two runtimes that know one init: one container.
			if i := slices.IndexFunc(hits, func(h found) bool { return h.Pid == f.Pid }); i >= 0 {
				hits[i].ID = hits[i].ID.merge(f.ID)
			} else {
				hits = append(hits, f)
			}
		}
	}
	// What a CLI said is checked as the runtimes' state is: the pid must
	// be the init of a pid namespace of its own.
	hits = slices.DeleteFunc(hits, func(h found) bool {
		if !nsInit(h.Pid) {
			errs = append(errs, fmt.Sprintf("%s: pid %d is not the init of a container", h.Runtime, h.Pid))
			return true
		}
		return false
	})
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		msg := fmt.Sprintf("no running container %q known to runc, crun, podman or crictl", ref)
		if len(errs) > 0 {
			msg += " (" + strings.Join(errs, "; ") + ")"
		}
		return found{}, errors.New(msg + ": give its init's pid with --pid")
	}
	var which []string
	for _, h := range hits {
		which = append(which, fmt.Sprintf("%s: pid %d", h.Runtime, h.Pid))
	}
	return found{}, fmt.Errorf("%q names more than one container (%s): give --pid", ref, strings.Join(which, ", "))
}

// stateDirLookup reads the runtime's state of container id ref in d
// (runc and crun, run as root, keep one directory per container).
func stateDirLookup(d stateDir, ref string) (found, error) {
	if !validID(ref) {
		return found{}, errUnknown
	}
	pid, ok := runtimeStateInit(filepath.Join(d.dir, ref, d.file))
	if !ok {
		return found{}, errUnknown
	}
	return found{Pid: pid, ID: Identity{ID: ref}}, nil
}

// runCLI runs a runtime's CLI with the lookup's deadline; a CLI that is
// not installed is errUnknown.
func runCLI(name string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, errUnknown
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stderr = io.Discard
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("no answer within %s", lookupTimeout)
	}
	if err != nil {
		return nil, errUnknown // the runtime does not know it
	}
	return out, nil
}

// podmanLookup asks podman for the container's init pid, id and name.
func podmanLookup(ref string) (found, error) {
	out, err := runCLI("podman", "container", "inspect", "--format", "{{.State.Pid}} {{.ID}} {{.Name}}", ref)
	if err != nil {
		return found{}, err
	}
	return parseLookup(out)
}

// crictlLookup asks CRI-O (through crictl) for the container's init pid,
// id and name.
func crictlLookup(ref string) (found, error) {
	out, err := runCLI("crictl", "inspect", "--output", "go-template", "--template", "{{.info.pid}} {{.status.id}} {{.status.metadata.name}}", ref)
	if err != nil {
		return found{}, err
	}
	return parseLookup(out)
}

// parseLookup reads "PID ID NAME" (one container).
func parseLookup(out []byte) (found, error) {
	f := strings.Fields(string(out))
	if len(f) != 3 {
		return found{}, errUnknown
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return found{}, fmt.Errorf("the container does not run (pid %q)", f[0])
	}
	id := Identity{ID: f[1], Name: f[2]}
	if !validID(id.ID) {
		id.ID = ""
	}
	if !validName(id.Name) {
		id.Name = ""
	}
	return found{Pid: pid, ID: id}, nil
}

// NodeRow is one container of `status --all`.
type NodeRow struct {
	Container Identity `json:"container"`
	Pid       int      `json:"pid"`
	Mounts    int      `json:"autofs_mounts"`
	// Health is "ok" when every autofs mount is served, "broken" when one
	// is stale, catatonic or orphaned, "unknown" when it could not be
	// inspected.
	Health string `json:"health"`
	// States counts the mounts in each state.
	States  map[string]int `json:"states,omitempty"`
	Blocked int            `json:"blocked,omitempty"`
	LastFix *Outcome       `json:"last_fix,omitempty"`
	Error   string         `json:"error,omitempty"`
}

// maxNodeContainers bounds status --all.
const maxNodeContainers = 4096

// containerInits lists the inits of the node's containers: pid 1 of a pid
// namespace one level below the host's, in a mount namespace of its own.
func containerInits() []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	var inits []int
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		st, err := proc.ReadStatus(pid)
		if err != nil {
			continue
		}
		if ns := st.NSpid(); len(ns) != 2 || ns[1] != 1 {
			continue
		}
		if refuseHost(pid) != nil {
			continue
		}
		inits = append(inits, pid)
		if len(inits) == maxNodeContainers {
			break
		}
	}
	sort.Ints(inits)
	return inits
}

// nodeStatusTimeout bounds status --all: containers not reached by then
// are listed as not inspected.
const nodeStatusTimeout = 2 * time.Minute

// nodeStatus inspects every container of the node that has autofs
// mounts (or a state file of the hook). Processes no runtime names (a
// user's sandbox with a pid namespace of its own) are listed without an
// id.
func nodeStatus(log *logrus.Logger) []NodeRow {
	rows := []NodeRow{}
	deadline := time.Now().Add(nodeStatusTimeout)
	idx := runtimeStateIndex() // read once for every row
	for _, pid := range containerInits() {
		p, err := proc.OpenProcess(pid)
		if err != nil {
			continue
		}
		t, err := mounts.ReadTable(pid)
		if err == nil && len(t.Autofs) == 0 && !hasState(p) || p.Check() != nil {
			p.Close()
			continue
		}
		row := NodeRow{Pid: pid}
		rec, rerr := loadState(p)
		row.Container = identifyIn(Identity{}, p, &rec, idx)
		row.LastFix = rec.LastFix
		if time.Now().After(deadline) {
			p.Close()
			row.Health, row.Error = "unknown", fmt.Sprintf("not inspected: status --all ran out of its %s", nodeStatusTimeout)
			rows = append(rows, row)
			continue
		}
		c, err := inspect(p, rec.knownGood)
		gone := p.Check() != nil
		p.Close()
		if gone {
			continue // it exited while we looked
		}
		if err != nil {
			row.Health, row.Error = "unknown", errors.Join(rerr, err).Error()
			rows = append(rows, row)
			continue
		}
		if rerr != nil {
			row.Error = rerr.Error()
		}
		row.Mounts, row.Health, row.States = len(c.Mounts), "ok", map[string]int{}
		for _, m := range c.Mounts {
			row.States[string(m.State)]++
			if m.State != StateOK {
				row.Health = "broken"
			}
		}
		row.Blocked = len(c.Blocked())
		rows = append(rows, row)
	}
	return rows
}

// statusAllMain is `status --all`.
func statusAllMain(asJSON bool, out io.Writer, log *logrus.Logger) int {
	rows := nodeStatus(log)
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			log.Errorf("status: %v", err)
			return ExitFailed
		}
		return ExitOK
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER\tNAME\tPID\tAUTOFS\tHEALTH\tLAST FIX")
	for _, r := range rows {
		health := r.Health
		if r.Health == "broken" {
			var parts []string
			for s, n := range r.States {
				if s != string(StateOK) {
					parts = append(parts, fmt.Sprintf("%d %s", n, s))
				}
			}
			sort.Strings(parts)
			health += " (" + strings.Join(parts, ", ") + ")"
		}
		if r.Blocked > 0 {
			health += fmt.Sprintf(", %d blocked", r.Blocked)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", dash(shortID(r.Container.ID)), dash(mounts.Escape(r.Container.Name)), r.Pid, r.Mounts, health, lastFixSummary(r.LastFix))
	}
	w.Flush()
	return ExitOK
}

// shortID is the first 12 characters of a long id, as podman and crictl
// show them.
func shortID(id string) string {
	if len(id) == 64 {
		return id[:12]
	}
	return mounts.Escape(id)
}

// lastFixSummary is the LAST FIX column: the last phase run, its wiring,
// when, and what it left.
func lastFixSummary(o *Outcome) string {
	if o == nil {
		return "-"
	}
	ph, name := o.PostResume, "post-resume"
	if ph == nil {
		ph, name = o.PreResume, "pre-resume"
	}
	if ph == nil {
		return "-"
	}
	s := fmt.Sprintf("%s by %s at %s, %d fixed", name, ph.Wiring, ph.Began.Format(time.RFC3339), len(ph.Fixed)+ph.FixedMore)
	if n := len(ph.Left) + ph.LeftMore; n > 0 {
		s += fmt.Sprintf(", %d left", n)
	}
	if len(ph.Errors) > 0 {
		s += ", failed"
	}
	return s
}
