package mounts

// The few internals the staging tests reach, in one place (the attack
// tests were also run against the code before the host record, through
// a file like this one written for that code).

import (
	"encoding/json"

	"golang.org/x/sys/unix"
)

// testRecorder keeps the staging events as the hook's state file does.
type testRecorder struct {
	rec    *StagingRecord
	events []StagingEvent
	// check runs on each event before it is kept; an error refuses it.
	check func(StagingEvent) error
}

func (r *testRecorder) record(ev StagingEvent) error {
	if r.check != nil {
		if err := r.check(ev); err != nil {
			return err
		}
	}
	raw, _ := json.Marshal(ev)
	next, err := ApplyStagingEvent(r.rec, raw)
	if err != nil {
		return err
	}
	r.rec = next
	r.events = append(r.events, ev)
	return nil
}

func shimOpen(base string, r *testRecorder) (*Staging, error) { return openStagingAt(base, r.record) }

func shimMountID(s *Staging) int { return s.mntID }

func shimStage(s *Staging, top int, where string) (string, error) { return s.stage(top, where) }

func shimMoveBack(s *Staging, t *Table, name string, dst int) error {
	src, err := s.openStaged(t, name)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	return s.moveBack(src, dst, name)
}

// shimRecover adopts the recorded staging area as a later run does and
// returns its mount id and the entries it would move back.
func shimRecover(t *Table, base string, r *testRecorder) (int, map[string]string, error) {
	s, err := recoverStaging(t, r.rec, r.record)
	if s == nil {
		return 0, nil, err
	}
	defer unix.Close(s.root)
	out := map[string]string{}
	for dir, where := range s.entries {
		if fd, err := s.openStaged(t, dir); err == nil {
			unix.Close(fd)
			out[dir] = where
		}
	}
	return s.mntID, out, nil
}

// shimKilled drops what a killed run loses: its fds.
func shimKilled(s *Staging) { unix.Close(s.root) }
