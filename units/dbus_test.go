package units

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// fakeSystemd serves D-Bus on one end of a socket pair, the way a
// container's own systemd (or whatever listens on its private socket)
// may: it accepts EXTERNAL authentication, then answers every method
// call with what answer returns (a body, or the name of an error). It
// returns the other end and the number of calls it got.
func fakeSystemd(t *testing.T, answer func(m *dbus.Message) (body []any, errName string)) (net.Conn, *atomic.Int32) {
	return fakeSystemdReading(t, true, answer)
}

// fakeSystemdReading is fakeSystemd; with read false it stops reading
// once the client has authenticated.
func fakeSystemdReading(t *testing.T, read bool, answer func(m *dbus.Message) (body []any, errName string)) (net.Conn, *atomic.Int32) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := osFile(fd)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	t.Cleanup(func() { conns[0].Close(); conns[1].Close() })
	calls := &atomic.Int32{}
	go func() {
		srv := conns[1]
		r := bufio.NewReader(srv)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimLeft(strings.TrimSpace(line), "\x00")
			switch {
			case line == "AUTH":
				srv.Write([]byte("REJECTED EXTERNAL\r\n"))
			case strings.HasPrefix(line, "AUTH EXTERNAL"):
				srv.Write([]byte("OK 0123456789abcdef0123456789abcdef\r\n"))
			case strings.HasPrefix(line, "NEGOTIATE_UNIX_FD"):
				srv.Write([]byte("ERROR\r\n"))
			case line == "BEGIN":
				goto messages
			}
		}
	messages:
		if !read {
			<-make(chan struct{}) // the test's cleanup closes the socket; this goroutine stays parked
		}
		serial := uint32(0)
		for {
			m, err := dbus.DecodeMessage(r)
			if err != nil {
				return
			}
			if m.Type != dbus.TypeMethodCall {
				continue
			}
			calls.Add(1)
			body, errName := answer(m)
			reply := &dbus.Message{Type: dbus.TypeMethodReply, Headers: map[dbus.HeaderField]dbus.Variant{
				dbus.FieldReplySerial: dbus.MakeVariant(m.Serial())}, Body: body}
			if errName != "" {
				reply.Type = dbus.TypeError
				reply.Headers[dbus.FieldErrorName] = dbus.MakeVariant(errName)
			}
			if len(body) > 0 {
				reply.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
			}
			var b bytes.Buffer
			if err := reply.EncodeTo(&b, binary.LittleEndian); err != nil {
				t.Errorf("encode the fake reply: %v", err)
				return
			}
			serial++
			binary.LittleEndian.PutUint32(b.Bytes()[8:12], serial)
			if _, err := srv.Write(b.Bytes()); err != nil {
				return
			}
		}
	}()
	return conns[0], calls
}

func member(m *dbus.Message) string {
	v, _ := m.Headers[dbus.FieldMember].Value().(string)
	return v
}

// The units of the mount points are looked up by name, two calls a mount
// point: once the hook listed every automount unit the container's
// systemd has, and asked each for its Where=, one call a unit.
func TestAutomountUnitsAsksOnlyForTheMountPoints(t *testing.T) {
	paths := map[string]string{"srv-a.automount": "/unit/a", "srv-c.automount": "/unit/c"}
	wheres := map[string]string{"/unit/a": "/srv/a", "/unit/c": "/elsewhere"}
	sock, calls := fakeSystemd(t, func(m *dbus.Message) ([]any, string) {
		switch member(m) {
		case "GetUnit":
			if p, ok := paths[m.Body[0].(string)]; ok {
				return []any{dbus.ObjectPath(p)}, ""
			}
			return nil, "org.freedesktop.systemd1.NoSuchUnit"
		case "Get":
			path, _ := m.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
			return []any{dbus.MakeVariant(wheres[string(path)])}, ""
		}
		return nil, "org.freedesktop.DBus.Error.UnknownMethod"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := systemdOver(ctx, sock, replyBudget(3), authTimeout)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.automountUnits([]string{"/srv/a", "/srv/b", "/srv/c", "/srv/a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["/srv/a"].Name != "srv-a.automount" || got["/srv/a"].Path != "/unit/a" {
		t.Fatalf("units %+v, want only /srv/a (srv-b has no unit, srv-c's Where= is another path)", got)
	}
	if n := calls.Load(); n != 5 {
		t.Fatalf("%d calls to systemd, want 5 (3 GetUnit, 2 Get)", n)
	}
}

// A container's systemd that answers with a huge message (D-Bus allows
// 128 MiB) makes the connection fail once the hook has read its budget;
// the hook does not take it all in.
func TestHostileSystemdHugeReply(t *testing.T) {
	huge := strings.Repeat("x", 32<<20)
	sock, _ := fakeSystemd(t, func(m *dbus.Message) ([]any, string) { return []any{huge}, "" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := systemdOver(ctx, sock, replyBudget(3), authTimeout)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.automountUnits([]string{"/srv/a"})
	if err == nil || !strings.Contains(err.Error(), "more than the hook reads") {
		t.Fatalf("err = %v, want the connection to fail at the budget", err)
	}
}

func osFile(fd int) *os.File { return os.NewFile(uintptr(fd), "socket") }

// A container's systemd that stops reading after the handshake: a call
// whose message does not fit in the socket's buffer ends by the deadline
// instead of holding the hook (godbus writes without the context).
func TestHostileSystemdStopsReading(t *testing.T) {
	sock, _ := fakeSystemdReading(t, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := systemdOver(ctx, sock, replyBudget(1), authTimeout)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- s.call(s.manager(), "org.freedesktop.systemd1.Manager.GetUnit", nil, strings.Repeat("x", 8<<20))
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a call to a systemd that reads nothing succeeded")
		}
		t.Logf("call ended: %v", err)
	case <-time.After(testenv.Scale(20 * time.Second)):
		t.Fatal("the call was still writing 20 s after its 2 s deadline")
	}
}

// Each new attempt to reach systemd waits twice as long as the one before,
// up to a bound: a slow systemd is not given up on by short waits repeated.
func TestAttemptTimeoutGrows(t *testing.T) {
	for _, tt := range []struct {
		attempt int
		want    time.Duration
	}{{1, 250 * time.Millisecond}, {2, 500 * time.Millisecond}, {3, time.Second}, {6, 8 * time.Second}, {7, 8 * time.Second}, {1000, 8 * time.Second}} {
		if got := attemptTimeout(pingTimeout, tt.attempt); got != tt.want {
			t.Errorf("ping, attempt %d: %s, want %s", tt.attempt, got, tt.want)
		}
	}
	if got := attemptTimeout(authTimeout, 2); got != 2*time.Second {
		t.Errorf("authentication, attempt 2: %s, want 2s", got)
	}
}

// The bytes read from a container's systemd grow with the units asked
// about, and stop at maxReplyBudget (what the most autofs mounts one run
// takes, 4,096, get) whatever their number.
func TestReplyBudgetIsCapped(t *testing.T) {
	for _, tt := range []struct {
		units int
		want  int64
	}{
		{0, 1 << 20},
		{-1, 1 << 20},
		{3, 1<<20 + 3*16<<10},
		{400, 1<<20 + 400*16<<10},
		{4096, 1<<20 + 4096*16<<10},
		{4097, 1<<20 + 4096*16<<10},
		{1 << 30, 1<<20 + 4096*16<<10},
	} {
		if got := replyBudget(tt.units); got != tt.want {
			t.Errorf("replyBudget(%d) = %d, want %d", tt.units, got, tt.want)
		}
	}
}

// 1,000 units without a new mount at the deadline: each result names its
// own unit, and what the worker answers grows linearly with the units.
// One error naming every pending unit was once copied into each result:
// 1,000 units gave an answer over the door's 16 MiB bound, which then
// hid the cause ("a line of the child's is over 16 MiB").
func TestNoNewMountIsLinear(t *testing.T) {
	const n = 1000
	results := make([]RestartResult, n)
	pending := map[int]bool{}
	for i := range results {
		results[i] = RestartResult{Where: fmt.Sprintf("/srv/unit-with-a-long-name-%04d", i), Unit: fmt.Sprintf("srv-unit\\x2dwith\\x2da\\x2dlong\\x2dname\\x2d%04d.automount", i)}
		pending[i] = true
	}
	err := noNewMount(results, pending)
	if err == nil || len(err.Error()) > 100 {
		t.Errorf("the error for all: %q", err)
	}
	total := 0
	for i, r := range results {
		if !strings.Contains(r.Error, r.Unit) || strings.Contains(r.Error, results[(i+1)%n].Unit) {
			t.Fatalf("result %d: %q: not its own unit's error", i, r.Error)
		}
		total += len(r.Error)
	}
	if total > n*200 {
		t.Errorf("the results hold %d bytes of errors for %d units", total, n)
	}
}
