package share

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	for _, tc := range []struct{ content, want string }{
		{"s3cret\n", "s3cret"},
		{"s3cret", "s3cret"},
		{"s3cret\r\n", "s3cret"},
		{"with spaces  inside \n", "with spaces  inside "},
		{strings.Repeat("x", maxPassword) + "\n", strings.Repeat("x", maxPassword)},
	} {
		pw, warn, err := ReadPasswordFile(write("ok", tc.content, 0o600))
		if err != nil || pw != tc.want || warn != "" {
			t.Errorf("%q: got %q, %q, %v; want %q", tc.content, pw, warn, err, tc.want)
		}
	}
	if _, warn, err := ReadPasswordFile(write("world", "pw\n", 0o644)); err != nil || !strings.Contains(warn, "readable by every user (mode 0644)") {
		t.Errorf("world-readable: warning %q, %v", warn, err)
	}
	if _, warn, err := ReadPasswordFile(write("group", "pw\n", 0o640)); err != nil || warn != "" {
		t.Errorf("group-readable: warning %q, %v", warn, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "hunter2-secret"
	for name, path := range map[string]string{
		"empty":     write("empty", "\n", 0o600),
		"two lines": write("two", secret+"\nmore\n", 0o600),
		"NUL":       write("nul", secret+"\x00x", 0o600),
		"too long":  write("long", strings.Repeat(secret, 100), 0o600),
		"missing":   filepath.Join(dir, "none"),
		"directory": dir,
		"FIFO":      fifo, // refused at once, never read (no hang)
	} {
		_, _, err := ReadPasswordFile(path)
		if !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: %v; want ErrConfig, without the file's content", name, err)
		}
	}
}

func TestPasswordFileConfig(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("s3cret\n"), 0o600)
	env := map[string]string{EnvEndpoints: "https://10.0.0.1:2379", EnvUser: "pop1", EnvPassFile: pwFile}
	c, err := FromEnv(func(k string) string { return env[k] })
	if err != nil || c.Password != "s3cret" || c.PassFile != pwFile {
		t.Fatalf("FromEnv: %+v, %v", c, err)
	}
	env[EnvPassword] = "other"
	if _, err := FromEnv(func(k string) string { return env[k] }); !errors.Is(err, ErrConfig) {
		t.Errorf("password and password file: %v", err)
	}
	delete(env, EnvPassword)

	// --etcd-password on the command line: a warning; the settings never
	// show a password.
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := RegisterFlags(fs)
	fs.Parse([]string{"--etcd-password", "s3cret", "--etcd-user", "pop1"})
	c, err = f.Resolve(func(k string) string { return map[string]string{EnvEndpoints: "https://10.0.0.1:2379"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Security().Warnings; len(w) != 1 || !strings.Contains(w[0], "visible to every local user") {
		t.Errorf("warnings: %q", w)
	}
	for _, st := range f.Settings() {
		if strings.Contains(st.Value, "s3cret") {
			t.Errorf("setting %s shows the password: %q", st.Name, st.Value)
		}
	}
	fs = flag.NewFlagSet("y", flag.ContinueOnError)
	f = RegisterFlags(fs)
	fs.Parse([]string{"--etcd-password-file", pwFile})
	c, err = f.Resolve(func(k string) string {
		return map[string]string{EnvEndpoints: "https://10.0.0.1:2379", EnvUser: "pop1"}[k]
	})
	if err != nil || c.Password != "s3cret" || len(c.Security().Warnings) != 0 {
		t.Fatalf("--etcd-password-file: %+v, %v", c, err)
	}

	// Credentials in an endpoint URL are refused, and not repeated.
	_, err = FromEnv(func(k string) string { return map[string]string{EnvEndpoints: "http://pop1:s3cret@10.0.0.1:2379"}[k] })
	if !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "http://10.0.0.1:2379") {
		t.Errorf("credentials in an endpoint: %v", err)
	}
}

func TestSecurity(t *testing.T) {
	const open, clear = "anyone who can reach it can open the relay", "crosses the network in clear"
	for _, tc := range []struct {
		name string
		cfg  Config
		tls  string
		want []string // a part of each warning, in order
	}{
		{"not used", Config{}, "no (etcd not used)", nil},
		{"loopback", Config{Endpoints: []string{"http://127.0.0.1:2379", "http://[::1]:2379", "http://localhost:2379", "127.0.0.2:2379"}}, "no", nil},
		{"unix socket", Config{Endpoints: []string{"unix:///run/etcd.sock"}}, "no", nil},
		{"plain network, no auth", Config{Endpoints: []string{"http://10.0.0.5:2379", "http://127.0.0.1:2379"}}, "no", []string{"etcd endpoint http://10.0.0.5:2379: plain http on a non-loopback address and no authentication configured: " + open}},
		{"no scheme, no TLS setting", Config{Endpoints: []string{"10.0.0.5:2379"}}, "no", []string{"etcd endpoint 10.0.0.5:2379: " + "plain http"}},
		{"host name", Config{Endpoints: []string{"http://etcd.example:2379"}}, "no", []string{open}},
		{"certificate over http", Config{Endpoints: []string{"http://10.0.0.5:2379"}, Cert: "c.pem", Key: "k.pem"}, "no", []string{"not sent over plain http"}},
		{"password over http", Config{Endpoints: []string{"http://10.0.0.5:2379"}, Username: "pop1", Password: "pw"}, "no", []string{`etcd user "pop1" ` + clear}},
		{"https", Config{Endpoints: []string{"https://10.0.0.5:2379"}}, "yes", nil},
		{"no scheme with a CA", Config{Endpoints: []string{"10.0.0.5:2379"}, CA: "ca.pem"}, "yes", nil},
		{"mixed", Config{Endpoints: []string{"https://10.0.0.5:2379", "http://10.0.0.6:2379"}, Username: "u", Password: "p"}, "partly: not to http://10.0.0.6:2379", []string{clear}},
	} {
		sec := tc.cfg.Security()
		if sec.TLS != tc.tls || len(sec.Warnings) != len(tc.want) {
			t.Errorf("%s: %+v; want TLS %q and %d warnings", tc.name, sec, tc.tls, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(sec.Warnings[i], w) {
				t.Errorf("%s: warning %q lacks %q", tc.name, sec.Warnings[i], w)
			}
		}
	}
}
