package door

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Msg is one line of the protocol, from a child to its parent.
type Msg struct {
	Log    string          `json:"log,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	Done   bool            `json:"done,omitempty"`
	// Files is how many fds travel with this (final) line.
	Files int `json:"files,omitempty"`
}

// Limits of what a parent reads from a child.
const (
	maxLine  = 16 << 20
	maxFiles = 16
)

// Reply is a child's end of the protocol: its stdout, a unix socket.
type Reply struct {
	mu   sync.Mutex
	done bool
}

func (r *Reply) send(m Msg, files []*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return errors.New("door: a final message was sent already")
	}
	r.done = m.Done
	// The first sendmsg carries the fds; a long line goes on in plain
	// writes, which the parent joins.
	n, err := unix.SendmsgN(1, b, oob, nil, 0)
	for err == nil && n < len(b) {
		var k int
		k, err = unix.Write(1, b[n:])
		n += k
	}
	return err
}

// Log sends one log line to the parent.
func (r *Reply) Log(s string) { r.send(Msg{Log: s}, nil) }

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
// log lines go to logf, the last one also to last. It returns the final
// line, or nil when the child ended without one. Fds beyond what the final
// line announces, and all fds when there is none, are closed.
func readMsgs(conn *net.UnixConn, logf func(string), last func(string)) *final {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*maxFiles))
	var line []byte
	var fds []int
	closeFDs := func(keep int) []*os.File {
		var out []*os.File
		for i, fd := range fds {
			if i < keep {
				out = append(out, os.NewFile(uintptr(fd), "door-file"))
			} else {
				unix.Close(fd)
			}
		}
		fds = nil
		return out
	}
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		n, oobn = max(n, 0), max(oobn, 0)
		if oobn > 0 {
			if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
				for i := range msgs {
					if got, rerr := unix.ParseUnixRights(&msgs[i]); rerr == nil {
						fds = append(fds, got...)
					}
				}
			}
		}
		line = append(line, buf[:n]...)
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
					logf(m.Log)
				}
				last(m.Log)
			}
			if m.Done {
				keep := min(max(m.Files, 0), maxFiles)
				if m.Error != "" {
					keep = 0
				}
				f := &final{msg: m, files: closeFDs(keep)}
				if len(f.files) != keep {
					closeAll(f.files)
					return &final{msg: Msg{Done: true, Error: fmt.Sprintf("the child announced %d files and passed %d", keep, len(f.files))}}
				}
				return f
			}
		}
		if len(line) > maxLine {
			closeFDs(0)
			return &final{msg: Msg{Done: true, Error: "a line of the child's is over 16 MiB"}}
		}
		if err != nil || n == 0 && oobn == 0 {
			closeFDs(0)
			return nil
		}
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
