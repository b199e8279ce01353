package hook

import (
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/autofs-restore-hook/autofs-restore-hook/mounts"
	"github.com/autofs-restore-hook/autofs-restore-hook/units"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite hook/testdata/state.golden.json")

// fullRecord sets every field of the state file, nested ones included.
func fullRecord() record {
	at := time.Date(2026, 12, 2, 4, 5, 6, 0, time.UTC)
	secbits := uint32(0x24)
	d := &units.Daemon{Argv: []string{"/usr/sbin/automount", "-f"}, Env: []string{"PATH=/usr/bin"},
		UID: []uint32{1, 1, 1, 1}, GID: []uint32{2, 2, 2, 2}, Groups: []uint32{3},
		CapInh: 1, CapPrm: 2, CapEff: 3, CapBnd: 4, CapAmb: 5, NoNewPriv: true, Seccomp: 1,
		Cgroups: []string{"0::/lab"}, Stdio: [3]string{"/dev/null", "/run/automount.log", "/run/automount.log"},
		NsPid: 7, Exe: "/usr/sbin/automount", Cwd: "/",
		SeccompFilterCount: 1, SeccompFilters: []units.SeccompFilter{{Insns: [][4]uint32{{6, 0, 0, 0x7fff0000}}, Log: true}},
		Rlimits: [][2]uint64{{1024, 2048}}, OOMScoreAdj: 500, Umask: 0o27, Personality: 8,
		LSMLabel: "containers-default-0.50.0 (enforce)", AppArmor: true, Securebits: &secbits}
	return record{
		Pid: 4242, StartTime: 99,
		Prepared:   []preparedMount{{Mountpoint: "/srv/a", Dev: 44, Kind: "systemd", MasterPid: 4242, Unit: "srv-a.automount"}},
		PreResume:  &phaseMark{At: at, Wiring: WiringPlugin},
		PostResume: &phaseMark{At: at.Add(time.Second), Wiring: WiringPlugin},
		Fixed:      []uint64{45}, Restored: []uint64{44},
		LastErrors: []string{"post-resume: automount 7: exited at once"},
		Respawns: []units.Pending{{OldPid: 4250, Daemon: d, Targets: []mounts.Target{{Where: "/srv/direct1", Dev: 46}},
			NS: map[string]uint64{"mnt": 4026531840}, Root: units.FileID{Dev: 1, Ino: 2}, Cwd: units.FileID{Dev: 1, Ino: 2}, Exe: units.FileID{Dev: 1, Ino: 3}}},
		Staging: &mounts.StagingRecord{MountID: 1234, MountIDUnique: 0x100000000abc, Base: "/run/.autofs-restore-hook", CreatedBase: true,
			Entries: []mounts.StagedEntry{{Dir: "1", Where: "/srv/a"}}},
		Container: Identity{ID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Name: "web"},
		LastFix: &Outcome{
			PreResume: &PhaseOutcome{Wiring: WiringOCI, Mode: "follow", Began: at, Took: Millis(1500 * time.Microsecond),
				Fixed: []string{"/srv/a"}, Refused: []MountNote{{"/srv/x", "unknown master (pid 9)"}}, Left: []MountNote{{"/srv/b", "make catatonic: EBUSY"}}, Errors: []string{"pre-resume /srv/b: EBUSY"},
				FixedMore: 1, RefusedMore: 2, LeftMore: 3, Preserved: []string{"/srv/a"}},
			PostResume: &PhaseOutcome{Wiring: WiringOCI, Mode: "follow", Began: at.Add(time.Second), Took: Millis(2 * time.Second), Fixed: []string{"/srv/a"},
				Refused: []MountNote{{"/srv/x", "unknown master (pid 9)"}}, Left: []MountNote{{"/srv/b", "restart srv-b.automount: timeout"}}, Errors: []string{"post-resume /srv/b (srv-b.automount): timeout"},
				FixedMore: 4, RefusedMore: 5, LeftMore: 6, Preserved: []string{"/srv/a"}},
			Follower: &FollowerReport{CPU: Millis(120 * time.Millisecond), Following: Millis(20 * time.Millisecond), PreResume: Millis(10 * time.Millisecond), PostResume: Millis(90 * time.Millisecond),
				Polls: 300, Inspections: 2, NamedPolls: 250, Window: "caught", Ended: "fixed"},
		},
	}
}

// The state file's JSON is a format: a hook upgraded while a container
// has a state file (a pending respawn, say) reads what the older one
// wrote. Any change to it shows here first; a field renamed or dropped
// needs a reader for the old name.
func TestStateFileGolden(t *testing.T) {
	if empty := zeroFields(reflect.ValueOf(fullRecord()), "record"); len(empty) > 0 {
		t.Fatalf("fullRecord leaves fields unset, so the golden file does not pin them: %v", empty)
	}
	got, err := json.MarshalIndent(fullRecord(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const golden = "testdata/state.golden.json"
	if *updateGolden {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./hook -run TestStateFileGolden -update-golden writes it)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("the state file's JSON changed:\n--- got\n%s\n--- %s\n%s", got, golden, want)
	}
	var back record
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.MarshalIndent(back, "", "  ")
	if string(append(again, '\n')) != string(want) {
		t.Fatal("the golden file does not read back into the same record")
	}
}

// zeroFields lists the fields of v (structs, pointers, slices' elements
// and maps' values, recursively) that hold their zero value.
func zeroFields(v reflect.Value, name string) []string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return []string{name}
		}
		return zeroFields(v.Elem(), name)
	case reflect.Struct:
		var out []string
		for i := 0; i < v.NumField(); i++ {
			if f := v.Type().Field(i); f.IsExported() {
				out = append(out, zeroFields(v.Field(i), name+"."+f.Name)...)
			}
		}
		return out
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			return []string{name}
		}
		if v.Kind() == reflect.Slice {
			return zeroFields(v.Index(0), name+"[0]")
		}
		return zeroFields(v.MapIndex(v.MapKeys()[0]), name+"[k]")
	}
	if v.IsZero() {
		return []string{name}
	}
	return nil
}
