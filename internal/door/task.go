package door

// Typed tasks: the work a child does, declared once with its request and
// result types, its role and its body, and started through the value
// that declares it; the files a child is handed, by name.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

// Task is a child's work: its role (the hidden first argument that makes
// the binary this child), the type of its request and of its result,
// and its body. A call site reads t.Call(spec, req); go-to-definition on
// t reaches the declaration, which names the body.
type Task[Req, Res any] struct{ role string }

// NewTask declares a task whose body is run: in the child, the door's
// first step is taken (Begin), the request decoded into a Req, run
// called with the child's end of the door, and its result (or error)
// and the files it passes back (Child.PassBack) sent to the parent.
// Declare tasks as package variables: a child knows every task before it
// reads its arguments. A role named twice, or without RolePrefix, is a
// programming error.
func NewTask[Req, Res any](role string, run func(c *Child, req Req) (Res, error)) Task[Req, Res] {
	register(role, func(args []string) int {
		r, err := Begin()
		if err != nil {
			return r.Done(nil, err)
		}
		if len(args) > 1 {
			return r.Done(nil, fmt.Errorf("%s: takes no arguments but its label, got %d", role, len(args)))
		}
		c, err := childFiles(r)
		if err != nil {
			return r.Done(nil, fmt.Errorf("%s: %w", role, err))
		}
		var req Req
		if err := ReadRequest(&req); err != nil {
			return r.Done(nil, fmt.Errorf("%s: %w", role, err))
		}
		res, err := run(c, req)
		if err != nil {
			return r.Done(nil, err)
		}
		return r.Done(res, nil, c.back...)
	})
	return Task[Req, Res]{role: role}
}

// Role is the task's role: its name in errors and in the child's argv.
func (t Task[Req, Res]) Role() string { return t.role }

// Call starts t's child as s says, with req as its request, and waits
// for its result. It returns the files the child passed back
// (Child.PassBack), which the caller closes.
func (t Task[Req, Res]) Call(s Spec, req Req) (Res, []*os.File, error) {
	var res Res
	s.role, s.request = t.role, req
	files, err := call(s, &res)
	return res, files, err
}

// Files are the files a child is handed, by name (Spec.Files): the door
// gives each an fd and tells the child which (EnvFiles); the child takes
// them by the same names (Child.File). No fd is agreed by its position.
type Files map[string]*os.File

// EnvFiles names the variable that tells a child the names of the files
// it was handed: "NAME=FD,NAME=FD...".
const EnvFiles = "_AUTOFS_RESTORE_HOOK_FILES"

// order lists the names of f, sorted: the order of their fds from 3 on.
func (f Files) order() ([]string, error) {
	names := make([]string, 0, len(f))
	for n, file := range f {
		if n == "" || strings.ContainsAny(n, "=,") {
			return nil, fmt.Errorf("a file handed to a child is named %q", n)
		}
		if file == nil {
			return nil, fmt.Errorf("the file %q handed to a child is nil", n)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Child is a task's end of the door, in the child: its files by name,
// its log, its events, and the files it passes back.
type Child struct {
	reply *Reply
	files map[string]*os.File
	back  []*os.File
}

// childFiles reads EnvFiles: the files this child was handed.
func childFiles(r *Reply) (*Child, error) {
	c := &Child{reply: r, files: map[string]*os.File{}}
	v := os.Getenv(EnvFiles)
	os.Unsetenv(EnvFiles)
	if v == "" {
		return c, nil
	}
	for _, kv := range strings.Split(v, ",") {
		name, num, ok := strings.Cut(kv, "=")
		fd, err := strconv.Atoi(num)
		if !ok || err != nil || fd < 3 {
			return nil, fmt.Errorf("bad %s entry %q", EnvFiles, kv)
		}
		if _, dup := c.files[name]; dup {
			return nil, fmt.Errorf("%s names %q twice", EnvFiles, name)
		}
		c.files[name] = os.NewFile(uintptr(fd), name)
	}
	return c, nil
}

// Names are the names of the files handed to the child, sorted.
func (c *Child) Names() []string {
	names := make([]string, 0, len(c.files))
	for n := range c.files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Take returns the files named, by their names, or one error for all that
// are missing.
func (c *Child) Take(names ...string) (Files, error) {
	out := Files{}
	var missing []string
	for _, n := range names {
		if out[n] = c.files[n]; out[n] == nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("files not handed to this child: %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// Log is the child's log: each line reaches the parent's Spec.Log at its
// level.
func (c *Child) Log() Logf { return c.reply.Logf }

// Event sends v to the parent and returns once it was kept (Reply.Event).
func (c *Child) Event(v any) error { return c.reply.Event(v) }

// PassBack makes files travel back to the parent with the result (Call
// returns them).
func (c *Child) PassBack(files ...*os.File) { c.back = append(c.back, files...) }

// Detached is a child that is not started through the door: one that
// outlives its parent by design (the OCI hook's follower, which the
// runtime must not wait for). It is our executable, its role and its
// configuration (a Cfg, as JSON) as its one argument; Command makes its
// command line, and the caller gives it its session, stdio and
// environment. The body gets the decoded configuration, or the error
// that decoding it gave.
type Detached[Cfg any] struct{ role string }

// NewDetached declares a detached child with its body (see NewTask for
// where to declare it).
func NewDetached[Cfg any](role string, run func(cfg Cfg, raw string, err error) int) Detached[Cfg] {
	register(role, func(args []string) int {
		var cfg Cfg
		if len(args) != 1 {
			return run(cfg, strings.Join(args, " "), fmt.Errorf("want one argument, got %d", len(args)))
		}
		return run(cfg, args[0], json.Unmarshal([]byte(args[0]), &cfg))
	})
	return Detached[Cfg]{role: role}
}

// Role is the child's role, its first argument.
func (d Detached[Cfg]) Role() string { return d.role }

// Command is the command line of the child exe with cfg.
func (d Detached[Cfg]) Command(exe string, cfg Cfg) (*exec.Cmd, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: encode its configuration: %w", d.role, err)
	}
	return exec.Command(exe, d.role, string(b)), nil
}
