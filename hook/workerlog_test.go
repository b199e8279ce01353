package hook

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/sirupsen/logrus"
)

// A child's warning is logged at warning level with its fields, which
// never stand for the run's own: the container's identity and the mode,
// which the logger adds to a line only where it has none.
func TestWorkerLogKeepsLevelAndFields(t *testing.T) {
	var buf bytes.Buffer
	l, done, err := openLog(LogConfig{NoSyslog: true, Format: "json"}, &buf, logrus.Fields{"mode": "criu"}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	setIdentity(l, Identity{ID: "abc", Name: "web"})
	workerLog(l.WithField("phase", "post-resume")).Warn("could not make the old mount catatonic", "mount", "/srv/a",
		"container", "forged", "name", "forged", "mode", "forged", "wiring", "forged", "phase", "forged")
	var got map[string]string
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v: %q", err, buf.String())
	}
	want := map[string]string{"level": "warning", "msg": "could not make the old mount catatonic", "mount": "/srv/a",
		"container": "abc", "name": "web", "mode": "criu", "phase": "post-resume"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (line %v)", k, got[k], v, got)
		}
	}
	if _, ok := got["wiring"]; ok {
		t.Errorf("a child's wiring field was logged: %v", got)
	}
}
