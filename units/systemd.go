package units

// The systemd worker tasks: which unit serves which mount point, and the
// restart of units with the staging of what is mounted on top.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// SystemdSocket is systemd's private D-Bus socket inside the container:
// it answers root without a bus daemon (the containers the hook serves
// often have none).
const SystemdSocket = "/run/systemd/private"

// The worker tasks of this file, run in a container's mount namespace:
// SystemdRestart restarts automount units (systemdRestartTask), with
// RunEvents; SystemdUnits asks which unit serves which mount point
// (systemdUnitsTask).
var (
	SystemdRestart = worker.NewTask("systemd-restart", systemdRestartTask)
	SystemdUnits   = worker.NewTask("systemd-units", systemdUnitsTask)
)

// RestartTarget is one systemd automount to make work again.
type RestartTarget struct {
	// Where is the mount point; Unit the unit name guessed from it.
	Where string `json:"where"`
	Unit  string `json:"unit"`
	// Dev is the device of the stale autofs mount (0 if it is gone).
	Dev uint64 `json:"dev"`
}

// RestartRequest is the input of the systemd-restart task.
type RestartRequest struct {
	Targets  []RestartTarget `json:"targets"`
	Deadline time.Time       `json:"deadline"`
	// Staged is the staging area an earlier run recorded in the host's
	// state file (nil: none): the only one the task recovers from.
	Staged *mounts.StagingRecord `json:"staged,omitempty"`
}

// UnitsRequest is the input of the systemd-units task: the mount points
// whose units are asked for.
type UnitsRequest struct {
	Wheres   []string  `json:"wheres"`
	Deadline time.Time `json:"deadline"`
}

// RestartResult says what became of one target.
type RestartResult struct {
	Where string `json:"where"`
	Unit  string `json:"unit"`
	// NewDev is the device of the new autofs mount.
	NewDev uint64 `json:"new_dev,omitempty"`
	// MovedBack is set when a filesystem on top was preserved.
	MovedBack bool   `json:"moved_back,omitempty"`
	Error     string `json:"error,omitempty"`
}

// systemdUnitsTask answers which unit serves which mount point.
func systemdUnitsTask(env *worker.Env, req UnitsRequest, _ door.Logf) (map[string]string, error) {
	ctx, cancel := context.WithDeadline(context.Background(), req.Deadline)
	defer cancel()
	s, err := dialSystemd(ctx, env, len(req.Wheres), nil)
	if err != nil {
		return nil, err
	}
	defer s.conn.Close()
	units, err := s.automountUnits(req.Wheres)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for where, u := range units {
		out[where] = u.Name
	}
	return out, nil
}

// systemdRestartTask runs in the container's mount namespace. For every
// target it moves a filesystem mounted on top aside, makes the stale
// autofs mount catatonic (which releases anything waiting on it), then
// restarts all the units in one go, waits for their new autofs mounts and
// puts the preserved filesystems back on top. The staging area and each
// filesystem staged are recorded with the hook (env.Record) before the
// move: the parent must run it with RunEvents.
func systemdRestartTask(env *worker.Env, req RestartRequest, logf door.Logf) ([]RestartResult, error) {
	ctx, cancel := context.WithDeadline(context.Background(), req.Deadline)
	defer cancel()
	// What a killed earlier run left staged goes back now, except on the
	// mount points restarted below: it goes back on their new mount.
	isTarget := map[string]bool{}
	for _, t := range req.Targets {
		isTarget[t.Where] = true
	}
	staging, held, rerr := mounts.RecoverStaged(env.InNS, req.Staged, func(where string) bool { return isTarget[where] }, logf)
	if len(req.Targets) == 0 {
		return []RestartResult{}, rerr
	}
	results := make([]RestartResult, len(req.Targets))
	for i, t := range req.Targets {
		results[i] = RestartResult{Where: t.Where, Unit: t.Unit}
	}
	s, err := dialSystemd(ctx, env, len(req.Targets), logf)
	if err != nil {
		return nil, errors.Join(err, rerr)
	}
	defer s.conn.Close()
	wheres := make([]string, len(req.Targets))
	for i, t := range req.Targets {
		wheres[i] = t.Where
	}
	units, err := s.automountUnits(wheres)
	if err != nil {
		return nil, errors.Join(err, rerr)
	}
	table, err := env.ReadTable()
	if err != nil {
		return nil, errors.Join(err, rerr)
	}
	staged := map[int]string{}
	var restart []int
	for i, t := range req.Targets {
		r := &results[i]
		u, ok := units[t.Where]
		if !ok {
			r.Error = fmt.Sprintf("no automount unit of the container's systemd has Where=%s", mounts.Escape(t.Where))
			continue
		}
		r.Unit = u.Name
		if dir, ok := held[t.Where]; ok {
			// Staged by a killed earlier run (in the staging area
			// RecoverStaged returned): it goes back after the restart,
			// like what is staged now.
			staged[i] = dir
			logf.Info("the filesystem an earlier, interrupted run moved aside goes back after the restart", "mount", mounts.Escape(t.Where))
		}
		if a := table.Find(t.Where); a != nil && a.Dev() == t.Dev {
			if _, ok := staged[i]; !ok && a.OnTop != nil {
				if staging == nil {
					if staging, err = mounts.OpenStaging(env.InNS); err != nil {
						r.Error = err.Error()
						continue
					}
				}
				dst, err := staging.MoveAside(env.InNS, t.Where, t.Dev)
				if err != nil {
					r.Error = err.Error()
					continue
				}
				staged[i] = dst
				logf.Info("moved the filesystem on top aside", "mount", mounts.Escape(t.Where), "fstype", mounts.Escape(a.OnTop.FSType))
			}
			if !a.Options.Catatonic() {
				if err := env.Ctl.CatatonicAt(t.Where, t.Dev); err != nil {
					// A request already pending makes the mount point
					// unreachable from here: restart all the same, and
					// report what may stay blocked.
					logf.Warn(fmt.Sprintf("could not make the old mount catatonic (%v); processes already waiting on it stay blocked", err), "mount", mounts.Escape(t.Where))
				}
			}
		}
		restart = append(restart, i)
	}
	// Filesystems on top are staged and the old mounts released: a run
	// killed from here on leaves the next run something to recover.
	failpoint.Pause("staged", func(s string) { logf.Info(s) })
	if len(restart) > 0 {
		if err := s.restartAll(req.Targets, results, restart, units, logf); err != nil {
			for _, i := range restart {
				if results[i].Error == "" {
					results[i].Error = err.Error()
				}
			}
		}
	}
	for i, dst := range staged {
		if err := staging.MoveBack(env.InNS, dst, req.Targets[i].Where); err != nil {
			results[i].Error = strings.TrimPrefix(results[i].Error+"; ", "; ") + err.Error()
			logf.Warn(fmt.Sprintf("preserved filesystem left at %s: %v", staging.Path(dst), err), "mount", mounts.Escape(req.Targets[i].Where))
			continue
		}
		results[i].MovedBack = true
	}
	// The staging tmpfs goes once it is empty; what could not be moved
	// back stays there, recorded in the host's state file, and the next
	// run puts it back (RecoverStaged). Close refuses a staging area
	// still holding something (an earlier run's leftover it could not
	// put back).
	if staging != nil {
		allBack := true
		for i := range staged {
			allBack = allBack && results[i].MovedBack
		}
		if allBack {
			if err := staging.Close(); err != nil {
				logf.Warn(err.Error())
			}
		}
	}
	if rerr != nil {
		// A filesystem left staged is an error of this run, whatever
		// else worked.
		results = append(results, RestartResult{Where: "(staging)", Error: rerr.Error()})
	}
	return results, nil
}

// noNewMount gives each pending unit's result its own error and returns
// a short one for all: each result names its unit only. (One error that
// named every pending unit, copied into each of their results, grew with
// the square of their number: 1,000 units made the worker's answer
// larger than the door's 16 MiB bound, which then hid the cause.)
func noNewMount(results []RestartResult, pending map[int]bool) error {
	for i := range pending {
		results[i].Error = fmt.Sprintf("restart %s: no new autofs mount, or the unit not active, before the deadline", results[i].Unit)
	}
	return fmt.Errorf("%d units: no new autofs mount, or not active, before the deadline", len(pending))
}

// restartAll resets and restarts the units of the targets idx in one
// batch of pipelined calls, then waits until each is active with a new
// autofs mount at its Where.
func (s *systemd) restartAll(targets []RestartTarget, results []RestartResult, idx []int, units map[string]unitRef, logf door.Logf) error {
	// Opened before the restarts: a new mount made while the calls are
	// answered ends the first wait at once.
	watch, err := s.env.WatchTable()
	if err != nil {
		return err
	}
	defer watch.Close()
	calls := make([]*dbus.Call, 0, 2*len(idx))
	for _, i := range idx {
		name := units[targets[i].Where].Name
		calls = append(calls, s.manager().GoWithContext(s.ctx, "org.freedesktop.systemd1.Manager.ResetFailedUnit", 0, nil, name))
		calls = append(calls, s.manager().GoWithContext(s.ctx, "org.freedesktop.systemd1.Manager.RestartUnit", 0, nil, name, "replace"))
	}
	for k, c := range calls {
		<-c.Done
		if c.Err != nil && k%2 == 1 {
			i := idx[k/2]
			results[i].Error = fmt.Sprintf("restart %s: %v", results[i].Unit, c.Err)
		}
	}
	pending := map[int]bool{}
	for _, i := range idx {
		if results[i].Error == "" {
			pending[i] = true
		}
	}
	// The mount table tells when a unit has its new autofs mount: it is
	// read again when the kernel says a mount changed it, and after each
	// bound of the wait. systemd is asked for the states only once every
	// pending unit has one, in a single batch.
	//
	// Both bounds grow with the time nothing changed (mounts.Backoff): on
	// a loaded node a unit can take a minute to get its mount or its
	// state, and a look every few ms for that minute costs the node the
	// CPU the container's systemd needs to get there.
	look := mounts.Backoff{Min: mountWaitMin, Max: mountWaitMax}
	ask := mounts.Backoff{Min: stateAskMin, Max: stateAskMax}
	// When systemd may be asked again: mounts made in the container wake
	// the wait, and must not make the questions come faster than ask.
	var nextAsk time.Time
	for len(pending) > 0 {
		table, err := watch.Read()
		if err != nil {
			return err
		}
		var ready []int
		for i := range pending {
			t := targets[i]
			if a := table.Find(t.Where); a != nil && a.Dev() != t.Dev && !a.Options.Catatonic() {
				results[i].NewDev = a.Dev()
				ready = append(ready, i)
			}
		}
		allMounted := len(ready) == len(pending)
		if allMounted && !time.Now().Before(nextAsk) {
			paths := make([]dbus.ObjectPath, len(ready))
			for k, i := range ready {
				paths[k] = units[targets[i].Where].Path
			}
			states, err := s.properties(paths, "org.freedesktop.systemd1.Unit", "ActiveState")
			if err != nil {
				return fmt.Errorf("read unit states: %w", err)
			}
			for k, i := range ready {
				switch state, _ := states[k].Value().(string); state {
				case "active":
					delete(pending, i)
				case "failed":
					results[i].Error = fmt.Sprintf("restart %s: the unit failed (see journalctl -u %s in the container)", results[i].Unit, results[i].Unit)
					delete(pending, i)
				}
			}
			nextAsk = time.Now().Add(ask.Next())
		}
		if len(pending) == 0 {
			break
		}
		if s.ctx.Err() != nil {
			return noNewMount(results, pending)
		}
		// The open table goes on showing the mount namespace of a
		// container that exited (and keeps it alive): its end is looked
		// for on every turn.
		if s.env.Gone() {
			return errContainerGone
		}
		// Woken by a mount, or by the bound. Every mount is there and a
		// unit is still starting: its state is no mount, so it is asked
		// for again at nextAsk.
		wait := look.Next()
		if allMounted {
			wait = min(wait, time.Until(nextAsk)) // Wait takes a past one as 0
		} else {
			ask.Reset()
			nextAsk = time.Time{}
		}
		if dl, ok := s.ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)) // Wait takes a past deadline as 0
		}
		changed, err := watch.Wait(wait)
		if err != nil {
			return err
		}
		if changed {
			look.Reset()
		}
	}
	return nil
}

// stateAskMin and stateAskMax bound the wait before systemd is asked
// again for the state of units that have their mounts (a mount's own wait
// is bounded by mountWaitMin and mountWaitMax).
const (
	stateAskMin = 2 * time.Millisecond
	stateAskMax = 100 * time.Millisecond
)
