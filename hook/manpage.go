package hook

// The manual page autofs-restore-hook(8), made from the CLI's own help
// (its synopsis, the options table of options.go, the exit status) and the
// files and environment the binary uses: `man` prints it, and `make deb`
// installs what it printed.

import (
	"fmt"
	"io"
	"strings"
)

// roffEscape makes text safe as roff: backslashes and hyphens escaped, a
// line that would start with a control character (. or ') guarded.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

// manSections are the page's sections after SYNOPSIS, each a title and
// paragraphs.
var manSections = []struct {
	title string
	paras []string
}{
	{"DESCRIPTION", []string{
		"After CRIU restores a container (runc restore, podman container restore, CRI-O or Kubernetes checkpoint restore), every autofs mount point in it whose master (a systemd .automount unit, or the automount daemon) is not what the kernel still knows hangs the first process that touches it. autofs-restore-hook makes such mounts fail fast while CRIU still holds the container's tasks (pre-resume), then restarts their masters once the tasks run (post-resume): the systemd units are restarted by the container's own systemd, the automount daemon is killed and started again with the same command line, credentials, capabilities, seccomp filters, securebits, limits and LSM label.",
		"It runs as a CRIU action script (CRTOOLS_SCRIPT_ACTION and CRTOOLS_INIT_PID set by CRIU; the precise path), as an OCI runtime hook reading the runtime-spec state on standard input (stage createRuntime; on a restore it leaves a detached worker that follows the restore), or by hand: status shows every autofs mount of a container and its master, fix repairs a container after the fact.",
	}},
	{"ENVIRONMENT", []string{
		"AUTOFS_RESTORE_HOOK_LOG_FILE, AUTOFS_RESTORE_HOOK_LOG_LEVEL, AUTOFS_RESTORE_HOOK_LOG_FORMAT, AUTOFS_RESTORE_HOOK_NO_SYSLOG, AUTOFS_RESTORE_HOOK_NESTED: the options of the same meaning (see OPTIONS), for callers that pass no arguments (CRIU). A flag wins over its variable.",
		"CRTOOLS_SCRIPT_ACTION, CRTOOLS_INIT_PID, CRTOOLS_IMAGE_DIR: set by CRIU for an action script, and (but the last) by the CRIU plugin. The action script acts at pre-resume, post-resume and, on a cgroup v2 host, post-setup-namespaces, where it makes the cgroups a systemd container watched (read from the checkpoint in CRTOOLS_IMAGE_DIR) so that CRIU can restore it.",
		"AUTOFS_RESTORE_HOOK_WIRING: criu-plugin when the CRIU plugin runs the binary; logged as the field wiring (action-script when unset).",
		"AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS: set by the CRIU plugin in CRIU's environment: the actions it runs the binary for in this restore (post-setup-namespaces through the action script it adds on a cgroup v2 host with CRIU 3.19 or later; pre-resume and post-resume itself). An action script of ours leaves pre-resume and post-resume to the plugin when it names them.",
	}},
	{"FILES", []string{
		"/usr/libexec/oci/hooks.d/autofs-restore-hook: the binary, where the shipped hook configuration names it.",
		"/usr/share/containers/oci/hooks.d/autofs-restore-hook.json: the OCI hook for podman and CRI-O (stage createRuntime, every container). podman also reads /etc/containers/oci/hooks.d/, where a file of the same name wins (a copy there with other args or env configures the hook for the node).",
		"/usr/lib/criu/autofs-restore-hook.so: the CRIU plugin; every CRIU restore of the host runs the binary at pre-resume (waiting for it, at most 60 s) and starts it at post-resume (detached); on a cgroup v2 host it also runs it at post-setup-namespaces, as an action script it adds (CRIU 3.19 or later).",
		"/etc/criu/runc.conf (runc), /etc/criu/default.conf (crun before 1.26; CRIU 3.19 or later), /etc/criu/crun.conf (crun 1.26 with CRIU 4.2 or later): a line action-script /usr/libexec/oci/hooks.d/autofs-restore-hook wires the action script (not written by the package).",
		"/var/lib/autofs-restore-hook/node-install.json: what node install wrote on a node (the Kubernetes DaemonSet's installer), which node uninstall removes; /opt/autofs-restore-hook/ and /etc/crio/crio.conf.d/90-autofs-restore-hook.conf where the node's /usr is read-only.",
		"/run/autofs-restore-hook/: one state file and lock per container (root only).",
		"Logs go to syslog (the journal) and, with --log-file, to a file: runtimes drop a hook's standard error.",
	}},
	{"EXAMPLES", []string{
		"After podman container restore NAME: autofs-restore-hook status --container NAME shows every autofs mount of the container and its state (ok, stale, catatonic, orphaned), and its last fix. --pid $(podman inspect -f '{{.State.Pid}}' NAME) does the same.",
		"Every container of the node that has autofs mounts, with its health: autofs-restore-hook status --all (--json for scripts).",
		"A restore the hook could not fix (its log says so): autofs-restore-hook fix --container NAME finishes it; --dry-run first says what it would do.",
		"The log lines of one container: journalctl -t autofs-restore-hook | grep 'container=ID' (or 'name=NAME'), or the file of --log-file.",
	}},
	{"SEE ALSO", []string{
		"criu(8), runc(8), podman-container-restore(1), oci-hooks(5), automount(8), systemd.automount(5). /usr/share/doc/autofs-restore-hook/README.md (install, verify, diagnose), docs/how-it-works.md, docs/runtimes.md and RELIABILITY.md: what is fixed, how, with which runtimes, and what was tested.",
	}},
}

// WriteManPage writes autofs-restore-hook(8) in roff.
func WriteManPage(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH AUTOFS\\-RESTORE\\-HOOK 8 \"\" \"autofs-restore-hook %s\" \"System Administration\"\n", roffEscape(Version))
	b.WriteString(".SH NAME\nautofs\\-restore\\-hook \\- make autofs mounts work again after a CRIU restore\n")
	// The synopsis is the help's; the options, the exit status and the
	// environment come from the same table and text as --help.
	_, synopsis, _ := strings.Cut(usageHead, "\nUsage:\n")
	synopsis, _, _ = strings.Cut(synopsis, "\nOptions")
	b.WriteString(".SH SYNOPSIS\n.nf\n")
	b.WriteString(roffEscape(strings.Trim(synopsis, "\n")))
	b.WriteString("\n.fi\n")
	b.WriteString(".SH OPTIONS\n")
	b.WriteString(roffEscape("A flag wins over its environment variable. A CRIU action script gets no arguments: there only the variables apply.") + "\n")
	for _, o := range options {
		fmt.Fprintf(&b, ".TP\n%s\n%s\n", roffEscape(o.flagUsage()), roffEscape(o.Doc))
		fmt.Fprintf(&b, ".br\n%s\n", roffEscape("For: "+o.Where+". Default: "+o.Default+"."))
		if o.Env != "" {
			fmt.Fprintf(&b, ".br\n%s\n", roffEscape("Environment: "+o.Env+"."))
		}
	}
	b.WriteString(".SH EXIT STATUS\n")
	b.WriteString(roffEscape(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(exitHelp), "Exit status:"))) + "\n")
	for _, s := range manSections {
		fmt.Fprintf(&b, ".SH %s\n", s.title)
		for i, p := range s.paras {
			if i > 0 {
				b.WriteString(".PP\n")
			}
			b.WriteString(roffEscape(p) + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
