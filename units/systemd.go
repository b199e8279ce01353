package units

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/failpoint"
	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// SystemdSocket is systemd's private D-Bus socket inside the container:
// it answers root without a bus daemon (the containers the hook serves
// often have none).
const SystemdSocket = "/run/systemd/private"

// TaskSystemdRestart and TaskSystemdUnits are the worker tasks of this
// file (see mounts.RunInMountNS).
const (
	TaskSystemdRestart = "systemd-restart"
	TaskSystemdUnits   = "systemd-units"
)

func init() {
	mounts.RegisterTask(TaskSystemdRestart, systemdRestartTask)
	mounts.RegisterTask(TaskSystemdUnits, systemdUnitsTask)
}

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
	MovedBack bool `json:"moved_back,omitempty"`
	// Released is set when the old mount was made catatonic here.
	Released bool   `json:"released,omitempty"`
	Error    string `json:"error,omitempty"`
}

type systemd struct {
	conn *dbus.Conn
	ctx  context.Context
	env  *mounts.WorkerEnv
}

// pingTimeout bounds one attempt to get an answer from systemd, and
// authTimeout one authentication; retryPause is the least time between
// the starts of two attempts.
const (
	pingTimeout = 250 * time.Millisecond
	authTimeout = time.Second
	retryPause  = 50 * time.Millisecond
)

// errContainerGone is returned when the container's process exits while
// the hook waits for its systemd.
var errContainerGone = errors.New("the container exited during the fix")

// dialSystemd connects to the container's systemd and waits until it
// answers a ping, connecting again when a connection stays silent: right
// after a restore, systemd (seen with 252) may leave the first connection
// unanswered until something else wakes it, while a new one is served.
// It gives up when ctx ends or when the container's process is gone.
func dialSystemd(ctx context.Context, env *mounts.WorkerEnv, units int, logf func(string)) (*systemd, error) {
	var last error
	for attempt := 1; ; attempt++ {
		began := time.Now()
		s, err := dialSystemdOnce(ctx, env, replyBudget(units))
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			err = s.conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").CallWithContext(pctx, "org.freedesktop.DBus.Peer.Ping", 0).Err
			cancel()
			if err == nil {
				return s, nil
			}
			s.conn.Close()
			err = fmt.Errorf("no answer to ping on connection %d: %w", attempt, err)
		}
		last = err
		if logf != nil {
			logf(fmt.Sprintf("systemd: attempt %d after %s: %v", attempt, time.Since(began).Round(time.Microsecond), err))
		}
		if env.Gone() {
			return nil, fmt.Errorf("%w (last attempt to reach its systemd: %v)", errContainerGone, last)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the container's systemd does not answer: %w", last)
		}
		// Only an attempt that failed at once is followed by a pause: a
		// silent connection already took its ping deadline.
		t := time.NewTimer(retryPause - time.Since(began))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

func dialSystemdOnce(ctx context.Context, env *mounts.WorkerEnv, budget int64) (*systemd, error) {
	deadline, _ := ctx.Deadline()
	sock, err := env.DialInContainer(SystemdSocket, time.Until(deadline))
	if err != nil {
		return nil, fmt.Errorf("connect to the container's systemd: %w", err)
	}
	s, err := systemdOver(ctx, sock, budget)
	if err != nil {
		return nil, err
	}
	s.env = env
	return s, nil
}

// replyBudget is how many bytes the hook reads from the container's
// systemd on one connection, for n units: its answers to the hook's
// questions are a few hundred bytes a unit, and a systemd that sends
// more (D-Bus allows 128 MiB a message) makes the connection fail
// instead of the hook's memory grow.
func replyBudget(n int) int64 { return 1<<20 + int64(n)*16<<10 }

// errBudget is the error a connection returns once the container's
// systemd sent more than its budget.
var errBudget = errors.New("the container's systemd sent more than the hook reads")

// budgetConn is a connection that reads at most budget bytes in all.
type budgetConn struct {
	net.Conn
	budget, left int64
}

func (c *budgetConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("%w (%d bytes on this connection)", errBudget, c.budget)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	return n, err
}

// systemdOver speaks D-Bus to systemd over sock, reading at most budget
// bytes from it.
func systemdOver(ctx context.Context, sock net.Conn, budget int64) (*systemd, error) {
	conn, err := dbus.NewConn(&budgetConn{Conn: sock, budget: budget, left: budget}, dbus.WithContext(ctx))
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("connect to the container's systemd at %s: %w", SystemdSocket, err)
	}
	// A stopped or dying systemd never answers: each attempt is bounded,
	// so that the caller notices a container that exited meanwhile.
	actx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- conn.Auth([]dbus.Auth{dbus.AuthExternal("0")}) }()
	select {
	case err = <-done:
	case <-actx.Done():
		err = fmt.Errorf("no answer within %s", authTimeout)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticate to the container's systemd: %w", err)
	}
	return &systemd{conn: conn, ctx: ctx}, nil
}

func (s *systemd) manager() dbus.BusObject {
	return s.conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
}

func (s *systemd) call(obj dbus.BusObject, method string, out any, args ...any) error {
	c := obj.CallWithContext(s.ctx, method, 0, args...)
	if c.Err != nil {
		return c.Err
	}
	if out != nil {
		return c.Store(out)
	}
	return nil
}

// automountUnits maps each of wheres that an automount unit of the
// container's systemd serves to that unit's name and path. systemd names
// an automount unit after its mount point, so each is asked for by name:
// two calls a mount point in all, however many units the container's
// systemd would list.
func (s *systemd) automountUnits(wheres []string) (map[string]unitRef, error) {
	var asked []string
	seen := map[string]bool{}
	for _, w := range wheres {
		if !seen[w] {
			seen[w] = true
			asked = append(asked, w)
		}
	}
	calls := make([]*dbus.Call, len(asked))
	for i, w := range asked {
		calls[i] = s.manager().GoWithContext(s.ctx, "org.freedesktop.systemd1.Manager.GetUnit", 0, nil, PathUnitName(w, "automount"))
	}
	var found []string
	var paths []dbus.ObjectPath
	var errs []error
	for i, c := range calls {
		<-c.Done
		var p dbus.ObjectPath
		if c.Err == nil {
			c.Err = c.Store(&p)
		}
		var de dbus.Error
		switch {
		case c.Err == nil:
			found, paths = append(found, asked[i]), append(paths, p)
		case errors.As(c.Err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit":
		default:
			errs = append(errs, fmt.Errorf("%s: %w", PathUnitName(asked[i], "automount"), c.Err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("look up the automount units: %w", err)
	}
	wheresOf, err := s.properties(paths, "org.freedesktop.systemd1.Automount", "Where")
	if err != nil {
		return nil, fmt.Errorf("read Where= of the automount units: %w", err)
	}
	out := make(map[string]unitRef, len(found))
	for i, w := range found {
		if got, _ := wheresOf[i].Value().(string); got == w {
			out[w] = unitRef{Name: PathUnitName(w, "automount"), Path: paths[i]}
		}
	}
	return out, nil
}

// properties reads one property of many objects in one pipelined batch:
// the calls go out together and the answers are collected after.
func (s *systemd) properties(paths []dbus.ObjectPath, iface, name string) ([]dbus.Variant, error) {
	calls := make([]*dbus.Call, len(paths))
	for i, p := range paths {
		calls[i] = s.conn.Object("org.freedesktop.systemd1", p).GoWithContext(s.ctx, "org.freedesktop.DBus.Properties.Get", 0, nil, iface, name)
	}
	out := make([]dbus.Variant, len(paths))
	var errs []error
	for i, c := range calls {
		<-c.Done
		if c.Err == nil {
			c.Err = c.Store(&out[i])
		}
		if c.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", paths[i], c.Err))
		}
	}
	return out, errors.Join(errs...)
}

type unitRef struct {
	Name string
	Path dbus.ObjectPath
}

// systemdUnitsTask answers which unit serves which mount point.
func systemdUnitsTask(env *mounts.WorkerEnv, args json.RawMessage, _ func(string)) (any, error) {
	var req UnitsRequest
	if err := json.Unmarshal(args, &req); err != nil {
		return nil, fmt.Errorf("%s: bad request: %w", TaskSystemdUnits, err)
	}
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
// puts the preserved filesystems back on top.
func systemdRestartTask(env *mounts.WorkerEnv, args json.RawMessage, logf func(string)) (any, error) {
	var req RestartRequest
	if err := json.Unmarshal(args, &req); err != nil {
		return nil, fmt.Errorf("systemd-restart: bad request: %w", err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), req.Deadline)
	defer cancel()
	// What a killed earlier run left staged goes back now, except on the
	// mount points restarted below: it goes back on their new mount.
	isTarget := map[string]bool{}
	for _, t := range req.Targets {
		isTarget[t.Where] = true
	}
	held, rerr := mounts.RecoverStaged(env, func(where string) bool { return isTarget[where] }, logf)
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
	var staging *mounts.Staging
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
			// Staged by a killed earlier run: it goes back after the
			// restart, like what is staged now.
			if staging == nil {
				if staging, err = mounts.OpenStaging(); err != nil {
					r.Error = err.Error()
					continue
				}
			}
			staged[i] = dir
			logf(fmt.Sprintf("%s: the filesystem an earlier, interrupted run moved aside goes back after the restart", mounts.Escape(t.Where)))
		}
		if a := table.Find(t.Where); a != nil && a.Dev() == t.Dev {
			if _, ok := staged[i]; !ok && a.OnTop != nil {
				if staging == nil {
					if staging, err = mounts.OpenStaging(); err != nil {
						r.Error = err.Error()
						continue
					}
				}
				dst, err := staging.MoveAside(env.Ctl, t.Where, t.Dev)
				if err != nil {
					r.Error = err.Error()
					continue
				}
				staged[i] = dst
				logf(fmt.Sprintf("%s: moved %s on top aside", mounts.Escape(t.Where), a.OnTop.FSType))
			}
			if !a.Options.Catatonic() {
				if err := env.Ctl.CatatonicAt(t.Where, t.Dev); err != nil {
					// A request already pending makes the mount point
					// unreachable from here: restart all the same, and
					// report what may stay blocked.
					logf(fmt.Sprintf("%s: could not make the old mount catatonic (%v); processes already waiting on it stay blocked", mounts.Escape(t.Where), err))
				} else {
					r.Released = true
				}
			}
		}
		restart = append(restart, i)
	}
	// Filesystems on top are staged and the old mounts released: a run
	// killed from here on leaves the next run something to recover.
	failpoint.Pause("staged", logf)
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
		if err := staging.MoveBack(env, dst, req.Targets[i].Where); err != nil {
			results[i].Error = strings.TrimPrefix(results[i].Error+"; ", "; ") + err.Error()
			logf(fmt.Sprintf("%s: preserved filesystem left at %s: %v", mounts.Escape(req.Targets[i].Where), dst, err))
			continue
		}
		results[i].MovedBack = true
	}
	// The staging tmpfs goes once it is empty; what could not be moved
	// back stays there, and the next run puts it back (RecoverStaged).
	if staging != nil {
		allBack := true
		for i := range staged {
			allBack = allBack && results[i].MovedBack
		}
		if allBack {
			if err := staging.Close(); err != nil {
				logf(err.Error())
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

// restartAll resets and restarts the units of the targets idx in one
// batch of pipelined calls, then waits until each is active with a new
// autofs mount at its Where.
func (s *systemd) restartAll(targets []RestartTarget, results []RestartResult, idx []int, units map[string]unitRef, logf func(string)) error {
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
	// The mount table tells when a unit has its new autofs mount; systemd
	// is asked for the states only once every pending unit has one, in a
	// single batch.
	for len(pending) > 0 {
		table, err := s.env.ReadTable()
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
		if len(ready) == len(pending) {
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
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-s.ctx.Done():
			var names []string
			for i := range pending {
				names = append(names, results[i].Unit)
			}
			return fmt.Errorf("restart %s: no new autofs mount before the deadline", strings.Join(names, ", "))
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}
