package units

// The respawned daemon's LSM label: the old daemon's AppArmor profile or
// SELinux context, set for the exec that starts the new one.

import (
	"fmt"
	"strings"

	"github.com/autofs-restore-hook/autofs-restore-hook/internal/door"
)

// setExecLabel makes the next exec of the calling thread, and of a child
// forked from it, run under the old daemon's label: it writes the
// thread's own attr/exec (door.WriteSelfProc: the container stage, born
// in the container, holds no fd of the host's /proc, and reaches its own
// files through the container's procfs with no symlink, magic link or
// mount crossed below /proc). Nothing to do where the kernel gave the
// daemon no label, or where the thread has that label already. The new
// daemon's label is compared with the old one's after the start
// (verifySame), so a transition the kernel did not make is caught there.
func setExecLabel(d *Daemon) error {
	if d.LSMLabel == "" {
		return nil
	}
	own, err := door.ReadSelfProc("thread-self/attr/current")
	if err != nil {
		return fmt.Errorf("read our own LSM label: %w", err)
	}
	if strings.TrimRight(own, "\n\x00") == d.LSMLabel {
		return nil
	}
	file, value := "thread-self/attr/exec", d.LSMLabel
	if d.AppArmor {
		profile := appArmorProfile(d.LSMLabel)
		if profile == "unconfined" {
			return fmt.Errorf("the daemon ran unconfined and the hook runs under AppArmor profile %q: it cannot start it unconfined", own)
		}
		file, value = "thread-self/attr/apparmor/exec", "exec "+profile
	}
	if err := door.WriteSelfProc(file, value); err != nil {
		return fmt.Errorf("set the LSM label %q for the new daemon's exec: %w", d.LSMLabel, err)
	}
	return nil
}

// appArmorProfile is the profile of an AppArmor label as attr/current
// shows it: the name without its mode ("name (enforce)"); "unconfined"
// has none.
func appArmorProfile(label string) string {
	if i := strings.LastIndex(label, " ("); i > 0 && strings.HasSuffix(label, ")") {
		return label[:i]
	}
	return label
}
