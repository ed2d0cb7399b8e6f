package atomicfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gpumesh/gpumesh/internal/atomicfile"
)

func TestWriteReplacesWholeAndLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, content := range []string{"first", "second, longer"} {
		if err := atomicfile.Write(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("read %q, %v; want %q", got, err, content)
		}
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the folder, want only the one written", len(entries))
	}
	if err := atomicfile.Write(filepath.Join(dir, "no", "such", "dir"), nil, 0o600); err == nil {
		t.Fatal("a write into a missing folder succeeded")
	}
}
