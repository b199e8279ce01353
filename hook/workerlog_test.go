package hook

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/sirupsen/logrus"
)

// A child's warning is logged at warning level with its fields, which
// never replace the line's own (the container's identity, the mode).
func TestWorkerLogKeepsLevelAndFields(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.Out, l.Formatter = &buf, &logrus.JSONFormatter{}
	entry := l.WithFields(logrus.Fields{"container": "abc", "mode": "criu"})
	workerLog(entry).Warn("could not make the old mount catatonic", "mount", "/srv/a", "container", "forged")
	var got map[string]string
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v: %q", err, buf.String())
	}
	if got["level"] != "warning" || got["msg"] != "could not make the old mount catatonic" || got["mount"] != "/srv/a" || got["container"] != "abc" || got["mode"] != "criu" {
		t.Errorf("logged %v", got)
	}
}
