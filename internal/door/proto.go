package door

// The protocol between a child and its parent: JSON lines, then the files
// the child hands back.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Msg is one line of the protocol, from a child to its parent.
type Msg struct {
	Log string `json:"log,omitempty"`
	// Level is the log line's level: LevelInfo when empty.
	Level Level `json:"level,omitempty"`
	// Fields are the log line's fields (a mount point, a unit).
	Fields Fields          `json:"fields,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	Done   bool            `json:"done,omitempty"`
	// Event is a record the parent must keep before the child goes on
	// (Reply.Event): the parent answers it with one byte, ack or nack.
	Event json.RawMessage `json:"event,omitempty"`
	// Files is how many fds travel with this (final) line.
	Files int `json:"files,omitempty"`
}

// Limits of what a parent reads from a child.
const (
	maxLine  = 16 << 20
	maxFiles = 16
	// MaxEvent bounds one event's JSON (a record of a few paths).
	MaxEvent = 64 << 10
)

// The parent's answers to an event: kept (ack) or not (nack). They travel
// the other way on the reply socket, as does the '?' that asks for the
// files of a final line; a child reads one only right after the line that
// asks for it, under its send lock.
const (
	eventAck  = '+'
	eventNack = '-'
)

// Reply is a child's end of the protocol: its stdout, a unix socket.
type Reply struct {
	mu   sync.Mutex
	done bool
}

func (r *Reply) send(m Msg, files []*os.File) error {
	return r.sendThen(m, func() error {
		if len(files) == 0 {
			return nil
		}
		// The files come after the final line, when the parent asks for
		// them (one byte), alone with one newline: it receives fds only
		// then, and only as many as announced.
		ask := make([]byte, 1)
		if k, err := unix.Read(1, ask); k != 1 {
			return fmt.Errorf("the parent did not ask for the files: %v", err)
		}
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		return unix.Sendmsg(1, []byte{'\n'}, unix.UnixRights(fds...), nil, 0)
	})
}

// sendThen writes m as one line, then runs then (nil: nothing), all under
// the lock: no other message goes out before what then reads (the
// parent's '?' for a final line's files, its answer to an event).
func (r *Reply) sendThen(m Msg, then func() error) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return errors.New("door: a final message was sent already")
	}
	r.done = m.Done
	if err := writeAll(b); err != nil {
		return err
	}
	return then()
}

// Event sends v to the parent (Spec.Event) and waits until the parent
// has kept it: nil only when the parent acknowledged it. A child sends
// one before a step that a parent killed afterwards must know of, and
// does not take the step when Event fails.
func (r *Reply) Event(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("door: encode event: %w", err)
	}
	if len(b) > MaxEvent {
		return fmt.Errorf("door: event of %d bytes, more than %d", len(b), MaxEvent)
	}
	return r.sendThen(Msg{Event: b}, func() error {
		ans := make([]byte, 1)
		for {
			k, err := unix.Read(1, ans)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if k != 1 {
				return fmt.Errorf("door: no answer to the event from the parent (%v)", err)
			}
			break
		}
		switch ans[0] {
		case eventAck:
			return nil
		case eventNack:
			return errors.New("door: the parent could not keep the event")
		}
		return fmt.Errorf("door: answer %q to an event", ans[0])
	})
}

func writeAll(b []byte) error {
	for n := 0; n < len(b); {
		k, err := unix.Write(1, b[n:])
		if err != nil {
			return err
		}
		if k <= 0 {
			return errors.New("door: the reply socket takes nothing")
		}
		n += k
	}
	return nil
}

// Log sends one log line to the parent.
func (r *Reply) Log(s string) { r.Logf(LevelInfo, s, nil) }

// Logf sends a log line at its level, with its fields: the child's Logf.
func (r *Reply) Logf(level Level, s string, fields Fields) {
	r.send(Msg{Log: s, Level: level, Fields: fields}, nil)
}

// Level is the level of a child's log line, which the parent logs at the
// same level.
type Level string

const (
	LevelInfo  Level = ""
	LevelWarn  Level = "warning"
	LevelError Level = "error"
)

// Fields are a log line's key-value pairs, which the parent logs as
// fields of its own (a mount point, a unit: what an operator filters
// on, never inside the text).
type Fields map[string]string

// Logf takes a child's log line with its level and fields: the parent's
// logger, or the child's Reply.Logf. A nil Logf drops the line.
type Logf func(level Level, msg string, fields Fields)

// Info logs msg at info level, with the fields kv (key, value, ...).
func (f Logf) Info(msg string, kv ...string) { f.log(LevelInfo, msg, kv) }

// Warn logs msg at warning level, with the fields kv (key, value, ...).
func (f Logf) Warn(msg string, kv ...string) { f.log(LevelWarn, msg, kv) }

// Error logs msg at error level, with the fields kv (key, value, ...).
func (f Logf) Error(msg string, kv ...string) { f.log(LevelError, msg, kv) }

func (f Logf) log(level Level, msg string, kv []string) {
	if f == nil {
		return
	}
	var fields Fields
	for i := 0; i+1 < len(kv); i += 2 {
		if fields == nil {
			fields = Fields{}
		}
		fields[kv[i]] = kv[i+1]
	}
	f(level, msg, fields)
}

// Done sends the final line: the result, or err, with files (only with a
// result). It returns the exit code the role returns.
func (r *Reply) Done(res any, err error, files ...*os.File) int {
	if err != nil {
		r.send(Msg{Done: true, Error: err.Error()}, nil)
		return 1
	}
	b, merr := json.Marshal(res)
	if merr != nil {
		r.send(Msg{Done: true, Error: fmt.Sprintf("encode result: %v", merr)}, nil)
		return 1
	}
	if serr := r.send(Msg{Done: true, Result: b, Files: len(files)}, files); serr != nil {
		return 1
	}
	return 0
}

// ReadRequest decodes the request on stdin into v (at most 16 MiB).
func ReadRequest(v any) error {
	b, err := io.ReadAll(io.LimitReader(os.Stdin, maxLine))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if v == nil || len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode request: %w", err)
	}
	return nil
}

// final is what a parent read: the final line and the files that came
// with it.
type final struct {
	msg   Msg
	files []*os.File
}

// readMsgs reads the protocol from conn until the final line or the end:
// log lines go to logf, the last one also to last, events to event, each
// answered once event returned: ack when it returned nil, nack otherwise
// (also without event, and for an event over MaxEvent). It returns the
// final line, or nil when the child ended without one.
//
// Fds are received only after the final line, only as many as it
// announces (maxFiles at most), and only of the kinds a child hands back
// (sockets, pidfds, O_PATH fds), whose close
// never waits on a file system. Before that the read has no room for
// them, and the kernel drops any a child sends without installing them:
// a file we never asked for is never ours to close (closing a FUSE file
// waits for its server through SIGKILL).
func readMsgs(conn *net.UnixConn, logf Logf, last func(string), event func(json.RawMessage) error) *final {
	buf := make([]byte, 64<<10)
	var line []byte
	fail := func(format string, args ...any) *final {
		return &final{msg: Msg{Done: true, Error: fmt.Sprintf(format, args...)}}
	}
	for {
		n, _, _, _, err := conn.ReadMsgUnix(buf, nil)
		line = append(line, buf[:max(n, 0)]...)
		for {
			i := bytes.IndexByte(line, '\n')
			if i < 0 {
				break
			}
			var m Msg
			jerr := json.Unmarshal(line[:i], &m)
			line = line[i+1:]
			if jerr != nil {
				continue
			}
			if m.Log != "" {
				if logf != nil {
					switch m.Level {
					case LevelWarn, LevelError:
						logf(m.Level, m.Log, m.Fields)
					default:
						logf(LevelInfo, m.Log, m.Fields)
					}
				}
				last(m.Log)
			}
			if len(m.Event) > 0 && !m.Done {
				ans := byte(eventNack)
				switch {
				case event == nil:
					logEventErr(logf, errors.New("the child sent an event nobody asked for"))
				case len(m.Event) > MaxEvent:
					logEventErr(logf, fmt.Errorf("an event of %d bytes, more than %d", len(m.Event), MaxEvent))
				default:
					if err := event(m.Event); err != nil {
						logEventErr(logf, err)
					} else {
						ans = eventAck
					}
				}
				if _, err := conn.Write([]byte{ans}); err != nil {
					return fail("answer the child's event: %v", err)
				}
				continue
			}
			if !m.Done {
				continue
			}
			if m.Error != "" || m.Files <= 0 {
				m.Files = 0
				return &final{msg: m}
			}
			if m.Files > maxFiles {
				return fail("the child announced %d files, more than %d", m.Files, maxFiles)
			}
			if len(line) > 0 {
				return fail("the child wrote after its final line")
			}
			files, err := receiveFiles(conn, m.Files)
			if err != nil {
				return fail("%v", err)
			}
			return &final{msg: m, files: files}
		}
		if len(line) > maxLine {
			return fail("a line of the child's is over 16 MiB")
		}
		if err != nil || n <= 0 {
			return nil
		}
	}
}

func logEventErr(logf Logf, err error) {
	logf.Error("event of the child not kept: " + err.Error())
}

// receiveFiles asks for the n fds announced by a final line and reads
// them, with the one newline they come with.
func receiveFiles(conn *net.UnixConn, n int) ([]*os.File, error) {
	if _, err := conn.Write([]byte{'?'}); err != nil {
		return nil, fmt.Errorf("ask for the child's files: %w", err)
	}
	oob := make([]byte, unix.CmsgSpace(4*n))
	buf := make([]byte, 1)
	k, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for i := range msgs {
				if got, rerr := unix.ParseUnixRights(&msgs[i]); rerr == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	files, bad := keepSafe(fds)
	switch {
	case bad != "":
		closeAll(files)
		return nil, fmt.Errorf("the child passed %s: left open, never closed", bad)
	case err != nil:
		closeAll(files)
		return nil, fmt.Errorf("receive the child's files: %w", err)
	case flags&unix.MSG_CTRUNC != 0 || len(files) != n:
		closeAll(files)
		return nil, fmt.Errorf("the child announced %d files and passed %d", n, len(files))
	case k != 1 || buf[0] != '\n':
		closeAll(files)
		return nil, errors.New("the child's files came without their newline")
	}
	return files, nil
}

// keepSafe wraps the fds whose close asks no file system (sockets,
// pidfds, O_PATH fds); the others are named in bad and left open.
func keepSafe(fds []int) (files []*os.File, bad string) {
	var others []string
	for _, fd := range fds {
		var st unix.Statx_t
		serr := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st)
		fl, ferr := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		socket := serr == nil && uint32(st.Mode)&unix.S_IFMT == unix.S_IFSOCK
		// A pidfd answers signal 0 (or says its process is gone); any
		// other file is refused by the kernel before a file system is asked.
		perr := unix.PidfdSendSignal(fd, 0, nil, 0)
		pidfd := perr == nil || errors.Is(perr, unix.ESRCH)
		if socket || pidfd || ferr == nil && fl&unix.O_PATH != 0 {
			files = append(files, os.NewFile(uintptr(fd), "door-file"))
			continue
		}
		others = append(others, fmt.Sprintf("fd %d (mode %#o)", fd, st.Mode))
	}
	return files, strings.Join(others, ", ")
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
