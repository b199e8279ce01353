package door

import "testing"

func TestRun(t *testing.T) {
	register("__test-role", func(args []string) int { return len(args) })
	if code, ok := Run([]string{"__test-role", "a", "b"}); !ok || code != 2 {
		t.Fatalf("Run = %d, %v; want 2, true", code, ok)
	}
	for _, args := range [][]string{nil, {"fix"}, {"__unknown"}} {
		if _, ok := Run(args); ok {
			t.Errorf("Run(%q) ran a role", args)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("a role registered twice did not panic")
		}
	}()
	register("__test-role", func([]string) int { return 0 })
}

func TestRegisterRefusesNameWithoutPrefix(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("a role named without RolePrefix did not panic")
		}
	}()
	register("fix", func([]string) int { return 0 })
}
