package never

import (
	"testing"

	"github.com/poprelay/poprelay/internal/grant"
)

// FuzzRefuseCanonical: Refuse's allocation-free canonical check agrees
// with grant.CanonicalIP on every input.
func FuzzRefuseCanonical(f *testing.F) {
	for _, s := range []string{"1.2.3.4", "::ffff:1.2.3.4", "2001:db8::1", "2001:DB8::1", "2001:db8:0::1",
		"fe80::1%eth0", "001.2.3.4", "1.2.3.4 ", "", "::", "0.0.0.0", "::ffff:0:1.2.3.4", "1.2.3.4/32"} {
		f.Add(s)
	}
	set := &Set{}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := grant.CanonicalIP(s)
		canonical := err == nil && c == s
		reason, refused := set.Refuse(s)
		notCanonical := refused && reason == "not a canonical IP address"
		if canonical == notCanonical {
			t.Fatalf("%q: CanonicalIP says canonical=%v (%q, %v), Refuse says %q %v", s, canonical, c, err, reason, refused)
		}
	})
}
