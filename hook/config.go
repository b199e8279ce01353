package hook

// Config: every setting of a run, built once from the environment and the
// command line by one function, whatever the role (CLI, CRIU action
// script, OCI hook), and handed whole to the detached OCI worker.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Config is every setting of a run. It is JSON, so that the detached OCI
// worker gets it whole (see followerConfig).
type Config struct {
	Logging        LogConfig `json:"log"`
	DryRun         bool      `json:"dry_run,omitempty"`
	Force          bool      `json:"force,omitempty"`
	SkipNested     bool      `json:"skip_nested,omitempty"`
	AssumeRestored bool      `json:"assume_restored,omitempty"`
	// Timeout is --timeout; 0 is the default, which grows with the number
	// of mounts to fix (Options.timeout).
	Timeout        time.Duration `json:"timeout"`
	RestoreTimeout time.Duration `json:"restore_timeout"`
}

// Invocation is a parsed command line: the command, its own arguments and
// the Config.
type Invocation struct {
	// Cmd is "status", "fix", or "" (the OCI hook).
	Cmd string
	Pid string
	// Container is --container: a name or id the runtimes know.
	Container string
	// All is status --all: every container of the node.
	All    bool
	JSON   bool
	Config Config
}

// defaultRestoreTimeout is the default of --restore-timeout: how long
// the OCI hook's follower waits for the restore to end. A node restoring
// many containers at once makes each restore slow: with 10 at once on 2
// emulated CPUs, every follower gave up at the old 60 s before its
// restore ended, and no container was fixed (the node-scale benchmark).
// A follower whose restore fails ends at once (the process is gone).
const defaultRestoreTimeout = 5 * time.Minute

// LoadConfig builds the Config of a run: the environment (getenv) first,
// then the flags in args (none for a CRIU action script). A CRIU action
// script gets no arguments, so every setting it honours has an
// environment variable. An invalid setting is an error; the returned
// Invocation then holds the defaults in its place, for the CRIU mode,
// which must go on.
func LoadConfig(cmd string, args []string, getenv func(string) string) (Invocation, error) {
	inv := Invocation{Cmd: cmd, Config: Config{Logging: logConfigFromEnv(getenv), RestoreTimeout: defaultRestoreTimeout}}
	c := &inv.Config
	nested := getenv(EnvNested)
	envErr := error(nil)
	if v := getenv(EnvNoSyslog); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			envErr = fmt.Errorf("%s=%q: want a boolean (1, true, 0, false)", EnvNoSyslog, v)
		}
		c.Logging.NoSyslog = b
	}
	fs := newFlagSet(cmd, &inv, &nested)
	if err := fs.Parse(args); err != nil {
		return inv, err
	}
	if envErr != nil {
		return inv, envErr
	}
	if fs.NArg() > 0 {
		return inv, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch nested {
	case "", "fix":
	case "skip":
		c.SkipNested = true
	default:
		return inv, fmt.Errorf("--nested=%q (or %s): want fix or skip", nested, EnvNested)
	}
	timeoutGiven := false
	fs.Visit(func(f *flag.Flag) { timeoutGiven = timeoutGiven || f.Name == "timeout" })
	if timeoutGiven && c.Timeout <= 0 || c.RestoreTimeout <= 0 {
		c.Timeout, c.RestoreTimeout = 0, defaultRestoreTimeout
		return inv, errors.New("--timeout and --restore-timeout must be positive")
	}
	return inv, nil
}

// newFlagSet registers every flag of the options table (options.go) on
// inv's Config and nested.
func newFlagSet(cmd string, inv *Invocation, nested *string) *flag.FlagSet {
	c := &inv.Config
	fs := flag.NewFlagSet("autofs-restore-hook "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Logging.File, "log-file", c.Logging.File, "")
	fs.StringVar(&c.Logging.Level, "log-level", c.Logging.Level, "")
	fs.BoolVar(&c.Logging.NoSyslog, "no-syslog", c.Logging.NoSyslog, "")
	fs.StringVar(&inv.Pid, "pid", "", "")
	fs.StringVar(&inv.Container, "container", "", "")
	fs.BoolVar(&inv.All, "all", false, "")
	fs.StringVar(&c.Logging.Format, "log-format", c.Logging.Format, "")
	fs.BoolVar(&inv.JSON, "json", false, "")
	fs.BoolVar(&c.DryRun, "dry-run", false, "")
	fs.BoolVar(&c.Force, "force", false, "")
	fs.StringVar(nested, "nested", *nested, "")
	fs.DurationVar(&c.RestoreTimeout, "restore-timeout", c.RestoreTimeout, "")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "")
	fs.BoolVar(&c.AssumeRestored, "assume-restored", false, "")
	return fs
}
