package hook

// The status command: the report of a container's autofs mounts, as a
// table or JSON.

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// MountStatus is one row of `status --json`.
type MountStatus struct {
	Mountpoint string `json:"mountpoint"`
	Type       string `json:"type"`
	Dev        string `json:"dev"`
	Master     string `json:"master"`
	MasterPid  int    `json:"master_pid,omitempty"`
	Unit       string `json:"unit,omitempty"`
	// UnitConfirmed is set when the container's systemd said that this
	// unit's Where= is the mount point (else the unit name is derived
	// from the path).
	UnitConfirmed bool     `json:"unit_confirmed,omitempty"`
	State         string   `json:"state"`
	OnTop         string   `json:"on_top,omitempty"`
	Submounts     int      `json:"submounts,omitempty"`
	Nested        []int    `json:"nested_copies,omitempty"`
	Notes         []string `json:"notes,omitempty"`
}

// Report is the output of `status --json`.
type Report struct {
	Pid int `json:"pid"`
	// Container is the container's id and name, as far as they are known.
	Container Identity      `json:"container,omitzero"`
	Restored  bool          `json:"restored"`
	Evidence  []string      `json:"restore_evidence,omitempty"`
	Mounts    []MountStatus `json:"mounts"`
	// Blocked are the container's processes (host pids) sleeping in
	// autofs_wait: waiting on an autofs request.
	Blocked []int `json:"blocked,omitempty"`
	// LastErrors are the errors of the hook's last run on this container
	// (from its state file), if it failed.
	LastErrors []string `json:"last_errors,omitempty"`
	// Pending are the automount daemons the hook killed whose replacement
	// never served: the next `fix` starts them again.
	Pending []PendingDaemon `json:"pending_respawns,omitempty"`
	// Phases are the phases the hook finished on this container, with
	// when and by which wiring (from its state file).
	Phases []PhaseDone `json:"phases,omitempty"`
	// LastFix is the outcome of the hook's last run of each phase on
	// this container (from its state file).
	LastFix *Outcome `json:"last_fix,omitempty"`
}

// PhaseDone is a phase of the fix the state file marks done.
type PhaseDone struct {
	Phase  Phase     `json:"phase"`
	At     time.Time `json:"at"`
	Wiring string    `json:"wiring,omitempty"`
}

// PendingDaemon is an automount daemon killed by the hook and not yet
// running again.
type PendingDaemon struct {
	OldPid int      `json:"old_pid"`
	Argv   []string `json:"argv"`
	Mounts []string `json:"mounts"`
}

func (c *Container) report() Report {
	r := Report{Pid: c.Proc.Pid, Restored: c.Evidence.Restored(), Mounts: []MountStatus{}}
	if c.Evidence.OwnTimeNS {
		r.Evidence = append(r.Evidence, "own time namespace")
	}
	if c.Evidence.Traced {
		r.Evidence = append(r.Evidence, "tasks traced (restore in progress)")
	}
	for _, m := range c.Mounts {
		s := MountStatus{
			Mountpoint:    m.Mountpoint(),
			Type:          m.Options.Mode.String(),
			Dev:           devString(m.Dev()),
			Master:        string(m.Kind),
			MasterPid:     m.Master.Pid,
			Unit:          m.Unit,
			UnitConfirmed: m.UnitConfirmed,
			State:         string(m.State),
			Submounts:     len(m.Submounts),
			Nested:        m.NestedPids,
		}
		if m.OnTop != nil {
			s.OnTop = m.OnTop.FSType + " " + m.OnTop.Source
		}
		r.Mounts = append(r.Mounts, s)
	}
	r.Blocked = c.Blocked()
	return r
}

// Blocked lists the container's processes (host pids) that sleep in
// autofs_wait now.
func (c *Container) Blocked() []int {
	var pids []int
	for _, pid := range c.Procs.Pids {
		if proc.Wchan(pid) == "autofs_wait" {
			pids = append(pids, pid)
		}
	}
	return pids
}

func statusMain(pid int, known Identity, asJSON bool, out io.Writer, log *logrus.Logger) int {
	p, err := proc.OpenProcess(pid)
	if err != nil {
		log.Errorf("status: %v", err)
		return ExitRefused
	}
	defer p.Close()
	if err := refuseHost(pid); err != nil {
		log.Errorf("status: %v", err)
		return ExitRefused
	}
	rec, err := loadState(p)
	if err != nil {
		log.Warnf("status: %v: states are judged without it", err)
	}
	c, err := inspect(p, rec.knownGood)
	if err != nil {
		log.Errorf("status: %v", err)
		return ExitFailed
	}
	c.confirmUnits(log)
	r := c.report()
	r.LastErrors = rec.LastErrors
	r.LastFix = rec.LastFix
	r.Container = identify(known, p, &rec)
	setIdentity(log, r.Container)
	for _, ph := range []struct {
		phase Phase
		mark  *phaseMark
	}{{PreResume, rec.PreResume}, {PostResume, rec.PostResume}} {
		if ph.mark != nil {
			r.Phases = append(r.Phases, PhaseDone{Phase: ph.phase, At: ph.mark.At, Wiring: ph.mark.Wiring})
		}
	}
	for _, p := range rec.Respawns {
		d := PendingDaemon{OldPid: p.OldPid}
		if p.Daemon != nil {
			d.Argv = p.Daemon.Argv
		}
		for _, t := range p.Targets {
			d.Mounts = append(d.Mounts, t.Where)
		}
		r.Pending = append(r.Pending, d)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			log.Errorf("status: %v", err)
			return ExitFailed
		}
		return ExitOK
	}
	writeTable(out, r)
	return ExitOK
}

func writeTable(out io.Writer, r Report) {
	restored := "no"
	if r.Restored {
		restored = "yes (" + strings.Join(r.Evidence, ", ") + ")"
	}
	who := ""
	if r.Container.ID != "" {
		who = " " + mounts.Escape(r.Container.ID)
	}
	if r.Container.Name != "" {
		who += " (" + mounts.Escape(r.Container.Name) + ")"
	}
	fmt.Fprintf(out, "container%s, init pid %d, restored: %s, %d autofs mount(s)\n", who, r.Pid, restored, len(r.Mounts))
	if len(r.Mounts) > 0 {
		writeMounts(out, r.Mounts)
	}
	if len(r.Blocked) > 0 {
		fmt.Fprintf(out, "%d process(es) of the container blocked in autofs_wait (host pids): %v\n", len(r.Blocked), r.Blocked)
	}
	for _, p := range r.Pending {
		var ms []string
		for _, m := range p.Mounts {
			ms = append(ms, mounts.Escape(m))
		}
		fmt.Fprintf(out, "automount (was pid %d) killed by the hook and not running again: its mounts %s have no master; run fix once the cause is fixed\n", p.OldPid, strings.Join(ms, ", "))
	}
	for _, p := range r.Phases {
		fmt.Fprintf(out, "%s done%s at %s\n", p.Phase, byWiring(p.Wiring), p.At.Format(time.RFC3339))
	}
	if r.LastFix != nil {
		fmt.Fprintf(out, "last fix: %s\n", lastFixSummary(r.LastFix))
	}
	for _, e := range r.LastErrors {
		fmt.Fprintf(out, "last run failed: %s\n", controlEscaped(e))
	}
}

// confirmUnits asks the container's systemd which automount unit serves
// each systemd mount (its Where=). Failing that, the names derived from
// the paths stay, marked as guessed.
func (c *Container) confirmUnits(log *logrus.Logger) {
	need := false
	for _, m := range c.Mounts {
		need = need || m.Kind == units.Systemd
	}
	if !need {
		return
	}
	req := units.UnitsRequest{Deadline: time.Now().Add(5 * time.Second)}
	for _, m := range c.Mounts {
		if m.Kind == units.Systemd {
			req.Wheres = append(req.Wheres, m.Mountpoint())
		}
	}
	byWhere, err := units.SystemdUnits.Run(c.Proc, req, 6*time.Second, nil)
	if err != nil {
		log.Warnf("status: could not ask the container's systemd for its units (%v): unit names are derived from the paths", err)
		return
	}
	for _, m := range c.Mounts {
		if u, ok := byWhere[m.Mountpoint()]; ok && m.Kind == units.Systemd {
			m.Unit, m.UnitConfirmed = u, true
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeMounts(out io.Writer, ms []MountStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MOUNT POINT\tTYPE\tMASTER\tUNIT\tSTATE\tON TOP\tNESTED COPIES")
	for _, m := range ms {
		master := m.Master
		if m.MasterPid > 0 {
			master += " (" + strconv.Itoa(m.MasterPid) + ")"
		}
		nested := "-"
		if len(m.Nested) > 0 {
			nested = strconv.Itoa(len(m.Nested))
		}
		unit := dash(m.Unit)
		if m.Unit != "" && !m.UnitConfirmed {
			unit += " (guessed)"
		}
		// The unit name comes from the container's systemd, what is on top
		// from its mount table: their control characters are escaped.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mounts.Escape(m.Mountpoint), m.Type, master, controlEscaped(unit), m.State, controlEscaped(dash(m.OnTop)), nested)
	}
	tw.Flush()
}
