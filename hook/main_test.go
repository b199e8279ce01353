package hook

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
)

// run calls Main as the binary would be called, without syslog.
func run(t *testing.T, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv(EnvNoSyslog, "1")
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	start := time.Now()
	code := Main(args, strings.NewReader(stdin), &out, &errb)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Main(%q) took %s", args, d)
	}
	return code, out.String(), errb.String()
}

func TestMainUsage(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		stdin  string
		args   []string
		code   int
		stderr string
	}{
		{"version", nil, "", []string{"version"}, ExitOK, ""},
		{"help", nil, "", []string{"--help"}, ExitOK, ""},
		{"unknown command", nil, "", []string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`},
		{"fix without pid", nil, "", []string{"fix"}, ExitUsage, "--pid or --container is required"},
		{"fix garbage pid", nil, "", []string{"fix", "--pid", "12x"}, ExitUsage, `--pid "12x": want a positive process id`},
		{"fix negative pid", nil, "", []string{"fix", "--pid=-3"}, ExitUsage, "want a positive process id"},
		{"status zero pid", nil, "", []string{"status", "--pid", "0"}, ExitUsage, "want a positive process id"},
		{"bad nested", nil, "", []string{"fix", "--pid", "1", "--nested=maybe"}, ExitUsage, `--nested="maybe"`},
		{"bad log level", nil, "", []string{"status", "--pid", "1", "--log-level", "loud"}, ExitUsage, `log level "loud"`},
		{"stray argument", nil, "", []string{"status", "--pid", "1", "extra"}, ExitUsage, `unexpected argument "extra"`},
		{"host process refused", nil, "", []string{"status", "--pid", strconv.Itoa(os.Getpid())}, ExitRefused, "shares the host's"},
		{"own pid refused", nil, "", []string{"fix", "--pid", strconv.Itoa(os.Getpid())}, ExitRefused, "shares the host's"},
		{"missing pid", nil, "", []string{"status", "--pid", "2147483000"}, ExitRefused, "process is gone"},
		{"oci empty stdin", nil, "", nil, ExitUsage, "no state on stdin"},
		{"oci not json", nil, "{oops", nil, ExitUsage, "not valid JSON"},
		{"oci no status", nil, `{"id":"c","pid":5}`, nil, ExitUsage, "no status"},
		{"oci no id", nil, `{"status":"creating","pid":5}`, nil, ExitUsage, "no container id"},
		// Everything below is a valid state: whatever the hook makes of
		// it, the container goes on (exit 0), and a fresh start is not
		// even looked at (a pid that does not exist, or the host's own
		// namespaces, change nothing).
		{"oci unknown status", nil, `{"id":"c","status":"paused","pid":5}`, nil, ExitOK, `unknown status "paused"`},
		{"oci fresh create", nil, `{"ociVersion":"1.0.2","id":"c","status":"creating","pid":0,"bundle":"/b"}`, nil, ExitOK, ""},
		{"oci fresh create, host pid namespace", nil, `{"id":"c","status":"creating","pid":` + strconv.Itoa(os.Getpid()) + `}`, nil, ExitOK, ""},
		{"oci created, host pid namespace", nil, `{"id":"c","status":"created","pid":` + strconv.Itoa(os.Getpid()) + `}`, nil, ExitOK, ""},
		{"oci fresh create, pid gone", nil, `{"id":"c","status":"creating","pid":2147483000}`, nil, ExitOK, ""},
		{"oci poststop", nil, `{"id":"c","status":"stopped","pid":0}`, nil, ExitOK, ""},
		{"oci restore, host pid namespace", nil, `{"id":"c","status":"stopped","pid":` + strconv.Itoa(os.Getpid()) + `}`, nil, ExitOK, "shares the host's"},
		{"oci restore, pid gone", nil, `{"id":"c","status":"stopped","pid":2147483000}`, nil, ExitOK, "not followed"},
		{"oci running, host pid namespace", nil, `{"id":"c","status":"running","pid":` + strconv.Itoa(os.Getpid()) + `}`, nil, ExitOK, "shares the host's"},
		{"oci running, pid gone", nil, `{"id":"c","status":"running","pid":2147483000}`, nil, ExitOK, "not fixed"},
		{"oci running without pid", nil, `{"id":"c","status":"running","pid":0}`, nil, ExitOK, "no pid"},
		{"oci log file it cannot open", map[string]string{EnvLogFile: "/nonexistent-dir/hook.log"}, `{"id":"c","status":"creating","pid":0}`, nil, ExitOK, "logging to syslog and stderr only"},
		{"oci invalid setting in its environment", map[string]string{EnvNested: "sometimes"}, `{"id":"c","status":"creating","pid":0}`, nil, ExitOK, "using the default in its place"},
		{"oci invalid boolean in its environment", map[string]string{EnvNoSyslog: "yes"}, `{"id":"c","status":"creating","pid":0}`, nil, ExitOK, "want a boolean"},
		{"oci invalid flag in its args", nil, `{"id":"c","status":"creating","pid":0}`, []string{"--timeout", "-3s"}, ExitOK, "using the default in its place"},
		{"oci invalid log level", map[string]string{EnvLogLevel: "loud"}, `{"id":"c","status":"creating","pid":0}`, nil, ExitOK, "at level info"},
		{"fix invalid boolean in its environment", map[string]string{EnvNoSyslog: "yes"}, "", []string{"fix", "--pid", "1"}, ExitUsage, "want a boolean"},
		{"criu ignored action", map[string]string{EnvCRIUAction: "pre-dump", EnvCRIUInitPid: "1"}, "", nil, ExitOK, ""},
		{"criu bad pid", map[string]string{EnvCRIUAction: "post-resume", EnvCRIUInitPid: "abc"}, "", nil, ExitOK, `CRTOOLS_INIT_PID="abc" is not a process id`},
		{"criu host pid", map[string]string{EnvCRIUAction: "pre-resume", EnvCRIUInitPid: strconv.Itoa(os.Getpid())}, "", nil, ExitOK, "shares the host's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, tt.env, tt.stdin, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.code, stderr)
			}
			if tt.stderr == "" && tt.code == ExitOK && stderr != "" {
				t.Errorf("expected silence, got %q", stderr)
			}
			if tt.stderr != "" && !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.stderr)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); tt.code == ExitUsage && n > 0 {
				t.Errorf("usage error is %d lines, want one: %q", n+1, stderr)
			}
		})
	}
}

// Every option of the OCI hook reaches the detached worker, which gets
// nothing from the environment but PATH.
func TestFollowerCommandCarriesEveryOption(t *testing.T) {
	opts := Options{Config: Config{SkipNested: true, AssumeRestored: true, Timeout: 7 * time.Second, RestoreTimeout: 9 * time.Second,
		Logging: LogConfig{File: "/var/log/x.log", Level: "debug", Format: "json", NoSyslog: true}}, Identity: Identity{ID: "abc", Name: "web"}}
	cmd, err := followerCommand("/x/autofs-restore-hook", proc.Ref{Pid: 42, StartTime: 4242}, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmd.Args) != 3 || cmd.Args[1] != follower.Role() {
		t.Fatalf("args %q", cmd.Args)
	}
	var got followerConfig
	if err := json.Unmarshal([]byte(cmd.Args[2]), &got); err != nil {
		t.Fatal(err)
	}
	want := followerConfig{Init: proc.Ref{Pid: 42, StartTime: 4242}, Config: opts.Config, Identity: opts.Identity}
	if got != want {
		t.Errorf("follower configuration %+v, want %+v", got, want)
	}
	if len(cmd.Env) != 1 || !strings.HasPrefix(cmd.Env[0], "PATH=") {
		t.Errorf("follower environment %q, want PATH only", cmd.Env)
	}
	if cmd.SysProcAttr == nil || !cmd.SysProcAttr.Setsid {
		t.Errorf("follower not in a session of its own")
	}
}

// The follower polls every 2 ms for 2 s once the init has its own name
// back, and before and after that at an interval that grows with the
// time (the restore's, then the time since the name), bounded both ways.
func TestFollowerPollInterval(t *testing.T) {
	for _, c := range []struct {
		elapsed, sinceNamed time.Duration
		named               bool
		want                time.Duration
	}{
		{0, 0, false, 2 * time.Millisecond},
		{100 * time.Millisecond, 0, false, 2 * time.Millisecond},
		{640 * time.Millisecond, 0, false, 10 * time.Millisecond},
		{time.Second, 0, false, 15625 * time.Microsecond},
		{time.Minute, 0, false, 50 * time.Millisecond},
		{time.Minute, 0, true, 2 * time.Millisecond},
		{time.Minute, 1999 * time.Millisecond, true, 2 * time.Millisecond},
		{time.Minute, 2 * time.Second, true, 31250 * time.Microsecond},
		{time.Minute, time.Minute, true, 50 * time.Millisecond},
	} {
		if got := pollInterval(c.elapsed, c.sinceNamed, c.named); got != c.want {
			t.Errorf("pollInterval(%s, %s, named %v) = %s, want %s", c.elapsed, c.sinceNamed, c.named, got, c.want)
		}
	}
}

// Every option reaches every role: each setting, given by its
// environment variable or its flag, shows in the Config that the CLI, the
// CRIU action script (environment only) and the OCI hook (and through it
// the detached worker, TestFollowerCommandCarriesEveryOption) run with.
func TestEveryOptionReachesEveryRole(t *testing.T) {
	env := map[string]string{EnvLogFile: "/var/log/env.log", EnvLogLevel: "debug", EnvLogFormat: "json", EnvNoSyslog: "1", EnvNested: "skip"}
	getenv := func(k string) string { return env[k] }
	none := func(string) string { return "" }
	fromEnv := Config{Logging: LogConfig{File: "/var/log/env.log", Level: "debug", Format: "json", NoSyslog: true}, SkipNested: true, RestoreTimeout: defaultRestoreTimeout}
	flags := []string{"--log-file", "/var/log/f.log", "--log-level", "warning", "--log-format", "text", "--no-syslog", "--nested", "skip", "--timeout", "7s", "--restore-timeout", "9s", "--assume-restored", "--force", "--dry-run"}
	fromFlags := Config{Logging: LogConfig{File: "/var/log/f.log", Level: "warning", Format: "text", NoSyslog: true}, SkipNested: true, Timeout: 7 * time.Second, RestoreTimeout: 9 * time.Second, AssumeRestored: true, Force: true, DryRun: true}
	for _, tc := range []struct {
		role   string
		cmd    string
		args   []string
		getenv func(string) string
		want   Config
	}{
		{"CRIU action script: environment", "", nil, getenv, fromEnv},
		{"OCI hook: environment (hooks.d env)", "", nil, getenv, fromEnv},
		{"OCI hook: flags (hooks.d args)", "", flags, none, fromFlags},
		{"fix: flags", "fix", flags, none, fromFlags},
		{"fix: flags over environment", "fix", flags, getenv, fromFlags},
		{"status: environment", "status", nil, getenv, fromEnv},
	} {
		inv, err := LoadConfig(tc.cmd, tc.args, tc.getenv)
		if err != nil {
			t.Errorf("%s: %v", tc.role, err)
			continue
		}
		if inv.Config != tc.want {
			t.Errorf("%s: config %+v, want %+v", tc.role, inv.Config, tc.want)
		}
	}
	// An invalid setting is an error; the CRIU mode goes on with the
	// default in its place.
	inv, err := LoadConfig("", nil, func(k string) string {
		if k == EnvNested {
			return "sometimes"
		}
		return ""
	})
	if err == nil || inv.Config.SkipNested {
		t.Errorf("invalid %s: err %v, skip %v; want an error and the default (fix)", EnvNested, err, inv.Config.SkipNested)
	}
}

// Text a container chose (a unit name, a mount source, an error) cannot
// forge a log line or send a terminal an escape sequence.
func TestContainerTextEscaped(t *testing.T) {
	evil := "srv-b.automount\r\n2026-01-01T00:00:00.000Z autofs-restore-hook info: forged\x1b[2J"
	l, done, err := newLogger(LogConfig{NoSyslog: true}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	var buf bytes.Buffer
	l.SetOutput(&buf)
	l.WithField("unit", evil).Info("restart " + evil)
	out := buf.String()
	if strings.Count(out, "\n") != 1 || strings.ContainsAny(out[:len(out)-1], "\r\n\x1b") {
		t.Errorf("log line with container text: %q", out)
	}
	if !strings.Contains(out, `\015`) || !strings.Contains(out, `\033[2J`) {
		t.Errorf("control characters not shown escaped: %q", out)
	}
	buf.Reset()
	writeTable(&buf, Report{Pid: 1, Mounts: []MountStatus{{Mountpoint: "/srv/b", Type: "direct", Master: "systemd", Unit: evil, UnitConfirmed: true, State: "ok", OnTop: "tmpfs x\x1b]0;title\x07"}},
		LastErrors: []string{"restart: " + evil}})
	if strings.ContainsAny(buf.String(), "\r\x1b\x07") || strings.Count(buf.String(), "\n") != 4 {
		t.Errorf("status table with container text:\n%q", buf.String())
	}
}

// The CRIU action-script mode logs which wiring ran it, on stderr and in
// the log file: the CRIU plugin sets AUTOFS_RESTORE_HOOK_WIRING, an action
// script does not.
func TestCRIUModeLogsItsWiring(t *testing.T) {
	for _, c := range []struct{ env, plugin, action, want string }{
		{"", "", "pre-resume", "wiring=action-script"},
		{"criu-plugin", "", "pre-resume", "wiring=criu-plugin"},
		// The plugin added the cgroup step, and did not reach its own
		// pre-resume: the script does it, as an action script.
		{"", "post-setup-namespaces", "pre-resume", "wiring=action-script"},
		// The cgroup step of the script the plugin added.
		{"", "post-setup-namespaces", "post-setup-namespaces", "wiring=criu-plugin"},
	} {
		logPath := t.TempDir() + "/hook.log"
		old := hostCgroup2
		hostCgroup2 = func() bool { return true }
		code, _, stderr := run(t, map[string]string{EnvCRIUAction: c.action, EnvCRIUInitPid: "not-a-pid", EnvWiring: c.env, EnvPluginActions: c.plugin, EnvLogFile: logPath}, "")
		hostCgroup2 = old
		file, _ := os.ReadFile(logPath)
		if code != ExitOK || !strings.Contains(stderr, c.want) || !strings.Contains(string(file), c.want) {
			t.Errorf("%s at %s, %s=%q %s=%q: exit %d, stderr %q, log file %q; want %s in both", EnvCRIUAction, c.action, EnvWiring, c.env, EnvPluginActions, c.plugin, code, stderr, file, c.want)
		}
	}
}

// Where the CRIU plugin of the restore runs pre-resume and post-resume
// (EnvPluginActions), an action script of ours (the one the plugin added,
// or one the operator wired) does nothing there: not even a log line.
func TestCRIUModeLeavesToThePluginWhatItRuns(t *testing.T) {
	for _, c := range []struct{ action, plugin string }{
		{"pre-resume", "post-setup-namespaces pre-resume post-resume"},
		{"post-resume", "post-setup-namespaces pre-resume post-resume"},
		{"post-resume", "pre-resume post-resume"},
	} {
		logPath := t.TempDir() + "/hook.log"
		code, _, stderr := run(t, map[string]string{EnvCRIUAction: c.action, EnvCRIUInitPid: "not-a-pid", EnvPluginActions: c.plugin, EnvLogFile: logPath}, "")
		file, _ := os.ReadFile(logPath)
		if code != ExitOK || stderr != "" || len(file) != 0 {
			t.Errorf("%s with %s=%q: exit %d, stderr %q, log file %q; want 0 and nothing", c.action, EnvPluginActions, c.plugin, code, stderr, file)
		}
	}
}

// The boolean variables are booleans: AUTOFS_RESTORE_HOOK_NO_SYSLOG=0
// keeps syslog on (any value turned it off before).
func TestNoSyslogVariableIsABoolean(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "1": true, "true": true, "TRUE": true} {
		inv, err := LoadConfig("fix", nil, func(k string) string {
			if k == EnvNoSyslog {
				return v
			}
			return ""
		})
		if err != nil || inv.Config.Logging.NoSyslog != want {
			t.Errorf("%s=%q: no-syslog %v, err %v; want %v", EnvNoSyslog, v, inv.Config.Logging.NoSyslog, err, want)
		}
	}
	inv, err := LoadConfig("", nil, func(k string) string {
		if k == EnvNoSyslog {
			return "yes"
		}
		return ""
	})
	if err == nil || inv.Config.Logging.NoSyslog {
		t.Errorf("%s=yes: err %v, no-syslog %v; want an error and syslog on (the default)", EnvNoSyslog, err, inv.Config.Logging.NoSyslog)
	}
}

// The options table is the parser's: every flag LoadConfig takes is in
// it, and every entry is a flag; --help and the manual page show each
// with its default and its variable.
func TestOptionsTableIsTheParser(t *testing.T) {
	var inv Invocation
	nested := ""
	parsed := registered(newFlagSet("", &inv, &nested))
	var table []string
	for _, o := range options {
		table = append(table, o.Name)
	}
	slices.Sort(parsed)
	slices.Sort(table)
	if !slices.Equal(parsed, table) {
		t.Errorf("flags parsed %q, flags in the options table %q", parsed, table)
	}
	var page strings.Builder
	if err := WriteManPage(&page); err != nil {
		t.Fatal(err)
	}
	help := strings.Join(strings.Fields(usage), " ") // as read, whatever the wrapping
	for _, o := range options {
		if o.Default == "" || o.Doc == "" || o.Where == "" {
			t.Errorf("--%s: no default, text or commands in the table", o.Name)
		}
		for _, want := range []string{o.flagUsage(), "default: " + o.Default, o.Doc} {
			if !strings.Contains(help, want) {
				t.Errorf("--help lacks %q", want)
			}
		}
		for _, want := range []string{roffEscape(o.flagUsage()), roffEscape("Default: " + o.Default + ".")} {
			if !strings.Contains(page.String(), want) {
				t.Errorf("the manual page lacks %q", want)
			}
		}
		if o.Env != "" && (!strings.Contains(help, o.Env) || !strings.Contains(page.String(), roffEscape(o.Env))) {
			t.Errorf("--%s: its variable %s is not in --help and the manual page", o.Name, o.Env)
		}
	}
	for _, section := range []string{".SH OPTIONS", ".SH EXIT STATUS", ".SH FILES", ".SH EXAMPLES", ".SH SEE ALSO"} {
		if !strings.Contains(page.String(), section+"\n") {
			t.Errorf("the manual page has no %s", section)
		}
	}
}

// CRIU waits for an action script without a deadline, and on a cgroup v2
// host the plugin adds the binary as one in every restore: a
// post-setup-namespaces step that hangs is given up at its deadline, and
// the binary exits 0 so that the restore goes on.
func TestCRIUCgroupStepHasADeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	oldStep, oldDeadline, oldV2 := prepareCgroupsStep, cgroupStepDeadline, hostCgroup2
	defer func() { prepareCgroupsStep, cgroupStepDeadline, hostCgroup2 = oldStep, oldDeadline, oldV2 }()
	prepareCgroupsStep = func(int, string, *logrus.Entry) error { <-block; return nil }
	cgroupStepDeadline = 200 * time.Millisecond
	hostCgroup2 = func() bool { return true }
	logPath := t.TempDir() + "/hook.log"
	t.Setenv(EnvNoSyslog, "1")
	t.Setenv(EnvLogFile, logPath)
	t.Setenv(EnvCRIUAction, "post-setup-namespaces")
	t.Setenv(EnvCRIUInitPid, strconv.Itoa(os.Getpid()))
	t.Setenv(EnvPluginActions, "post-setup-namespaces")
	code := make(chan int, 1)
	go func() { code <- Main(nil, strings.NewReader(""), io.Discard, io.Discard) }()
	select {
	case c := <-code:
		file, _ := os.ReadFile(logPath)
		if c != ExitOK || !strings.Contains(string(file), "the cgroup step did not end within 200ms: given up") || !strings.Contains(string(file), "wiring=criu-plugin") {
			t.Errorf("exit %d, log %q; want 0 and the step given up (wiring=criu-plugin)", c, file)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the binary still waits for a hanging cgroup step after 20 s: CRIU would wait with it")
	}
	// A step that panics fails no restore either.
	prepareCgroupsStep = func(int, string, *logrus.Entry) error { panic("boom") }
	if c, _, _ := run(t, nil, ""); c != ExitOK {
		t.Errorf("a panicking cgroup step: exit %d, want 0", c)
	}
	if file, _ := os.ReadFile(logPath); !strings.Contains(string(file), "the cgroup step failed: boom") {
		t.Errorf("a panicking cgroup step is not logged: %q", file)
	}
}
