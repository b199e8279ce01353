package hook

// Logging: where log lines go (syslog, stderr, a log file), at which
// level, and how one entry is written as one line.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
)

// LogConfig says where log lines go. Runtimes drop a hook's stderr, so the
// journal (through syslog) and an optional file are the places operators
// look.
type LogConfig struct {
	// File is appended to when set (created 0600, never through a link).
	File string
	// Level is a logrus level name: error, warning, info, debug.
	Level string
	// NoSyslog turns the syslog output off.
	NoSyslog bool
	// Format is "text" (the default) or "json": one JSON object per
	// line, for node log pipelines.
	Format string `json:"format,omitempty"`
}

// Env variables read in every mode, since a CRIU action script gets no
// arguments.
const (
	EnvLogFile   = "AUTOFS_RESTORE_HOOK_LOG_FILE"
	EnvLogLevel  = "AUTOFS_RESTORE_HOOK_LOG_LEVEL"
	EnvNoSyslog  = "AUTOFS_RESTORE_HOOK_NO_SYSLOG"
	EnvLogFormat = "AUTOFS_RESTORE_HOOK_LOG_FORMAT"
)

// logConfigFromEnv reads the log settings from the environment, but for
// EnvNoSyslog, a boolean that LoadConfig parses.
func logConfigFromEnv(getenv func(string) string) LogConfig {
	return LogConfig{
		File:   getenv(EnvLogFile),
		Level:  getenv(EnvLogLevel),
		Format: getenv(EnvLogFormat),
	}
}

// newLogger builds the logger. Errors opening the file are returned (the
// operator asked for it); a missing syslog socket is not an error. Its
// first hook sets the run's fields (setLogFields) on every line, before
// the log file's and syslog's hooks write it.
func newLogger(cfg LogConfig, stderr io.Writer) (*logrus.Logger, func(), error) {
	l := logrus.New()
	l.SetOutput(stderr)
	closers := []func(){}
	done := func() {
		for _, c := range closers {
			c()
		}
	}
	var line logrus.Formatter
	switch strings.ToLower(cfg.Format) {
	case "", "text":
		line = lineFormatter{stamp: true}
	case "json":
		line = jsonFormatter{stamp: true}
	default:
		return nil, done, fmt.Errorf("log format %q: want text or json", cfg.Format)
	}
	l.SetFormatter(line)
	level := logrus.InfoLevel
	if cfg.Level != "" {
		lv, err := logrus.ParseLevel(strings.ToLower(cfg.Level))
		if err != nil {
			return nil, done, fmt.Errorf("log level %q: want error, warning, info or debug", cfg.Level)
		}
		level = lv
	}
	l.SetLevel(level)
	l.AddHook(&fieldsHook{})
	if cfg.File != "" {
		f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, done, fmt.Errorf("open log file: %w", err)
		}
		closers = append(closers, func() { f.Close() })
		l.AddHook(&writerHook{w: f, f: line})
	}
	if !cfg.NoSyslog {
		// The journal and syslog stamp each line and tag it themselves.
		var bare logrus.Formatter = lineFormatter{}
		if _, ok := line.(jsonFormatter); ok {
			bare = jsonFormatter{}
		}
		if w, err := syslogDial(); err == nil {
			l.AddHook(&syslogHook{w: w, f: bare})
			closers = append(closers, func() { w.Close() })
		}
	}
	return l, done, nil
}

// syslogDial connects to the local syslog (the journal's /dev/log); a
// test points it elsewhere.
var syslogDial = func() (*syslog.Writer, error) {
	return syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "autofs-restore-hook")
}

// openLog is how every process of the hook builds its logger from its
// Config's LogConfig, with the run's fields (mode, ...) on every line.
// An invalid setting (a log file it cannot open, an unknown level or
// format) is an error, unless lenient: the modes that run for every
// container of a node or inside a restore (CRIU, the OCI hook and its
// follower) must go on, so they log to syslog and stderr at the defaults
// instead, and say why on their first line.
func openLog(cfg LogConfig, stderr io.Writer, fields logrus.Fields, lenient bool) (*logrus.Logger, func(), error) {
	l, done, err := newLogger(cfg, stderr)
	if err != nil {
		if !lenient {
			return nil, done, err
		}
		// No file, level or format: this one cannot fail.
		l, done, _ = newLogger(LogConfig{NoSyslog: cfg.NoSyslog}, stderr)
		setLogFields(l, fields)
		l.Warnf("%v: logging to syslog and stderr only, at level info, as text", err)
		return l, done, nil
	}
	setLogFields(l, fields)
	return l, done, nil
}

// fieldsHook sets the run's fields (mode, container, name, wiring) on
// every entry that does not carry them already.
type fieldsHook struct {
	mu sync.Mutex
	f  logrus.Fields
}

func (*fieldsHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *fieldsHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, v := range h.f {
		if _, ok := e.Data[k]; !ok {
			e.Data[k] = v
		}
	}
	return nil
}

// setLogFields adds fields to every line l writes from now on; an empty
// value is left out.
func setLogFields(l *logrus.Logger, f logrus.Fields) {
	for _, h := range l.Hooks[logrus.InfoLevel] {
		fh, ok := h.(*fieldsHook)
		if !ok {
			continue
		}
		fh.mu.Lock()
		if fh.f == nil {
			fh.f = logrus.Fields{}
		}
		for k, v := range f {
			if v != "" {
				fh.f[k] = v
			}
		}
		fh.mu.Unlock()
		return
	}
}

// setIdentity puts the container's id and name on every line.
func setIdentity(l *logrus.Logger, id Identity) {
	setLogFields(l, logrus.Fields{"container": id.ID, "name": id.Name})
}

// syslogHook writes every entry to syslog at its level's priority.
type syslogHook struct {
	w *syslog.Writer
	f logrus.Formatter
}

func (*syslogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *syslogHook) Fire(e *logrus.Entry) error {
	b, err := h.f.Format(e)
	if err != nil {
		return err
	}
	s := strings.TrimSuffix(string(b), "\n")
	switch e.Level {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		return h.w.Err(s)
	case logrus.WarnLevel:
		return h.w.Warning(s)
	case logrus.InfoLevel:
		return h.w.Info(s)
	default:
		return h.w.Debug(s)
	}
}

// writerHook copies every entry to a second writer with its own format.
type writerHook struct {
	w io.Writer
	f logrus.Formatter
}

func (h *writerHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *writerHook) Fire(e *logrus.Entry) error {
	b, err := h.f.Format(e)
	if err != nil {
		return err
	}
	_, err = h.w.Write(b)
	return err
}

// lineFormatter writes one plain line per entry: time and tag (if stamp),
// level, message, then the fields sorted by name ("mount=/srv/a
// master=systemd ...").
type lineFormatter struct{ stamp bool }

func (f lineFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b bytes.Buffer
	if f.stamp {
		b.WriteString(e.Time.Format("2006-01-02T15:04:05.000Z07:00"))
		b.WriteString(" autofs-restore-hook ")
	}
	b.WriteString(e.Level.String())
	b.WriteString(": ")
	b.WriteString(unforgeable(controlEscaped(strings.ReplaceAll(e.Message, "\n", " "))))
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := controlEscaped(fmt.Sprint(e.Data[k]))
		if !identityKeys[k] {
			v = unforgeable(v)
		}
		fmt.Fprintf(&b, " %s=%s", controlEscaped(k), v)
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// identityKeys are the fields that say which container and run a line is
// about: what operators grep for (container=ID, name=NAME).
var identityKeys = map[string]bool{"container": true, "name": true, "mode": true}

// unforgeable writes "container=", "name=" and "mode=" in text a
// container may have chosen (a message with a cgroup or unit name, a
// child's line, a field's value) as "container\075" and so on: only the
// identity fields themselves, whose values are checked ids and names,
// can spell them, so that grepping for container=ID finds only the lines
// of that container.
func unforgeable(s string) string {
	if !strings.Contains(s, "=") {
		return s
	}
	for k := range identityKeys {
		s = strings.ReplaceAll(s, k+"=", k+`\075`)
	}
	return s
}

// controlEscaped writes what is not printable text in s (mounts.NotText:
// a newline, a carriage return, an escape sequence's ESC or CSI, a bidi
// override: text a container may have chosen, in a unit name, a mount
// source or an error) as \ooo, so that a log line stays one line and a
// terminal shows what it got.
func controlEscaped(s string) string { return mounts.EscapeText(s) }

// jsonFormatter writes one JSON object per entry: "time" (if stamp),
// "level", "msg", and the fields: numbers and booleans as such, anything
// else as its text. The built-in keys win over fields of the same name.
type jsonFormatter struct{ stamp bool }

func (f jsonFormatter) Format(e *logrus.Entry) ([]byte, error) {
	m := make(map[string]any, len(e.Data)+3)
	for k, v := range e.Data {
		switch v.(type) {
		case int, int64, uint64, uint32, bool:
			m[k] = v
		default:
			m[k] = fmt.Sprint(v)
		}
	}
	if f.stamp {
		m["time"] = e.Time.Format(time.RFC3339Nano)
	}
	m["level"] = e.Level.String()
	m["msg"] = e.Message
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
