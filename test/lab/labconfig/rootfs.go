package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// RootfsOptions are what a kind's files in the rootfs depend on.
type RootfsOptions struct {
	Kind  string // systemd, automount or plain
	Count int    // more automount points: /srv/u1.. (systemd), /srv/d1.. (automount)

	// The automount daemon: daemonized (AutomountDaemon) instead of -f,
	// under prlimit --as=ASLimit, under setpriv --securebits Securebits,
	// with umask 027 when Confined.
	AutomountDaemon bool
	ASLimit         string
	Securebits      string
	Confined        bool
}

// Rootfs writes the kind's files into the container's rootfs r (a copy of
// the lab's cached rootfs, with its /lab directory):
//   - systemd: an .automount unit and a tmpfs .mount unit for /srv/a,
//     /srv/b, /srv/c and /srv/u1../srv/uN, each automount wanted by
//     multi-user.target, and their names in /lab/automounts;
//   - automount: auto.master with a direct map (/srv/direct1,
//     /srv/direct2, /srv/d1../srv/dN, the multi-mount /srv/dmulti with
//     offset /sub) and an indirect map /ind (k1, k2, k3, multi with offset
//     /sub), every mount a tmpfs; /lab/init.sh starts automount;
//   - plain: /lab/init.sh only sleeps.
func Rootfs(r string, o RootfsOptions) error {
	// Both go into a shell script: what lab.sh accepts, no more.
	if strings.Trim(o.ASLimit, "0123456789") != "" {
		return fmt.Errorf("as-limit %q: a number of bytes", o.ASLimit)
	}
	if strings.Trim(o.Securebits, "abcdefghijklmnopqrstuvwxyz_,+-") != "" {
		return fmt.Errorf("securebits %q: a list like +no_setuid_fixup,+keep_caps_locked", o.Securebits)
	}
	switch o.Kind {
	case "systemd":
		return systemdUnits(r, o.Count)
	case "automount":
		return automountMaps(r, o)
	case "plain":
		return writeInit(r, "#!/bin/sh\nexec </dev/null >/dev/null 2>&1\nwhile :; do sleep 3600; done\n")
	}
	return fmt.Errorf("unknown kind %q (systemd, automount, plain)", o.Kind)
}

func systemdUnits(r string, count int) error {
	names := []string{"a", "b", "c"}
	for i := 1; i <= count; i++ {
		names = append(names, fmt.Sprintf("u%d", i))
	}
	units := filepath.Join(r, "etc/systemd/system")
	wants := filepath.Join(units, "multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	for _, n := range names {
		mount := fmt.Sprintf("[Unit]\nDescription=arh-lab tmpfs /srv/%s\n\n[Mount]\nWhat=tmpfs\nWhere=/srv/%s\nType=tmpfs\nOptions=size=4m,mode=0755\n", n, n)
		automount := fmt.Sprintf("[Unit]\nDescription=arh-lab automount /srv/%s\n\n[Automount]\nWhere=/srv/%s\n\n[Install]\nWantedBy=multi-user.target\n", n, n)
		if err := os.WriteFile(filepath.Join(units, "srv-"+n+".mount"), []byte(mount), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(units, "srv-"+n+".automount"), []byte(automount), 0o644); err != nil {
			return err
		}
		link := filepath.Join(wants, "srv-"+n+".automount")
		if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
			return err
		}
		if err := os.Symlink("../srv-"+n+".automount", link); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(r, "lab/automounts"), []byte(strings.Join(names, "\n")+"\n"), 0o644)
}

func automountMaps(r string, o RootfsOptions) error {
	const opts = "-fstype=tmpfs,size=4m,mode=0755"
	master := "# arh-lab: written by test/lab/labconfig\n/-\t/etc/auto.direct\t--timeout=0\n/ind\t/etc/auto.ind\t--timeout=0\n"
	var direct strings.Builder
	fmt.Fprintf(&direct, "/srv/direct1\t%s\t:tmpfs\n/srv/direct2\t%s\t:tmpfs\n", opts, opts)
	for i := 1; i <= o.Count; i++ {
		fmt.Fprintf(&direct, "/srv/d%d\t%s\t:tmpfs\n", i, opts)
	}
	fmt.Fprintf(&direct, "/srv/dmulti\t/ %s :tmpfs\t/sub %s :tmpfs\n", opts, opts)
	ind := fmt.Sprintf("k1\t%s\t:tmpfs\nk2\t%s\t:tmpfs\nk3\t%s\t:tmpfs\nmulti\t/ %s :tmpfs\t/sub %s :tmpfs\n", opts, opts, opts, opts, opts)
	for name, text := range map[string]string{"auto.master": master, "auto.direct": direct.String(), "auto.ind": ind} {
		if err := os.WriteFile(filepath.Join(r, "etc", name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	am := "setsid /usr/sbin/automount -f -d -p /run/automount.pid </dev/null >/run/automount.log 2>&1 &"
	if o.AutomountDaemon {
		am = "setsid /usr/sbin/automount -d -p /run/automount.pid </dev/null >/dev/null 2>&1"
	}
	if o.ASLimit != "" {
		am = "prlimit --as=" + o.ASLimit + " -- " + am
	}
	if o.Securebits != "" {
		am = "setpriv --securebits " + o.Securebits + " -- " + am
	}
	if o.Confined {
		am = "umask 027; " + am
	}
	return writeInit(r, "#!/bin/sh\n"+
		"# arh-lab init (kind automount): stdio inside the container, automount as a\n"+
		"# process-group leader, then a reaping sleep loop as PID 1.\n"+
		"exec </dev/null >/dev/null 2>&1\n"+
		am+"\n"+
		"while :; do sleep 3600; done\n")
}

// writeInit writes /lab/init.sh, the init of the automount and plain
// kinds.
func writeInit(r, text string) error {
	p := filepath.Join(r, "lab/init.sh")
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		return err
	}
	return os.Chmod(p, 0o755) // whatever the umask
}
