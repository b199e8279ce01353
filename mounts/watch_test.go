package mounts

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTableWatchWakesOnMount: a wait ends when a mount changes the
// namespace, not at its timeout; a change made before the wait is not
// lost; with no change the wait times out.
func TestTableWatchWakesOnMount(t *testing.T) {
	inPrivateMountNS(t, func() {
		w, err := WatchTable(unix.Gettid())
		if err != nil {
			t.Fatalf("WatchTable: %v", err)
		}
		defer w.Close()
		if changed, err := w.Wait(50 * time.Millisecond); err != nil || changed {
			t.Fatalf("Wait with no change = %v, %v; want false, nil", changed, err)
		}
		dir := t.TempDir()
		woke := make(chan bool, 1)
		go func() {
			changed, err := w.Wait(time.Minute)
			if err != nil {
				t.Errorf("Wait: %v", err)
			}
			woke <- changed
		}()
		time.Sleep(20 * time.Millisecond) // let the waiter sleep first
		if err := unix.Mount("arh-watch", dir, "tmpfs", 0, ""); err != nil {
			t.Fatalf("mount: %v", err)
		}
		defer unix.Unmount(dir, unix.MNT_DETACH) // both mounts: the namespace dies with the thread anyway
		select {
		case changed := <-woke:
			if !changed {
				t.Fatalf("Wait ended without a change")
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("Wait did not end when a filesystem was mounted")
		}
		tab, err := w.Read()
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		found := false
		for _, m := range tab.All {
			found = found || (m.Mountpoint == dir && m.Source == "arh-watch")
		}
		if !found {
			t.Fatalf("Read after the wait does not show the tmpfs at %s", dir)
		}
		// The change was consumed; a mount made before the next wait
		// ends it at once. (Unmounts are not waited for: some kernels,
		// 6.18 among them, do not mark the file for an unmount.)
		if changed, _ := w.Wait(0); changed {
			t.Fatalf("Wait saw the same change twice")
		}
		if err := unix.Mount("arh-watch-2", dir, "tmpfs", 0, ""); err != nil {
			t.Fatalf("mount: %v", err)
		}
		if changed, err := w.Wait(0); err != nil || !changed {
			t.Fatalf("Wait after a second mount = %v, %v; want true, nil", changed, err)
		}
	})
}
