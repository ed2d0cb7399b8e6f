package jobstore_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/jobstore"
)

// job is the part of node's Job the tests look at.
type job struct {
	ID      string    `json:"id"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
}

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func record(t testing.TB, id, state string, created time.Time) []byte {
	t.Helper()
	data, err := json.Marshal(job{ID: id, State: state, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func open(t testing.TB, path string) *jobstore.Store {
	t.Helper()
	s, err := jobstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t testing.TB) *jobstore.Store {
	t.Helper()
	return open(t, filepath.Join(t.TempDir(), "jobs.db"))
}

func mustGet(t *testing.T, s *jobstore.Store, id string) []byte {
	t.Helper()
	data, ok, err := s.Get(id)
	if err != nil || !ok {
		t.Fatalf("Get(%q) = %v, %v; want a record", id, ok, err)
	}
	return data
}

func mustCount(t *testing.T, s *jobstore.Store, want int) {
	t.Helper()
	if n, err := s.Count(); err != nil || n != want {
		t.Fatalf("Count() = %d, %v; want %d", n, err, want)
	}
}

// ids lists the IDs of every record, newest first, in one page.
func ids(t *testing.T, s *jobstore.Store) []string {
	t.Helper()
	page, next, err := s.List("", jobstore.MaxPage)
	if err != nil || next != "" {
		t.Fatalf("List = %q, %v", next, err)
	}
	var out []string
	for _, data := range page {
		var j job
		if err := json.Unmarshal(data, &j); err != nil {
			t.Fatal(err)
		}
		out = append(out, j.ID)
	}
	return out
}

func TestPutGetOverwrite(t *testing.T) {
	s := newStore(t)
	if _, ok, err := s.Get("a"); ok || err != nil {
		t.Fatalf("Get of an empty store = %v, %v; want nothing", ok, err)
	}
	a1 := record(t, "a", "negotiating", t0)
	if err := s.Put("a", t0, a1); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "a"); !bytes.Equal(got, a1) {
		t.Fatalf("Get = %s, want %s", got, a1)
	}
	a2 := record(t, "a", "running", t0)
	if err := s.Put("a", t0, a2); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "a"); !bytes.Equal(got, a2) {
		t.Fatalf("Get after overwrite = %s, want %s", got, a2)
	}
	mustCount(t, s, 1)

	// A new created time moves the record in the order, once.
	if err := s.Put("b", t0.Add(time.Second), record(t, "b", "done", t0.Add(time.Second))); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(t, s), []string{"b", "a"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
	if err := s.Put("a", t0.Add(time.Hour), record(t, "a", "done", t0.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(t, s), []string{"a", "b"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order after a's created moved = %v, want %v", got, want)
	}
	mustCount(t, s, 2)

	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatalf("deleting a missing record: %v", err)
	}
	if _, ok, _ := s.Get("a"); ok {
		t.Fatal("Get finds a deleted record")
	}
	if got, want := ids(t, s), []string{"b"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order after delete = %v, want %v", got, want)
	}
	mustCount(t, s, 1)
}

// Returned records are the caller's: changing one changes nothing stored.
func TestRecordsAreCopies(t *testing.T) {
	s := newStore(t)
	data := record(t, "a", "done", t0)
	if err := s.Put("a", t0, data); err != nil {
		t.Fatal(err)
	}
	data[0] = 'X'
	got := mustGet(t, s, "a")
	if got[0] != '{' {
		t.Fatalf("Put kept the caller's slice: %s", got)
	}
	got[0] = 'Y'
	if again := mustGet(t, s, "a"); again[0] != '{' {
		t.Fatalf("Get returned the stored bytes: %s", again)
	}
}

func TestPutRefusesBadInput(t *testing.T) {
	s := newStore(t)
	long := strings.Repeat("x", jobstore.MaxIDSize+1)
	for _, tc := range []struct {
		name    string
		id      string
		created time.Time
		data    []byte
		want    error
	}{
		{"empty ID", "", t0, []byte("{}"), jobstore.ErrBadID},
		{"ID over 128 bytes", long, t0, []byte("{}"), jobstore.ErrBadID},
		{"empty record", "a", t0, nil, jobstore.ErrBadRecord},
		{"record over 8 MiB", "a", t0, make([]byte, jobstore.MaxRecordSize+1), jobstore.ErrBadRecord},
		{"no created time", "a", time.Time{}, []byte("{}"), jobstore.ErrBadRecord},
		{"created after 2262", "a", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), []byte("{}"), jobstore.ErrBadRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Put(tc.id, tc.created, tc.data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Put = %v, want %v", err, tc.want)
			}
		})
	}
	mustCount(t, s, 0)
	if _, _, err := s.Get(long); !errors.Is(err, jobstore.ErrBadID) {
		t.Fatalf("Get of a long ID = %v, want ErrBadID", err)
	}
	// The limits themselves are allowed.
	max := strings.Repeat("y", jobstore.MaxIDSize)
	if err := s.Put(max, t0, make([]byte, jobstore.MaxRecordSize)); err != nil {
		t.Fatalf("Put at the limits: %v", err)
	}
	if got := mustGet(t, s, max); len(got) != jobstore.MaxRecordSize {
		t.Fatalf("Get at the limits = %d bytes", len(got))
	}
	// Times before 1970 order before those after.
	if err := s.Put("old", time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC), []byte(`{"id":"old"}`)); err != nil {
		t.Fatal(err)
	}
	page, _, err := s.List("", 2)
	if err != nil || len(page) != 2 || string(page[1]) != `{"id":"old"}` {
		t.Fatalf("List = %d records, %v; want 1969's last", len(page), err)
	}
}

// fill stores n jobs: most through one migration, the last 50 through Put,
// created out of order and some at the same instant. It returns their IDs
// newest first (ties broken by the greater ID).
func fill(t testing.TB, s *jobstore.Store, n int) []string {
	t.Helper()
	created := func(i int) time.Time {
		// A permutation of times, with pairs sharing one.
		return t0.Add(time.Duration((i*7919)%n/2) * time.Millisecond)
	}
	id := func(i int) string { return fmt.Sprintf("job-%05d", i) }
	var recs []json.RawMessage
	for i := 0; i < n-50; i++ {
		recs = append(recs, record(t, id(i), "done", created(i)))
	}
	writeJobsFile(t, filepath.Join(filepath.Dir(s.Path()), "jobs.json"), recs)
	if added, err := s.Migrate(filepath.Join(filepath.Dir(s.Path()), "jobs.json")); err != nil || added != n-50 {
		t.Fatalf("Migrate = %d, %v", added, err)
	}
	for i := n - 50; i < n; i++ {
		if err := s.Put(id(i), created(i), record(t, id(i), "done", created(i))); err != nil {
			t.Fatal(err)
		}
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := created(b).Compare(created(a)); c != 0 {
			return c
		}
		return strings.Compare(id(b), id(a))
	})
	out := make([]string, n)
	for k, i := range order {
		out[k] = id(i)
	}
	return out
}

func TestListPagesNewestFirst(t *testing.T) {
	s := newStore(t)
	want := fill(t, s, 2500)
	mustCount(t, s, 2500)
	for _, limit := range []int{1, 7, 100, jobstore.MaxPage} {
		t.Run(fmt.Sprint("limit=", limit), func(t *testing.T) {
			var got []string
			cursor, pages := "", 0
			for {
				page, next, err := s.List(cursor, limit)
				if err != nil {
					t.Fatalf("page %d: %v", pages, err)
				}
				pages++
				if pages > 2500/limit+1 {
					t.Fatalf("more than %d pages: the cursor does not advance", pages-1)
				}
				if len(page) != limit && next != "" {
					t.Fatalf("page %d has %d records and a next page; want %d", pages, len(page), limit)
				}
				for _, data := range page {
					var j job
					if err := json.Unmarshal(data, &j); err != nil {
						t.Fatal(err)
					}
					got = append(got, j.ID)
				}
				if next == "" {
					break
				}
				cursor = next
			}
			if wantPages := (2500 + limit - 1) / limit; pages != wantPages {
				t.Errorf("pages = %d, want %d", pages, wantPages)
			}
			if len(got) != len(want) {
				t.Fatalf("listed %d records, want %d", len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("record %d = %s, want %s", i, got[i], want[i])
				}
			}
		})
	}
}

// A cursor names a place in the order, not a record: deleting the record
// it was made at, or adding newer ones, does not disturb the pages after.
func TestListCursorSurvivesChanges(t *testing.T) {
	s := newStore(t)
	for i := range 10 {
		id := fmt.Sprint("j", i)
		if err := s.Put(id, t0.Add(time.Duration(i)*time.Second), record(t, id, "done", t0)); err != nil {
			t.Fatal(err)
		}
	}
	first, next, err := s.List("", 3) // j9 j8 j7
	if err != nil || len(first) != 3 {
		t.Fatal(len(first), err)
	}
	if err := s.Delete("j7"); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("j10", t0.Add(time.Hour), []byte(`{"id":"j10"}`)); err != nil {
		t.Fatal(err)
	}
	page, _, err := s.List(next, 2)
	if err != nil {
		t.Fatal(err)
	}
	var j job
	json.Unmarshal(page[0], &j)
	if j.ID != "j6" {
		t.Fatalf("page after a deleted cursor record starts at %s, want j6", j.ID)
	}
}

func TestListRefusesGarbage(t *testing.T) {
	s := newStore(t)
	fill(t, s, 60)
	for _, cursor := range []string{"not a cursor!", "AAAA", strings.Repeat("A", 400)} {
		_, _, err := s.List(cursor, 10)
		if !errors.Is(err, jobstore.ErrBadCursor) {
			t.Errorf("List(%.20q) = %v, want ErrBadCursor", cursor, err)
		}
		if err != nil && !strings.Contains(err.Error(), "next value of the previous page") {
			t.Errorf("List(%.20q) error does not say what to pass: %v", cursor, err)
		}
	}
	for _, limit := range []int{0, -1, jobstore.MaxPage + 1} {
		if _, _, err := s.List("", limit); err == nil {
			t.Errorf("List with limit %d succeeded", limit)
		}
	}
}

func TestEachVisitsEveryRecord(t *testing.T) {
	s := newStore(t)
	want := fill(t, s, 700) // more than one of Each's pages
	var got []string
	err := s.Each(func(id string, data []byte) error {
		got = append(got, id)
		// fn may write: Each holds no transaction while it runs.
		var j job
		if err := json.Unmarshal(data, &j); err != nil {
			return err
		}
		j.State = "archived"
		return s.Put(id, j.Created, record(t, id, j.State, j.Created))
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Each visited %d records, want %d in List order", len(got), len(want))
	}
	stop := errors.New("stop")
	n := 0
	if err := s.Each(func(string, []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Each = %v after %d calls; want stop after 1", err, n)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	s, err := jobstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := fill(t, s, 120)
	if err := s.Delete(want[0]); err != nil {
		t.Fatal(err)
	}
	want = want[1:]
	before := mustGet(t, s, want[5])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	mustCount(t, s, len(want))
	if got := ids(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopening: %d records, want %d in the same order", len(got), len(want))
	}
	if got := mustGet(t, s, want[5]); !bytes.Equal(got, before) {
		t.Fatalf("after reopening: %s, want %s", got, before)
	}
}

func TestSecondOpenFailsWithinTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	first := open(t, path)
	start := time.Now()
	second, err := jobstore.Open(path)
	took := time.Since(start)
	if err == nil {
		second.Close()
		t.Fatal("a second Open of an open store succeeded")
	}
	if !errors.Is(err, jobstore.ErrLocked) || !strings.Contains(err.Error(), "another gpumesh node") {
		t.Fatalf("second Open = %v; want ErrLocked naming the likely cause", err)
	}
	if took > jobstore.OpenTimeout+2*time.Second {
		t.Fatalf("second Open took %v, want about %v", took, jobstore.OpenTimeout)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, path) // free again
}

func TestOpenRefusesOtherFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not bolt "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := jobstore.Open(path)
	if err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("Open of a text file = %v; want an error saying what to do", err)
	}
}

func TestClosedStore(t *testing.T) {
	s := newStore(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Put("a", t0, []byte("{}")); !errors.Is(err, jobstore.ErrClosed) {
		t.Errorf("Put after Close = %v, want ErrClosed", err)
	}
	if _, _, err := s.Get("a"); !errors.Is(err, jobstore.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, _, err := s.List("", 1); !errors.Is(err, jobstore.ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newStore(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 20 {
				id := fmt.Sprintf("w%d-%d", w, i)
				if err := s.Put(id, t0.Add(time.Duration(i)), record(t, id, "done", t0)); err != nil {
					t.Error(err)
					return
				}
				if _, ok, err := s.Get(id); !ok || err != nil {
					t.Error(id, ok, err)
				}
				if _, _, err := s.List("", 10); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	mustCount(t, s, 80)
}

// While the store is stalled a Put waits (it has not returned, and a
// read does not see it), reads go on; once released the Put lands.
func TestAPutWaitsWhileTheStoreIsStalled(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "jobs.db"))
	if err := s.Put("before", t0, record(t, "before", "done", t0)); err != nil {
		t.Fatal(err)
	}
	release, err := s.Stall()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	put := make(chan error, 1)
	go func() { put <- s.Put("during", t0, record(t, "during", "done", t0)) }()
	if _, ok, err := s.Get("before"); !ok || err != nil {
		t.Fatalf("a read while stalled: %v, %v", ok, err)
	}
	select {
	case err := <-put:
		t.Fatalf("a Put returned (%v) while the store was stalled", err)
	default:
	}
	if _, ok, _ := s.Get("during"); ok {
		t.Fatal("a Put landed while the store was stalled")
	}
	release()
	release() // twice is fine
	select {
	case err := <-put:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the Put did not return within 10 s of the release")
	}
	if _, ok, _ := s.Get("during"); !ok {
		t.Fatal("the Put made while stalled is not in the store")
	}
	_ = s.Close()
	if _, err := s.Stall(); !errors.Is(err, jobstore.ErrClosed) {
		t.Fatalf("Stall of a closed store: %v, want ErrClosed", err)
	}
}
