//go:build failpoints

package failpoint

import (
	"errors"
	"os"
	"time"
)

// Pause blocks for up to five minutes when Env selects name, after saying
// so through logf: the test kills the hook meanwhile.
func Pause(name string, logf func(string)) {
	if os.Getenv(Env) != name {
		return
	}
	logf("failpoint " + name + ": paused")
	time.Sleep(5 * time.Minute)
}

// Environ passes the selected pause point on to a child process.
func Environ() []string {
	if v, ok := os.LookupEnv(Env); ok {
		return []string{Env + "=" + v}
	}
	return nil
}

// Err returns an injected error when Env selects name.
func Err(name string) error {
	if os.Getenv(Env) != name {
		return nil
	}
	return errors.New("failpoint " + name + ": injected failure")
}

// Delay makes a step slow, as on a loaded node: it sleeps d when Env
// selects name, after saying so through logf.
func Delay(name string, d time.Duration, logf func(string)) {
	if os.Getenv(Env) != name {
		return
	}
	logf("failpoint " + name + ": delayed " + d.String())
	time.Sleep(d)
}

// Handshake holds a step for a test that acts at that very point: when
// Env selects name, it creates the file path (in the calling thread's
// root) and waits until the test removes it, one minute at most.
func Handshake(name, path string, logf func(string)) {
	if os.Getenv(Env) != name {
		return
	}
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		logf("failpoint " + name + ": " + err.Error())
		return
	}
	logf("failpoint " + name + ": waiting for the removal of " + path)
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Lstat(path); err != nil {
			return
		}
	}
}
