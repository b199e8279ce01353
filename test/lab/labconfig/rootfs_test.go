package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// tree is the files and symlinks under dir by relative path: mode and
// content (a symlink's target). Directories are left out (git keeps no
// empty ones).
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		var body string
		if d.Type()&fs.ModeSymlink != 0 {
			body, err = os.Readlink(p)
		} else {
			var b []byte
			b, err = os.ReadFile(p)
			// The one comment that names its writer.
			body = strings.ReplaceAll(string(b), "written by test/lab/lab.sh", "written by test/lab/labconfig")
		}
		out[rel] = info.Mode().String() + "\n" + body
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testdata/shell/rootfs holds what lab.sh's populate_* functions, which
// Rootfs replaced, wrote into a rootfs for each case.
func TestRootfsIsWhatTheShellWrote(t *testing.T) {
	for golden, o := range map[string]RootfsOptions{
		"sd-count2":  {Kind: "systemd", Count: 2},
		"am":         {Kind: "automount"},
		"am-all":     {Kind: "automount", Count: 2, AutomountDaemon: true, ASLimit: "536870912", Securebits: "+no_setuid_fixup,+keep_caps_locked", Confined: true},
		"am-fg-opts": {Kind: "automount", ASLimit: "1000", Securebits: "+keep_caps", Confined: true},
		"plain":      {Kind: "plain"},
	} {
		t.Run(golden, func(t *testing.T) {
			r := t.TempDir()
			for _, d := range []string{"lab", "etc"} {
				if err := os.Mkdir(filepath.Join(r, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := Rootfs(r, o); err != nil {
				t.Fatal(err)
			}
			got, want := tree(t, r), tree(t, filepath.Join("testdata/shell/rootfs", golden))
			if !reflect.DeepEqual(got, want) {
				for p := range merge(got, want) {
					if got[p] != want[p] {
						t.Errorf("%s: ours\n%s\nthe shell's\n%s", p, got[p], want[p])
					}
				}
			}
		})
	}
}

func merge(a, b map[string]string) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

// What would reach init.sh's shell beyond a number or a securebits list
// is refused.
func TestRootfsRefusesShellText(t *testing.T) {
	for _, o := range []RootfsOptions{
		{Kind: "automount", ASLimit: "1; reboot"},
		{Kind: "automount", Securebits: "+keep_caps $(reboot)"},
		{Kind: "docker"},
	} {
		if err := Rootfs(t.TempDir(), o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

// The CRI configurations are what the shell wrote (testdata/shell/cri,
// with the lab directory as /LAB and the checkpoint archive as /CKPT); a
// restore's also makes the files it names.
func TestCRIIsWhatTheShellWrote(t *testing.T) {
	lab := t.TempDir()
	ckpt := filepath.Join(t.TempDir(), "checkpoint.tar")
	if err := os.WriteFile(ckpt, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pod := func() ([]byte, error) { return CRIPod("arh-lab-p", filepath.Join(lab, "arh-lab-p")) }
	ctr := func(kind, image, seccomp, aa string) func() ([]byte, error) {
		return func() ([]byte, error) {
			return CRIContainer("arh-lab-c", kind, image, filepath.Join(lab, "arh-lab-c"), seccomp, aa)
		}
	}
	for golden, make := range map[string]func() ([]byte, error){
		"pod":                   pod,
		"ctr-image":             ctr("systemd", "localhost/arh-lab-img:lab", "", ""),
		"ctr-image-sec-aa":      ctr("automount", "localhost/arh-lab-img:lab", "/x/seccomp.json", "arh-lab-confined"),
		"ctr-restore-systemd":   ctr("systemd", ckpt, "", "arh-lab-confined"),
		"ctr-restore-automount": ctr("automount", ckpt, "", ""),
	} {
		got, err := make()
		if err != nil {
			t.Fatalf("%s: %v", golden, err)
		}
		raw, err := os.ReadFile(filepath.Join("testdata/shell/cri", golden+".json"))
		if err != nil {
			t.Fatal(err)
		}
		raw = []byte(strings.NewReplacer("/LAB", lab, "/CKPT", ckpt).Replace(string(raw)))
		var a, b any
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: ours\n%s\nthe shell's\n%s", golden, got, raw)
		}
	}
	hosts, err := os.ReadFile(filepath.Join(lab, "arh-lab-c/crio-mounts/hosts"))
	if err != nil || string(hosts) != "127.0.0.1 localhost arh-lab-c\n" {
		t.Errorf("crio-mounts/hosts: %q, %v", hosts, err)
	}
	for _, d := range []string{"run", "run-lock", "tmp", "var-log-journal"} {
		if st, err := os.Stat(filepath.Join(lab, "arh-lab-c/crio-mounts", d)); err != nil || !st.IsDir() {
			t.Errorf("crio-mounts/%s: %v", d, err)
		}
	}
}

// CRI-O's configuration and the AppArmor profile are what the shell wrote
// (but the comment that names the writer).
func TestDaemonConfigsAreWhatTheShellWrote(t *testing.T) {
	crio, err := os.ReadFile("testdata/shell/crio.conf")
	if err != nil {
		t.Fatal(err)
	}
	_, want, _ := strings.Cut(string(crio), "\n")
	_, got, _ := strings.Cut(string(CRIOConfig("/RUN", "/BIN", "/usr/sbin/runc", "/usr/bin/conmon", "/P1:/P2", "localhost/arh-lab-pause:lab")), "\n")
	if got != want {
		t.Errorf("crio.conf:\n%s\nthe shell's:\n%s", got, want)
	}
	aa, err := os.ReadFile("testdata/shell/apparmor.profile")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(AppArmorProfile("arh-lab-confined")); got != string(aa) {
		t.Errorf("profile:\n%s\nthe shell's:\n%s", got, aa)
	}
}
