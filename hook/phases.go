package hook

// The phase engine, which every mode runs: one fix run takes the
// container's lock and state file, reads the container once, and runs the
// phases it was asked for.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// Phase is one of the two steps of the fix.
type Phase string

const (
	// PreResume runs while the restored tasks are still stopped: nothing
	// can be pending on any mount, so every stale mount that nothing
	// covers is made catatonic. From then on an access fails at once
	// instead of hanging.
	PreResume Phase = "pre-resume"
	// PostResume runs once the tasks run: it restarts the masters and
	// puts preserved filesystems back.
	PostResume Phase = "post-resume"
)

// Deadlines of the steps. Every wait of the hook is bounded by one.
var (
	lockTimeout   = 30 * time.Second
	workerTimeout = 10 * time.Second
	// The default of --timeout grows with the work: restartTimeout, plus
	// perMountTimeout for each mount to fix (a container's systemd
	// restarts 1,003 units in about 3 s natively, and ten times slower on
	// an emulated CPU), at most maxRestartTimeout. restartTimeout is for
	// a loaded node: with 10 containers restored at once on 2 emulated
	// CPUs, restarts that work took up to 19 s, and the old 20 s failed
	// most of them (the node-scale benchmark, BENCHMARKS.md).
	restartTimeout    = 60 * time.Second
	perMountTimeout   = 50 * time.Millisecond
	maxRestartTimeout = 3 * time.Minute
)

// Bounds of one run (one fix of one container), whatever the container
// holds: more autofs mounts than maxAutofsMounts is refused, more
// automount daemons than maxDaemons are left for a later run, and
// runMargin is the part of the run's deadline beyond the lock and the
// restarts (inspection, pre-resume, records).
const (
	maxAutofsMounts = 4096
	maxDaemons      = 16
	runMargin       = 30 * time.Second
)

// stepTimeout is d, or what is left of the run's deadline if that is
// less (zero once it has passed).
func (o Options) stepTimeout(d time.Duration) time.Duration {
	if o.Deadline.IsZero() {
		return d
	}
	return max(min(d, time.Until(o.Deadline)), 0)
}

// pastDeadline tells whether the run's deadline has passed.
func (o Options) pastDeadline() bool {
	return !o.Deadline.IsZero() && !time.Now().Before(o.Deadline)
}

// timeout is the deadline of a master's restart for n mounts: --timeout
// when given, else the default for n mounts.
func (o Options) timeout(n int) time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return min(restartTimeout+time.Duration(n)*perMountTimeout, maxRestartTimeout)
}

// errRefused marks errors that map to ExitRefused.
var errRefused = errors.New("refused")

// fixPid runs the given phases for the container whose init is pid.
func fixPid(pid int, phases []Phase, opts Options) error {
	p, err := proc.OpenProcess(pid)
	if err != nil {
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	defer p.Close()
	if err := refuseHost(pid); err != nil {
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	log := opts.Log.WithField("pid", pid)
	// The common case, a container without autofs mounts: nothing to
	// lock, nothing to record.
	t, err := mounts.ReadTable(pid)
	if err == nil && len(t.Autofs) == 0 && !hasState(p) {
		log.Debug("no autofs mounts: nothing to do")
		return nil
	}
	n := 0
	if err == nil {
		n = len(t.Autofs)
	}
	if n > maxAutofsMounts {
		return fmt.Errorf("%w: the container has %d autofs mounts, more than the %d one run handles", errRefused, n, maxAutofsMounts)
	}
	// One deadline for the whole run: the wait for the lock, the time
	// of a restart of all its mounts, and a margin; every step gets at
	// most what is left of it (Options.stepTimeout).
	if opts.Deadline.IsZero() {
		opts.Deadline = time.Now().Add(lockTimeout + opts.timeout(n) + runMargin)
	}
	var sf *stateFile
	if !opts.DryRun {
		if sf, err = lockState(p, lockTimeout); err != nil {
			return err
		}
		defer sf.Unlock()
	} else {
		rec, err := loadState(p)
		if err != nil {
			return err
		}
		sf = &stateFile{rec: rec}
	}
	// Every line from here on says which container; the record keeps it
	// for status and the runs that know less (fix --pid).
	opts.Identity = identify(opts.Identity, p, &sf.rec)
	setIdentity(opts.Log, opts.Identity)
	sf.rec.Container = opts.Identity
	// Post-resume restarts masters and waits for them: at most
	// slotCount() at once on the node (a post-resume done already takes
	// none), and the run's deadline moves by the wait for the slot.
	if slices.Contains(phases, PostResume) && !opts.DryRun && (sf.rec.PostResume == nil || opts.Force) {
		began := time.Now()
		release := nodeSlot(log)
		defer release()
		opts.Deadline = opts.Deadline.Add(time.Since(began))
	}
	if !opts.DryRun {
		// The errors of this run replace those of the last one.
		sf.rec.LastErrors = nil
	}
	var errs []error
	for _, ph := range phases {
		err := runPhase(p, ph, sf, opts, log.WithField("phase", string(ph)))
		if err == nil {
			continue
		}
		// Whatever step failed, a container that is gone explains it:
		// say so first, and do not start the next phase.
		if gone := p.Check(); gone != nil {
			return fmt.Errorf("the container exited during %s (%w): %w", ph, gone, err)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func runPhase(p *proc.Process, ph Phase, sf *stateFile, opts Options, log *logrus.Entry) error {
	start := time.Now()
	mark := &sf.rec.PreResume
	if ph == PostResume {
		mark = &sf.rec.PostResume
	}
	if *mark != nil && !opts.Force {
		log.Infof("%s already done%s at %s: nothing to do", ph, byWiring((*mark).Wiring), (*mark).At.Format(time.RFC3339Nano))
		return nil
	}
	c, err := inspect(p, sf.rec.knownGood)
	if err != nil {
		return fmt.Errorf("%s: %w", ph, err)
	}
	if len(sf.rec.Restored) == 0 {
		for _, m := range c.Mounts {
			sf.rec.Restored = append(sf.rec.Restored, m.Dev())
		}
	}
	if opts.AssumeRestored {
		c.Evidence.Forced = true
		for _, m := range c.Mounts {
			m.State = stateOf(m, true)
		}
	}
	if len(c.Mounts) == 0 && len(sf.rec.Prepared) == 0 {
		log.Debugf("no autofs mounts: nothing to do")
		if !opts.DryRun {
			*mark = &phaseMark{At: time.Now(), Wiring: opts.Wiring}
			return sf.Save()
		}
		return nil
	}
	sf.out = &PhaseOutcome{Wiring: opts.Wiring, Mode: opts.Mode, Began: start}
	for _, m := range c.Mounts {
		switch {
		case m.Kind == units.Unknown:
			sf.refused(m.Mountpoint(), fmt.Sprintf("unknown master (pid %d)", m.Master.Pid))
		case opts.SkipNested && len(m.NestedPids) > 0 && m.State == StateStale:
			sf.refused(m.Mountpoint(), "--nested=skip: copies in other mount namespaces")
		}
	}
	var perr error
	if ph == PreResume {
		perr = preResume(c, sf, opts, log)
	} else {
		perr = postResume(c, sf, opts, log)
	}
	if opts.DryRun {
		return perr
	}
	if perr == nil {
		*mark = &phaseMark{At: time.Now(), Wiring: opts.Wiring}
	} else {
		// Not marked done: the next run (CRIU's second call, or `fix`)
		// tries again what failed; what succeeded is recorded and skipped.
		sf.rec.LastErrors = append(sf.rec.LastErrors, strings.Split(perr.Error(), "\n")...)
		sf.out.Errors = strings.Split(perr.Error(), "\n")
		if len(sf.out.Errors) > maxOutcomeMounts {
			sf.out.Errors = append(sf.out.Errors[:maxOutcomeMounts], fmt.Sprintf("and %d more", len(sf.out.Errors)-maxOutcomeMounts))
		}
	}
	sf.out.Took = Millis(time.Since(start))
	*sf.rec.phaseOutcome(ph), sf.out = sf.out, nil
	if err := sf.Save(); err != nil {
		perr = errors.Join(perr, err)
	}
	if ph == PostResume {
		warnBlocked(c, log)
	}
	log.Infof("%s finished in %s", ph, time.Since(start).Round(time.Microsecond))
	return perr
}

// warnBlocked names the container's processes that still sleep in
// autofs_wait once post-resume is done: requesters that were waiting
// before the hook could act. Linux 6.1 (Debian 12) does not wake them when
// their mount becomes catatonic (autofs_catatonic_mode wakes only
// interruptible sleepers, autofs_wait sleeps killable); 6.12 does. On
// such a kernel only SIGKILL ends them, which the hook leaves to the
// operator.
func warnBlocked(c *Container, log *logrus.Entry) {
	if b := c.Blocked(); len(b) > 0 {
		log.Warnf("%d process(es) of the container in autofs_wait after the fix (host pids %v): a request that was pending before the hook could act "+
			"stays asleep on kernels that do not wake it when its mount becomes catatonic (Linux 6.1 does not, 6.12 does); only SIGKILL ends it", len(b), b)
	}
}
