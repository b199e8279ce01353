package hook

// Post-resume: which masters are restarted (systemd units, automount
// daemons) and the doing of it, with the state-file records that make an
// interrupted run resumable.

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// planPostResume picks what post-resume restarts: the systemd units
// (with the mounts prepared at pre-resume that systemd has detached since)
// and the automount daemons, each with its mounts.
func planPostResume(c *Container, prepared []preparedMount, opts Options, log *logrus.Entry) ([]units.RestartTarget, map[proc.Ref][]*Mount) {
	wasPrepared := map[uint64]bool{}
	for _, pm := range prepared {
		wasPrepared[pm.Dev] = true
	}
	var sdTargets []units.RestartTarget
	daemons := map[proc.Ref][]*Mount{}
	seen := map[string]bool{}
	for _, m := range c.Mounts {
		needs := m.State == StateStale || (m.State == StateCatatonic && wasPrepared[m.Dev()])
		switch {
		case m.Kind == units.Unknown:
			log.WithField("mount", mounts.Escape(m.Mountpoint())).Warnf("unknown master (pid %d): left alone", m.Master.Pid)
			continue
		case !needs || !managed(m):
			continue
		case m.State == StateStale && skipNested(m, opts, log):
			continue
		}
		seen[m.Mountpoint()] = true
		if m.Kind == units.Systemd {
			sdTargets = append(sdTargets, units.RestartTarget{Where: m.Mountpoint(), Unit: m.Unit, Dev: m.Dev()})
		} else {
			daemons[m.Master] = append(daemons[m.Master], m)
		}
	}
	// systemd detaches a catatonic mount on its own: units prepared at
	// pre-resume whose mount is gone are restarted all the same.
	for _, pm := range prepared {
		if pm.Kind == string(units.Systemd) && !seen[pm.Mountpoint] && c.Table.Find(pm.Mountpoint) == nil {
			sdTargets = append(sdTargets, units.RestartTarget{Where: pm.Mountpoint, Unit: pm.Unit})
			seen[pm.Mountpoint] = true
		}
	}
	return sdTargets, daemons
}

func postResume(c *Container, sf *stateFile, opts Options, log *logrus.Entry) error {
	sdTargets, daemons := planPostResume(c, sf.rec.Prepared, opts, log)
	var errs []error
	// A run killed in the middle may have left a filesystem staged: the
	// systemd worker puts it back, even with nothing else to do. Only the
	// state file says so, never the container's mount table (the
	// container can mount a tmpfs that looks like the staging tmpfs).
	if len(sdTargets) > 0 || sf.rec.Staging != nil {
		if err := restartSystemd(c, sdTargets, sf, opts, log); err != nil {
			errs = append(errs, err)
		}
	}
	if err := retryRespawns(c, sf, opts, log); err != nil {
		errs = append(errs, err)
	}
	masters := slices.SortedFunc(maps.Keys(daemons), func(a, b proc.Ref) int { return cmp.Compare(a.Pid, b.Pid) })
	pidsOf := func(rs []proc.Ref) []int {
		pids := make([]int, len(rs))
		for i, r := range rs {
			pids[i] = r.Pid
		}
		return pids
	}
	if len(masters) > maxDaemons {
		errs = append(errs, fmt.Errorf("post-resume: %d automount daemons to respawn, more than the %d one run handles: %v left for the next run (run fix again)", len(masters), maxDaemons, pidsOf(masters[maxDaemons:])))
		masters = masters[:maxDaemons]
	}
	for i, daemon := range masters {
		if opts.pastDeadline() {
			errs = append(errs, fmt.Errorf("post-resume: the run's deadline has passed: automount %v not respawned (run fix again)", pidsOf(masters[i:])))
			break
		}
		if err := respawnDaemon(c, daemon, daemons[daemon], sf, opts, log); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func restartSystemd(c *Container, targets []units.RestartTarget, sf *stateFile, opts Options, log *logrus.Entry) error {
	if opts.DryRun {
		for _, t := range targets {
			log.WithFields(logrus.Fields{"mount": mounts.Escape(t.Where), "master": "systemd", "unit": t.Unit}).Info("would restart (dry run)")
		}
		return nil
	}
	// Written down before the worker touches them: a run killed once it
	// released a mount (systemd then detaches it) leaves the next run the
	// list of units it still has to restart.
	if recordTargets(sf, targets) {
		if err := sf.Save(); err != nil {
			return fmt.Errorf("post-resume: record the units to restart: %w", err)
		}
	}
	start := time.Now()
	timeout := opts.stepTimeout(opts.timeout(len(targets)))
	if timeout == 0 {
		return errors.New("post-resume: the run's deadline has passed: systemd automount units not restarted (run fix again)")
	}
	req := units.RestartRequest{Targets: targets, Deadline: time.Now().Add(timeout), Staged: sf.rec.Staging}
	// The worker records its staging area and each filesystem it stages
	// here, saved before it goes on: a run killed at any point leaves a
	// record of what may be staged, and nothing in the container's tree
	// is needed to find it again.
	res, err := units.SystemdRestart.RunEvents(c.Proc, req, timeout+2*time.Second, workerLog(log), sf.recordStaging)
	if err != nil {
		return fmt.Errorf("post-resume: restart systemd automount units: %w", err)
	}
	var errs []error
	defer func() {
		// One worker restarted them all: its time is the batch's.
		log.WithFields(logrus.Fields{"master": "systemd", "units": len(res), "failed": len(errs), "took": time.Since(start).Round(time.Microsecond)}).Info("restart batch done")
	}()
	for _, r := range res {
		ml := log.WithFields(logrus.Fields{"mount": mounts.Escape(r.Where), "master": "systemd", "unit": r.Unit})
		if r.Error != "" {
			ml.Errorf("restart: %s", r.Error)
			if r.Where != "" {
				sf.left(r.Where, "restart "+r.Unit+": "+r.Error)
			}
			if r.Unit == "" {
				errs = append(errs, fmt.Errorf("post-resume: %s", r.Error))
			} else {
				errs = append(errs, fmt.Errorf("post-resume %s (%s): %s", mounts.Escape(r.Where), r.Unit, r.Error))
			}
			continue
		}
		what := "restarted"
		if r.MovedBack {
			what += ", filesystem on top preserved"
			if len(sf.out.Preserved) < maxOutcomeMounts {
				sf.out.Preserved = append(sf.out.Preserved, r.Where)
			}
		}
		ml.WithField("dev", devString(r.NewDev)).Info(what)
		sf.rec.Fixed = append(sf.rec.Fixed, r.NewDev)
		sf.fixed(r.Where)
	}
	return errors.Join(errs...)
}

// respawnDaemon kills the automount daemon that serves ms and starts it
// again (units.RespawnAutomount), as inspect saw it: a daemon that died
// since, and a process that took its pid, are refused there.
func respawnDaemon(c *Container, daemon proc.Ref, ms []*Mount, sf *stateFile, opts Options, log *logrus.Entry) error {
	dl := log.WithFields(logrus.Fields{"master": "automount", "master_pid": daemon.Pid})
	if opts.DryRun {
		for _, m := range ms {
			dl.WithField("mount", mounts.Escape(m.Mountpoint())).Info("would respawn its automount daemon (dry run)")
		}
		return nil
	}
	start := time.Now()
	var targets []mounts.Target
	mine := map[uint64]bool{}
	for _, m := range ms {
		targets = append(targets, mounts.Target{Where: m.Mountpoint(), Dev: m.Dev()})
		mine[m.Dev()] = true
	}
	also := alsoServedBy(c, daemon, mine)
	// Written down before the kill: if the new daemon does not come up,
	// the next run starts it again from the record.
	record := func(p *units.Pending) error {
		sf.rec.Respawns = append(sf.rec.Respawns, *p)
		return sf.Save()
	}
	res, err := units.RespawnAutomount(c.Proc, daemon, targets, units.RespawnOptions{Timeout: opts.timeout(len(targets) + len(also)), Deadline: opts.Deadline, Log: workerLog(dl), BeforeKill: record, Also: also})
	if res != nil {
		// Those it serves work, even if others do not.
		sf.rec.Fixed = append(sf.rec.Fixed, res.Devs...)
	}
	if err != nil {
		dl.Errorf("respawn: %v", err)
		for _, t := range targets {
			sf.left(t.Where, fmt.Sprintf("respawn automount %d: %v", daemon.Pid, err))
		}
		return fmt.Errorf("post-resume: automount %d: %w%s", daemon.Pid, err, retryHint(sf, daemon.Pid, res))
	}
	for _, t := range targets {
		sf.fixed(t.Where)
	}
	sf.dropRespawn(daemon.Pid)
	dl.WithFields(logrus.Fields{"new_pid": res.Pid, "mounts": len(ms) + len(also), "took": time.Since(start).Round(time.Microsecond), "stage_caps": res.StageCaps}).Info("automount killed and started again; every mount reconnected")
	return nil
}

// alsoServedBy lists the other mounts that daemon serves (those not in
// skip): healthy ones, an indirect mount typically. Killing the
// daemon leaves them masterless too, so the respawn waits for them as well.
func alsoServedBy(c *Container, daemon proc.Ref, skip map[uint64]bool) []mounts.Target {
	var also []mounts.Target
	for _, m := range c.Mounts {
		if m.Master == daemon && !skip[m.Dev()] && !m.Options.Catatonic() {
			also = append(also, mounts.Target{Where: m.Mountpoint(), Dev: m.Dev()})
		}
	}
	return also
}

// retryHint tells the operator what a rerun does after a failed respawn.
func retryHint(sf *stateFile, pid int, res *units.Respawned) string {
	if res != nil && res.Pid > 0 {
		if st, err := proc.ReadStat(res.Pid); err == nil && !st.Exited() {
			return fmt.Sprintf(" (automount %d runs but does not serve them: are they still in the container's master map?)", res.Pid)
		}
	}
	for _, p := range sf.rec.Respawns {
		if p.OldPid == pid {
			return " (its mounts fail fast meanwhile; once the cause is fixed, `fix` starts the daemon again)"
		}
	}
	return ""
}

// retryRespawns starts again the automount daemons an earlier run killed
// and whose replacement did not come up: their mounts are left catatonic
// with no master, which no other step of the fix would notice.
func retryRespawns(c *Container, sf *stateFile, opts Options, log *logrus.Entry) error {
	var errs []error
	for _, p := range slices.Clone(sf.rec.Respawns) {
		dl := log.WithFields(logrus.Fields{"master": "automount", "master_pid": p.OldPid})
		var unserved []string
		for _, t := range p.Targets {
			if m := c.mountAt(t.Where); m == nil || m.Options.Catatonic() || m.Master.Pid == 0 {
				unserved = append(unserved, mounts.Escape(t.Where))
			}
		}
		if len(unserved) == 0 {
			dl.Info("its mounts are served again: nothing left to retry")
			if !opts.DryRun {
				sf.dropRespawn(p.OldPid)
			}
			continue
		}
		// Another automount would compete with the one we would start.
		if other := c.automountPids(); len(other) > 0 {
			err := fmt.Errorf("post-resume: automount %d was killed and %s still have no master, but automount %v runs in the container: not started a second time; stop it or restart automount by hand", p.OldPid, strings.Join(unserved, ", "), other)
			dl.Error(err)
			errs = append(errs, err)
			continue
		}
		if opts.DryRun {
			dl.Infof("would start the killed daemon again for %s (dry run)", strings.Join(unserved, ", "))
			continue
		}
		start := time.Now()
		res, err := units.RetryRespawn(c.Proc, &p, units.RespawnOptions{Timeout: opts.timeout(len(p.Targets)), Deadline: opts.Deadline, Log: workerLog(dl)})
		if res != nil {
			sf.rec.Fixed = append(sf.rec.Fixed, res.Devs...)
		}
		if err != nil {
			dl.Errorf("start again: %v", err)
			errs = append(errs, fmt.Errorf("post-resume: start automount %d again: %w", p.OldPid, err))
			for _, t := range p.Targets {
				sf.left(t.Where, fmt.Sprintf("start automount %d again: %v", p.OldPid, err))
			}
			continue
		}
		for _, t := range p.Targets {
			sf.fixed(t.Where)
		}
		sf.dropRespawn(p.OldPid)
		dl.WithFields(logrus.Fields{"new_pid": res.Pid, "mounts": len(p.Targets), "took": time.Since(start).Round(time.Microsecond), "stage_caps": res.StageCaps}).Info("automount started again from the record of the earlier run; every mount reconnected")
	}
	return errors.Join(errs...)
}

// recordTargets adds the systemd targets to the prepared mounts of the
// record, and tells whether it added any.
func recordTargets(sf *stateFile, targets []units.RestartTarget) bool {
	added := false
	for _, t := range targets {
		known := slices.ContainsFunc(sf.rec.Prepared, func(p preparedMount) bool {
			return p.Mountpoint == t.Where && p.Dev == t.Dev
		})
		if !known && t.Dev != 0 {
			sf.rec.Prepared = append(sf.rec.Prepared, preparedMount{Mountpoint: t.Where, Dev: t.Dev, Kind: string(units.Systemd), Unit: t.Unit})
			added = true
		}
	}
	return added
}
