package e2e

// The CRIU plugin (plugin/autofs_restore_hook_plugin.c, installed as
// /usr/lib/criu/autofs-restore-hook.so): runc containers without autofs,
// checkpointed and restored by CRIU with the plugin's directory given
// through CRIU_LIBS_DIR (runc passes its environment on to `criu swrk`),
// the binary it runs replaced by AUTOFS_RESTORE_HOOK_PLUGIN_BIN. These
// tests need no autofs: test/tests.sh runs them on the host itself
// (TestNoAutofs...). What the plugin makes of a container with autofs
// mounts is the binary's business, tested through the action script.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// pluginName is the plugin's file name, as make install puts it.
const pluginName = hook.PluginFile

// pluginArtifact is the plugin under test: $AUTOFS_RESTORE_HOOK_PLUGIN
// (set by `make test` to what `make build` made), or `make plugin` into
// a directory of the test process.
var pluginArtifact = &artifact{env: "AUTOFS_RESTORE_HOOK_PLUGIN", build: func(dir string) (string, error) {
	path := filepath.Join(dir, pluginName)
	root := filepath.Join(lab.Dir(), "..", "..")
	if out, err := exec.Command("make", "-C", root, "--no-print-directory", "plugin", "PLUGIN="+path).CombinedOutput(); err != nil {
		return "", fmt.Errorf("make plugin: %v\n%s", err, out)
	}
	return path, nil
}}

// pluginSO is the plugin under test (pluginArtifact).
func pluginSO(t testing.TB) string { return pluginArtifact.get(t) }

// libsDir is a directory for CRIU_LIBS_DIR holding copies of the given
// plugins, in that order (empty: CRIU loads no plugin, whatever
// /usr/lib/criu holds). Each is copied under its base name, or the name
// given as "NAME=PATH".
func libsDir(t testing.TB, plugins ...string) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range plugins {
		name := filepath.Base(p)
		if n, path, ok := strings.Cut(p, "="); ok {
			name, p = n, path
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// criuRunc is a runc container checkpointed and restored by one CRIU: the
// lab's 4.1.1 or Debian 12's 3.17.1 (stock).
type criuRunc struct {
	t      testing.TB
	id     string
	bundle string
	dir    string
	stock  bool
	n      int // restores so far (each has its own work dir)
}

// newCriuRunc writes a bundle of rootfs running command (its stdio must
// not be host files: CRIU cannot restore them) and starts the container.
func newCriuRunc(t testing.TB, name, rootfs string, stock bool, command ...string) *criuRunc {
	t.Helper()
	return startCriuRunc(t, name, runcBundle(t, rootfs, false, false, nil, command...), stock)
}

// startCriuRunc starts the container of bundle (see newCriuRunc).
func startCriuRunc(t testing.TB, name, bundle string, stock bool) *criuRunc {
	t.Helper()
	c := &criuRunc{
		t:      t,
		id:     fmt.Sprintf("arh-plugin-%s-%d", name, os.Getpid()),
		bundle: bundle,
		dir:    t.TempDir(),
		stock:  stock,
	}
	exec.Command("runc", "delete", "-f", c.id).Run()
	t.Cleanup(func() {
		exec.Command("runc", "delete", "-f", c.id).Run()
		unmountUnder(t, c.dir)
	})
	if _, err := c.runc("", nil, time.Minute, "run", "--detach", "--bundle", c.bundle, c.id); err != nil {
		t.Fatalf("start %s: %v", c.id, err)
	}
	return c
}

// unmountUnder detaches the mounts under dir, deepest first: a CRIU
// killed in a restore (a plugin that hangs it until runc's timeout)
// leaves its cgroup yard mounted in the work dir.
func unmountUnder(t testing.TB, dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mps)))
	for _, m := range mps {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", m, err)
		}
	}
	if len(mps) > 0 {
		t.Logf("unmounted %d mounts CRIU left under %s", len(mps), dir)
	}
}

// runc runs runc with libs as CRIU_LIBS_DIR ("" for an empty one), the
// container's CRIU first in PATH and env added; stdio on files. It
// returns how long runc took.
func (c *criuRunc) runc(libs string, env []string, timeout time.Duration, args ...string) (time.Duration, error) {
	c.t.Helper()
	if libs == "" {
		libs = libsDir(c.t)
	}
	criuDir := filepath.Join(lab.CacheDir(), "bin")
	if c.stock {
		criuDir = filepath.Join(lab.CacheDir(), "bin-stock")
	}
	argv := append([]string{"-s", "KILL", strconv.Itoa(int(testenv.Scale(timeout).Seconds())), "runc"}, args...)
	cmd := exec.Command("timeout", argv...)
	cmd.Env = append([]string{"PATH=" + criuDir + ":/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "CRIU_LIBS_DIR=" + libs}, env...)
	cmd.Dir = c.dir
	out, err := os.CreateTemp(c.dir, "runc-*.log")
	if err != nil {
		c.t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if err != nil {
		b, _ := os.ReadFile(out.Name())
		return took, fmt.Errorf("runc %s: %v: %s", args[0], err, strings.TrimSpace(string(b)))
	}
	return took, nil
}

// checkpoint checkpoints the container into dir/image (replaced); the
// container is gone afterwards.
func (c *criuRunc) checkpoint(libs string, env ...string) error {
	c.t.Helper()
	os.RemoveAll(filepath.Join(c.dir, "image"))
	work := filepath.Join(c.dir, "work-checkpoint")
	os.RemoveAll(work)
	_, err := c.runc(libs, env, 2*time.Minute, "checkpoint", "--image-path", filepath.Join(c.dir, "image"), "--work-path", work, c.id)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(work, "dump.log"))
		err = fmt.Errorf("%w\nend of dump.log:\n%s", err, tail(string(b), 15))
	}
	return err
}

// restore restores the container from dir/image, detached, and returns how
// long runc took and CRIU's log of it.
func (c *criuRunc) restore(libs string, env ...string) (time.Duration, string, error) {
	c.t.Helper()
	c.n++
	work := filepath.Join(c.dir, fmt.Sprintf("work-restore-%d", c.n))
	took, err := c.runc(libs, env, 2*time.Minute, "restore", "--detach", "--image-path", filepath.Join(c.dir, "image"), "--work-path", work, "--bundle", c.bundle, c.id)
	b, _ := os.ReadFile(filepath.Join(work, "restore.log"))
	if err != nil {
		err = fmt.Errorf("%w\nend of restore.log:\n%s", err, tail(string(b), 15))
	}
	return took, string(b), err
}

// running returns the host pid of the container's init once runc says it
// runs and a runc exec in it works.
func (c *criuRunc) running() (int, error) {
	out, err := exec.Command("timeout", "-s", "KILL", "30", "runc", "state", c.id).Output()
	if err != nil {
		return 0, fmt.Errorf("runc state %s: %v", c.id, err)
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, err
	}
	if st.Status != "running" || st.Pid == 0 {
		return 0, fmt.Errorf("%s is %q", c.id, st.Status)
	}
	if out, err := exec.Command("timeout", "-s", "KILL", "30", "runc", "exec", c.id, "true").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("runc exec %s true: %v: %s", c.id, err, out)
	}
	return st.Pid, nil
}

// stop removes the running container; its image stays.
func (c *criuRunc) stop() {
	exec.Command("timeout", "-s", "KILL", "60", "runc", "delete", "-f", c.id).Run()
}

// cycle checkpoints with the plugins of ckLibs and restores with those of
// rsLibs, and checks the container runs again.
func (c *criuRunc) cycle(ckLibs, rsLibs string, env ...string) (string, error) {
	c.t.Helper()
	if err := c.checkpoint(ckLibs, env...); err != nil {
		return "", err
	}
	_, log, err := c.restore(rsLibs, env...)
	if err != nil {
		return log, err
	}
	_, err = c.running()
	return log, err
}

// twoTasks is the containers' command: an init with a child, so that
// CRIU calls the plugin's hook for two tasks; stdio inside the container.
var twoTasks = []string{"sh", "-c", "exec </dev/null >/dev/null 2>&1; sleep 1000 & exec sleep 1001"}

// recorderScript writes a stand-in for the binary that records each call
// into a file of its own under dir: the action, the init pid it was given
// and that pid's State and TracerPid at that moment, its own environment
// (as execve gave it), fds, session, and the time.
func recorderScript(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "recorder.sh")
	script := `#!/bin/sh
# Written by the autofs-restore-hook plugin tests.
out=` + dir + `/call-$(date +%s%N)-$$
p=${CRTOOLS_INIT_PID:-0}
{
	echo "time $(date +%s.%N)"
	echo "action ${CRTOOLS_SCRIPT_ACTION:-}"
	echo "pid $p"
	echo "state $(sed -n 's/^State:[[:space:]]*//p' /proc/$p/status 2>/dev/null)"
	echo "tracer $(sed -n 's/^TracerPid:[[:space:]]*//p' /proc/$p/status 2>/dev/null)"
	echo "self $$"
	echo "sid $(cut -d' ' -f6 /proc/$$/stat)"
} >"$out.tmp"
tr '\0' '\n' </proc/$$/environ | sed 's/^/env /' >>"$out.tmp"
# Listed by another shell while this one only waits: while a shell sets
# a pipeline or a redirection up it holds the pipe's ends or the saved
# fd itself, and ls would list them as the binary's fds.
sh -c 'ls -l /proc/$1/fd >"$2"' recorder $$ "$out.fds" &
wait
sed -n 's/^.* \([0-9][0-9]*\) -> \(.*\)$/fd \1 \2/p' "$out.fds" >>"$out.tmp"
rm -f "$out.fds"
mv "$out.tmp" "$out"
exit 0
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// call is one recorded call of the recorder.
type call struct {
	time   time.Time
	fields map[string]string
	env    []string
	fds    map[string]string
}

func (c call) String() string {
	return fmt.Sprintf("%s at %s: %v env %q fds %v", c.fields["action"], c.time.Format("15:04:05.000000"), c.fields, c.env, c.fds)
}

// calls reads the recorder's calls under dir, in time order.
func calls(t testing.TB, dir string) []call {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "call-*"))
	var out []call
	for _, f := range files {
		if strings.HasSuffix(f, ".tmp") || strings.HasSuffix(f, ".fds") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c := call{fields: map[string]string{}, fds: map[string]string{}}
		for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			k, v, _ := strings.Cut(l, " ")
			switch k {
			case "env":
				c.env = append(c.env, v)
			case "fd":
				n, target, _ := strings.Cut(v, " ")
				c.fds[n] = target
			default:
				c.fields[k] = v
			}
		}
		sec, err := strconv.ParseFloat(c.fields["time"], 64)
		if err != nil {
			t.Fatalf("%s: time %q", f, c.fields["time"])
		}
		c.time = time.Unix(0, int64(sec*1e9))
		sort.Strings(c.env)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].time.Before(out[j].time) })
	return out
}

// waitCalls waits up to 10 s for n recorded calls (post-resume runs
// detached) and returns them.
func waitCalls(t testing.TB, dir string, n int) []call {
	t.Helper()
	deadline := time.Now().Add(testenv.Scale(10 * time.Second))
	for {
		c := calls(t, dir)
		if len(c) >= n || time.Now().After(deadline) {
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkCall checks what every call of the binary must get: exactly the
// environment the plugin documents (an unrelated variable of CRIU's, and
// the plugin's own, not passed), stdio on /dev/null and no other fd than
// the script the shell reads.
func checkCall(t testing.TB, c call, action string, pid int, script string) {
	t.Helper()
	want := []string{
		"AUTOFS_RESTORE_HOOK_LOG_LEVEL=debug",
		"AUTOFS_RESTORE_HOOK_WIRING=criu-plugin",
		"CRTOOLS_INIT_PID=" + strconv.Itoa(pid),
		"CRTOOLS_SCRIPT_ACTION=" + action,
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
	}
	if strings.Join(c.env, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: the binary's environment is %q, want exactly %q", action, c.env, want)
	}
	for fd, target := range c.fds {
		switch fd {
		case "0", "1", "2":
			if target != "/dev/null" {
				t.Errorf("%s: fd %s of the binary is %s, want /dev/null", action, fd, target)
			}
		default:
			if target != script {
				t.Errorf("%s: the binary inherited fd %s (%s): CRIU's fds must be closed", action, fd, target)
			}
		}
	}
}

// pluginEnv is the environment given to runc (and so to CRIU and the
// plugin) in these tests: the binary, a variable the plugin passes on and
// one it must not.
func pluginEnv(bin string, extra ...string) []string {
	return append([]string{"AUTOFS_RESTORE_HOOK_PLUGIN_BIN=" + bin, "AUTOFS_RESTORE_HOOK_LOG_LEVEL=debug", "ARH_TEST_NOT_FOR_THE_BINARY=1"}, extra...)
}

// The plugin runs the binary once per restore for pre-resume, while the
// restored tasks are held by CRIU (the init, whose host pid it passes, in
// tracing stop under CRIU), and once for post-resume after the tasks run
// (no tracer), detached in a session of its own, each time with exactly
// the documented environment, stdio on /dev/null and no fd of CRIU's; the
// restore succeeds and the container runs. It catches a plugin that is not
// loaded or not called (no call at all), one that acts for every task and
// not once (the container has two), one that runs pre-resume too late
// (after CRIU let the tasks go: no tracing stop) or post-resume too early,
// one that leaks CRIU's environment or fds to the binary.
func TestNoAutofsPluginRunsPreResumeWhileTasksAreHeld(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	libs := libsDir(t, pluginSO(t))
	rootfs := smallRootfs(t)
	rec := t.TempDir()
	script := recorderScript(t, rec)
	c := newCriuRunc(t, "held", rootfs, false, twoTasks...)
	if err := c.checkpoint(libs, pluginEnv(script)...); err != nil {
		t.Fatal(err)
	}
	if n := len(calls(t, rec)); n != 0 {
		t.Fatalf("the binary was called %d times by a checkpoint: want none", n)
	}
	start := time.Now()
	took, log, err := c.restore(libs, pluginEnv(script)...)
	end := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := c.running()
	if err != nil {
		t.Fatalf("after the restore: %v", err)
	}
	t.Logf("restored in %v, init pid %d; the plugin in CRIU's log:\n%s", took.Round(time.Millisecond), pid, grepLines(log, "autofs-restore-hook"))
	got := waitCalls(t, rec, 2)
	time.Sleep(testenv.Scale(300 * time.Millisecond)) // any late extra call
	got = calls(t, rec)
	for _, g := range got {
		t.Logf("call: %s", g)
	}
	if len(got) != 2 {
		t.Fatalf("the binary was called %d times, want 2 (pre-resume, then post-resume)", len(got))
	}
	pre, post := got[0], got[1]
	if pre.fields["action"] != "pre-resume" || post.fields["action"] != "post-resume" {
		t.Fatalf("calls %q then %q, want pre-resume then post-resume", pre.fields["action"], post.fields["action"])
	}
	for _, g := range got {
		if g.fields["pid"] != strconv.Itoa(pid) {
			t.Errorf("%s: CRTOOLS_INIT_PID=%s, want the restored init's host pid %d", g.fields["action"], g.fields["pid"], pid)
		}
	}
	if !strings.HasPrefix(pre.fields["state"], "t") || pre.fields["tracer"] == "0" || pre.fields["tracer"] == "" {
		t.Errorf("pre-resume: the init was %q with TracerPid %q, want held by CRIU (tracing stop, a tracer)", pre.fields["state"], pre.fields["tracer"])
	}
	if strings.HasPrefix(post.fields["state"], "t") || post.fields["tracer"] != "0" {
		t.Errorf("post-resume: the init was %q with TracerPid %q, want running without a tracer", post.fields["state"], post.fields["tracer"])
	}
	if post.fields["sid"] != post.fields["self"] {
		t.Errorf("post-resume: session %s, want its own (setsid: %s)", post.fields["sid"], post.fields["self"])
	}
	if pre.time.Before(start) || pre.time.After(end) {
		t.Errorf("pre-resume ran at %v, outside the restore (%v to %v)", pre.time, start, end)
	}
	if !post.time.After(pre.time) {
		t.Errorf("post-resume ran at %v, not after pre-resume (%v)", post.time, pre.time)
	}
	checkCall(t, pre, "pre-resume", pid, script)
	checkCall(t, post, "post-resume", pid, script)
	if !strings.Contains(log, "autofs-restore-hook plugin: pre-resume for pid "+strconv.Itoa(pid)+" done") {
		t.Errorf("CRIU's log does not show the plugin's pre-resume line")
	}
}

// alive says whether process p exists and is not a zombie (a process
// killed whose parent has not reaped it yet).
func alive(p int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
	if p <= 0 || err != nil {
		return false
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(after, "Z")
}

// preResumeTook finds the plugin's line for a pre-resume that ended well
// in CRIU's log.
var preResumeTook = regexp.MustCompile(`autofs-restore-hook plugin: pre-resume for pid \d+ done in (\d+) ms`)

// otherPluginC is a second plugin, as amdgpu or cuda would be: it answers
// RESUME_DEVICES_LATE with -ENOTSUP and records each pid it is called for.
const otherPluginC = `#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int other_init(int stage) { (void)stage; return 0; }
static void other_exit(int stage, int ret) { (void)stage; (void)ret; }
static int other_late(int pid)
{
	const char *p = getenv("ARH_TEST_OTHER_PLUGIN_LOG");
	if (p) {
		int fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dprintf(fd, "%d\n", pid);
			close(fd);
		}
	}
	return -ENOTSUP;
}
struct desc {
	const char *name;
	int (*init)(int);
	void (*exit)(int, int);
	unsigned int version, max_hooks;
	void *hooks[10];
} CR_PLUGIN_DESC = { "arh-test-other", other_init, other_exit, 0x200, 10, { [9] = (void *)other_late } };
`

// otherPlugin builds otherPluginC.
func otherPlugin(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	src, so := filepath.Join(d, "other.c"), filepath.Join(d, "other.so")
	if err := os.WriteFile(src, []byte(otherPluginC), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-fPIC", "-shared", "-O2", "-Wall", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc other.c: %v\n%s", err, out)
	}
	return so
}

// ourFirst is a plugin directory holding our plugin and other, whose
// directory order (CRIU loads in readdir's order, and calls hooks in load
// order) puts ours first: it tries names for other until one does.
func ourFirst(t testing.TB, other string) string {
	t.Helper()
	for i := 0; i < 64; i++ {
		d := libsDir(t, pluginSO(t), fmt.Sprintf("other%d.so=%s", i, other))
		f, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(names) == 2 && names[0] == pluginName {
			return d
		}
	}
	t.Fatal("no name for the second plugin that readdir lists after ours")
	return ""
}

// Whatever the plugin meets, every dump and restore that works without it
// works with it: (1) an image made with it restores without it and the
// other way round (it is not in the image's inventory); (2) a missing
// binary, and one that exits 1, leave dump and restore going; (3) a binary
// that hangs is killed at the deadline (AUTOFS_RESTORE_HOOK_PLUGIN_TIMEOUT_MS),
// with what it started, and the restore goes on, late by about the
// deadline, not forever; (4)
// `criu check` ends as without it; (5) the restore's time with the real
// binary and without the plugin, logged; (6) a plugin loaded after it
// still gets RESUME_DEVICES_LATE for every task, the root task first (the
// plugin answers -ENOTSUP, "not mine": an answer of 0 would hide it).
// It catches a descriptor CRIU refuses (a version or hook count above the
// running CRIU's: every dump fails), an init that fails, an inventory
// entry, a wait without a deadline, and a hook that answers for others.
func TestNoAutofsPluginNeverHurtsCRIU(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	so := pluginSO(t)
	libs, none := libsDir(t, so), libsDir(t)
	rootfs := smallRootfs(t)
	bin := hookBinary(t)
	logPath, hookLog := ociLog(t)
	realEnv := pluginEnv(bin, hookLogEnv(logPath)...)
	c := newCriuRunc(t, "never", rootfs, false, twoTasks...)

	t.Run("inventory", func(t *testing.T) {
		if _, err := c.cycle(libs, none, realEnv...); err != nil {
			t.Fatalf("checkpoint with the plugin, restore without it: %v", err)
		}
		inv, err := os.ReadFile(filepath.Join(c.dir, "image", "inventory.img"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(inv, []byte("autofs-restore-hook")) {
			t.Errorf("the image's inventory names the plugin: a restore without it would fail")
		}
		log, err := c.cycle(none, libs, realEnv...)
		if err != nil {
			t.Fatalf("checkpoint without the plugin, restore with it: %v", err)
		}
		if !strings.Contains(log, "autofs-restore-hook plugin: pre-resume for pid") {
			t.Errorf("CRIU's log of the restore with the plugin has no line of it:\n%s", tail(log, 30))
		}
		// The real binary ran, told it was the plugin: a line for each
		// action (post-resume's comes from its detached start).
		deadline := time.Now().Add(testenv.Scale(10 * time.Second))
		for strings.Count(hookLog(), "wiring=criu-plugin") < 2 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		l := hookLog()
		t.Logf("the hook's log:\n%s", l)
		if strings.Count(l, "wiring=criu-plugin") < 2 || strings.Contains(l, "wiring=action-script") {
			t.Errorf("the hook's log does not show it ran twice as wiring=criu-plugin (and only so)")
		}
	})

	t.Run("bad-binary", func(t *testing.T) {
		failing := filepath.Join(t.TempDir(), "fail.sh")
		if err := os.WriteFile(failing, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []struct{ bin, want string }{
			{"/nonexistent/autofs-restore-hook", "cannot run /nonexistent/autofs-restore-hook"},
			{failing, "exited with status 1"},
		} {
			log, err := c.cycle(libs, libs, pluginEnv(b.bin)...)
			if err != nil {
				t.Fatalf("binary %s: %v", b.bin, err)
			}
			if !strings.Contains(log, b.want) {
				t.Errorf("binary %s: CRIU's log has no %q:\n%s", b.bin, b.want, grepLines(log, "autofs-restore-hook"))
			}
			t.Logf("binary %s: checkpoint and restore work; CRIU's log: %s", b.bin, grepLines(log, "autofs-restore-hook"))
		}
	})

	t.Run("hanging-binary", func(t *testing.T) {
		d := t.TempDir()
		hang := filepath.Join(d, "hang.sh")
		pidFile, childFile := filepath.Join(d, "hang.pid"), filepath.Join(d, "child.pid")
		// It hangs, and so does a process it started.
		script := "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = pre-resume ] || exit 0\necho $$ >" + pidFile + "\nsleep 600 &\necho $! >" + childFile + "\nexec sleep 600\n"
		if err := os.WriteFile(hang, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		const deadlineMs = 2000
		env := pluginEnv(hang, "AUTOFS_RESTORE_HOOK_PLUGIN_TIMEOUT_MS="+strconv.Itoa(deadlineMs))
		if err := c.checkpoint(libs, env...); err != nil {
			t.Fatal(err)
		}
		took, log, err := c.restore(libs, env...)
		if err != nil {
			t.Fatalf("the restore failed with a hanging binary: %v", err)
		}
		if _, err := c.running(); err != nil {
			t.Fatal(err)
		}
		t.Logf("restore with a binary that hangs, deadline %d ms: %v; CRIU's log: %s", deadlineMs, took.Round(time.Millisecond), grepLines(log, "autofs-restore-hook"))
		if took < deadlineMs*time.Millisecond {
			t.Errorf("the restore took %v, less than the deadline: did the plugin wait at all?", took)
		}
		if limit := deadlineMs*time.Millisecond + testenv.Scale(20*time.Second); took > limit {
			t.Errorf("the restore took %v, more than the deadline and %v", took, limit-deadlineMs*time.Millisecond)
		}
		if !strings.Contains(log, "killed") {
			t.Errorf("CRIU's log does not say the binary was killed")
		}
		for _, f := range []struct{ file, what string }{{pidFile, "the hanging binary"}, {childFile, "the process it started"}} {
			b, err := os.ReadFile(f.file)
			if err != nil {
				t.Fatalf("the hanging binary did not run: %v", err)
			}
			p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if alive(p) {
				syscall.Kill(p, syscall.SIGKILL)
				t.Errorf("%s (pid %d) still runs after the restore", f.what, p)
			}
		}
	})

	t.Run("criu-check", func(t *testing.T) {
		check := func(libs string) (int, string) {
			cmd := exec.Command("timeout", "-s", "KILL", "120", filepath.Join(lab.CacheDir(), "bin", "criu"), "check")
			cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CRIU_LIBS_DIR=" + libs}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatal(err)
			}
			return cmd.ProcessState.ExitCode(), strings.TrimSpace(string(out))
		}
		rcNone, outNone := check(none)
		rcWith, outWith := check(libs)
		t.Logf("criu check: without the plugin exit %d (%s); with it exit %d (%s)", rcNone, outNone, rcWith, outWith)
		if rcNone != rcWith {
			t.Errorf("criu check exits %d without the plugin and %d with it", rcNone, rcWith)
		}
	})

	t.Run("time", func(t *testing.T) {
		var without, with []time.Duration
		var pre []string // the real binary's pre-resume, as the plugin logged it
		for i := 0; i < 3; i++ {
			for _, plugin := range []bool{false, true} {
				l := none
				if plugin {
					l = libs
				}
				if err := c.checkpoint(none, realEnv...); err != nil {
					t.Fatal(err)
				}
				took, log, err := c.restore(l, realEnv...)
				if err != nil {
					t.Fatalf("restore (plugin %t): %v", plugin, err)
				}
				if m := preResumeTook.FindStringSubmatch(log); plugin && m != nil {
					pre = append(pre, m[1]+"ms")
				}
				if _, err := c.running(); err != nil {
					t.Fatal(err)
				}
				if plugin {
					with = append(with, took.Round(time.Millisecond))
				} else {
					without = append(without, took.Round(time.Millisecond))
				}
			}
		}
		t.Logf("TIMING runc restore of a container without autofs: without the plugin %v; with it and the real binary %v (its pre-resume, which CRIU waits for: %v)", without, with, pre)
	})

	t.Run("other-plugin", func(t *testing.T) {
		d := ourFirst(t, otherPlugin(t))
		otherLog := filepath.Join(t.TempDir(), "other.log")
		rec := t.TempDir()
		env := pluginEnv(recorderScript(t, rec), "ARH_TEST_OTHER_PLUGIN_LOG="+otherLog)
		log, err := c.cycle(d, d, env...)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := c.running()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("CRIU's log: %s", grepLines(log, "Plugin \""))
		ours, other := strings.Index(log, "Plugin \"autofs-restore-hook\""), strings.Index(log, "Plugin \"arh-test-other\"")
		if ours < 0 || other < 0 || ours > other {
			t.Fatalf("CRIU did not load our plugin first (at %d, the other at %d)", ours, other)
		}
		b, _ := os.ReadFile(otherLog)
		pids := strings.Fields(string(b))
		t.Logf("the other plugin was called for pids %v; the restored init is %d", pids, pid)
		if len(pids) != 2 || pids[0] != strconv.Itoa(pid) {
			t.Errorf("the other plugin was called for %v, want both tasks, the init (%d) first: our plugin's answer hid it", pids, pid)
		}
		if n := len(waitCalls(t, rec, 2)); n != 2 {
			t.Errorf("our plugin ran the binary %d times, want 2", n)
		}
	})
}

// Debian 12's own CRIU 3.17.1 (its criu package): the plugin's descriptor
// (version 0.2.0, 10 hooks) is what it accepts, so it loads the plugin and
// calls it as 4.1.1 does. Where 3.17.1 cannot checkpoint and restore on
// this kernel at all (its vDSO handling fails on newer kernels), the test
// says so and checks only that the plugin changes nothing of the outcome.
func TestNoAutofsPluginStockCRIU(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	if _, err := os.Stat(filepath.Join(lab.CacheDir(), "bin-stock", "criu")); err != nil {
		t.Fatalf("no stock CRIU wrapper (provision.sh makes it): %v", err)
	}
	so := pluginSO(t)
	libs, none := libsDir(t, so), libsDir(t)
	rootfs := smallRootfs(t)
	rec := t.TempDir()
	script := recorderScript(t, rec)
	c := newCriuRunc(t, "stock", rootfs, true, twoTasks...)
	_, base := c.cycle(none, none)
	if base != nil {
		t.Logf("Debian 12's CRIU 3.17.1 cannot checkpoint and restore here even without the plugin: %v", base)
		c.stop()
		c = newCriuRunc(t, "stock2", rootfs, true, twoTasks...)
		_, with := c.cycle(libs, libs, pluginEnv(script)...)
		if with == nil {
			t.Fatalf("with the plugin the stock CRIU worked, without it not: %v", base)
		}
		t.Logf("with the plugin it fails too: %v", with)
		if ck, rs := strings.Contains(base.Error(), "runc checkpoint"), strings.Contains(with.Error(), "runc checkpoint"); ck != rs {
			t.Errorf("without the plugin the %s failed, with it the %s", stepOf(base), stepOf(with))
		}
		return
	}
	log, err := c.cycle(libs, libs, pluginEnv(script)...)
	if err != nil {
		t.Fatalf("the stock CRIU works without the plugin, and with it: %v", err)
	}
	pid, err := c.running()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRIU 3.17.1 with the plugin: %s", grepLines(log, "autofs-restore-hook"))
	got := waitCalls(t, rec, 2)
	for _, g := range got {
		t.Logf("call: %s", g)
	}
	if len(got) != 2 || got[0].fields["action"] != "pre-resume" || got[1].fields["action"] != "post-resume" {
		t.Fatalf("calls %v, want pre-resume then post-resume", got)
	}
	if got[0].fields["pid"] != strconv.Itoa(pid) || !strings.HasPrefix(got[0].fields["state"], "t") || got[0].fields["tracer"] == "0" {
		t.Errorf("pre-resume: pid %s (%s, TracerPid %s), want %d held by CRIU", got[0].fields["pid"], got[0].fields["state"], got[0].fields["tracer"], pid)
	}
	checkCall(t, got[0], "pre-resume", pid, script)
	checkCall(t, got[1], "post-resume", pid, script)
}

func stepOf(err error) string {
	if strings.Contains(err.Error(), "runc checkpoint") {
		return "checkpoint"
	}
	return "restore or start"
}

// With the package installed (the CRIU plugin in /usr/lib/criu, the OCI
// hook in the runc snippet), the OCI hook leaves a restore whose CRIU has
// the plugin loaded to the plugin: it logs so and starts no follower, and
// the plugin's run logs wiring=criu-plugin. Restored again by a CRIU
// without the plugin, the same hook follows the restore. Before the OCI
// hook looked for the plugin, it started a follower for both restores.
func TestNoAutofsOCIHookLeavesTheRestoreToThePlugin(tt *testing.T) {
	t := lab.Record(tt)
	lab.RequireHost(t)
	rootfs := smallRootfs(t)
	installDeb(t)
	if _, err := os.Stat(filepath.Join("/usr/lib/criu", pluginName)); err != nil {
		t.Fatalf("the package did not install the plugin: %v", err)
	}
	logPath, log := ociLog(t)
	env := hookLogEnv(logPath, hook.EnvLogLevel+"=debug")
	c := startCriuRunc(t, "oci-plugin", runcBundle(t, rootfs, false, true, env, twoTasks...), false)
	if err := c.checkpoint(""); err != nil {
		t.Fatal(err)
	}
	// CRIU's plugin directory is the package's; the plugin's run of the
	// binary logs where the OCI hook does (CRIU passes runc's
	// environment on, and the plugin the log variables).
	_, crlog, err := c.restore("/usr/lib/criu", env...)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := c.running()
	if err != nil {
		t.Fatalf("after the restore with the plugin: %v", err)
	}
	time.Sleep(testenv.Scale(time.Second)) // a follower, if one was started, logs at once
	withPlugin := log()
	t.Logf("the hook's log of the restore with the plugin (init %d):\n%s\nCRIU's log of the plugin:\n%s", pid, withPlugin, grepLines(crlog, "autofs-restore-hook"))
	if !strings.Contains(withPlugin, "handled by the CRIU plugin") {
		t.Errorf("the OCI hook did not leave the restore to the CRIU plugin")
	}
	if strings.Contains(withPlugin, "a detached worker follows it") || strings.Contains(withPlugin, "follow: started") {
		t.Errorf("the OCI hook started a follower for a restore the plugin handles")
	}
	if !strings.Contains(withPlugin, "wiring=criu-plugin") {
		t.Errorf("the plugin's run of the binary did not log (wiring=criu-plugin)")
	}
	if f := followers(); len(f) > 0 {
		t.Errorf("followers running after a restore the plugin handles: %v", f)
	}
	// The same container, restored by a CRIU without the plugin: the OCI
	// hook is the only wiring, and follows the restore.
	if err := c.checkpoint(""); err != nil {
		t.Fatal(err)
	}
	before := len(withPlugin)
	if _, _, err := c.restore("", env...); err != nil {
		t.Fatal(err)
	}
	if _, err := c.running(); err != nil {
		t.Fatalf("after the restore without the plugin: %v", err)
	}
	deadline := time.Now().Add(testenv.Scale(10 * time.Second))
	// The container has no autofs mount, so no state file: the follower's
	// end is its process's.
	for (!strings.Contains(log()[before:], "a detached worker follows it") || len(followers()) > 0) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	without := log()[before:]
	t.Logf("the hook's log of the restore without the plugin:\n%s", without)
	if !strings.Contains(without, "a detached worker follows it") || !strings.Contains(without, "follow: done") {
		t.Errorf("without the plugin the OCI hook did not follow the restore to its end")
	}
	if strings.Contains(without, "handled by the CRIU plugin") {
		t.Errorf("the OCI hook saw a plugin in a CRIU without one")
	}
}
