package e2e

// Containers the hook must not touch: with the package installed (its
// hooks.d JSON at the package's path, read by podman without --hooks-dir;
// the runc config.json snippet), every container that starts, and every
// checkpoint and restore that works, without the hook works the same with
// it. These tests need no autofs: test/tests.sh runs them on the host
// itself (TestNoAutofs...).

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// rootlessUser is the user provision.sh makes for rootless podman (with
// subordinate ids).
const rootlessUser = "arh-rootless"

// installDeb installs the package of `make deb` with dpkg -i and purges it
// at the end of the test. It fails the test if the package is installed
// already (the test would replace an operator's install).
func installDeb(t testing.TB) {
	t.Helper()
	deb := os.Getenv("AUTOFS_RESTORE_HOOK_DEB")
	if deb == "" {
		testenv.Skip(t, "AUTOFS_RESTORE_HOOK_DEB is not set (make test builds the package with make deb and sets it)")
	}
	if st, ok := debInstalled(); ok {
		t.Fatalf("autofs-restore-hook is installed on this machine already (%s): the test would replace it", st)
	}
	if out, err := exec.Command("timeout", "-s", "KILL", "120", "dpkg", "-i", deb).CombinedOutput(); err != nil {
		exec.Command("dpkg", "--purge", "autofs-restore-hook").Run()
		t.Fatalf("dpkg -i %s: %v\n%s", deb, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("timeout", "-s", "KILL", "120", "dpkg", "--purge", "autofs-restore-hook").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge autofs-restore-hook: %v\n%s", err, out)
		}
	})
}

// debInstalled says whether the package is installed on this machine,
// with dpkg's status of it.
func debInstalled() (string, bool) {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "autofs-restore-hook").CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "installed")
}

// logInstalledHook adds a log file (at debug level) to the installed
// hooks.d JSON's environment, so that the test sees each call of the hook;
// path and binary stay the package's. The log's directory is writable by
// the rootless user too. It returns a reader of that log.
func logInstalledHook(t testing.TB) func() string {
	t.Helper()
	b, err := os.ReadFile(debJSON)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	if h["hook"].(map[string]any)["path"] != debBinary {
		t.Fatalf("the installed %s names %v, want %s", debJSON, h["hook"], debBinary)
	}
	dir, err := os.MkdirTemp("", "arh-neverbreak-log-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "hook.log")
	// Made here, writable by all: the hooks of rootless podman run as its
	// user and append to it too (the hook itself creates a log file 0600).
	if err := os.WriteFile(logPath, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(logPath, 0o666); err != nil {
		t.Fatal(err)
	}
	h["hook"].(map[string]any)["env"] = hookLogEnv(logPath, hook.EnvLogLevel+"=debug")
	b, _ = json.Marshal(h)
	if err := os.WriteFile(debJSON, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return logReader(t, logPath)
}

// smallRootfs is a private copy of the lab's Debian 13 rootfs (no
// container writes to the cache), readable by the rootless user.
func smallRootfs(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "arh-neverbreak-rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	rootfs := filepath.Join(dir, "rootfs")
	if out, err := exec.Command("cp", "-a", filepath.Join(lab.CacheDir(), "rootfs-trixie"), rootfs).CombinedOutput(); err != nil {
		t.Fatalf("copy the lab's rootfs: %v\n%s", err, out)
	}
	// Owned by the rootless user, whose podman writes into a --rootfs
	// (--userns=keep-id adds the user to its /etc/passwd); root's podman
	// runs it all the same.
	if out, err := exec.Command("chown", "-R", rootlessUser+":"+rootlessUser, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("chown the rootfs copy: %v\n%s", err, out)
	}
	return rootfs
}

// mqueueMagic is the mqueue file system's f_type (linux/magic.h).
const mqueueMagic = 0x19800202

// hostMqueue mounts the POSIX message queue file system at /dev/mqueue
// where the host has none (this project's sandboxes): rootless podman
// bind-mounts it for --ipc=host. It is unmounted again at the end.
func hostMqueue(t testing.TB) {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/dev/mqueue", &st) == nil && st.Type == mqueueMagic {
		return
	}
	made := false
	if _, err := os.Stat("/dev/mqueue"); os.IsNotExist(err) {
		if err := os.Mkdir("/dev/mqueue", 0o1777); err != nil {
			t.Fatal(err)
		}
		made = true
	}
	if err := unix.Mount("mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Fatalf("mount mqueue on /dev/mqueue: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount("/dev/mqueue", unix.MNT_DETACH); err != nil {
			t.Errorf("unmount /dev/mqueue: %v", err)
		}
		if made {
			os.Remove("/dev/mqueue")
		}
	})
}

// podmanRunner runs podman as root or as the rootless user, with the lab's
// global flags and the CRIU wrapper first in PATH; hooksDir, when set, is
// the only hooks dir (--hooks-dir: the baseline without the hook).
type podmanRunner struct {
	rootless bool
	hooksDir string
	// state is the test's own podman state (storage, run and lock
	// directories): none of the machine's. A podman killed while it holds
	// one of the machine's shared-memory locks leaves that lock taken
	// until reboot, and the next container given its number hangs for
	// ever; file locks go with the process that held them.
	state *podmanState
}

// podmanState is a directory with podman's storage, run and temporary
// directories and a containers.conf that asks for file locks, owned by
// the user podman runs as.
type podmanState struct {
	dir string
}

// newPodmanState makes a podmanState for root or the rootless user; at the
// end of the test it removes every container in it and the directory.
func newPodmanState(t testing.TB, rootless bool) *podmanState {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "arh-podman-state-")
	if err != nil {
		t.Fatal(err)
	}
	st := &podmanState{dir: dir}
	conf := "# autofs-restore-hook's tests: file locks, freed when their holder dies.\n[engine]\nlock_type = \"file\"\n"
	if err := os.WriteFile(filepath.Join(dir, "containers.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"root", "runroot", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(dir, 0o755)
	if rootless {
		if out, err := exec.Command("chown", "-R", rootlessUser+":"+rootlessUser, dir).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v\n%s", dir, err, out)
		}
	}
	// Rootless podman leaves a process behind that holds its user
	// namespace ("podman pause"): the test's own are ended at its end.
	pausing := pauseProcesses()
	t.Cleanup(func() {
		defer func() {
			for _, pid := range pauseProcesses() {
				if !slices.Contains(pausing, pid) {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}()
		p := podmanRunner{rootless: rootless, state: st}
		if out, err := p.run(2*time.Minute, "rm", "-a", "-f", "-t", "0"); err != nil {
			t.Errorf("remove the test's podman containers: %v (%s)", err, out)
		}
		// What podman mounted under its run and storage directories.
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				unix.Unmount(f[4], unix.MNT_DETACH)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the test's podman state: %v", err)
		}
	})
	return st
}

// pauseProcesses are the pids of the rootless user's "podman pause"
// processes.
func pauseProcesses() []int {
	u, err := user.Lookup(rootlessUser)
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		var st unix.Stat_t
		if strings.TrimSpace(string(comm)) == "podman pause" && unix.Stat(fmt.Sprintf("/proc/%d", pid), &st) == nil && strconv.Itoa(int(st.Uid)) == u.Uid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// args are podman's global flags for the state.
func (s *podmanState) args() []string {
	return []string{"--root", filepath.Join(s.dir, "root"), "--runroot", filepath.Join(s.dir, "runroot"), "--tmpdir", filepath.Join(s.dir, "tmp")}
}

func (p podmanRunner) String() string {
	who := "root"
	if p.rootless {
		who = "rootless"
	}
	if p.hooksDir != "" {
		return who + ", without the hook"
	}
	return who + ", with the package's hook"
}

func (p podmanRunner) cmd(args ...string) *exec.Cmd {
	var argv []string
	env := []string{"PATH=" + filepath.Join(lab.CacheDir(), "bin") + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	if p.rootless {
		argv = append(argv, "runuser", "-u", rootlessUser, "--", "env", "HOME=/var/lib/"+rootlessUser, "XDG_RUNTIME_DIR=")
		argv = append(argv, env...)
	}
	if p.state != nil {
		argv = append(argv, "env", "CONTAINERS_CONF="+filepath.Join(p.state.dir, "containers.conf"))
	}
	argv = append(argv, "podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file")
	if p.state != nil {
		argv = append(argv, p.state.args()...)
	}
	if p.hooksDir != "" {
		argv = append(argv, "--hooks-dir", p.hooksDir)
	}
	cmd := exec.Command(argv[0], append(argv[1:], args...)...)
	cmd.Env = append(env, "HOME=/root")
	cmd.Dir = "/"
	return cmd
}

// run runs podman and returns its stdout, and its exit status with stderr
// as an error. A podman still running after timeout (scaled) is described
// before it is killed: every process of the machine with its state, wait
// channel and kernel stack, and podman's own goroutines (SIGQUIT makes a Go
// program print them), so that a hang seen once in CI says where it was.
func (p podmanRunner) run(timeout time.Duration, args ...string) (string, error) {
	cmd := p.cmd(args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// conmon outlives podman run -d; should it keep a copy of the pipes,
	// Wait gives up on them after this.
	cmd.WaitDelay = 10 * time.Second
	what := "podman " + strings.Join(args, " ")
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("%s: %v", what, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	limit := testenv.Scale(timeout)
	select {
	case err := <-done:
		if err != nil {
			return stdout.String(), fmt.Errorf("%s: %v: %s", what, err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), nil
	case <-time.After(limit):
	}
	procs := lab.DescribeProcesses()
	pgid := cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	return stdout.String(), fmt.Errorf("%s: still running after %v, killed; the machine's processes then:\n%s\npodman's stderr (its goroutines after SIGQUIT):\n%s",
		what, limit, procs, firstBytes(stderr.String(), 24<<10))
}

// firstBytes is the start of s, at most n bytes of it (a goroutine dump
// starts with the goroutine that matters most).
func firstBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "[...]"
}

// podmanCase is one way of running a container that the hook must not
// break.
type podmanCase struct {
	name     string
	flags    []string
	rootless bool // only rootless (--userns=keep-id)
	rootOnly bool
	// needsOther runs the case beside another container, whose name
	// replaces OTHER in flags.
	needsOther bool
	// noCheckpoint, when set, says why the case is not checkpointed.
	noCheckpoint string
}

var neverBreakCases = []podmanCase{
	{name: "plain"},
	{name: "pid-host", flags: []string{"--pid=host"}},
	{name: "host-ipc-net-uts", flags: []string{"--ipc=host", "--net=host", "--uts=host"},
		// Seen on podman 4.3.1 with CRIU 4.1.1, without the hook: the
		// restore "works", then exec, rm -f and ps hang on the container
		// for minutes and leave its conmon behind.
		noCheckpoint: "podman's restore of a container in the host's network namespace leaves it hung, hook or not"},
	{name: "privileged", flags: []string{"--privileged"}},
	{name: "userns-keep-id", flags: []string{"--userns=keep-id"}, rootless: true},
	{name: "pid-container", flags: []string{"--pid=container:OTHER"}, needsOther: true},
	{name: "read-only", flags: []string{"--read-only"}},
	{name: "systemd-always", flags: []string{"--systemd=always"}},
}

// runArgs is podman run's arguments for case c: name, the machine's
// limits, no network unless the case takes the host's, its flags, the
// rootfs, then the command.
func (c podmanCase) runArgs(name, other, rootfs string, detach bool, command ...string) []string {
	args := []string{"run", "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
	if detach {
		args = append(args, "-d")
	} else {
		args = append(args, "--rm")
	}
	net := false
	for _, f := range c.flags {
		f = strings.ReplaceAll(f, "OTHER", other)
		net = net || strings.HasPrefix(f, "--net=")
		args = append(args, f)
	}
	if !net {
		args = append(args, "--network", "none")
	}
	return append(append(args, "--rootfs", rootfs), command...)
}

// outcome is what a runtime did with one container: its output and
// whether it failed.
type outcome struct {
	out string
	err error
}

func (o outcome) String() string {
	if o.err != nil {
		return "failed: " + o.err.Error()
	}
	return fmt.Sprintf("ok, output %q", o.out)
}

// startOutcome starts case c's container in the foreground, running a
// command whose output depends on its namespaces, and removes it.
func startOutcome(p podmanRunner, c podmanCase, name, other, rootfs string) outcome {
	out, err := p.run(time.Minute, c.runArgs(name, other, rootfs, false, "sh", "-c", "echo started; id -u; test -r /proc/self/stat && echo procfs")...)
	return outcome{out, err}
}

// checkpointOutcome starts case c's container detached, checkpoints and
// restores it, and checks that it runs again; it removes it at the end.
func checkpointOutcome(p podmanRunner, c podmanCase, name, other, rootfs string) outcome {
	defer p.run(time.Minute, "rm", "-f", "-t", "0", name)
	if _, err := p.run(time.Minute, c.runArgs(name, other, rootfs, true, "sleep", "600")...); err != nil {
		return outcome{"", err}
	}
	for _, step := range [][]string{{"container", "checkpoint", name}, {"container", "restore", name}} {
		if _, err := p.run(2*time.Minute, step...); err != nil {
			return outcome{"", err}
		}
	}
	out, err := p.run(15*time.Second, "exec", name, "echo", "alive")
	return outcome{out, err}
}

// With the package installed, podman (root and rootless, no --hooks-dir)
// starts every kind of container exactly as without the hook, and every
// checkpoint and restore that works without the hook works with it. The
// hook is called for each (its log shows the container's id); before the
// hook decided on the state first, --pid=host failed to start ("exit
// status 3 ... shares the host's pid namespace").
func TestNoAutofsInstalledHookBreaksNoPodmanContainer(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: provisioning should have installed it: %v", err)
	}
	rootfs := smallRootfs(t)
	hostMqueue(t)
	installDeb(t)
	log := logInstalledHook(t)
	empty, err := os.MkdirTemp("", "arh-neverbreak-nohooks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(empty) })
	os.Chmod(empty, 0o755)
	suffix := strconv.Itoa(os.Getpid())
	created := 0 // containers podman created with the hook
	for _, rootless := range []bool{false, true} {
		st := newPodmanState(t, rootless)
		with, without := podmanRunner{rootless: rootless, state: st}, podmanRunner{rootless: rootless, hooksDir: empty, state: st}
		who := "root"
		if rootless {
			who = "rootless"
		}
		// The other container of --pid=container:OTHER, one for each
		// runner (with or without the hook: the hook runs for it too).
		others := map[bool]string{}
		for _, p := range []podmanRunner{with, without} {
			other := fmt.Sprintf("arh-nb-%s-other-%t-%s", who, p.hooksDir == "", suffix)
			if _, err := p.run(time.Minute, podmanCase{}.runArgs(other, "", rootfs, true, "sleep", "600")...); err != nil {
				t.Fatalf("%s: start the other container: %v", p, err)
			}
			t.Cleanup(func() { p.run(time.Minute, "rm", "-f", "-t", "0", other) })
			others[p.hooksDir == ""] = other
			if p.hooksDir == "" {
				created++
			}
		}
		for _, c := range neverBreakCases {
			if (c.rootless && !rootless) || (c.rootOnly && rootless) {
				continue
			}
			name := fmt.Sprintf("arh-nb-%s-%s-%s", who, c.name, suffix)
			base := startOutcome(without, c, name+"-base", others[false], rootfs)
			got := startOutcome(with, c, name, others[true], rootfs)
			if got.err == nil {
				created++
			}
			t.Logf("%s %s: start without the hook %s; with it %s", who, c.name, base, got)
			if (got.err == nil) != (base.err == nil) || got.out != base.out {
				t.Errorf("%s %s: started %s without the hook, %s with it", who, c.name, base, got)
			}
			if rootless {
				// podman checkpoints only as root ("checkpointing a
				// container requires root"): shown once, not per case.
				continue
			}
			if c.noCheckpoint != "" {
				t.Logf("%s %s: not checkpointed: %s", who, c.name, c.noCheckpoint)
				continue
			}
			base = checkpointOutcome(without, c, name+"-cr-base", others[false], rootfs)
			got = checkpointOutcome(with, c, name+"-cr", others[true], rootfs)
			if got.err == nil {
				created++
			}
			t.Logf("%s %s: checkpoint and restore without the hook %s; with it %s", who, c.name, base, got)
			if base.err == nil && got.err != nil {
				t.Errorf("%s %s: checkpoint and restore work without the hook, and with it %s", who, c.name, got)
			}
		}
		if rootless {
			// What the rootless rows above leave out, shown: podman
			// cannot checkpoint as a user, hook or not.
			c := neverBreakCases[0]
			base := checkpointOutcome(without, c, "arh-nb-rootless-cr-"+suffix, "", rootfs)
			if base.err == nil {
				t.Errorf("rootless podman checkpointed and restored a container: the rootless rows must then compare checkpoints too")
			}
			t.Logf("rootless checkpoint without the hook: %s", base)
		}
	}
	// The hook ran for every container podman created with it: a
	// createRuntime call for a fresh start, and a restore it followed (root)
	// or refused with a reason and exit 0 (--pid=host).
	l := log()
	for _, want := range []string{"status=creating", "status=stopped", "shares the host's pid namespace", "restore in progress"} {
		if !strings.Contains(l, want) {
			t.Errorf("the hook's log has no %q: was the installed hook called?", want)
		}
	}
	if n := strings.Count(l, "status=creating"); n < created {
		t.Errorf("the hook logged %d fresh starts, want at least %d (one a container podman created with it)", n, created)
	}
	if strings.Contains(l, "autofs-restore-hook error:") {
		t.Errorf("the hook logged errors for containers it has no business with:\n%s", grepLines(l, "autofs-restore-hook error:"))
	}
}

// runcBundle writes a bundle for runc: rootfs read-only, the given
// command, the spec's namespaces without pid when hostPID, and the hooks
// of the shipped runc config.json snippet when withHook (with logEnv as
// their environment: runc gives a hook no other).
func runcBundle(t testing.TB, rootfs string, hostPID, withHook bool, logEnv []string, command ...string) string {
	t.Helper()
	b := t.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", b).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var spec specs.Spec
	raw, err := os.ReadFile(filepath.Join(b, "config.json"))
	if err == nil {
		err = json.Unmarshal(raw, &spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: rootfs, Readonly: true}
	spec.Process.Terminal = false
	spec.Process.Args = command
	spec.Hostname = ""
	if hostPID {
		var ns []specs.LinuxNamespace
		for _, n := range spec.Linux.Namespaces {
			if n.Type != specs.PIDNamespace {
				ns = append(ns, n)
			}
		}
		spec.Linux.Namespaces = ns
	}
	if withHook {
		snippet, err := os.ReadFile(filepath.Join(lab.Dir(), "..", "..", "hooks.d", "runc-config-snippet.json"))
		if err != nil {
			t.Fatal(err)
		}
		var s specs.Spec
		if err := json.Unmarshal(snippet, &s); err != nil {
			t.Fatal(err)
		}
		for i := range s.Hooks.CreateRuntime {
			s.Hooks.CreateRuntime[i].Env = logEnv
		}
		spec.Hooks = s.Hooks
	}
	raw, _ = json.Marshal(&spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// With the package installed and the runc config.json snippet in a spec,
// runc starts a container that shares the host's pid namespace (and one
// that does not) exactly as without the snippet.
func TestNoAutofsRuncSnippetBreaksNoContainer(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	rootfs := smallRootfs(t)
	installDeb(t)
	logPath, log := ociLog(t)
	for _, hostPID := range []bool{false, true} {
		var res [2]outcome
		for i, withHook := range []bool{false, true} {
			b := runcBundle(t, rootfs, hostPID, withHook, hookLogEnv(logPath, hook.EnvLogLevel+"=debug"), "sh", "-c", "echo started; id -u")
			id := fmt.Sprintf("arh-nb-runc-%t-%t-%d", hostPID, withHook, os.Getpid())
			cmd := exec.Command("timeout", "-s", "KILL", strconv.Itoa(int(testenv.Scale(time.Minute).Seconds())), "runc", "run", "--bundle", b, id)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			exec.Command("runc", "delete", "-f", id).Run()
			if err != nil {
				err = fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
			}
			res[i] = outcome{string(out), err}
		}
		t.Logf("runc, host pid namespace %t: without the snippet %s; with it %s", hostPID, res[0], res[1])
		if res[0].err != nil {
			t.Fatalf("runc, host pid namespace %t: the container does not start even without the hook: %s", hostPID, res[0])
		}
		if res[1].err != nil || res[1].out != res[0].out {
			t.Errorf("runc, host pid namespace %t: without the snippet %s; with it %s", hostPID, res[0], res[1])
		}
	}
	if n := strings.Count(log(), "status=creating"); n < 2 {
		t.Errorf("the hook logged %d fresh starts, want 2: was the snippet's hook called?", n)
	}
}
