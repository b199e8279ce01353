package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

const usage = `labconfig COMMAND [options]: what lab.sh builds of a lab container
  bundle -bundle DIR -name NAME -kind KIND [options]   DIR/config.json and DIR/criu.conf
  rootfs -rootfs DIR -kind KIND [options]               the kind's files in the rootfs
  podman-hook -out FILE -hook BIN [options]             the hook as a podman hooks.d file
  crio-pod -out FILE -name NAME -bundle DIR             the CRI pod config
  crio-ctr -out FILE -name NAME -bundle DIR -kind KIND -image IMG [-seccomp FILE] [-apparmor P]
                                                        the CRI container config
  crio-conf -out FILE -run DIR -bin DIR -runc P -conmon P -path PATH -image IMG
                                                        the lab's CRI-O configuration
  apparmor -out FILE -name NAME                         the lab's AppArmor profile
FILE - is standard output.
`

// list is a repeatable flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var (
		o                            Options
		r                            RootfsOptions
		bundle, rootfs, out, image   string
		seccomp                      string
		run, bin, runc, conmon, path string
	)
	cmd := os.Args[1]
	f := flag.NewFlagSet("labconfig "+cmd, flag.ContinueOnError)
	f.StringVar(&bundle, "bundle", "", "the bundle directory")
	f.StringVar(&rootfs, "rootfs", "", "the container's rootfs")
	f.StringVar(&out, "out", "", "the file to write")
	f.StringVar(&o.Name, "name", "", "the container's name (its hostname, its cgroup /arh-lab/NAME)")
	f.StringVar(&o.Kind, "kind", "", "systemd, automount or plain")
	f.StringVar(&image, "image", "", "the image, or the checkpoint archive to restore (crio-ctr)")
	f.StringVar(&o.ActionScript, "action-script", "", "CRIU action script (criu.conf)")
	f.Var((*list)(&o.CRIUOpts), "criu-opt", "another line of criu.conf (repeatable)")
	f.BoolVar(&o.RuntimeCRIUConfig, "runtime-criu-config", false, "no org.criu.config annotation: the runtime's own CRIU configuration applies")
	f.StringVar(&o.Hook, "hook", "", "OCI hook binary")
	f.StringVar(&o.HookStage, "hook-stage", "createRuntime", "the hook's stage")
	f.Var((*list)(&o.HookArgs), "hook-arg", "the hook's next argument (repeatable)")
	f.Var((*list)(&o.HookEnv), "hook-env", "K=V of the hook's environment (repeatable)")
	f.IntVar(&o.HookTimeout, "hook-timeout", 0, "the hook's timeout in seconds (0: none)")
	f.BoolVar(&o.Confined, "confined", false, "confined as podman and Kubernetes confine containers")
	f.StringVar(&o.AppArmor, "apparmor", "", "the AppArmor profile (loaded by lab.sh): with -confined, or for crio-ctr")
	f.StringVar(&seccomp, "seccomp", "", "a file holding the linux.seccomp object (bundle), or a profile of podman's format (crio-ctr)")
	f.BoolVar(&o.NoNewPrivs, "no-new-privs", false, "process.noNewPrivileges")
	f.IntVar(&r.Count, "count", 0, "more automount points (rootfs)")
	f.BoolVar(&r.AutomountDaemon, "automount-daemon", false, "automount daemonizes itself instead of -f (rootfs)")
	f.StringVar(&r.ASLimit, "as-limit", "", "automount's address-space limit in bytes (rootfs)")
	f.StringVar(&r.Securebits, "securebits", "", "automount's securebits, for setpriv (rootfs)")
	f.StringVar(&run, "run", "", "CRI-O's run directory (crio-conf)")
	f.StringVar(&bin, "bin", "", "CRI-O's binaries, pinns among them (crio-conf)")
	f.StringVar(&runc, "runc", "", "runc (crio-conf)")
	f.StringVar(&conmon, "conmon", "", "conmon (crio-conf)")
	f.StringVar(&path, "path", "", "the monitors' PATH (crio-conf)")
	if err := f.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if f.NArg() != 0 {
		bad("no arguments after the options")
	}
	need := func(pairs ...string) {
		for i := 0; i < len(pairs); i += 2 {
			if pairs[i+1] == "" {
				bad(cmd + " needs -" + pairs[i])
			}
		}
	}
	var err error
	switch cmd {
	case "bundle":
		need("bundle", bundle, "name", o.Name, "kind", o.Kind)
		if seccomp != "" {
			if o.Seccomp, err = os.ReadFile(seccomp); err != nil {
				break
			}
		}
		var h Host
		if h, err = ThisHost(); err == nil {
			err = Write(bundle, o, h)
		}
	case "rootfs":
		need("rootfs", rootfs, "kind", o.Kind)
		r.Kind, r.Confined = o.Kind, o.Confined
		err = Rootfs(rootfs, r)
	case "podman-hook":
		need("out", out, "hook", o.Hook)
		err = writeOut(out, func() ([]byte, error) { return PodmanHook(o) })
	case "crio-pod":
		need("out", out, "name", o.Name, "bundle", bundle)
		err = writeOut(out, func() ([]byte, error) { return CRIPod(o.Name, bundle) })
	case "crio-ctr":
		need("out", out, "name", o.Name, "bundle", bundle, "kind", o.Kind, "image", image)
		err = writeOut(out, func() ([]byte, error) { return CRIContainer(o.Name, o.Kind, image, bundle, seccomp, o.AppArmor) })
	case "crio-conf":
		need("out", out, "run", run, "bin", bin, "runc", runc, "conmon", conmon, "path", path, "image", image)
		err = writeOut(out, func() ([]byte, error) { return CRIOConfig(run, bin, runc, conmon, path, image), nil })
	case "apparmor":
		need("out", out, "name", o.Name)
		err = writeOut(out, func() ([]byte, error) { return AppArmorProfile(o.Name), nil })
	default:
		bad("unknown command " + cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "labconfig %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func bad(why string) {
	fmt.Fprintf(os.Stderr, "labconfig: %s\n%s", why, usage)
	os.Exit(2)
}

func writeOut(path string, make func() ([]byte, error)) error {
	b, err := make()
	if err != nil {
		return err
	}
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return writeFile(path, b)
}

// cgroupV2 tells whether /sys/fs/cgroup is the unified hierarchy alone.
func cgroupV2() (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil {
		return false, fmt.Errorf("statfs /sys/fs/cgroup: %w", err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}
