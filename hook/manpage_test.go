package hook

import (
	"strings"
	"testing"
)

// The manual page carries the CLI's synopsis whole, and no line of text
// can be taken by roff for a request.
func TestManPageFromTheHelp(t *testing.T) {
	var b strings.Builder
	if err := WriteManPage(&b); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	if !strings.HasPrefix(page, ".TH AUTOFS\\-RESTORE\\-HOOK 8 ") {
		t.Fatalf("no .TH header:\n%s", page)
	}
	_, help, _ := strings.Cut(usageHead, "\nUsage:\n")
	help, _, _ = strings.Cut(help, "\nOptions")
	for _, l := range strings.Split(strings.Trim(help, "\n"), "\n") {
		if !strings.Contains(page, roffEscape(l)+"\n") {
			t.Errorf("the page lacks the help line %q", l)
		}
	}
	macros := map[string]bool{".TH": true, ".SH": true, ".nf": true, ".fi": true, ".PP": true, ".TP": true, ".br": true}
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			if m, _, _ := strings.Cut(l, " "); !macros[m] {
				t.Errorf("a text line roff reads as a request: %q", l)
			}
		}
	}
	if got := roffEscape(".x 'y\n'z a-b c\\d"); got != `\&.x 'y`+"\n"+`\&'z a\-b c\ed` {
		t.Errorf("roffEscape: %q", got)
	}
}
