package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/hook"
	"github.com/autofs-restore-hook/autofs-restore-hook/test/lab"
)

// Debian 12 as shipped: its kernel (the VM's), runc 1.1.5 and its own CRIU
// 3.17.1 (lab.sh --criu stock), a systemd container.
func TestDebian12StockCRIU(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	bin := hookBinary(t)
	tt.Run("oci-hook", func(tt *testing.T) {
		t := lab.Record(tt)
		logPath, log := ociLog(t)
		c := lab.Up(t, "stock-oci", lab.Systemd, lab.Options{StockCRIU: true, Hook: bin, HookEnv: hookLogEnv(logPath)})
		checkpointRestore(t, c)
		t.Logf("TIMING fixed after restore returned: %v", waitFixed(t, c, 3, log).Round(time.Millisecond))
		systemdWorks(t, c)
		windowEntered(t, c)
		// The same container, checkpointed again and restored by the
		// same CRIU 3.17.1 with the CRIU plugin as the only wiring: its
		// plugin interface has RESUME_DEVICES_LATE, which it calls before
		// it resumes the tasks, as 4.x does.
		if err := c.Wire(lab.Options{}); err != nil {
			t.Fatal(err)
		}
		plog := pluginOnly(t)
		checkpointRestore(t, c)
		pid, err := c.Pid()
		if err != nil {
			t.Fatal(err)
		}
		waitOutcome(t, pid, hook.WiringPlugin)
		systemdWorks(t, c)
		preResumeByPlugin(t, c, plog(), pid)
		if n := strings.Count(log(), "oci hook: restore in progress"); n != 1 {
			t.Errorf("the OCI hook saw %d restores, want 1 (it was unwired for the plugin's):\n%s", n, log())
		}
	})
	// CRIU before 3.19 cannot run an action script from a config file in
	// RPC mode: runc asks for RPC notifications, and CRIU 3.17.1 stops at
	// an internal assertion, at the checkpoint already. The README says
	// so and points to the OCI hook, which works (above).
	tt.Run("action-script-fails-in-criu", func(tt *testing.T) {
		t := lab.Record(tt)
		c := lab.Up(t, "stock-as", lab.Systemd, lab.Options{StockCRIU: true, ActionScript: bin})
		err := c.Checkpoint()
		dump, _ := os.ReadFile(filepath.Join(c.Bundle, "work", "dump.log"))
		if err == nil {
			t.Fatalf("runc checkpoint with an action script under CRIU 3.17.1 worked: the README's matrix is wrong\n%s", tail(string(dump), 10))
		}
		if !strings.Contains(string(dump), "BUG at criu/action-scripts.c") {
			t.Fatalf("runc checkpoint failed (%v), but not at CRIU's action-script assertion:\n%s", err, tail(string(dump), 25))
		}
		t.Logf("as documented: %v\n%s", err, tail(string(dump), 4))
	})
}

// A migration with podman: checkpoint --export into an archive, the
// container removed, restore --import from the archive (podman 4.3.1,
// runc 1.1.5, CRIU 4.1.1), a systemd container run from an image (podman
// 4.3 imports no checkpoint of a container run with --rootfs: "repository
// name must have at least one component").
//
// As podman 4.3 runs it, the import fails inside CRIU before any hook
// runs: "mnt: No mapping for N:(null) mountpoint". podman strips
// /run/.containerenv from the imported spec and, because that spec already
// holds the /run tmpfs of --systemd=always, never mounts it again; runc
// then gives CRIU no key for the bind mount it dumped (podman commit
// "Fix handling of .containenv on tmpfs", in 4.6). With --tmpfs /run at
// run time there is no .containerenv at either end, the import works, and
// the shipped hook (hooks.d, read again for the new container) fixes it.
func TestPodmanMigration(tt *testing.T) {
	t := lab.Record(tt)
	lab.Require(t)
	// One image for both containers: an import costs a minute and more.
	img := lab.PodmanImage(t, "migration", lab.Systemd, lab.Options{})
	tt.Run("import-fails-in-criu", func(tt *testing.T) {
		t := lab.Record(tt)
		log := useShippedHooksJSON(t)
		c := lab.PodmanUp(t, "export", lab.Systemd, lab.Options{Image: img})
		archive := filepath.Join(t.TempDir(), "checkpoint.tar.gz")
		timed(t, "checkpoint --export "+c.Name, func() error { return c.CheckpointExport(archive) })
		err := c.RestoreImport(archive)
		if err == nil {
			t.Fatalf("podman restore --import worked without --tmpfs /run: update the README's matrix (hook log:\n%s)", log())
		}
		b, _ := os.ReadFile(filepath.Join(c.Bundle, "log", "restore.log"))
		criuLog, _ := os.ReadFile(filepath.Join(c.Bundle, "log", "criu-restore.log"))
		if !strings.Contains(string(b), "criu failed") || !strings.Contains(string(criuLog), "No mapping for") {
			t.Fatalf("podman restore --import failed (%v), but not as documented:\n%s\nCRIU's log:\n%s", err, b, tail(string(criuLog), 25))
		}
		if l := log(); l != "" {
			t.Errorf("the hook ran although CRIU failed first:\n%s", l)
		}
		t.Logf("as documented: %s", grepLines(string(criuLog), "No mapping for"))
	})
	tt.Run("tmpfs-run", func(tt *testing.T) {
		t := lab.Record(tt)
		log := useShippedHooksJSON(t)
		c := lab.PodmanUp(t, "migrate", lab.Systemd, lab.Options{Image: img, TmpfsRun: true})
		archive := filepath.Join(t.TempDir(), "checkpoint.tar.gz")
		timed(t, "checkpoint --export "+c.Name, func() error { return c.CheckpointExport(archive) })
		timed(t, "restore --import "+c.Name, func() error { return c.RestoreImport(archive) })
		t.Logf("TIMING fixed after restore returned: %v", waitFixed(t, c, 3, log).Round(time.Millisecond))
		systemdWorks(t, c)
		windowEntered(t, c)
	})
}
