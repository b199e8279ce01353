package units

// The D-Bus client of the container's systemd: connecting from inside
// its pid namespace, pinging until it answers, a byte budget per
// connection, and the unit lookups.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/worker"
)

type systemd struct {
	conn *dbus.Conn
	ctx  context.Context
	env  *worker.Env
}

// pingTimeout bounds the first attempt to get an answer from systemd,
// and authTimeout its authentication; each later attempt waits twice as
// long as the one before, up to maxAttemptTimeout: a systemd that is
// merely slow (a node restoring many containers at once) is not given up
// on by short waits repeated, only by the deadline of the fix.
// retryPause is the least time between the starts of two attempts.
const (
	pingTimeout       = 250 * time.Millisecond
	authTimeout       = time.Second
	maxAttemptTimeout = 8 * time.Second
	retryPause        = 50 * time.Millisecond
)

// attemptTimeout is first doubled for each attempt after the first, at
// most maxAttemptTimeout.
func attemptTimeout(first time.Duration, attempt int) time.Duration {
	d := first
	for i := 1; i < attempt && d < maxAttemptTimeout; i++ {
		d *= 2
	}
	return min(d, maxAttemptTimeout)
}

// errContainerGone is returned when the container's process exits while
// the hook waits for its systemd.
var errContainerGone = errors.New("the container exited during the fix")

// dialSystemd connects to the container's systemd and waits until it
// answers a ping, connecting again when a connection stays silent: right
// after a restore, systemd (seen with 252) may leave the first connection
// unanswered until something else wakes it, while a new one is served.
// It gives up when ctx ends or when the container's process is gone.
func dialSystemd(ctx context.Context, env *worker.Env, units int, logf door.Logf) (*systemd, error) {
	var last error
	for attempt := 1; ; attempt++ {
		began := time.Now()
		s, err := dialSystemdOnce(ctx, env, replyBudget(units), attemptTimeout(authTimeout, attempt))
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, attemptTimeout(pingTimeout, attempt))
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
			logf.Info(fmt.Sprintf("systemd: attempt %d after %s: %v", attempt, time.Since(began).Round(time.Microsecond), err))
		}
		if env.Gone() {
			return nil, fmt.Errorf("%w (last attempt to reach its systemd: %v)", errContainerGone, last)
		}
		// A dial child stuck where SIGKILL does not reach (a FUSE file
		// system of the container's on the socket's path): another
		// attempt would leave one more beside it.
		if errors.Is(err, door.ErrLeftBehind) {
			return nil, fmt.Errorf("the container's systemd cannot be reached, and no new attempt is made: %w", last)
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

func dialSystemdOnce(ctx context.Context, env *worker.Env, budget int64, auth time.Duration) (*systemd, error) {
	deadline, _ := ctx.Deadline()
	sock, err := env.DialInContainer(SystemdSocket, time.Until(deadline))
	if err != nil {
		return nil, fmt.Errorf("connect to the container's systemd: %w", err)
	}
	s, err := systemdOver(ctx, sock, budget, auth)
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
// instead of the hook reading on. 16 KiB a unit over 1 MiB, and
// maxReplyBudget in all, whatever the number of units.
func replyBudget(n int) int64 { return min(1<<20+int64(max(n, 0))*16<<10, maxReplyBudget) }

// maxReplyBudget bounds replyBudget: what 4,096 units get, the most
// autofs mounts one run takes. Not less: a systemd restarting 1,003 units
// sends over 8 MiB (its signals for each unit's changes), and a cap of
// 8 MiB failed that fix. The bytes are read as they come and freed, not
// kept: the budget bounds the time a systemd can hold the hook reading.
const maxReplyBudget = 1<<20 + 4096*16<<10

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
// bytes from it, and waiting at most auth for the authentication.
func systemdOver(ctx context.Context, sock net.Conn, budget int64, auth time.Duration) (*systemd, error) {
	// godbus writes a message without looking at the context: a systemd
	// that stops reading would hold the write once the socket's buffer is
	// full. The socket itself ends every read and write at the deadline.
	if d, ok := ctx.Deadline(); ok {
		if err := sock.SetDeadline(d); err != nil {
			sock.Close()
			return nil, fmt.Errorf("connect to the container's systemd: set the deadline: %w", err)
		}
	}
	conn, err := dbus.NewConn(&budgetConn{Conn: sock, budget: budget, left: budget}, dbus.WithContext(ctx))
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("connect to the container's systemd at %s: %w", SystemdSocket, err)
	}
	// A stopped or dying systemd never answers: each attempt is bounded,
	// so that the caller notices a container that exited meanwhile.
	actx, cancel := context.WithTimeout(ctx, auth)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- conn.Auth([]dbus.Auth{dbus.AuthExternal("0")}) }()
	select {
	case err = <-done:
	case <-actx.Done():
		err = fmt.Errorf("no answer within %s", auth)
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
