package main

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// TestMain lets tests run the real binary: the test executable re-executes itself as `shoal`
// when SHOAL_TEST_MAIN is set, so CLI tests see exactly what a user sees (exit codes, stdout,
// stderr) without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("SHOAL_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// shoal runs the CLI with args and returns stdout, stderr and the exit code.
func shoal(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SHOAL_TEST_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}
