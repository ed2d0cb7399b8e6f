package jobstore_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/jobstore"
)

// writeJobsFile writes records as node's saveJobsLocked did: an indented
// JSON array.
func writeJobsFile(t testing.TB, path string, recs []json.RawMessage) {
	t.Helper()
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestMigrate(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "jobs.db"))
	path := filepath.Join(dir, "jobs.json")
	good := []json.RawMessage{
		record(t, "a", "done", t0),
		record(t, "b", "failed", t0.Add(time.Minute)),
	}
	bad := json.RawMessage(`{"id": "c", "state": "done", "created": "yesterday"}`)
	writeJobsFile(t, path, append(good[:2:2], bad))

	added, err := s.Migrate(path)
	if !errors.Is(err, jobstore.ErrBadJobsFile) || added != 0 {
		t.Fatalf("Migrate of a file with a bad created = %d, %v; want ErrBadJobsFile", added, err)
	}
	for _, want := range []string{path, `job 3 of 3 (id "c")`, `"created" "yesterday"`, "move it away to start with no jobs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	mustCount(t, s, 0) // nothing of a bad file is stored
	if !exists(path) || exists(path+jobstore.MigratedSuffix) {
		t.Fatal("a bad file was renamed")
	}

	writeJobsFile(t, path, append(good, record(t, "c", "done", t0.Add(-time.Minute))))
	added, err = s.Migrate(path)
	if err != nil || added != 3 {
		t.Fatalf("Migrate = %d, %v; want 3 added", added, err)
	}
	if exists(path) || !exists(path+jobstore.MigratedSuffix) {
		t.Fatalf("the jobs file was not renamed to %s", path+jobstore.MigratedSuffix)
	}
	mustCount(t, s, 3)
	if got, want := strings.Join(ids(t, s), " "), "b a c"; got != want {
		t.Fatalf("order = %v, want %v", got, want)
	}
	// Records are stored compact, as node would Put them.
	if got := mustGet(t, s, "a"); string(got) != string(good[0]) {
		t.Fatalf("record a = %s, want %s", got, good[0])
	}

	// Nothing left to migrate: no error.
	if added, err := s.Migrate(path); err != nil || added != 0 {
		t.Fatalf("Migrate with no file = %d, %v; want 0, nil", added, err)
	}
}

// If the rename fails after the commit, the next start migrates the same
// file again: that adds nothing, and keeps what changed in the store since.
func TestMigrateTwiceAddsNothing(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "jobs.db"))
	path := filepath.Join(dir, "jobs.json")
	writeJobsFile(t, path, []json.RawMessage{record(t, "a", "running", t0), record(t, "b", "done", t0)})
	if added, err := s.Migrate(path); err != nil || added != 2 {
		t.Fatalf("Migrate = %d, %v", added, err)
	}
	newer := record(t, "a", "failed", t0)
	if err := s.Put("a", t0, newer); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+jobstore.MigratedSuffix, path); err != nil { // as if the rename never happened
		t.Fatal(err)
	}
	if added, err := s.Migrate(path); err != nil || added != 0 {
		t.Fatalf("second Migrate = %d, %v; want 0, nil", added, err)
	}
	mustCount(t, s, 2)
	if got := mustGet(t, s, "a"); string(got) != string(newer) {
		t.Fatalf("second Migrate replaced a newer record: %s", got)
	}
}

func TestMigrateRefusesBadFiles(t *testing.T) {
	for _, tc := range []struct{ name, file, says string }{
		{"not JSON", "{{{", "not a JSON array of jobs"},
		{"an object", `{"id": "a"}`, "not a JSON array of jobs"},
		{"no id", `[{"created": "2025-06-01T12:00:00Z"}]`, `no "id"`},
		{"empty id", `[{"id": "", "created": "2025-06-01T12:00:00Z"}]`, "bad job ID"},
		{"long id", `[{"id": "` + strings.Repeat("x", 129) + `", "created": "2025-06-01T12:00:00Z"}]`, "at most 128"},
		{"no created", `[{"id": "a"}]`, `no "created"`},
		{"numeric created", `[{"id": "a", "created": 17}]`, "not an RFC 3339 time"},
		{"zero created", `[{"id": "a", "created": "0001-01-01T00:00:00Z"}]`, "no created time"},
		{"not an object", `[{"id": "a", "created": "2025-06-01T12:00:00Z"}, 5]`, "job 2 of 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, filepath.Join(dir, "jobs.db"))
			path := filepath.Join(dir, "jobs.json")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := s.Migrate(path)
			if !errors.Is(err, jobstore.ErrBadJobsFile) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "move it away to start with no jobs") {
				t.Fatalf("Migrate = %v; want ErrBadJobsFile saying %q and what to do", err, tc.says)
			}
			mustCount(t, s, 0)
		})
	}
}

// Of two records with one ID, the later wins, as it did when node loaded
// jobs.json into a map.
func TestMigrateDuplicateIDLaterWins(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "jobs.db"))
	path := filepath.Join(dir, "jobs.json")
	later := record(t, "a", "done", t0.Add(time.Hour))
	writeJobsFile(t, path, []json.RawMessage{record(t, "a", "running", t0), later})
	if added, err := s.Migrate(path); err != nil || added != 1 {
		t.Fatalf("Migrate = %d, %v; want 1", added, err)
	}
	if got := mustGet(t, s, "a"); string(got) != string(later) {
		t.Fatalf("record a = %s, want %s", got, later)
	}
}
