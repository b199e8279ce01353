module github.com/autofs-restore-hook/autofs-restore-hook

go 1.26.8

require (
	github.com/godbus/dbus/v5 v5.2.4
	github.com/moby/sys/mountinfo v0.7.3
	github.com/opencontainers/runtime-spec v1.3.0
	github.com/sirupsen/logrus v1.10.2
	golang.org/x/sys v0.50.0
)

require gopkg.in/yaml.v3 v3.0.1
