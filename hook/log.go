package hook

// Logging: where log lines go (syslog, stderr, a log file), at which
// level, and how one entry is written as one line.

import (
	"bytes"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"
	lsyslog "github.com/sirupsen/logrus/hooks/syslog"
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
}

// Env variables read in every mode, since a CRIU action script gets no
// arguments.
const (
	EnvLogFile  = "AUTOFS_RESTORE_HOOK_LOG_FILE"
	EnvLogLevel = "AUTOFS_RESTORE_HOOK_LOG_LEVEL"
	EnvNoSyslog = "AUTOFS_RESTORE_HOOK_NO_SYSLOG"
)

// logConfigFromEnv reads the log settings from the environment, but for
// EnvNoSyslog, a boolean that LoadConfig parses.
func logConfigFromEnv(getenv func(string) string) LogConfig {
	return LogConfig{
		File:  getenv(EnvLogFile),
		Level: getenv(EnvLogLevel),
	}
}

// newLogger builds the logger. Errors opening the file are returned (the
// operator asked for it); a missing syslog socket is not an error.
func newLogger(cfg LogConfig, stderr io.Writer) (*logrus.Logger, func(), error) {
	l := logrus.New()
	l.SetOutput(stderr)
	l.SetFormatter(lineFormatter{})
	closers := []func(){}
	done := func() {
		for _, c := range closers {
			c()
		}
	}
	level := logrus.InfoLevel
	if cfg.Level != "" {
		lv, err := logrus.ParseLevel(strings.ToLower(cfg.Level))
		if err != nil {
			return nil, done, fmt.Errorf("log level %q: want error, warning, info or debug", cfg.Level)
		}
		level = lv
	}
	l.SetLevel(level)
	if cfg.File != "" {
		f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, done, fmt.Errorf("open log file: %w", err)
		}
		closers = append(closers, func() { f.Close() })
		l.AddHook(&writerHook{w: f, f: lineFormatter{}})
	}
	if !cfg.NoSyslog {
		if h, err := lsyslog.NewSyslogHook("", "", syslog.LOG_DAEMON|syslog.LOG_INFO, "autofs-restore-hook"); err == nil {
			l.AddHook(h)
			closers = append(closers, func() { h.Writer.Close() })
		}
	}
	return l, done, nil
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

// lineFormatter writes one plain line per entry: time, level, message,
// then the fields sorted by name ("mount=/srv/a master=systemd ...").
type lineFormatter struct{}

func (lineFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(e.Time.Format("2006-01-02T15:04:05.000Z07:00"))
	b.WriteString(" autofs-restore-hook ")
	b.WriteString(e.Level.String())
	b.WriteString(": ")
	b.WriteString(controlEscaped(strings.ReplaceAll(e.Message, "\n", " ")))
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", controlEscaped(k), controlEscaped(fmt.Sprint(e.Data[k])))
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// controlEscaped writes what is not printable text in s (mounts.NotText:
// a newline, a carriage return, an escape sequence's ESC or CSI, a bidi
// override: text a container may have chosen, in a unit name, a mount
// source or an error) as \ooo, so that a log line stays one line and a
// terminal shows what it got.
func controlEscaped(s string) string { return mounts.EscapeText(s) }
