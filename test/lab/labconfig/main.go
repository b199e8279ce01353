package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		o       Options
		bundle  string
		seccomp string
		podman  string
	)
	f := flag.NewFlagSet("labconfig", flag.ContinueOnError)
	f.StringVar(&bundle, "bundle", "", "the bundle directory (config.json and criu.conf are written there)")
	f.StringVar(&o.Name, "name", "", "the container's name (its hostname, its cgroup /arh-lab/NAME)")
	f.StringVar(&o.Kind, "kind", "", "systemd, automount or plain")
	f.StringVar(&o.ActionScript, "action-script", "", "CRIU action script (criu.conf)")
	f.Var((*list)(&o.CRIUOpts), "criu-opt", "another line of criu.conf (repeatable)")
	f.BoolVar(&o.RuntimeCRIUConfig, "runtime-criu-config", false, "no org.criu.config annotation: the runtime's own CRIU configuration applies")
	f.StringVar(&o.Hook, "hook", "", "OCI hook binary")
	f.StringVar(&o.HookStage, "hook-stage", "createRuntime", "the hook's stage")
	f.Var((*list)(&o.HookArgs), "hook-arg", "the hook's next argument (repeatable)")
	f.Var((*list)(&o.HookEnv), "hook-env", "K=V of the hook's environment (repeatable)")
	f.IntVar(&o.HookTimeout, "hook-timeout", 0, "the hook's timeout in seconds (0: none)")
	f.BoolVar(&o.Confined, "confined", false, "confined as podman and Kubernetes confine containers")
	f.StringVar(&o.AppArmor, "apparmor", "", "with -confined: the AppArmor profile (loaded by lab.sh)")
	f.StringVar(&seccomp, "seccomp", "", "a file holding the linux.seccomp object")
	f.BoolVar(&o.NoNewPrivs, "no-new-privs", false, "process.noNewPrivileges")
	f.StringVar(&podman, "podman-hook", "", "write the hook to this file in podman's hooks.d format instead")
	if err := f.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if podman != "" {
		b, err := PodmanHook(o)
		if err == nil {
			err = writeFile(podman, b)
		}
		if err != nil {
			fail(err)
		}
		return
	}
	if bundle == "" || o.Name == "" || f.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "labconfig: -bundle DIR -name NAME -kind KIND [options], no arguments")
		os.Exit(2)
	}
	if seccomp != "" {
		b, err := os.ReadFile(seccomp)
		if err != nil {
			fail(err)
		}
		o.Seccomp = b
	}
	h, err := ThisHost()
	if err != nil {
		fail(err)
	}
	if err := Write(bundle, o, h); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "labconfig: %v\n", err)
	os.Exit(1)
}

// cgroupV2 tells whether /sys/fs/cgroup is the unified hierarchy alone.
func cgroupV2() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		return false, fmt.Errorf("statfs /sys/fs/cgroup: %w", err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}
