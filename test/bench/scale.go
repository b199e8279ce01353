package main

// The node-scale table: N containers, half systemd and half automount,
// restored at once, as a node drain brings them back.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
)

var (
	scaleSizes = flag.String("scale", "1,10,20", "numbers of containers restored at once (table scale)")
	scaleWith  = flag.String("scale-with", "none,shell,action-script,oci-hook,plugin", "contenders of table scale, comma-separated")
	pluginSO   = flag.String("plugin", "bin/autofs-restore-hook.so", "the CRIU plugin (make plugin), for the plugin rows of table scale")
	scaleKeep  = flag.String("scale-keep", "", "copy each round's hook log into this directory (in the test VM, /arh-vm is the job directory ARH_VM_KEEP=1 keeps)")
)

// fleet is every container of the scale table, removed by fatal.
var fleet []*container

// wrapMain is the bench binary run as the hook's wrapper (-wrap LOG --
// BIN ARGS...): it runs the hook as its child with its own stdin, stdout,
// stderr and environment, appends the child's rusage (user and system
// time of the hook and of every process it waited for, its peak RSS) to
// LOG as one line, and exits as the hook did. The hook's detached OCI
// follower is not waited for: it reports its CPU in the hook's log.
func wrapMain(args []string) {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "usage: bench -wrap LOG -- BIN ARGS...")
		os.Exit(2)
	}
	cmd := exec.Command(args[2], args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "bench -wrap: %v\n", err)
		os.Exit(127)
	}
	// A runtime that times the hook out signals the wrapper: pass it on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		for sig := range sigs {
			cmd.Process.Signal(sig)
		}
	}()
	err := cmd.Wait()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			fmt.Fprintf(os.Stderr, "bench -wrap: %v\n", err)
			os.Exit(127)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
		fmt.Fprintf(f, "%d %d %d\n", cmd.ProcessState.Pid(), ru.Utime.Nano()+ru.Stime.Nano(), ru.Maxrss)
		f.Close()
	}
	os.Exit(code)
}

// hookUsage is what the hook's processes cost in one round.
type hookUsage struct {
	cpu     time.Duration // wrapped invocations and followers
	peakKB  int64         // the largest peak RSS of one hook process
	sumKB   int64         // the peaks of all of them added up
	invoked int
}

// readUsage sums the wrapper's lines and the followers' own reports (in
// the state files of the containers whose inits are restored).
func readUsage(wrapLog string, restored []int, sampled map[int]int64) hookUsage {
	var u hookUsage
	peaks := map[int]int64{}
	for pid, kb := range sampled {
		peaks[pid] = kb
	}
	if f, err := os.Open(wrapLog); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			var pid int
			var ns, kb int64
			if _, err := fmt.Sscan(s.Text(), &pid, &ns, &kb); err == nil {
				u.cpu += time.Duration(ns)
				u.invoked++
				peaks[pid] = max(peaks[pid], kb)
			}
		}
		f.Close()
	}
	for _, pid := range restored {
		if o, _, err := hook.ReadOutcome(pid); err == nil && o != nil && o.Follower != nil {
			u.cpu += time.Duration(o.Follower.CPU)
		}
	}
	for _, kb := range peaks {
		u.peakKB = max(u.peakKB, kb)
		u.sumKB += kb
	}
	return u
}

// sampleHooks records, every 200 ms until stop is closed, the peak RSS
// (VmHWM) of every process whose executable is the hook: the followers,
// which no wrapper waits for. VmHWM is a high-water mark and a follower
// lives seconds: a late look still sees its peak.
func sampleHooks(stop chan struct{}) map[int]int64 {
	peaks := map[int]int64{}
	for {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != *bin {
				continue
			}
			// Not the bench's own status polls.
			if cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cl), "\x00status\x00") {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
					kb, _ := strconv.ParseInt(f[1], 10, 64)
					peaks[pid] = max(peaks[pid], kb)
				}
			}
		}
		select {
		case <-stop:
			return peaks
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// served says whether every autofs mount of the container is served by a
// live master (the hook's status, which reads the mount table and never
// walks a path).
func served(pid int) bool {
	out, err := run(30*time.Second, *bin, "status", "--pid", strconv.Itoa(pid), "--json", "--no-syslog", "--log-level", "error")
	if err != nil {
		return false
	}
	var r hook.Report
	if json.Unmarshal([]byte(out), &r) != nil || len(r.Mounts) == 0 {
		return false
	}
	for _, m := range r.Mounts {
		if m.State != string(hook.StateOK) {
			return false
		}
	}
	return true
}

// probe is a real access to a path that was never triggered: it hangs on
// a broken mount, so it runs with a deadline, after served said yes.
func probe(c *container, kind string) error {
	path := "/srv/b/"
	if kind == "automount" {
		path = "/srv/direct1/"
	}
	_, err := lab("exec", c.name, "--timeout", "20", "--", "stat", path)
	return err
}

type scaleRound struct {
	restoreWall time.Duration // from the first restore's start to the last one's return
	fixedWall   time.Duration // to every container served and probed (0: not measured)
	notFixed    int           // containers not fixed: the round failed
	of          int
	usage       hookUsage
}

// scaleTable restores N containers at once with each wiring.
func scaleTable(ns []int) {
	fmt.Println("## 5. Node scale: N containers restored at once (half systemd, half automount)")
	fmt.Println()
	top := slices.Max(ns)
	kinds := make([]string, top)
	for i := range kinds {
		kinds[i] = []string{"systemd", "automount"}[i%2]
	}
	start := time.Now()
	for i := 0; i < top; i++ {
		c := &container{name: fmt.Sprintf("arh-lab-bench-scale-%d-%d", i, os.Getpid())}
		fleet = append(fleet, c)
		lab("down", c.name)
		must(lab("up", c.name, kinds[i], "--no-trigger"))
		must(lab("checkpoint", c.name))
	}
	fmt.Printf("(%d containers started and checkpointed in %s, one after the other.)\n\n", top, time.Since(start).Round(time.Second))
	fmt.Println("| N | restores only (no fix) | shell reference: restores, then CRIU's script's way per systemd container | CRIU plugin | action script | OCI hook | plugin / restores only | action script / restores only | OCI hook / restores only | hook CPU in all (plugin; action script; OCI hook) | largest peak RSS of one hook process (plugin; action script; OCI hook) | peak RSS of all hook processes added up (plugin; action script; OCI hook) |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, n := range ns {
		cs, ks := fleet[:n], kinds[:n]
		with := strings.Split(*scaleWith, ",")
		round := func(wiring string) scaleRound {
			if !slices.Contains(with, wiring) {
				return scaleRound{}
			}
			return scaleRun(cs, ks, wiring)
		}
		none := round("none")
		shell := round("shell")
		pl := round("plugin")
		as := round("action-script")
		oci := round("oci-hook")
		mb := func(kb int64) string { return fmt.Sprintf("%.1f MB", float64(kb)/1024) }
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s; %s; %s | %s; %s; %s | %s; %s; %s |\n", n,
			secs(none.restoreWall), fixedCell(shell), fixedCell(pl), fixedCell(as), fixedCell(oci),
			ratio(pl.fixedWall, none.restoreWall), ratio(as.fixedWall, none.restoreWall), ratio(oci.fixedWall, none.restoreWall),
			ms(pl.usage.cpu), ms(as.usage.cpu), ms(oci.usage.cpu),
			mb(pl.usage.peakKB), mb(as.usage.peakKB), mb(oci.usage.peakKB),
			mb(pl.usage.sumKB), mb(as.usage.sumKB), mb(oci.usage.sumKB))
	}
	for _, c := range fleet {
		c.down()
	}
	fleet = nil
	fmt.Println()
	fmt.Println("Wall times from the start of N concurrent `lab.sh restore` (runc, CRIU) to: every restore returned (restores only); `baseline.sh` done for every systemd container, run for each as soon as its restore returned, and a path reachable (shell reference: CRIU's systemd-autofs-restart.sh's way, per unit; it cannot fix an automount container, so those are left out of its time); every container's autofs mounts served and a never-triggered path reachable (CRIU plugin, the only wiring: CRIU loads it from CRIU_LIBS_DIR, runs pre-resume inside the restore and post-resume detached at its end, so once its restore returned; action script: once its restore returned, since CRIU runs the script inside the restore; OCI hook: once the container's follower logged its end; then the hook's `status` says every mount is served, asked again every 2 s if not). One round each. Hook CPU: the rusage of every invocation (a wrapper waits for each) plus the followers' own reports; peak RSS: the wrapper's rusage and the followers' VmHWM sampled every 200 ms (every process of the node is looked at, in all rounds alike) (the bench's own `status` polls left out). The wrapper is a Go program started before each hook invocation: its start (a few ms each under emulation) is in the hook columns' wall times, not in their CPU.")
}

// fixedCell is a round's time to every container fixed, or how many
// were not.
func fixedCell(r scaleRound) string {
	if r.notFixed > 0 {
		return fmt.Sprintf("%d of %d not fixed", r.notFixed, r.of)
	}
	return secs(r.fixedWall)
}

// ratio is a/b, or "-" where a round was not run or failed.
func ratio(a, b time.Duration) string {
	if a == 0 || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(a)/float64(b))
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// scaleRun restores the containers at once with one wiring and waits
// until they work.
func scaleRun(cs []*container, kinds []string, wiring string) scaleRound {
	tmp, err := os.MkdirTemp("", "arh-bench-scale-")
	check(err)
	defer os.RemoveAll(tmp)
	wrapLog, hookLog := filepath.Join(tmp, "wrap.log"), filepath.Join(tmp, "hook.log")
	self, err := os.Executable()
	check(err)
	wrapper := filepath.Join(tmp, "hook-wrapper")
	check(os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\nexec %s -wrap %s -- %s \"$@\"\n", self, wrapLog, *bin)), 0o755))
	var wire []string
	// CRIU loads the plugins of CRIU_LIBS_DIR (lab.sh passes its
	// environment down to runc and CRIU): the plugin for its rows, none
	// for the others (whatever an installed package put in /usr/lib/criu).
	libs := filepath.Join(tmp, "criu-libs")
	check(os.Mkdir(libs, 0o755))
	os.Setenv("CRIU_LIBS_DIR", libs)
	defer os.Unsetenv("CRIU_LIBS_DIR")
	switch wiring {
	case "none", "shell":
		wire = []string{"--unwire"}
	case "plugin":
		wire = []string{"--unwire"}
		so, err := os.ReadFile(*pluginSO)
		check(err)
		check(os.WriteFile(filepath.Join(libs, hook.PluginFile), so, 0o644))
		os.Setenv("AUTOFS_RESTORE_HOOK_PLUGIN_BIN", wrapper)
		defer os.Unsetenv("AUTOFS_RESTORE_HOOK_PLUGIN_BIN")
	case "action-script":
		wire = []string{"--action-script", wrapper}
	case "oci-hook":
		wire = []string{"--hook", wrapper, "--hook-env", hook.EnvLogFile + "=" + hookLog, "--hook-env", hook.EnvNoSyslog + "=1"}
	}
	for _, c := range cs {
		must(lab("stop", c.name))
	}
	stop := make(chan struct{})
	sampled := make(chan map[int]int64, 1)
	go func() { sampled <- sampleHooks(stop) }()
	// The action script's log goes where the hook's environment says:
	// lab.sh passes its own environment down to runc and CRIU.
	os.Setenv(hook.EnvLogFile, hookLog)
	os.Setenv(hook.EnvNoSyslog, "1")
	defer os.Unsetenv(hook.EnvLogFile)
	defer os.Unsetenv(hook.EnvNoSyslog)
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lastRestore, lastFixed time.Duration
	var failures []string
	var restored []int // the inits of the restored containers
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, args ...any) {
				mu.Lock()
				failures = append(failures, fmt.Sprintf(c.name+": "+format, args...))
				mu.Unlock()
			}
			if out, err := lab(append([]string{"restore", c.name}, wire...)...); err != nil {
				fail("restore: %v\n%s", err, out)
				return
			}
			done := time.Since(t0)
			out, err := lab("pid", c.name)
			if err != nil {
				fail("pid: %v", err)
				return
			}
			pid, _ := strconv.Atoi(lastLine(out))
			mu.Lock()
			lastRestore = max(lastRestore, done)
			restored = append(restored, pid)
			if wiring != "none" && wiring != "shell" {
				c.fixed = append(c.fixed, pid)
			}
			mu.Unlock()
			switch {
			case wiring == "none":
				return
			case wiring == "shell" && kinds[i] != "systemd":
				return
			case wiring == "shell":
				// Done when the script is (as in section 3).
				if out, err := run(5*time.Minute, "bash", filepath.Join(labDir, "..", "bench", "baseline.sh"), strconv.Itoa(pid)); err != nil {
					fail("baseline.sh: %v\n%s", err, out)
					return
				}
			default:
				// What says the fix is over costs the node nothing: the
				// action script ran inside the restore, which returned;
				// the OCI hook's follower and the plugin's detached
				// post-resume log their end. Only then is the hook's
				// status asked (a process of its own: asked for every
				// container four times a second, as this bench first
				// did, it took more CPU than the restores; every 2 s
				// from the restore's return, as runs 9 and 10 did, 20
				// of them took the two emulated CPUs from the fixes).
				// A post-resume may wait for a node slot (5 minutes at
				// most) before its own budget: the end is awaited 10.
				deadline := time.Now().Add(5 * time.Minute)
				if w := outcomeWiring(wiring); w != "" {
					deadline = time.Now().Add(10 * time.Minute)
					// Once a second: 20 goroutines reading state files
					// ten times a second would cost the emulated CPUs
					// what the fixes need.
					if _, err := waitFixEnded(pid, w, deadline, time.Second); err != nil {
						fail("%v", err)
						return
					}
					deadline = time.Now().Add(30 * time.Second)
				}
				for !served(pid) {
					if time.Now().After(deadline) {
						fail("not served by %s after its restore or the end of its fix", deadline.Format(time.TimeOnly))
						return
					}
					time.Sleep(2 * time.Second)
				}
			}
			// Fixed; and a path must work.
			fixed := time.Since(t0)
			if err := probe(c, kinds[i]); err != nil {
				fail("fixed (%s), but a path does not work: %v", wiring, err)
				return
			}
			mu.Lock()
			lastFixed = max(lastFixed, fixed)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if wiring == "plugin" && len(failures) == 0 {
		// Each container's post-resume runs detached: its CPU is in the
		// table once every run (pre- and post-resume) has ended.
		waitInvocations(wrapLog, 2*len(cs), time.Now().Add(2*time.Minute))
	}
	if wiring == "oci-hook" && len(failures) == 0 {
		// The followers report when they end, in the state files.
		for _, pid := range restored {
			if _, err := waitFixEnded(pid, hook.WiringOCI, time.Now().Add(3*time.Minute), time.Second); err != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			}
		}
	}
	close(stop)
	peaks := <-sampled
	if *scaleKeep != "" {
		if b, err := os.ReadFile(hookLog); err == nil {
			kept := filepath.Join(*scaleKeep, fmt.Sprintf("scale-%d-%s-hook.log", len(cs), wiring))
			if err := os.WriteFile(kept, b, 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "bench: keep the hook's log: %v\n", err)
			}
		}
	}
	r := scaleRound{restoreWall: lastRestore, fixedWall: lastFixed, of: len(cs)}
	if len(failures) > 0 {
		// The table goes on, with the failure in its cell; the hook's
		// log goes with the temporary directory: its end is shown.
		hl, _ := os.ReadFile(hookLog)
		fmt.Fprintf(os.Stderr, "scale, %d containers, %s:\n%s\nlast lines of the hook's log:\n%s\n", len(cs), wiring, strings.Join(failures, "\n"), lastLines(string(hl), 60))
		r.notFixed, r.fixedWall = len(failures), 0
		return r
	}
	if wiring == "action-script" || wiring == "oci-hook" || wiring == "plugin" {
		r.usage = readUsage(wrapLog, restored, peaks)
	}
	return r
}

// outcomeWiring is the wiring, as the state file names it, whose fix
// outlives the restore: the OCI hook's follower and the CRIU plugin's
// detached post-resume. "" for the others.
func outcomeWiring(wiring string) string {
	switch wiring {
	case "oci-hook":
		return hook.WiringOCI
	case "plugin":
		return hook.WiringPlugin
	}
	return ""
}

// waitFixEnded waits, reading the container's state file every poll,
// until it records the end of the fix by wiring (hook.Outcome.FixEnded),
// and returns that outcome.
func waitFixEnded(pid int, wiring string, deadline time.Time, poll time.Duration) (*hook.Outcome, error) {
	for {
		o, _, err := hook.ReadOutcome(pid)
		if err == nil && o.FixEnded(wiring) {
			return o, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the state file of pid %d records no end of the fix by %s by the deadline (%v)", pid, wiring, err)
		}
		time.Sleep(poll)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// waitInvocations waits until the wrapper's log holds n invocations (one
// line each, written when the invocation ended), or deadline.
func waitInvocations(wrapLog string, n int, deadline time.Time) {
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(wrapLog)
		if strings.Count(string(b), "\n") >= n {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "bench: fewer than %d hook invocations ended within their deadline: the plugin row's CPU misses some\n", n)
}
