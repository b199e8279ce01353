package hook

// The state file of a container: its schema, the lock, and how stale files
// are removed.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// StateDir holds one state file and one lock per container. It lives on
// the host's /run (gone at reboot, as are the containers), is owned by
// root and closed to others, and the hook refuses it if it is a link or
// writable by anyone else.
var StateDir = "/run/autofs-restore-hook"

// record is the state file of one container: what each phase did, so that
// a repeated, concurrent or interrupted run finishes the work without
// doing any of it twice.
type record struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	// Prepared lists the mounts the pre-resume phase made catatonic (or
	// found so), and those post-resume is about to release, with their
	// masters: post-resume fixes them even when their mount is gone by
	// then (systemd detaches a catatonic mount).
	Prepared   []preparedMount `json:"prepared,omitempty"`
	PreResume  *phaseMark      `json:"pre_resume,omitempty"`
	PostResume *phaseMark      `json:"post_resume,omitempty"`
	// Fixed are the devices of autofs mounts that a fix created or
	// reconnected: status reports them as ok.
	Fixed []uint64 `json:"fixed,omitempty"`
	// Restored are the devices of the autofs mounts the hook found when it
	// first looked at the restored container.
	Restored []uint64 `json:"restored,omitempty"`
	// LastErrors are the errors of the last run that failed.
	LastErrors []string `json:"last_errors,omitempty"`
	// Respawns are the automount daemons killed whose replacement has not
	// been seen serving yet: the next run starts them again from here.
	Respawns []units.Pending `json:"respawns,omitempty"`
	// Staging is the staging tmpfs of the systemd worker and what it
	// holds, recorded before each move into it: a later run recovers
	// from it only what this says (see mounts.RecoverStaged).
	Staging *mounts.StagingRecord `json:"staging,omitempty"`
	// Container is the container's id and name, as the runs knew them.
	Container Identity `json:"container,omitzero"`
	// LastFix is the outcome of the last run of each phase: what
	// operators (status --json), the tests and the benchmarks read.
	LastFix *Outcome `json:"last_fix,omitempty"`
}

// Outcome is what the hook did to a container: each phase's last run,
// and the OCI hook's follower's cost.
type Outcome struct {
	PreResume  *PhaseOutcome `json:"pre_resume,omitempty"`
	PostResume *PhaseOutcome `json:"post_resume,omitempty"`
	// Follower is the report of the OCI hook's detached worker, written
	// when it ends.
	Follower *FollowerReport `json:"follower,omitempty"`
}

// PhaseOutcome is one run of one phase.
type PhaseOutcome struct {
	Wiring string    `json:"wiring"`
	Mode   string    `json:"mode,omitempty"`
	Began  time.Time `json:"began"`
	Took   Millis    `json:"took_ms"`
	// Fixed are the mount points the phase fixed: made catatonic
	// (pre-resume), served by a restarted master again (post-resume).
	Fixed []string `json:"fixed,omitempty"`
	// Refused are the mount points it left alone on purpose, and why.
	Refused []MountNote `json:"refused,omitempty"`
	// Left are the mount points it tried and failed to fix, and why: the
	// next run (`fix`) tries them again.
	Left   []MountNote `json:"left,omitempty"`
	Errors []string    `json:"errors,omitempty"`
	// Preserved are the mount points whose filesystem on top was moved
	// aside for the restart and put back on the new mount.
	Preserved []string `json:"preserved,omitempty"`
	// FixedMore, RefusedMore and LeftMore count the mount points beyond
	// the first maxOutcomeMounts of each list.
	FixedMore   int `json:"fixed_more,omitempty"`
	RefusedMore int `json:"refused_more,omitempty"`
	LeftMore    int `json:"left_more,omitempty"`
}

// MountNote is a mount point and a reason.
type MountNote struct {
	Mountpoint string `json:"mountpoint"`
	Why        string `json:"why"`
}

// FollowerReport is what following a restore cost the OCI hook's
// detached worker (BENCHMARKS.md reads it).
type FollowerReport struct {
	// CPU is all the worker's CPU, its children included; Following the
	// part spent polling the restore; PreResume and PostResume the
	// phases'.
	CPU        Millis `json:"cpu_ms"`
	Following  Millis `json:"following_cpu_ms"`
	PreResume  Millis `json:"pre_resume_cpu_ms"`
	PostResume Millis `json:"post_resume_cpu_ms"`
	Polls      int    `json:"polls"`
	// Inspections are the mount-table reads while following.
	Inspections int `json:"inspections"`
	// NamedPolls is the poll at which the init had its own name again
	// (0: it never changed).
	NamedPolls int `json:"named_polls,omitempty"`
	// Window is "caught", "entered" (pre-resume began while CRIU held
	// the tasks, which ran before it ended) or "missed".
	Window string `json:"window"`
	// Ended says how the follow ended: "fixed", "failed", "gone" (the
	// restore failed or the container exited), "plugin" (the CRIU
	// plugin fixes it), "timeout".
	Ended string `json:"ended"`
}

// Millis is a duration written in milliseconds, with three decimals.
type Millis time.Duration

func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(m)/float64(time.Millisecond), 'f', 3, 64)), nil
}

func (m *Millis) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*m = 0
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*m = Millis(f * float64(time.Millisecond))
	return nil
}

// lastFix is the record's outcome, made if absent.
func (r *record) lastFix() *Outcome {
	if r.LastFix == nil {
		r.LastFix = &Outcome{}
	}
	return r.LastFix
}

// phaseOutcome is where the record keeps the outcome of phase ph.
func (r *record) phaseOutcome(ph Phase) **PhaseOutcome {
	if ph == PostResume {
		return &r.lastFix().PostResume
	}
	return &r.lastFix().PreResume
}

type preparedMount struct {
	Mountpoint string `json:"mountpoint"`
	Dev        uint64 `json:"dev"`
	Kind       string `json:"kind"`
	MasterPid  int    `json:"master_pid"`
	Unit       string `json:"unit,omitempty"`
}

type phaseMark struct {
	At time.Time `json:"at"`
	// Wiring is what ran the phase (Options.Wiring): a second wiring
	// installed beside the first finds the phase done, and says by what.
	Wiring string `json:"wiring,omitempty"`
}

// knownGood tells whether the autofs mount of device dev is known to be
// served by a live master: the hook fixed it, or it did not exist when the
// hook first looked at the restored container (a master made it since).
func (r record) knownGood(dev uint64) bool {
	if slices.Contains(r.Fixed, dev) {
		return true
	}
	return len(r.Restored) > 0 && !slices.Contains(r.Restored, dev)
}

// stateFile is an open, locked state file.
type stateFile struct {
	path string
	lock *os.File
	rec  record
	// out collects the outcome of the phase running now (runPhase).
	out *PhaseOutcome
}

// maxOutcomeMounts bounds each list of a phase's outcome: a container
// with thousands of mounts (of paths up to 4 KiB) must not make its state
// file too large to read back. What is beyond is counted (*More).
const maxOutcomeMounts = 64

// fixed, refused and left note a mount point in the running phase's
// outcome.
func (s *stateFile) fixed(where string) {
	if o := s.out; o != nil {
		if len(o.Fixed) < maxOutcomeMounts {
			o.Fixed = append(o.Fixed, where)
		} else {
			o.FixedMore++
		}
	}
}

func (s *stateFile) refused(where, why string) {
	if o := s.out; o != nil {
		if len(o.Refused) < maxOutcomeMounts {
			o.Refused = append(o.Refused, MountNote{where, why})
		} else {
			o.RefusedMore++
		}
	}
}

func (s *stateFile) left(where, why string) {
	if o := s.out; o != nil {
		if len(o.Left) < maxOutcomeMounts {
			o.Left = append(o.Left, MountNote{where, why})
		} else {
			o.LeftMore++
		}
	}
}

func ensureStateDir() error {
	if err := os.Mkdir(StateDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create state directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(StateDir, &st); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Uid != 0 || st.Mode&0o022 != 0 {
		return fmt.Errorf("state directory %s is not a root-owned directory closed to others: refused", StateDir)
	}
	return nil
}

func statePath(p *proc.Process) string {
	return filepath.Join(StateDir, strconv.Itoa(p.Pid)+"-"+strconv.FormatUint(p.StartTime, 10))
}

// lockState takes the container's lock, waiting up to d for another run
// to finish, and loads its record.
func lockState(p *proc.Process, d time.Duration) (*stateFile, error) {
	if err := ensureStateDir(); err != nil {
		return nil, err
	}
	removeStale()
	base := statePath(p)
	lf, err := os.OpenFile(base+".lock", os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	deadline := time.Now().Add(d)
	for {
		err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			lf.Close()
			return nil, fmt.Errorf("lock %s: %w", base+".lock", err)
		}
		if time.Now().After(deadline) {
			lf.Close()
			return nil, fmt.Errorf("another run holds %s for more than %s", base+".lock", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s := &stateFile{path: base + ".json", lock: lf, rec: record{Pid: p.Pid, StartTime: p.StartTime}}
	if b, err := readNoFollow(s.path); err == nil {
		if err := json.Unmarshal(b, &s.rec); err != nil {
			s.Unlock()
			return nil, fmt.Errorf("state file %s is damaged (%v): remove it to start over", s.path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		s.Unlock()
		return nil, fmt.Errorf("read state file: %w", err)
	}
	return s, nil
}

// hasState tells whether a state file exists for the container.
func hasState(p *proc.Process) bool {
	_, err := os.Lstat(statePath(p) + ".json")
	return err == nil
}

// removeStale removes the state and lock files of containers whose init
// is gone: its pid is free or names another process now, or it has exited
// and waits to be reaped (after runc checkpoint, the old init stayed a
// zombie here for seconds, until its parent, the host's PID 1, reaped it:
// long enough for the restore that follows to see it).
func removeStale() {
	ents, err := os.ReadDir(StateDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".json"), ".lock")
		pidS, startS, ok := strings.Cut(base, "-")
		pid, err1 := strconv.Atoi(pidS)
		start, err2 := strconv.ParseUint(startS, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		if st, err := proc.ReadStat(pid); err == nil && st.StartTime == start && !st.Exited() {
			continue
		}
		os.Remove(filepath.Join(StateDir, name))
	}
}

// loadState reads a container's record without locking (for status and
// dry runs). A missing file is an empty record; a damaged one is an error.
func loadState(p *proc.Process) (record, error) {
	var r record
	b, err := readNoFollow(statePath(p) + ".json")
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return record{}, fmt.Errorf("state file %s: %w", statePath(p)+".json", err)
	}
	return r, nil
}

func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// Save writes the record atomically (temp file and rename).
func (s *stateFile) Save() error {
	b, err := json.MarshalIndent(&s.rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	return nil
}

// Unlock releases the lock.
func (s *stateFile) Unlock() { s.lock.Close() }

// dropRespawn forgets the record of the daemon that was pid.
func (s *stateFile) dropRespawn(pid int) {
	s.rec.Respawns = slices.DeleteFunc(s.rec.Respawns, func(p units.Pending) bool { return p.OldPid == pid })
}

// recordStaging applies a staging event of the systemd worker to the
// record and saves it; the worker goes on only once this returned nil. A
// record that could not be saved stays in memory as the larger of the
// two, so that a later save never forgets what may be staged.
func (s *stateFile) recordStaging(raw json.RawMessage) error {
	next, err := mounts.ApplyStagingEvent(s.rec.Staging, raw)
	if err != nil {
		return err
	}
	prev := s.rec.Staging
	s.rec.Staging = next
	if err := s.Save(); err != nil {
		if next == nil || prev != nil && len(next.Entries) < len(prev.Entries) {
			s.rec.Staging = prev
		}
		return fmt.Errorf("record the staging area: %w", err)
	}
	return nil
}

// ReadOutcome is the outcome the state file of the container whose init
// is pid records (nil if none yet), with the container's identity: for
// the tests and benchmarks, which read it instead of log lines.
func ReadOutcome(pid int) (*Outcome, Identity, error) {
	p, err := proc.OpenProcess(pid)
	if err != nil {
		return nil, Identity{}, err
	}
	defer p.Close()
	rec, err := loadState(p)
	return rec.LastFix, rec.Container, err
}

// FixEnded tells whether the outcome o shows the end of the fix of the
// wiring that runs it: the OCI hook's follower's report, or a
// post-resume by the other wirings.
func (o *Outcome) FixEnded(wiring string) bool {
	switch {
	case o == nil:
		return false
	case wiring == WiringOCI:
		return o.Follower != nil
	}
	return o.PostResume != nil && o.PostResume.Wiring == wiring
}
