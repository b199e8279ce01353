package hook

import (
	"errors"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestReadState(t *testing.T) {
	tests := []struct {
		name, in, err string
		pid           int
	}{
		{"restore", `{"ociVersion":"1.0.2","id":"c1","status":"stopped","pid":42,"bundle":"/b"}`, "", 42},
		{"create", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":7,"bundle":"/b"}`, "", 7},
		{"empty", ``, "no state on stdin", 0},
		{"blank", " \n\t", "no state on stdin", 0},
		{"not json", `hello`, "not valid JSON", 0},
		{"trailing", `{"id":"c","status":"running","pid":1} {}`, "trailing data", 0},
		{"no id", `{"status":"running","pid":1}`, "no container id", 0},
		{"no status", `{"id":"c","pid":1}`, "no status", 0},
		// A status this hook does not know is a valid state (Decide ignores it).
		{"unknown status", `{"id":"c","status":"paused","pid":1}`, "", 1},
		{"negative pid", `{"id":"c","status":"running","pid":-4}`, "negative pid", 0},
		{"pid string", `{"id":"c","status":"running","pid":"12"}`, "not valid JSON", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ReadState(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want containing %q", err, tt.err)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.Pid != tt.pid {
				t.Fatalf("pid = %d, want %d", st.Pid, tt.pid)
			}
		})
	}
}

func TestReadStateTooLarge(t *testing.T) {
	big := `{"id":"c","status":"running","pid":1,"annotations":{"x":"` + strings.Repeat("a", MaxStateSize) + `"}}`
	r := &countingReader{r: strings.NewReader(big + strings.Repeat(" ", 10<<20))}
	_, err := ReadState(r)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
	if r.n > MaxStateSize+64<<10 {
		t.Fatalf("read %d bytes, want at most about %d", r.n, MaxStateSize)
	}
}

type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestDecide(t *testing.T) {
	restored := Evidence{OwnTimeNS: true}
	refused := errors.New("refused")
	tests := []struct {
		status specs.ContainerState
		pid    int
		ev     Evidence
		evErr  error
		want   Verdict
		err    bool
		asked  bool // whether the evidence is asked for
	}{
		{specs.StateStopped, 42, Evidence{}, nil, FollowRestore, false, false},
		{specs.StateStopped, 0, Evidence{}, nil, Ignore, false, false},
		{specs.StateCreating, 42, restored, nil, Ignore, false, false},
		{specs.StateCreating, 42, Evidence{}, refused, Ignore, false, false},
		{specs.StateCreated, 42, restored, nil, Ignore, false, false},
		{specs.StateCreated, 42, Evidence{}, refused, Ignore, false, false},
		{specs.StateRunning, 42, Evidence{}, nil, Ignore, false, true},
		{specs.StateRunning, 42, restored, nil, FixNow, false, true},
		{specs.StateRunning, 42, Evidence{Traced: true}, nil, FixNow, false, true},
		{specs.StateRunning, 42, Evidence{Forced: true}, nil, FixNow, false, true},
		{specs.StateRunning, 42, restored, refused, Ignore, true, true},
		{specs.StateRunning, 0, restored, nil, Ignore, true, false},
		{"paused", 42, restored, nil, Ignore, true, false},
	}
	for _, tt := range tests {
		asked := false
		got, err := Decide(&specs.State{ID: "c", Status: tt.status, Pid: tt.pid}, func() (Evidence, error) {
			asked = true
			return tt.ev, tt.evErr
		})
		if got != tt.want || (err != nil) != tt.err || asked != tt.asked {
			t.Errorf("Decide(%s, pid %d, %+v, %v) = %v, %v, evidence asked %v; want %v, err %v, asked %v", tt.status, tt.pid, tt.ev, tt.evErr, got, err, asked, tt.want, tt.err, tt.asked)
		}
	}
}

func FuzzReadState(f *testing.F) {
	f.Add(`{"ociVersion":"1.0.2","id":"c1","status":"stopped","pid":42,"bundle":"/b"}`)
	f.Add(`{"id":"c","status":"creating","pid":0}`)
	f.Add(`{"id":"c","status":"running","pid":1,"annotations":{"a":"b"}}`)
	f.Add(``)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, in string) {
		st, err := ReadState(strings.NewReader(in))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if st.ID == "" || st.Pid < 0 {
			t.Fatalf("accepted invalid state %+v", st)
		}
		known := st.Status == "running" || st.Status == "stopped" || st.Status == "creating" || st.Status == "created"
		if _, err := Decide(st, func() (Evidence, error) { return Evidence{}, nil }); err != nil && known && st.Status != "running" {
			t.Fatalf("Decide failed on accepted state %+v: %v", st, err)
		}
	})
}
