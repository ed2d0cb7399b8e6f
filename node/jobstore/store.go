package jobstore

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Limits on what a Store accepts.
const (
	MaxIDSize     = 128     // bytes of a job ID
	MaxRecordSize = 8 << 20 // bytes of one record (8 MiB)
	MaxPage       = 1000    // records one List call returns at most
	OpenTimeout   = time.Second
)

// formatVersion is the layout of the buckets; Open refuses any other.
const formatVersion = "1"

var (
	// ErrLocked is returned by Open when another process (or another Store
	// in this one) holds the file.
	ErrLocked = errors.New("jobstore: the store is open elsewhere")
	// ErrClosed is returned by every method of a closed Store but Close.
	ErrClosed = errors.New("jobstore: store closed")
	// ErrBadID is returned for an empty job ID or one over MaxIDSize bytes.
	ErrBadID = errors.New("jobstore: bad job ID")
	// ErrBadRecord is returned for an empty record, one over MaxRecordSize
	// bytes, or a created time that cannot order it.
	ErrBadRecord = errors.New("jobstore: bad record")
	// ErrBadCursor is returned by List for a cursor it did not hand out.
	ErrBadCursor = errors.New("jobstore: bad cursor")
)

var (
	bucketJobs    = []byte("jobs")    // ID -> created key + record
	bucketCreated = []byte("created") // created key + ID -> empty
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("version")
	keyCount      = []byte("count")
)

// Store is a bbolt file of job records. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens the store at path, creating it (mode 0600) if it does not
// exist. It waits at most OpenTimeout for another holder of the file and
// then fails with ErrLocked.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: OpenTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is still locked after %v; is another gpumesh node running on this data dir?", ErrLocked, path, OpenTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("jobstore: open %s: %w; if it is damaged, move it away to start with no jobs", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketJobs, bucketCreated} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if err := meta.Put(keyVersion, []byte(formatVersion)); err != nil {
				return err
			}
			return meta.Put(keyCount, make([]byte, 8))
		case string(v) != formatVersion:
			return fmt.Errorf("format version %q, this build reads %q; run a newer gpumesh, or move the file away to start with no jobs", v, formatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("jobstore: open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file. It is safe to call twice.
func (s *Store) Close() error {
	return s.db.Close()
}

// Path returns the file's path.
func (s *Store) Path() string {
	return s.db.Path()
}

// Put stores data as the record of job id, created at created, replacing
// any record of that ID. It returns once the record is on disk.
func (s *Store) Put(id string, created time.Time, data []byte) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := checkRecord(id, data); err != nil {
		return err
	}
	ck, err := createdKey(created)
	if err != nil {
		return fmt.Errorf("%w: job %s: %v", ErrBadRecord, id, err)
	}
	return s.update(func(b buckets) error {
		_, err := b.put(id, ck, data, true)
		return err
	})
}

// errStalled rolls back Stall's transaction: it writes nothing.
var errStalled = errors.New("jobstore: stalled")

// Stall holds the store's one writer (a bbolt write transaction, which
// writes nothing) until release is called: every Put, Delete and Migrate
// meanwhile waits, as each waits behind a write whose sync a slow disk
// holds; reads go on. It returns once the writer is held. It is for tests
// of callers that must not wait on the store; release may be called
// twice.
func (s *Store) Stall() (release func(), err error) {
	held, done := make(chan error, 1), make(chan struct{})
	go func() {
		err := s.db.Update(func(*bolt.Tx) error {
			held <- nil
			<-done
			return errStalled
		})
		if !errors.Is(err, errStalled) {
			held <- closedErr(err)
		}
	}()
	if err := <-held; err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, nil
}

// Get returns the record of job id, and false if there is none.
func (s *Store) Get(id string) ([]byte, bool, error) {
	if err := checkID(id); err != nil {
		return nil, false, err
	}
	var out []byte
	err := s.view(func(b buckets) error {
		if v := b.jobs.Get([]byte(id)); v != nil {
			out = clone(v[8:])
		}
		return nil
	})
	return out, out != nil, err
}

// Delete removes the record of job id; a missing record is not an error.
func (s *Store) Delete(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return s.update(func(b buckets) error {
		v := b.jobs.Get([]byte(id))
		if v == nil {
			return nil
		}
		if err := b.created.Delete(indexKey(v[:8], id)); err != nil {
			return err
		}
		if err := b.jobs.Delete([]byte(id)); err != nil {
			return err
		}
		return b.addCount(-1)
	})
}

// Count returns the number of records.
func (s *Store) Count() (int, error) {
	var n int
	err := s.view(func(b buckets) error {
		n = b.count()
		return nil
	})
	return n, err
}

// List returns up to limit records (1 to MaxPage), newest first, starting
// after the cursor before ("" for the newest). next is the cursor of the
// following page, "" when there is none. A cursor stays valid when records
// are added or deleted; a record put after the page it would have been on
// was read is not seen.
func (s *Store) List(before string, limit int) (page [][]byte, next string, err error) {
	if limit < 1 || limit > MaxPage {
		return nil, "", fmt.Errorf("jobstore: list limit %d: ask for 1 to %d records", limit, MaxPage)
	}
	var from []byte
	if before != "" {
		from, err = decodeCursor(before)
		if err != nil {
			return nil, "", err
		}
	}
	entries, last, err := s.scan(from, limit)
	if err != nil {
		return nil, "", err
	}
	page = make([][]byte, len(entries))
	for i, e := range entries {
		page[i] = e.data
	}
	if last != nil {
		next = base64.RawURLEncoding.EncodeToString(last)
	}
	return page, next, nil
}

// Each calls fn with every record, newest first, until fn returns an error,
// which Each returns. It reads the records in pages, each its own read
// transaction, so fn may keep data and may call the Store's other methods;
// a record put or deleted meanwhile may or may not be seen.
func (s *Store) Each(fn func(id string, data []byte) error) error {
	var from []byte
	for {
		entries, last, err := s.scan(from, eachPage)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := fn(e.id, e.data); err != nil {
				return err
			}
		}
		if last == nil {
			return nil
		}
		from = last
	}
}

// eachPage is how many records Each reads in one transaction.
const eachPage = 256

type entry struct {
	id   string
	data []byte
}

// scan reads up to limit records, newest first, starting after the index
// key from (nil for the newest). last is the index key of the last record
// returned when more follow, nil otherwise.
func (s *Store) scan(from []byte, limit int) (entries []entry, last []byte, err error) {
	err = s.view(func(b buckets) error {
		c := b.created.Cursor()
		var k []byte
		if from == nil {
			k, _ = c.Last()
		} else if k, _ = c.Seek(from); k == nil {
			k, _ = c.Last() // every key is before from
		} else {
			k, _ = c.Prev() // k >= from: step to the first key before it
		}
		var prev []byte
		for ; k != nil && len(entries) < limit; k, _ = c.Prev() {
			id := k[8:]
			v := b.jobs.Get(id)
			if v == nil {
				return fmt.Errorf("jobstore: index names job %q, which has no record: the file is damaged; move it away to start with no jobs", id)
			}
			entries = append(entries, entry{id: string(id), data: clone(v[8:])})
			prev = k
		}
		if k != nil {
			last = clone(prev)
		}
		return nil
	})
	return entries, last, err
}

func decodeCursor(s string) ([]byte, error) {
	k, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(k) < 9 || len(k) > 8+MaxIDSize {
		return nil, fmt.Errorf("%w %q: pass the next value of the previous page, or none for the newest", ErrBadCursor, truncate(s, 40))
	}
	return k, nil
}

// buckets are a transaction's buckets.
type buckets struct {
	jobs, created, meta *bolt.Bucket
}

func (s *Store) view(fn func(buckets) error) error {
	return closedErr(s.db.View(func(tx *bolt.Tx) error { return fn(bucketsOf(tx)) }))
}

func (s *Store) update(fn func(buckets) error) error {
	return closedErr(s.db.Update(func(tx *bolt.Tx) error { return fn(bucketsOf(tx)) }))
}

func bucketsOf(tx *bolt.Tx) buckets {
	return buckets{jobs: tx.Bucket(bucketJobs), created: tx.Bucket(bucketCreated), meta: tx.Bucket(bucketMeta)}
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// put writes one record. With replace false an existing record of id is
// kept; added reports whether id is new.
func (b buckets) put(id string, ck [8]byte, data []byte, replace bool) (added bool, err error) {
	old := b.jobs.Get([]byte(id))
	added = old == nil
	switch {
	case old != nil && !replace:
		return false, nil
	case old == nil:
		if err := b.addCount(1); err != nil {
			return false, err
		}
	case [8]byte(old[:8]) != ck:
		if err := b.created.Delete(indexKey(old[:8], id)); err != nil {
			return false, err
		}
		old = nil // the index needs the new key
	}
	v := make([]byte, 8+len(data))
	copy(v, ck[:])
	copy(v[8:], data)
	if err := b.jobs.Put([]byte(id), v); err != nil {
		return false, err
	}
	if old != nil {
		return false, nil // the index has it already: leave its page clean
	}
	return added, b.created.Put(indexKey(ck[:], id), []byte{})
}

func (b buckets) count() int {
	return int(binary.BigEndian.Uint64(b.meta.Get(keyCount)))
}

func (b buckets) addCount(d int) error {
	v := make([]byte, 8)
	binary.BigEndian.PutUint64(v, uint64(b.count()+d))
	return b.meta.Put(keyCount, v)
}

// createdKey orders created times as unsigned bytes: nanoseconds since the
// Unix epoch, big-endian, with the sign bit flipped so that times before
// 1970 sort first.
func createdKey(t time.Time) ([8]byte, error) {
	var k [8]byte
	if t.IsZero() {
		return k, errors.New("no created time")
	}
	if t.Before(minTime) || t.After(maxTime) {
		return k, fmt.Errorf("created time %s is outside %d to %d", t.Format(time.RFC3339), minTime.Year(), maxTime.Year())
	}
	binary.BigEndian.PutUint64(k[:], uint64(t.UnixNano())^(1<<63))
	return k, nil
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

func indexKey(ck []byte, id string) []byte {
	k := make([]byte, 0, 8+len(id))
	return append(append(k, ck...), id...)
}

func checkID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrBadID)
	case len(id) > MaxIDSize:
		return fmt.Errorf("%w %q: %d bytes, at most %d", ErrBadID, truncate(id, 40), len(id), MaxIDSize)
	}
	return nil
}

func checkRecord(id string, data []byte) error {
	switch {
	case len(data) == 0:
		return fmt.Errorf("%w: job %s: empty", ErrBadRecord, id)
	case len(data) > MaxRecordSize:
		return fmt.Errorf("%w: job %s: %d bytes, at most %d", ErrBadRecord, id, len(data), MaxRecordSize)
	}
	return nil
}

func clone(b []byte) []byte {
	return append(make([]byte, 0, len(b)), b...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
