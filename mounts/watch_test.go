package mounts

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTableWatchWakesOnMount: a wait ends when a mount changes the
// namespace, not at its timeout; a mount made between a Read and the next
// Wait ends that Wait at once, every time; a mark is reported once; with
// no change the wait times out. Opened with os.OpenFile, the file sat in
// the Go runtime's epoll, which took the marks: the waiter then woke
// after one to five mounts and 0 to 20 of 20 later mounts were seen.
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
		defer unix.Unmount(dir, unix.MNT_DETACH) // the namespace dies with the thread anyway
		mount := func(i int) {
			t.Helper()
			if err := unix.Mount("arh-watch", dir, "tmpfs", 0, ""); err != nil {
				t.Fatalf("mount %d: %v", i, err)
			}
		}
		woke := make(chan bool, 1)
		go func() {
			changed, err := w.Wait(time.Minute)
			if err != nil {
				t.Errorf("Wait: %v", err)
			}
			woke <- changed
		}()
		time.Sleep(20 * time.Millisecond) // let the waiter sleep first
		mount(0)
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
		if changed, _ := w.Wait(0); changed {
			t.Fatalf("Wait reported the same mount twice")
		}
		start := time.Now()
		if changed, err := w.Wait(-time.Hour); err != nil || changed || time.Since(start) > 10*time.Second {
			t.Fatalf("Wait with a deadline past = %v, %v after %v; want false, nil at once", changed, err, time.Since(start))
		}
		for i := 1; i <= 20; i++ {
			mount(i)
			if changed, err := w.Wait(0); err != nil || !changed {
				t.Fatalf("mount %d after a Read: Wait(0) = %v, %v; want true, nil", i, changed, err)
			}
			if _, err := w.Read(); err != nil {
				t.Fatalf("Read: %v", err)
			}
		}
	})
}

func TestBackoff(t *testing.T) {
	ms := time.Millisecond
	b := Backoff{Min: 10 * ms, Max: 250 * ms}
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		after, want time.Duration
	}{
		{0, 10 * ms},        // the first wait starts the time
		{100 * ms, 10 * ms}, // a 16th is under Min
		{800 * ms, 50 * ms}, // a 16th
		{2 * time.Second, 125 * ms},
		{time.Minute, 250 * ms}, // at most Max
	} {
		if got := b.next(t0.Add(tc.after)); got != tc.want {
			t.Errorf("%v after the first wait: next = %v, want %v", tc.after, got, tc.want)
		}
	}
	b.Reset()
	if got := b.next(t0.Add(2 * time.Minute)); got != 10*ms {
		t.Errorf("after Reset: next = %v, want %v", got, 10*ms)
	}
	if got := b.next(t0.Add(2*time.Minute + 1600*ms)); got != 100*ms {
		t.Errorf("1.6s after Reset: next = %v, want %v", got, 100*ms)
	}
}
