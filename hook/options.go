package hook

// The command line's options, declared once: LoadConfig registers them,
// and --help and the manual page print them, with their environment
// variables and defaults.

import (
	"flag"
	"fmt"
	"strings"
)

// option is one flag of the command line.
type option struct {
	Name string // the flag, without dashes
	Arg  string // the value's name; "" for a boolean flag
	Env  string // the environment variable that sets it too, if any
	// Default is what applies when neither the flag nor the variable is
	// given, in words.
	Default string
	// Where says which commands take it.
	Where string
	Doc   string
}

// options are every flag LoadConfig registers, in the order of --help.
var options = []option{
	{"pid", "PID", "", "none: required", "status, fix",
		"The container: any process of it, on the host (its init is used: podman inspect -f '{{.State.Pid}}' NAME, runc state ID, crictl inspect ID)."},
	{"container", "NAME|ID", "", "none", "status, fix",
		"The container by the name or id its runtime knows: runc and crun (their state under /run/runc, /run/crun), podman (podman container inspect), CRI-O (crictl inspect). Instead of --pid."},
	{"all", "", "", "off", "status",
		"Report every container of the node that has autofs mounts, one line each: id, name, init pid, mounts, health, last fix."},
	{"json", "", "", "off", "status",
		"Print the report as JSON: every autofs mount, its state and its master."},
	{"dry-run", "", "", "off", "fix",
		"Say what would be done, and do nothing."},
	{"force", "", "", "off", "fix",
		"Run both phases again even if the container's state file says they were done."},
	{"assume-restored", "", "", "off", "fix",
		"Act as if the container had been restored, for one whose restore left no sign the hook can see (a time namespace of its own, CRIU's trace): its mounts whose master no longer serves them are fixed, not only reported."},
	{"timeout", "D", "", "60s plus 50ms a mount, at most 3m", "fix, OCI hook",
		"The budget of one fix of one container (a Go duration: 90s, 2m). Every step gets at most what is left of it, and a fix that runs out stops, logs what is left, and leaves the container to the next fix."},
	{"restore-timeout", "D", "", "5m", "OCI hook",
		"How long the OCI hook's follower waits for the restore it follows to end."},
	{"nested", "fix|skip", EnvNested, "fix", "fix, OCI hook, CRIU",
		"What to do with autofs mounts that have copies in nested mount namespaces of the container: fix them too, or leave them alone (logged)."},
	{"log-file", "FILE", EnvLogFile, "none", "every mode",
		"Also append log lines to FILE (runtimes drop a hook's standard error)."},
	{"log-level", "LEVEL", EnvLogLevel, "info", "every mode",
		"error, warning, info or debug."},
	{"log-format", "text|json", EnvLogFormat, "text", "every mode",
		"text: one line per entry, the fields as key=value; json: one JSON object per line (time, level, msg and the fields), for node log pipelines. Every line carries mode= and, once known, container= and name=."},
	{"no-syslog", "", EnvNoSyslog, "off (logs go to syslog, the journal)", "every mode",
		"Do not log to syslog. The variable takes a boolean (1, true, 0, false)."},
}

// flagUsage is the option as --help writes it: "--name ARG".
func (o option) flagUsage() string {
	if o.Arg == "" {
		return "--" + o.Name
	}
	return "--" + o.Name + " " + o.Arg
}

// optionsHelp is the options part of --help: one entry per option, its
// commands, variable and default.
func optionsHelp() string {
	var b strings.Builder
	for _, o := range options {
		more := "(" + o.Where + "; default: " + o.Default
		if o.Env != "" {
			more += "; environment: " + o.Env
		}
		fmt.Fprintf(&b, "  %s\n%s%s", o.flagUsage(), wrap(o.Doc, "      ", 78), wrap(more+")", "      ", 78))
	}
	return b.String()
}

// wrap fills text into lines of at most width columns (a longer word
// stays whole), each starting with indent.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, w := range strings.Fields(text) {
		if line != indent && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += w
	}
	return b.String() + line + "\n"
}

// registered lists the flags a FlagSet holds, for the test that keeps
// the table and the parser together.
func registered(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}
