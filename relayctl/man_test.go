package main

import (
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/relayctl.8")

// TestManPage keeps docs/relayctl.8 generated from the help strings.
func TestManPage(t *testing.T) {
	const path = "../docs/relayctl.8"
	want := manPage()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("docs/relayctl.8 is stale: run go test ./relayctl -update")
	}
	for _, c := range commands {
		own, common := c.flagLines()
		for _, l := range append(own, common...) {
			name, _, _ := strings.Cut(strings.TrimLeft(l, "-"), " ")
			if !strings.Contains(want, `\-`+strings.ReplaceAll(name, "-", `\-`)) {
				t.Errorf("the man page lacks %s's flag %s", c.name, name)
			}
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		cmd := exec.Command(man, "-l", path)
		cmd.Env = append(os.Environ(), "MANWIDTH=80")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "relayctl") || stderr.Len() > 0 {
			t.Errorf("man -l: %v\n%s", err, stderr.String())
		}
	}
}
