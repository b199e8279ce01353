package mounts

import (
	"strings"
	"testing"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		in   string
		want Options
		err  string
	}{
		{"rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=12345",
			Options{FD: 5, PGrp: 1, MinProto: 5, MaxProto: 5, Mode: ModeDirect, PipeIno: 12345}, ""},
		{"rw,fd=27,pgrp=24477,timeout=300,minproto=5,maxproto=5,indirect,pipe_ino=40569,strictexpire",
			Options{FD: 27, PGrp: 24477, Timeout: 300, MinProto: 5, MaxProto: 5, Mode: ModeIndirect, PipeIno: 40569, StrictExpire: true}, ""},
		{"rw,fd=7,pgrp=3,timeout=0,minproto=5,maxproto=5,offset,pipe_ino=9",
			Options{FD: 7, PGrp: 3, MinProto: 5, MaxProto: 5, Mode: ModeOffset, PipeIno: 9}, ""},
		// Catatonic, as the kernel prints it (seen on 6.18).
		{"rw,fd=-1,pgrp=25871,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=-1",
			Options{FD: -1, PGrp: 25871, MinProto: 5, MaxProto: 5, Mode: ModeDirect}, ""},
		// Older kernels print neither the mode nor pipe_ino.
		{"rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5", Options{FD: 5, PGrp: 1, MinProto: 5, MaxProto: 5}, ""},
		{"rw,fd=5,pgrp=1,ignore,x-unknown=3,direct", Options{FD: 5, PGrp: 1, Mode: ModeDirect, Ignore: true}, ""},
		{"rw,pgrp=1,direct", Options{}, "no fd= option"},
		{"", Options{}, "no fd= option"},
		{"fd=x,pgrp=1", Options{}, `"fd": bad number "x"`},
		{"fd=1,pgrp=99999999999999999999", Options{}, `"pgrp": bad number`},
		{"fd=1,pipe_ino=-2", Options{}, `"pipe_ino": bad number "-2"`},
	}
	for _, tt := range tests {
		got, err := ParseOptions(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseOptions(%q) err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseOptions(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestModeCachesDevice(t *testing.T) {
	for m, want := range map[Mode]bool{ModeDirect: true, ModeOffset: true, ModeIndirect: false, ModeUnknown: false} {
		if m.CachesDevice() != want {
			t.Errorf("%s.CachesDevice() = %v", m, !want)
		}
	}
}

func FuzzParseOptions(f *testing.F) {
	f.Add("rw,fd=5,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=12345")
	f.Add("rw,fd=-1,pgrp=2,pipe_ino=-1,offset")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOptions(s)
		if err == nil && !strings.Contains(s, "fd=") {
			t.Fatalf("accepted options without fd=: %q -> %+v", s, o)
		}
	})
}
