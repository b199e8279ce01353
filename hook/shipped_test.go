package hook

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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
					InitContainers []struct {
						Command      []string `yaml:"command"`
						VolumeMounts []struct {
							Name      string `yaml:"name"`
							MountPath string `yaml:"mountPath"`
						} `yaml:"volumeMounts"`
					} `yaml:"initContainers"`
					Containers []struct{ Image string } `yaml:"containers"`
					Volumes    []struct {
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
	if len(ds.Spec.Template.Spec.InitContainers) != 1 {
		t.Fatal("want one install init container")
	}
	script := strings.Join(ds.Spec.Template.Spec.InitContainers[0].Command, " ")
	bin := strings.Index(script, "/host"+installedBinary)
	js := strings.Index(script, "/host/etc/containers/oci/hooks.d/autofs-restore-hook.json")
	if bin < 0 || js < 0 || bin > js {
		t.Errorf("the install script must put the binary in place before the JSON:\n%s", script)
	}
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	for _, m := range ds.Spec.Template.Spec.InitContainers[0].VolumeMounts {
		if "/host"+hostPaths[m.Name] != m.MountPath {
			t.Errorf("volume %s: host %s mounted at %s", m.Name, hostPaths[m.Name], m.MountPath)
		}
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
