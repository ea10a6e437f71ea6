// Goexec only execs its arguments: the floor for a Go program in a
// login's exec chain, which checkpassword-wrap is measured against
// (t/wrap_bench_test.go, scripts/bench-wrap).
package main

import (
	"os"
	"syscall"
)

func main() {
	err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	os.Stderr.WriteString("goexec: " + err.Error() + "\n")
	os.Exit(111)
}
