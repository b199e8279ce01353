package hook

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// hooksdJSON is the shape of a podman/CRI-O hooks.d file (version 1.0.0).
type hooksdJSON struct {
	Version string `json:"version"`
	Hook    struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
	} `json:"hook"`
	When struct {
		Always      *bool             `json:"always"`
		Annotations map[string]string `json:"annotations"`
	} `json:"when"`
	Stages []string `json:"stages"`
}

const installedBinary = "/usr/libexec/oci/hooks.d/autofs-restore-hook"

func TestShippedHooksdJSON(t *testing.T) {
	for _, f := range []string{"autofs-restore-hook.json", "autofs-restore-hook-annotation.json"} {
		b, err := os.ReadFile("../hooks.d/" + f)
		if err != nil {
			t.Fatal(err)
		}
		var h hooksdJSON
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&h); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if h.Version != "1.0.0" || h.Hook.Path != installedBinary || len(h.Stages) != 1 || h.Stages[0] != "createRuntime" {
			t.Errorf("%s: %+v", f, h)
		}
		if (h.When.Always == nil || !*h.When.Always) && len(h.When.Annotations) == 0 {
			t.Errorf("%s: no when condition", f)
		}
	}
}

func TestShippedRuncSnippet(t *testing.T) {
	b, err := os.ReadFile("../hooks.d/runc-config-snippet.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Hooks map[string][]struct {
			Path    string   `json:"path"`
			Args    []string `json:"args"`
			Timeout int      `json:"timeout"`
		} `json:"hooks"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	h := cfg.Hooks["createRuntime"]
	if len(h) != 1 || h[0].Path != installedBinary || h[0].Timeout <= 0 {
		t.Fatalf("createRuntime hook: %+v", h)
	}
}

func TestShippedDaemonSet(t *testing.T) {
	b, err := os.ReadFile("../hooks.d/kubernetes-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Spec       struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
			Template struct {
				Metadata struct {
					Labels map[string]string `yaml:"labels"`
				} `yaml:"metadata"`
				Spec struct {
					TerminationGracePeriodSeconds int   `yaml:"terminationGracePeriodSeconds"`
					InitContainers                []any `yaml:"initContainers"`
					Containers                    []struct {
						Image           string   `yaml:"image"`
						Command         []string `yaml:"command"`
						SecurityContext struct {
							Privileged bool `yaml:"privileged"`
						} `yaml:"securityContext"`
						VolumeMounts []struct {
							Name      string `yaml:"name"`
							MountPath string `yaml:"mountPath"`
						} `yaml:"volumeMounts"`
					} `yaml:"containers"`
					Volumes []struct {
						Name     string `yaml:"name"`
						HostPath struct {
							Path string `yaml:"path"`
						} `yaml:"hostPath"`
					} `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatalf("not valid YAML: %v", err)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Fatalf("apiVersion %q kind %q", ds.APIVersion, ds.Kind)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the template labels", k, v)
		}
	}
	spec := ds.Spec.Template.Spec
	if len(spec.InitContainers) != 0 || len(spec.Containers) != 1 {
		t.Fatalf("want one container, the installer that waits (init containers %d, containers %d)", len(spec.InitContainers), len(spec.Containers))
	}
	c := spec.Containers[0]
	// The command is the binary's node installer, with the flags it takes:
	// installed, it waits for SIGTERM and uninstalls.
	if len(c.Command) < 3 || c.Command[0] != "/autofs-restore-hook" || c.Command[1] != "node" {
		t.Fatalf("the container runs %q, want /autofs-restore-hook node install ...", c.Command)
	}
	var out, errb strings.Builder
	root := t.TempDir()
	args := slices.Clone(c.Command[2:])
	for i, a := range args {
		switch a {
		case "/host":
			args[i] = root
		case "/autofs-restore-hook.so":
			args[i] = filepath.Join(t.TempDir(), "p.so")
			if err := os.WriteFile(args[i], []byte("so"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	waited := false
	if code := nodeMain(args, &out, &errb, func() { waited = true }); code != ExitOK || !waited {
		t.Errorf("the DaemonSet's command %q, run against a host root: exit %d, waited %v\n%s%s", c.Command, code, waited, out.String(), errb.String())
	}
	if !c.SecurityContext.Privileged {
		t.Error("the installer writes the node's /usr and /etc: it must be privileged")
	}
	if spec.TerminationGracePeriodSeconds < 10 {
		t.Errorf("terminationGracePeriodSeconds %d: the uninstall needs a few seconds", spec.TerminationGracePeriodSeconds)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/host" || hostPaths[c.VolumeMounts[0].Name] != "/" {
		t.Errorf("the node's / must be mounted at /host (--root): %+v, volumes %v", c.VolumeMounts, hostPaths)
	}
}

// `make install PREFIX=/usr/local` installs a hooks.d JSON that names the
// binary where that install put it, not the /usr path of the package.
func TestInstallRewritesTheJSONForItsPrefix(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed: the project's build needs it")
	}
	for _, prefix := range []string{"/usr", "/usr/local", "/opt/arh"} {
		dest := t.TempDir()
		out, err := exec.Command("make", "-C", "..", "--no-print-directory", "install-json", "DESTDIR="+dest, "PREFIX="+prefix).CombinedOutput()
		if err != nil {
			t.Fatalf("make install-json PREFIX=%s: %v\n%s", prefix, err, out)
		}
		b, err := os.ReadFile(filepath.Join(dest, prefix, "share/containers/oci/hooks.d/autofs-restore-hook.json"))
		if err != nil {
			t.Fatal(err)
		}
		var h hooksdJSON
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatalf("PREFIX=%s: %v\n%s", prefix, err, b)
		}
		if want := prefix + "/libexec/oci/hooks.d/autofs-restore-hook"; h.Hook.Path != want {
			t.Errorf("PREFIX=%s: the installed JSON names %q, want %q", prefix, h.Hook.Path, want)
		}
	}
}
