package hook

// The runtime-spec state an OCI hook reads, and the verdict on whether to
// act: restore, fresh start, or refusal.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// MaxStateSize bounds the state JSON read from stdin. Real states are a
// few hundred bytes plus the annotations; the hook never reads more than
// this into memory.
const MaxStateSize = 1 << 20

// ReadState reads and validates the runtime-spec state a runtime writes
// to a hook's stdin.
func ReadState(r io.Reader) (*specs.State, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read state from stdin: %w", err)
	}
	if len(b) > MaxStateSize {
		return nil, fmt.Errorf("state on stdin is larger than %d bytes", MaxStateSize)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("no state on stdin (is this running as an OCI hook?)")
	}
	var st specs.State
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("state on stdin is not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("state on stdin has trailing data after the JSON object")
	}
	if st.ID == "" {
		return nil, errors.New("state on stdin has no container id")
	}
	// A status this hook does not know (a newer runtime-spec's) is not
	// a broken runtime: Decide ignores it.
	if st.Status == "" {
		return nil, errors.New("state on stdin has no status")
	}
	if st.Pid < 0 {
		return nil, fmt.Errorf("state on stdin has a negative pid %d", st.Pid)
	}
	return &st, nil
}

// Verdict is what the OCI hook decides to do for one invocation.
type Verdict int

const (
	// Ignore: nothing to do (a fresh start, or no evidence of a restore).
	Ignore Verdict = iota
	// FollowRestore: a restore is in progress; a detached worker follows
	// it and fixes the container once its tasks are restored.
	FollowRestore
	// FixNow: the container was restored and runs; fix it now.
	FixNow
)

func (v Verdict) String() string {
	switch v {
	case FollowRestore:
		return "follow-restore"
	case FixNow:
		return "fix-now"
	}
	return "ignore"
}

// Evidence is what the host tells about the container's process.
type Evidence struct {
	// OwnTimeNS is set when the process sits in a time namespace other
	// than the host's: CRIU restores tasks into a new one.
	OwnTimeNS bool
	// Traced is set while CRIU still holds the tasks: their tracer is a
	// process named criu of the host's pid namespace (any other tracer
	// does not count).
	Traced bool
	// Forced is set by the operator (--assume-restored).
	Forced bool
}

// Restored tells whether the evidence shows a restore.
func (e Evidence) Restored() bool { return e.OwnTimeNS || e.Traced || e.Forced }

// Decide applies the restore-detection rules to one OCI hook call, on
// the state alone wherever it can, so that a container that is not being
// restored is never looked at:
//   - "creating"/"created": a fresh create, nothing to do, whatever the
//     container's namespaces, pid or privileges;
//   - "stopped" without a pid: poststop, nothing to do;
//   - "stopped" with a pid (runc's prestart/createRuntime on restore):
//     a restore is in progress;
//   - "running" (poststart of runtimes that call it after a restore):
//     act only with evidence of a restore, which only then is asked for
//     (evidence may refuse the container: a host pid namespace, say);
//   - any other status: nothing this hook knows, nothing to do.
//
// A non-nil error says why a call that is not a plain Ignore is ignored
// all the same: the OCI hook logs it and lets the container go on.
func Decide(st *specs.State, evidence func() (Evidence, error)) (Verdict, error) {
	switch st.Status {
	case specs.StateCreating, specs.StateCreated:
		return Ignore, nil
	case specs.StateStopped:
		if st.Pid == 0 {
			return Ignore, nil
		}
		return FollowRestore, nil
	case specs.StateRunning:
		if st.Pid == 0 {
			return Ignore, errors.New("state says running but has no pid")
		}
		ev, err := evidence()
		if err != nil {
			return Ignore, err
		}
		if ev.Restored() {
			return FixNow, nil
		}
		return Ignore, nil
	}
	return Ignore, fmt.Errorf("unknown status %q: not a restore this hook knows", st.Status)
}
