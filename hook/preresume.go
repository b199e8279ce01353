package hook

// Pre-resume: which mounts are made catatonic before the container's
// tasks run again, and the doing of it.

import (
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

// catatonic is the worker task that makes the stale mounts catatonic,
// inside the container's mount namespace and root (mounts.InNS).
var catatonic = worker.NewTask("catatonic", func(env *worker.Env, targets []mounts.Target, _ door.Logf) ([]mounts.TargetResult, error) {
	return env.MakeCatatonic(targets), nil
})

// skipNested tells whether m is left alone because of --nested=skip, and
// warns about nested copies either way.
func skipNested(m *Mount, opts Options, log *logrus.Entry) bool {
	if len(m.NestedPids) == 0 {
		return false
	}
	if opts.SkipNested {
		log.WithField("mount", mounts.Escape(m.Mountpoint())).Warnf("left alone (--nested=skip): processes %v hold copies of it in other mount namespaces", m.NestedPids)
		return true
	}
	log.WithField("mount", mounts.Escape(m.Mountpoint())).Warnf("processes %v hold copies of it in other mount namespaces without propagation: their copies become catatonic (accesses fail with ENOENT)", m.NestedPids)
	return false
}

// managed tells whether the hook knows how to fix m's master.
func managed(m *Mount) bool { return m.Kind == units.Systemd || m.Kind == units.Automount }

// planPreResume picks the mounts pre-resume makes catatonic: stale ones
// of known masters that nothing covers (a covered mount cannot hang, and
// post-resume preserves what covers it).
func planPreResume(ms []*Mount, opts Options, log *logrus.Entry) []*Mount {
	var picked []*Mount
	for _, m := range ms {
		switch {
		case m.Kind == units.Unknown:
			log.WithFields(logrus.Fields{"mount": mounts.Escape(m.Mountpoint()), "master": string(m.Kind)}).Warnf("unknown master (pid %d): left alone", m.Master.Pid)
		case m.State != StateStale, m.OnTop != nil, skipNested(m, opts, log):
		default:
			picked = append(picked, m)
		}
	}
	return picked
}

func preResume(c *Container, sf *stateFile, opts Options, log *logrus.Entry) error {
	if !opts.DryRun {
		rearmPressure(c, log)
	}
	picked := planPreResume(c.Mounts, opts, log)
	if len(picked) == 0 {
		return nil
	}
	targets := make([]mounts.Target, len(picked))
	for i, m := range picked {
		targets[i] = mounts.Target{Where: m.Mountpoint(), Dev: m.Dev()}
	}
	if opts.DryRun {
		for _, m := range picked {
			log.WithFields(logrus.Fields{"mount": mounts.Escape(m.Mountpoint()), "master": string(m.Kind)}).Info("would make catatonic (dry run)")
		}
		return nil
	}
	start := time.Now()
	res, err := catatonic.Run(c.Proc, targets, workerTimeout, workerLog(log))
	if err != nil {
		return fmt.Errorf("pre-resume: make stale mounts catatonic: %w", err)
	}
	var errs []error
	for i, r := range res {
		m := picked[i]
		ml := log.WithFields(logrus.Fields{"mount": mounts.Escape(m.Mountpoint()), "master": string(m.Kind)})
		if r.Error != "" {
			ml.Errorf("make catatonic: %s", r.Error)
			errs = append(errs, fmt.Errorf("pre-resume %s: %s", mounts.Escape(m.Mountpoint()), r.Error))
			sf.left(m.Mountpoint(), "make catatonic: "+r.Error)
			continue
		}
		ml.Info("made catatonic: accesses fail fast until post-resume restarts its master")
		sf.fixed(m.Mountpoint())
		sf.rec.Prepared = append(sf.rec.Prepared, preparedMount{Mountpoint: m.Mountpoint(), Dev: m.Dev(), Kind: string(m.Kind), MasterPid: m.Master.Pid, Unit: m.Unit})
	}
	// One worker made them all catatonic: its time is the batch's.
	log.WithFields(logrus.Fields{"mounts": len(res), "failed": len(errs), "took": time.Since(start).Round(time.Microsecond)}).Info("catatonic batch done")
	return errors.Join(errs...)
}

// childFieldKeys are the fields a child's log line may carry
// (door.Fields): what the children say a line is about. Any other key is
// dropped, so that a child's field never stands for one of the run's
// (the container, its name, the mode, the wiring), which the logger adds
// only where a line has none (fieldsHook).
var childFieldKeys = map[string]bool{"mount": true, "fstype": true, "unit": true}

// workerLog logs a child's lines at the level the child gave them, with
// their fields (childFieldKeys); a field never replaces one of log's own.
func workerLog(log *logrus.Entry) door.Logf {
	return func(level door.Level, s string, fields door.Fields) {
		l := log
		for k, v := range fields {
			if _, taken := log.Data[k]; !taken && childFieldKeys[k] {
				l = l.WithField(k, v)
			}
		}
		switch level {
		case door.LevelWarn:
			l.Warn(s)
		case door.LevelError:
			l.Error(s)
		default:
			l.Info(s)
		}
	}
}
