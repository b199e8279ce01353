package mounts

// Text a container chose (paths, unit and process names, errors), made
// printable on one log line or status row.

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// NotText reports the runes that are not printable text and that a
// container could use to forge or hide what an operator reads: C0
// controls and DEL (a newline starts a fake log line, ESC a terminal
// sequence), C1 controls (0x80-0x9f; CSI among them), format characters
// (bidi overrides and isolates that reorder what a terminal shows,
// zero-width characters), line and paragraph separators, and any other
// rune that is not graphic (private use, unassigned). Spaces are text.
func NotText(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || (r != ' ' && !unicode.IsGraphic(r))
}

// EscapeText writes every byte of each rune of s that is not printable
// text (NotText), and every byte that is not valid UTF-8, as \ooo. It
// runs in one pass over s.
func EscapeText(s string) string { return escapeRunes(s, NotText) }

// Escape makes a path printable on one log line: what is not printable
// text (EscapeText), backslashes and spaces are written as octal escapes,
// as mountinfo does.
func Escape(p string) string {
	return escapeRunes(p, func(r rune) bool { return r == ' ' || r == '\\' || NotText(r) })
}

func escapeRunes(s string, esc func(rune) bool) string {
	clean := true
	for i := 0; i < len(s) && clean; {
		r, n := utf8.DecodeRuneInString(s[i:])
		clean = !(r == utf8.RuneError && n == 1) && !esc(r)
		i += n
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || esc(r) {
			for k := i; k < i+n; k++ {
				fmt.Fprintf(&b, "\\%03o", s[k])
			}
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
