package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
)

// The CRI configurations that crictl reads (runp, create), in the JSON of
// CRI's protobuf messages: only the fields the lab sets. CRI's Go types
// (k8s.io/cri-api) would add a dependency for two small messages.

type criMetadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	UID       string `json:"uid,omitempty"`
	Attempt   *int   `json:"attempt,omitempty"`
}

// criNamespaceOptions: network 2 is NODE (the host's), pid 1 is CONTAINER
// (one of its own).
type criNamespaceOptions struct {
	Network int `json:"network"`
	Pid     int `json:"pid"`
}

type criSecurityProfile struct {
	ProfileType  int    `json:"profile_type"` // 2: Localhost
	LocalhostRef string `json:"localhost_ref"`
}

type criSecurityContext struct {
	NamespaceOptions criNamespaceOptions `json:"namespace_options"`
	Capabilities     *struct {
		AddCapabilities []string `json:"add_capabilities"`
	} `json:"capabilities,omitempty"`
	Seccomp  *criSecurityProfile `json:"seccomp,omitempty"`
	Apparmor *criSecurityProfile `json:"apparmor,omitempty"`
}

type criPod struct {
	Metadata     criMetadata       `json:"metadata"`
	Hostname     string            `json:"hostname"`
	LogDirectory string            `json:"log_directory"`
	Annotations  map[string]string `json:"annotations"`
	Linux        struct {
		CgroupParent    string             `json:"cgroup_parent"`
		SecurityContext criSecurityContext `json:"security_context"`
	} `json:"linux"`
}

type criMount struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
}

type criContainer struct {
	Metadata criMetadata `json:"metadata"`
	Image    struct {
		Image string `json:"image"`
	} `json:"image"`
	LogPath string     `json:"log_path"`
	Mounts  []criMount `json:"mounts"`
	Linux   struct {
		SecurityContext criSecurityContext `json:"security_context"`
	} `json:"linux"`
}

// hostNetOwnPid: the lab's pods use the host's network and a pid
// namespace of the container's own.
var hostNetOwnPid = criNamespaceOptions{Network: 2, Pid: 1}

// CRIPod is the pod of container name, bundle b: /dev/autofs through
// CRI-O's device annotation, its cgroup under /arh-lab.
func CRIPod(name, b string) ([]byte, error) {
	attempt := 0
	p := criPod{
		Metadata:     criMetadata{Name: name, Namespace: "arh-lab", UID: name, Attempt: &attempt},
		Hostname:     name,
		LogDirectory: filepath.Join(b, "log/crio"),
		Annotations:  map[string]string{"io.kubernetes.cri-o.Devices": "/dev/autofs"},
	}
	p.Linux.CgroupParent = "/arh-lab/" + name
	p.Linux.SecurityContext.NamespaceOptions = hostNetOwnPid
	return marshal(p)
}

// CRIContainer is the container of kind from image, of the lab's
// container name with bundle b, with
// CAP_SYS_ADMIN, seccomp (a profile file, or CRI-O's default when "") and
// apparmor (a loaded profile, or none when ""). When image is a
// checkpoint archive (a restore), the request names the checkpoint's
// mounts, as CRI-O restores only then: CRI-O's own /etc/hosts (a file it
// writes into the bundle) and, for systemd, the tmpfs mounts it gave it
// (directories in the bundle that CRIU restores the tmpfs over).
func CRIContainer(name, kind, image, b, seccomp, apparmor string) ([]byte, error) {
	c := criContainer{Metadata: criMetadata{Name: kind}, LogPath: kind + ".log", Mounts: []criMount{}}
	c.Image.Image = image
	sc := &c.Linux.SecurityContext
	sc.NamespaceOptions = hostNetOwnPid
	sc.Capabilities = &struct {
		AddCapabilities []string `json:"add_capabilities"`
	}{AddCapabilities: []string{"SYS_ADMIN"}}
	if seccomp != "" {
		sc.Seccomp = &criSecurityProfile{ProfileType: 2, LocalhostRef: seccomp}
	}
	if apparmor != "" {
		sc.Apparmor = &criSecurityProfile{ProfileType: 2, LocalhostRef: apparmor}
	}
	if st, err := os.Stat(image); err == nil && st.Mode().IsRegular() {
		dir := filepath.Join(b, "crio-mounts")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		hosts := filepath.Join(dir, "hosts")
		if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost "+name+"\n"), 0o644); err != nil {
			return nil, err
		}
		c.Mounts = append(c.Mounts, criMount{ContainerPath: "/etc/hosts", HostPath: hosts})
		if kind == "systemd" {
			for _, m := range []string{"/run", "/run/lock", "/tmp", "/var/log/journal"} {
				d := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(m, "/"), "/", "-"))
				if err := os.MkdirAll(d, 0o755); err != nil {
					return nil, err
				}
				c.Mounts = append(c.Mounts, criMount{ContainerPath: m, HostPath: d})
			}
		}
	}
	return marshal(c)
}

func marshal(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}
