package hook

import (
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
		{"bad status", `{"id":"c","status":"paused","pid":1}`, `unknown status "paused"`, 0},
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
	tests := []struct {
		status specs.ContainerState
		pid    int
		ev     Evidence
		want   Verdict
		err    bool
	}{
		{specs.StateStopped, 42, Evidence{}, FollowRestore, false},
		{specs.StateStopped, 0, Evidence{}, Ignore, false},
		{specs.StateCreating, 42, restored, Ignore, false},
		{specs.StateCreated, 42, restored, Ignore, false},
		{specs.StateRunning, 42, Evidence{}, Ignore, false},
		{specs.StateRunning, 42, restored, FixNow, false},
		{specs.StateRunning, 42, Evidence{Traced: true}, FixNow, false},
		{specs.StateRunning, 42, Evidence{Forced: true}, FixNow, false},
		{specs.StateRunning, 0, restored, Ignore, true},
		{"paused", 42, restored, Ignore, true},
	}
	for _, tt := range tests {
		got, err := Decide(&specs.State{ID: "c", Status: tt.status, Pid: tt.pid}, tt.ev)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("Decide(%s, pid %d, %+v) = %v, %v; want %v, err %v", tt.status, tt.pid, tt.ev, got, err, tt.want, tt.err)
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
		if _, err := Decide(st, Evidence{}); err != nil && st.Status != "running" {
			t.Fatalf("Decide failed on accepted state %+v: %v", st, err)
		}
	})
}
