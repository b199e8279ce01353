// Package lab runs the end-to-end lab of autofs-restore-hook from Go tests:
// runc containers with AutoFS mounts (systemd .automount units, or the autofs
// automount daemon) that are checkpointed and restored with CRIU, with or
// without our hook wired in.
//
// It is a thin wrapper around the scripts next to this file: provision.sh
// (packages, CRIU 4.1.1 from Debian trixie, a bookworm rootfs, all cached under
// /var/cache/autofs-restore-hook) and lab.sh (bundles under /var/tmp/arh-lab).
// See README.md in this directory for what each kind of container contains
// and what was reproduced with it.
//
// Typical use:
//
//	func TestX(t *testing.T) {
//		lab.Require(t) // skips without root or /dev/autofs, provisions otherwise
//		c := lab.Up(t, "x", lab.Systemd, lab.Options{ActionScript: hookBinary})
//		if err := c.Checkpoint(); err != nil { t.Fatal(err) }
//		if err := c.Restore(); err != nil { t.Fatal(err) }
//		out, timedOut, err := c.Exec(5*time.Second, "stat", "/srv/b/")
//		...
//	}
//
// Safety: a path of a restored container may block forever in autofs_wait.
// Exec always has a deadline and kills runc exec with SIGKILL when it passes;
// the process inside the container stays blocked (AutofsWaiters lists it,
// KillWaiters ends it). Containers are removed by t.Cleanup.
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/proc"
	"github.com/autofs-restore-hook/autofs-restore-hook/internal/testenv"
)

// Kind is the kind of lab container.
type Kind string

const (
	// Systemd: systemd is PID 1, with .automount units /srv/a, /srv/b, /srv/c
	// (tmpfs .mount units). Up mounts /srv/a and writes /srv/a/state
	// ("state-before-checkpoint") unless Options.NoTrigger.
	Systemd Kind = "systemd"
	// Automount: a sh loop is PID 1 and the autofs automount daemon runs with
	// a direct map (/srv/direct1, /srv/direct2, /srv/dmulti with offset /sub)
	// and an indirect map /ind (keys k1 k2 k3, multi with offset /sub). Up
	// mounts /ind/k1 (writes /ind/k1/state) and /ind/multi unless NoTrigger.
	Automount Kind = "automount"
	// Plain: no autofs at all.
	Plain Kind = "plain"
)

// Options configure a container. The wiring fields (ActionScript, Hook...)
// are written into the bundle's config.json; Wire changes them later.
type Options struct {
	// Count adds N more automount points for benchmarks: /srv/u1../srv/uN
	// (Systemd) or direct entries /srv/d1../srv/dN (Automount).
	Count int
	// NoTrigger leaves every automount point untriggered at Up.
	NoTrigger bool
	// Confined runs the container as podman and Kubernetes do: a seccomp
	// filter, oomScoreAdj, lower limits, and (automount) a daemon umask
	// (lab.sh --confined).
	Confined bool
	// Seccomp, when set, is the linux.seccomp object of config.json (JSON),
	// instead of Confined's filter (lab.sh --seccomp); for PodmanUp, a
	// profile in podman's format instead of podman's default.
	Seccomp string
	// NoNewPrivs sets process.noNewPrivileges (lab.sh --no-new-privs).
	NoNewPrivs bool
	// Securebits, for Automount, starts the daemon under setpriv's
	// --securebits with this list (lab.sh --securebits).
	Securebits string
	// SystemHooks, for PodmanUp, leaves out --hooks-dir: podman reads
	// its own hooks dirs (lab.sh --system-hooks).
	SystemHooks bool
	// Image, for PodmanUp, runs the container from an image made by
	// PodmanImage instead of --rootfs (lab.sh --image).
	Image string
	// TmpfsRun, for PodmanUp, gives the container --tmpfs /run (lab.sh
	// --tmpfs-run): podman 4.3 cannot import an exported checkpoint of a
	// systemd container without it.
	TmpfsRun bool
	// StockCRIU checkpoints and restores the container with Debian 12's
	// own CRIU 3.17.1 instead of the lab's 4.1.1 (lab.sh --criu stock).
	StockCRIU bool
	// Runtime is the OCI runtime of a runc-style container (not PodmanUp):
	// "" or "runc" (Debian 12's runc 1.1.5), "crun" (Debian 12's crun
	// 1.8.1) or "crun-forky" (crun 1.28 with CRIU 4.2.1 from Debian forky)
	// (lab.sh --runtime).
	Runtime string
	// NoCRIUAnnotation leaves out the org.criu.config annotation, so that
	// the runtime reads its own /etc/criu/<runtime>.conf (lab.sh
	// --no-criu-annotation). Unwired containers otherwise carry an empty
	// one, which keeps that file from being read.
	NoCRIUAnnotation bool
	// Rootfs is the container's distribution: "" or "bookworm" (Debian 12,
	// systemd 252), or "trixie" (Debian 13, systemd 257) (lab.sh --rootfs).
	Rootfs string
	// ASLimit, for Automount, starts the daemon under prlimit --as
	// with this many bytes (lab.sh --as-limit).
	ASLimit int64
	// ActionScript is wired as CRIU action script through a per-bundle CRIU
	// config file named by the org.criu.config annotation (/etc/criu is
	// never touched; unwired bundles set the annotation to "").
	ActionScript string
	// CriuOpts are extra lines for that CRIU config file.
	CriuOpts []string
	// Hook is wired as OCI hook at HookStage (default createRuntime), with
	// args [Hook, HookArgs...] and environment HookEnv ("K=V").
	Hook      string
	HookStage string
	HookArgs  []string
	HookEnv   []string
}

// Container is a lab container started by Up.
type Container struct {
	Name   string // runc container id: "arh-lab-<name>-<pid of the test process>"
	Kind   Kind
	Bundle string // /var/tmp/arh-lab/<Name>
	// Podman: run by podman (PodmanUp), its name podman's.
	Podman bool
	// CRIO: run by the lab's CRI-O (CRIOUp), in a pod of its own; runc
	// knows it by the id CRI-O gave it (RuntimeID).
	CRIO bool
	// Runtime is Options.Runtime ("" for runc).
	Runtime string
	t       testing.TB
}

var (
	provisionOnce sync.Once
	provisionErr  error
	provisionOut  string
)

// Dir is the directory holding provision.sh and lab.sh (this package's source
// directory, or $ARH_LAB_SCRIPTS).
func Dir() string {
	if d := os.Getenv("ARH_LAB_SCRIPTS"); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "test/lab"
	}
	return filepath.Dir(file)
}

// Require skips the test, loudly, when the lab cannot run here (not root, or
// no /dev/autofs). Otherwise it runs provision.sh (once per test process) and
// fails the test if provisioning fails. It also removes lab containers left
// behind by test processes that no longer exist.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "E2E: the autofs-restore-hook lab needs root (runc, CRIU, autofs)")
	}
	if _, err := os.Stat("/dev/autofs"); err != nil {
		testenv.Skip(t, "E2E: the autofs-restore-hook lab needs /dev/autofs (make test runs it in the test VM): %v", err)
	}
	provision(t)
}

// RequireHost is Require for the tests named TestNoAutofs...: they use the
// lab's runtimes and CRIU but no autofs, so that test/tests.sh runs them
// on the host itself, at native speed, also where the host's kernel has
// no autofs (the rest then runs in the test VM).
func RequireHost(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "E2E: the autofs-restore-hook lab needs root (runc, podman, CRIU)")
	}
	provision(t)
}

// provision runs provision.sh once per test process, and removes lab
// containers left behind by test processes that no longer exist.
func provision(t testing.TB) {
	t.Helper()
	ran := false
	provisionOnce.Do(func() {
		ran = true
		start := time.Now()
		out, err := run(30*time.Minute, filepath.Join(Dir(), "provision.sh"))
		provisionOut = out
		if err != nil {
			provisionErr = fmt.Errorf("provision.sh: %w", err)
			return
		}
		provisionOut += fmt.Sprintf("provisioning took %v\n", time.Since(start).Round(time.Millisecond))
		// Best effort: containers of dead test processes.
		_, _ = run(5*time.Minute, filepath.Join(Dir(), "lab.sh"), "reap")
	})
	if provisionErr != nil {
		t.Fatalf("E2E lab provisioning failed: %v\n%s", provisionErr, provisionOut)
	}
	if ran {
		t.Logf("E2E lab provisioned:\n%s", strings.TrimSpace(provisionOut))
	}
}

// Up creates and starts a container of the given kind (see lab.sh up) and
// registers its removal with t.Cleanup. name is made unique per test process:
// the container is called "arh-lab-<name>-<pid of the test process>". Up fails the test on error.
func Up(t testing.TB, name string, kind Kind, opts Options) *Container {
	t.Helper()
	return up(t, name, kind, opts, viaRunc)
}

// via is what runs a lab container: runc (or crun) itself, podman or CRI-O.
type via int

const (
	viaRunc via = iota
	viaPodman
	viaCRIO
)

// PodmanUp is Up for a container run by podman (lab.sh podman-up): podman's
// default seccomp profile, the lab's AppArmor profile where the kernel has
// AppArmor, Confined's limits and oom_score_adj. A Hook is written into the
// container's hooks dir (or $ARH_LAB_HOOKS_JSON copied there), an
// ActionScript given through the org.criu.config annotation. Seccomp, when
// set, is a profile in podman's format, given with --security-opt
// seccomp=FILE; else podman's own profile.
func PodmanUp(t testing.TB, name string, kind Kind, opts Options) *Container {
	t.Helper()
	return up(t, name, kind, opts, viaPodman)
}

// CRIOUp is Up for a container run by the lab's CRI-O (lab.sh crio-up;
// StartCRIO first): a pod of its own (host network, no shared pid
// namespace), a container from opts.Image with SYS_ADMIN, /dev/autofs
// through CRI-O's device annotation, the lab's AppArmor profile where the
// kernel has AppArmor, and opts.Seccomp (a profile in podman's format) or
// CRI-O's default. CRI-O hooks it with the JSON of its default hooks_dir.
// Checkpoint exports it (crictl checkpoint --export) and removes it;
// Restore creates a new container in the pod from that archive, as the
// kubelet does.
func CRIOUp(t testing.TB, name string, kind Kind, opts Options) *Container {
	t.Helper()
	return up(t, name, kind, opts, viaCRIO)
}

// StartCRIO starts the lab's CRI-O (lab.sh crio start) with pauseImage
// (made by PodmanImage; never run: the lab's pods have no infra
// container) for the containers of CRIOUp, and stops it when t ends,
// logging the end of CRI-O's log if t failed. The lab's CRI-O is built by
// test/lab/crio-build.sh (tests.sh runs it); t fails where it is missing.
func StartCRIO(t testing.TB, pauseImage string) {
	t.Helper()
	Require(t)
	sh := filepath.Join(Dir(), "lab.sh")
	if os.Getenv("ARH_IN_VM") != "1" {
		// On the host: build it where missing (a no-op where present).
		// A guest has no network: tests.sh builds it on the host first.
		out, err := run(20*time.Minute, filepath.Join(Dir(), "crio-build.sh"))
		t.Logf("crio-build.sh:\n%s", strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("the lab's CRI-O could not be built: %v", err)
		}
	}
	out, err := run(3*time.Minute, sh, "crio", "start", "--image", pauseImage)
	t.Logf("lab.sh crio start:\n%s", strings.TrimSpace(out))
	if err != nil {
		run(time.Minute, sh, "crio", "stop")
		t.Fatalf("lab crio start: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile("/run/arh-lab-crio/crio.log") // lab.sh's $CRIO_RUN
			t.Logf("end of CRI-O's log:\n%s", tailLines(string(b), 40))
		}
		if out, err := run(2*time.Minute, sh, "crio", "stop"); err != nil {
			t.Errorf("lab crio stop: %v\n%s", err, out)
		}
	})
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PodmanImage makes an image of a fresh rootfs of kind (opts.Rootfs) for
// PodmanUp's Options.Image, so that the containers of one test share one
// podman import; the image is removed when t ends.
func PodmanImage(t testing.TB, name string, kind Kind, opts Options) string {
	t.Helper()
	Require(t)
	name = labName(name)
	sh := filepath.Join(Dir(), "lab.sh")
	args := []string{"image", name, "--kind", string(kind)}
	if opts.Rootfs != "" {
		args = append(args, "--rootfs", opts.Rootfs)
	}
	t.Cleanup(func() {
		if out, err := run(2*time.Minute, sh, "rmi", name); err != nil {
			t.Errorf("lab rmi %s: %v\n%s", name, err, out)
		}
	})
	out, err := run(5*time.Minute, sh, args...)
	t.Logf("lab.sh %s:\n%s", strings.Join(args, " "), strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("lab image %s: %v", name, err)
	}
	return "localhost/" + name + ":lab"
}

// labName is the lab's name for name in this test process:
// arh-lab-NAME-PID.
func labName(name string) string {
	return fmt.Sprintf("arh-lab-%s-%d", strings.TrimPrefix(name, "arh-lab-"), os.Getpid())
}

func up(t testing.TB, name string, kind Kind, opts Options, by via) *Container {
	t.Helper()
	if kind == Plain {
		RequireHost(t) // no autofs in it
	} else {
		Require(t)
	}
	c := &Container{
		Name:    labName(name),
		Kind:    kind,
		Podman:  by == viaPodman,
		CRIO:    by == viaCRIO,
		Runtime: opts.Runtime,
		t:       t,
	}
	c.Bundle = filepath.Join(labDir(), c.Name)
	// Leftovers of an earlier run with this very process id, silently.
	_, _ = run(2*time.Minute, filepath.Join(Dir(), "lab.sh"), "down", c.Name)
	t.Cleanup(func() {
		if t.Failed() {
			c.logState()
		}
		if err := c.Down(); err != nil {
			t.Errorf("lab down %s: %v", c.Name, err)
		}
	})
	podman := by == viaPodman
	args := append([]string{"up", c.Name, string(kind)}, opts.args()...)
	switch by {
	case viaPodman:
		args = append([]string{"podman-up", c.Name, "--kind", string(kind)}, opts.args()...)
	case viaCRIO:
		if len(opts.args()) > 0 {
			t.Fatal("lab: CRI-O hooks a container with the JSON of its hooks_dir, not with Options' wiring")
		}
		args = []string{"crio-up", c.Name, "--kind", string(kind)}
	}
	if opts.Count > 0 {
		args = append(args, "--count", strconv.Itoa(opts.Count))
	}
	if opts.NoTrigger {
		args = append(args, "--no-trigger")
	}
	if opts.Confined {
		args = append(args, "--confined")
	}
	if opts.Seccomp != "" {
		f := filepath.Join(t.TempDir(), "seccomp.json")
		if err := os.WriteFile(f, []byte(opts.Seccomp), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--seccomp", f)
	}
	if opts.NoNewPrivs {
		args = append(args, "--no-new-privs")
	}
	if opts.Securebits != "" {
		args = append(args, "--securebits", opts.Securebits)
	}
	if opts.SystemHooks {
		if !podman {
			t.Fatal("lab: Options.SystemHooks is podman's")
		}
		args = append(args, "--system-hooks")
	}
	if opts.Image != "" {
		if by == viaRunc {
			t.Fatal("lab: Options.Image is podman's and CRI-O's")
		}
		args = append(args, "--image", opts.Image)
	}
	if opts.TmpfsRun {
		if !podman {
			t.Fatal("lab: Options.TmpfsRun is podman's")
		}
		args = append(args, "--tmpfs-run")
	}
	if opts.StockCRIU {
		if by != viaRunc {
			t.Fatal("lab: Options.StockCRIU is runc's")
		}
		args = append(args, "--criu", "stock")
	}
	if opts.ASLimit > 0 {
		args = append(args, "--as-limit", strconv.FormatInt(opts.ASLimit, 10))
	}
	if opts.Runtime != "" {
		if by != viaRunc {
			t.Fatal("lab: Options.Runtime is for Up; podman and CRI-O run runc")
		}
		args = append(args, "--runtime", opts.Runtime)
	}
	if opts.Rootfs != "" {
		args = append(args, "--rootfs", opts.Rootfs)
	}
	if opts.NoCRIUAnnotation {
		args = append(args, "--no-criu-annotation")
	}
	if _, err := c.lab(5*time.Minute, args...); err != nil {
		t.Fatalf("lab up %s (%s): %v", c.Name, kind, err)
	}
	return c
}

// logState logs what a failed test leaves in the container, before its
// removal: the processes, and for Automount the end of the daemon's log.
func (c *Container) logState() {
	c.t.Helper()
	c.t.Logf("%s at the failure:\n%s", c.Name, c.Describe())
	if c.Kind == Automount {
		out, timedOut, err := c.Exec(5*time.Second, "tail", "-n", "40", "/run/automount.log")
		c.t.Logf("end of /run/automount.log in %s (timed out %v, err %v):\n%s", c.Name, timedOut, err, out)
	}
}

// Exec runs args in the container (runc exec) with a hard deadline, timeout
// stretched by testenv.Scale. When the deadline passes, runc exec is killed
// with SIGKILL and timedOut is true (err is nil then); the process in the
// container may stay blocked in autofs_wait. out holds stdout and stderr.
func (c *Container) Exec(timeout time.Duration, args ...string) (out string, timedOut bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scale(timeout))
	defer cancel()
	argv := append(c.runtime("exec", c.RuntimeID()), args...)
	if c.Podman {
		argv = append([]string{"podman", "--events-backend=file", "exec", c.Name}, args...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 2 * time.Second // do not wait for pipes held by stray children
	err = cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return buf.String(), true, nil
	}
	if err != nil {
		return buf.String(), false, fmt.Errorf("%s exec %s %q: %w: %s", argv[0], c.Name, args, err, strings.TrimSpace(buf.String()))
	}
	return buf.String(), false, nil
}

// Checkpoint runs runc checkpoint into Bundle/image (replacing it); the
// container is gone afterwards.
func (c *Container) Checkpoint() error {
	_, err := c.lab(3*time.Minute, "checkpoint", c.Name)
	return err
}

// Restore runs runc restore -d from Bundle/image, with the CRIU wrapper first
// in PATH and the wiring currently in config.json (see Wire).
func (c *Container) Restore() error {
	_, err := c.lab(3*time.Minute, "restore", c.Name)
	return err
}

// CheckpointExport, for a podman container, checkpoints it into the
// archive file (podman container checkpoint --export) and removes the
// container: a migration's first half.
func (c *Container) CheckpointExport(file string) error {
	_, err := c.lab(3*time.Minute, "checkpoint", c.Name, "--export", file)
	return err
}

// RestoreImport, for a podman container, restores it from the archive
// file (podman container restore --import), as a new container of the
// same name on this host: a migration's second half.
func (c *Container) RestoreImport(file string) error {
	_, err := c.lab(3*time.Minute, "restore", c.Name, "--import", file)
	return err
}

// Wire replaces the hook wiring in config.json (only the ActionScript,
// CriuOpts and Hook* fields of opts are used; zero Options unwire). It takes
// effect at the next Restore.
func (c *Container) Wire(opts Options) error {
	_, err := c.lab(time.Minute, append([]string{"wire", c.Name}, opts.args()...)...)
	return err
}

// Stop removes the running container (runc delete -f) but keeps the bundle
// and the checkpoint image, so that the same image can be restored again.
func (c *Container) Stop() error {
	_, err := c.lab(2*time.Minute, "stop", c.Name)
	return err
}

// Down removes the container, its cgroups and its bundle. Idempotent.
func (c *Container) Down() error {
	_, err := c.lab(2*time.Minute, "down", c.Name)
	return err
}

// CacheDir is the lab's cache (provision.sh's $CACHE): $ARH_LAB_CACHE or
// /var/cache/autofs-restore-hook.
func CacheDir() string {
	if d := os.Getenv("ARH_LAB_CACHE"); d != "" {
		return d
	}
	return "/var/cache/autofs-restore-hook"
}

// runtime is the argv of the container's OCI runtime (as lab.sh runs it)
// followed by args.
func (c *Container) runtime(args ...string) []string {
	switch c.Runtime {
	case "crun":
		return append([]string{"crun"}, args...)
	case "crun-forky":
		return append([]string{filepath.Join(CacheDir(), "bin-forky", "crun")}, args...)
	}
	return append([]string{"runc"}, args...)
}

// RuntimeID is the id by which the OCI runtime knows c: its Name, or the id
// CRI-O gave its current container (Bundle/crio-ctr, a new one at every
// Restore).
func (c *Container) RuntimeID() string {
	if !c.CRIO {
		return c.Name
	}
	b, err := os.ReadFile(filepath.Join(c.Bundle, "crio-ctr"))
	if err != nil {
		return c.Name + "-not-in-cri-o"
	}
	return strings.TrimSpace(string(b))
}

// Pid is the host pid of the container's init.
func (c *Container) Pid() (int, error) {
	if c.Podman || c.CRIO {
		out, err := run(30*time.Second, filepath.Join(Dir(), "lab.sh"), "pid", c.Name)
		if err != nil {
			return 0, fmt.Errorf("lab.sh pid %s: %w: %s", c.Name, err, strings.TrimSpace(out))
		}
		return strconv.Atoi(strings.TrimSpace(out))
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Scale(30*time.Second))
	defer cancel()
	rt := c.runtime("state", c.Name)
	out, err := exec.CommandContext(ctx, rt[0], rt[1:]...).Output()
	if err != nil {
		return 0, fmt.Errorf("%s state %s: %w", rt[0], c.Name, err)
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, fmt.Errorf("%s state %s: %w", rt[0], c.Name, err)
	}
	if st.Pid == 0 || st.Status != "running" {
		return 0, fmt.Errorf("%s is %q, not running", c.Name, st.Status)
	}
	return st.Pid, nil
}

// Pids are the host pids of every process in the container's pid namespace.
func (c *Container) Pids() ([]int, error) {
	init, err := c.Pid()
	if err != nil {
		return nil, err
	}
	pids, err := proc.PidNamespaceMembers(init)
	if err != nil {
		return nil, err
	}
	sort.Ints(pids)
	return pids, nil
}

// AutofsWaiters are the host pids of the container's processes whose
// /proc/PID/wchan is autofs_wait (blocked on an automount request).
func (c *Container) AutofsWaiters() ([]int, error) {
	pids, err := c.Pids()
	if err != nil {
		return nil, err
	}
	var w []int
	for _, p := range pids {
		if proc.Wchan(p) == "autofs_wait" {
			w = append(w, p)
		}
	}
	return w, nil
}

// KillWaiters sends SIGKILL to every process of AutofsWaiters (the only
// signal that ends an autofs_wait) and waits up to 5 s for them to go.
func (c *Container) KillWaiters() error {
	w, err := c.AutofsWaiters()
	if err != nil {
		return err
	}
	for _, p := range w {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(testenv.Scale(5 * time.Second))
	for time.Now().Before(deadline) {
		if w, err = c.AutofsWaiters(); err != nil || len(w) == 0 {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: still in autofs_wait after SIGKILL: %v", c.Name, w)
}

// Describe is one line per process of the container: pid, state, wchan,
// command (for logs).
func (c *Container) Describe() string {
	pids, err := c.Pids()
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pids {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		state := "?"
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			state = string(stat[i+2])
		}
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", p))
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		fmt.Fprintf(&b, "%7d %s %-22s %s\n", p, state, string(wchan), strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " ")))
	}
	return b.String()
}

func (o Options) args() []string {
	var a []string
	if o.ActionScript != "" {
		a = append(a, "--action-script", o.ActionScript)
	}
	for _, l := range o.CriuOpts {
		a = append(a, "--criu-opt", l)
	}
	if o.Hook != "" {
		a = append(a, "--hook", o.Hook)
		if o.HookStage != "" {
			a = append(a, "--hook-stage", o.HookStage)
		}
		for _, x := range o.HookArgs {
			a = append(a, "--hook-arg", x)
		}
		for _, x := range o.HookEnv {
			a = append(a, "--hook-env", x)
		}
	}
	return a
}

// lab runs lab.sh and logs its output (timings) to the test.
func (c *Container) lab(timeout time.Duration, args ...string) (string, error) {
	out, err := run(timeout, filepath.Join(Dir(), "lab.sh"), args...)
	if c.t != nil {
		c.t.Helper()
		if s := strings.TrimSpace(out); s != "" {
			c.t.Logf("lab.sh %s:\n%s", strings.Join(args, " "), s)
		}
	}
	return out, err
}

// run runs a command with a deadline (stretched by testenv.Scale); stdout
// and stderr are combined.
func run(timeout time.Duration, name string, args ...string) (string, error) {
	timeout = testenv.Scale(timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "ARH_LAB_OWNER_PID="+strconv.Itoa(os.Getpid()))
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return buf.String(), err
}

func labDir() string {
	if d := os.Getenv("ARH_LAB_DIR"); d != "" {
		return d
	}
	return "/var/tmp/arh-lab"
}

// DescribeProcesses is one line per process of the machine (pid, parent,
// state, wchan, command) and, for the processes of a container stack
// (podman, conmon, runc, crun, criu, the hook) and those in D state, their
// kernel stack: what a test prints when something it ran hangs.
func DescribeProcesses() string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		state, ppid := "?", "?"
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			f := strings.Fields(string(stat[i+2:]))
			if len(f) >= 2 {
				state, ppid = f[0], f[1]
			}
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if len(cmd) == 0 {
			continue // a kernel thread
		}
		line := strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
		if len(line) > 240 {
			line = line[:240] + "..."
		}
		fmt.Fprintf(&b, "%7d %7s %s %-24s %s\n", pid, ppid, state, proc.Wchan(pid), line)
		name := filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0])
		switch {
		case state == "D", strings.Contains(name, "podman"), name == "conmon", name == "runc", name == "crun",
			strings.Contains(name, "criu"), strings.Contains(name, "autofs-restore-hook"):
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stack", pid)); err == nil && len(st) > 0 {
				for _, l := range strings.Split(strings.TrimSpace(string(st)), "\n") {
					fmt.Fprintf(&b, "%26s %s\n", "", l)
				}
			}
		}
	}
	return b.String()
}
