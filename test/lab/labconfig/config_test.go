package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The host of the golden files: four capabilities, cgroup v1 or v2.
var goldenCaps = []string{"CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT"}

// testdata/shell holds what lab.sh's write_config, the shell heredoc that
// this command replaced, wrote for each case (with the host's part
// stubbed as goldenCaps and v2, and the bundle at /bundle). The runtime
// must read the same configuration from ours: both are decoded into the
// runtime-spec types and compared.
func TestSpecIsWhatTheShellWrote(t *testing.T) {
	seccomp, err := os.ReadFile("testdata/seccomp.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		golden string
		v2     bool
		o      Options
	}{
		{"am-unwired", false, Options{Kind: "automount"}},
		{"sd-wired", false, Options{Kind: "systemd", ActionScript: "/x/hook", CRIUOpts: []string{"tcp-established", "log-file /x/y z"},
			Hook: "/x/hook", HookStage: "prestart", HookArgs: []string{"--log-file", `/tmp/a"b\c`}, HookEnv: []string{"K=V", "Q=two words"}, HookTimeout: 30}},
		{"am-confined-aa", false, Options{Kind: "automount", Confined: true, AppArmor: "arh-lab-confined", NoNewPrivs: true}},
		{"sd-v2", true, Options{Kind: "systemd"}},
		{"am-v2-seccomp-noann", true, Options{Kind: "automount", Seccomp: seccomp, RuntimeCRIUConfig: true}},
		{"plain-confined", false, Options{Kind: "plain", Confined: true}},
		{"sd-v2-confined-aa", true, Options{Kind: "systemd", Confined: true, AppArmor: "arh-lab-confined", Hook: "/h"}},
		{"am-hook-noargs", false, Options{Kind: "automount", Hook: "/h", HookStage: "createContainer"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			tc.o.Name = "arh-lab-golden"
			if tc.o.HookStage == "" {
				tc.o.HookStage = "createRuntime"
			}
			got, err := Spec(tc.o, Host{Caps: goldenCaps, CgroupV2: tc.v2}, "/bundle/criu.conf")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			var ours, shell specs.Spec
			if err := json.Unmarshal(raw, &ours); err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata/shell", tc.golden+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(want, &shell); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ours, shell) {
				o, _ := json.MarshalIndent(ours, "", "  ")
				s, _ := json.MarshalIndent(shell, "", "  ")
				t.Errorf("config.json differs from the shell's\nours:\n%s\nshell's:\n%s", o, s)
			}
		})
	}
}

// Write puts criu.conf beside config.json when there is a CRIU wiring,
// removes it when the wiring goes (lab.sh wire without one), and never
// leaves a temporary file.
func TestWriteKeepsCRIUConfigWithTheWiring(t *testing.T) {
	b := t.TempDir()
	h := Host{Caps: goldenCaps}
	o := Options{Name: "arh-lab-w", Kind: "automount", ActionScript: "/usr/bin/hook", CRIUOpts: []string{"tcp-established"}}
	if err := Write(b, o, h); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(b, "criu.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(string(conf)), "\n"); len(lines) != 3 || lines[1] != "action-script /usr/bin/hook" || lines[2] != "tcp-established" {
		t.Errorf("criu.conf:\n%s", conf)
	}
	var s specs.Spec
	raw, err := os.ReadFile(filepath.Join(b, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if got := s.Annotations["org.criu.config"]; got != filepath.Join(b, "criu.conf") {
		t.Errorf("org.criu.config = %q, want the bundle's criu.conf", got)
	}

	o.ActionScript, o.CRIUOpts = "", nil
	if err := Write(b, o, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b, "criu.conf")); !os.IsNotExist(err) {
		t.Errorf("criu.conf after unwiring: %v, want it gone", err)
	}
	ents, _ := os.ReadDir(b)
	if len(ents) != 1 || ents[0].Name() != "config.json" {
		t.Errorf("bundle holds %v, want config.json alone", ents)
	}
}

// A seccomp object with a field the runtime-spec types do not know is
// refused, not silently dropped; so are an unknown kind and hook stage.
func TestSpecRefusesWhatItWouldDrop(t *testing.T) {
	h := Host{Caps: goldenCaps}
	for name, o := range map[string]Options{
		"seccomp": {Kind: "plain", Seccomp: []byte(`{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrno": 1}`)},
		"kind":    {Kind: "docker"},
		"stage":   {Kind: "plain", Hook: "/h", HookStage: "prestop"},
	} {
		if _, err := Spec(o, h, ""); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBoundingCaps(t *testing.T) {
	got := boundingCaps(1<<0 | 1<<21 | 1<<40 | 1<<50)
	if want := []string{"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"}; !reflect.DeepEqual(got, want) {
		t.Errorf("boundingCaps = %v, want %v", got, want)
	}
}

// podman-up's hooks.d file is what the shell wrote (testdata/shell).
func TestPodmanHookIsWhatTheShellWrote(t *testing.T) {
	got, err := PodmanHook(Options{Hook: "/x/hook", HookStage: "createRuntime", HookArgs: []string{"--log-file", `/tmp/a"b\c`}, HookEnv: []string{"K=V", "Q=two words"}})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/shell/podman-hook.json")
	if err != nil {
		t.Fatal(err)
	}
	var a, b podmanHook
	if err := json.Unmarshal(got, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("hooks.d file:\n%s\nthe shell's:\n%s", got, want)
	}
}
