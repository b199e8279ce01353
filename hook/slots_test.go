package hook

import (
	"errors"
	"testing"
	"time"
)

// Two slots: two runs take them at once, a third waits for one to be
// given back, and one that never gets one gives up after its wait (and
// then goes on without: errNoSlot is no failure of the run).
func TestNodeSlots(t *testing.T) {
	StateDir = t.TempDir()
	r1, w1, err1 := takeSlot(2, time.Second)
	r2, w2, err2 := takeSlot(2, time.Second)
	if err1 != nil || err2 != nil || w1 > 100*time.Millisecond || w2 > 100*time.Millisecond {
		t.Fatalf("two free slots: %v after %v, %v after %v", err1, w1, err2, w2)
	}
	_, waited, err := takeSlot(2, 300*time.Millisecond)
	if !errors.Is(err, errNoSlot) || waited < 300*time.Millisecond {
		t.Fatalf("both slots taken: %v after %v, want errNoSlot after 300ms", err, waited)
	}
	time.AfterFunc(200*time.Millisecond, r1)
	r3, waited, err := takeSlot(2, 5*time.Second)
	if err != nil || waited < 150*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("a slot given back after 200ms: %v after %v", err, waited)
	}
	r2()
	r3()
	// All given back: every slot is free again.
	for i := 0; i < 2; i++ {
		r, w, err := takeSlot(2, 0)
		if err != nil || w > 100*time.Millisecond {
			t.Fatalf("slot %d after all were given back: %v after %v", i, err, w)
		}
		defer r()
	}
}
