package jobstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// ErrBadJobsFile is returned by Migrate for a jobs.json it cannot read as
// jobs; nothing of it has been stored.
var ErrBadJobsFile = errors.New("jobstore: bad jobs file")

// MigratedSuffix is added to a jobs file's name once Migrate has stored it.
const MigratedSuffix = ".migrated"

// Migrate moves the jobs of an older data dir's jobs file (a JSON array of
// objects, each with a string "id" and an RFC 3339 "created") into the
// store, each object as its own record, and renames the file to
// path+MigratedSuffix so that it is not read again. A missing file is not
// an error: there is nothing to migrate. It returns how many records it
// added.
//
// Every record is checked before any is stored, and all are stored in one
// transaction: a bad file stores nothing. A record whose ID the store
// already holds is left as the store has it, since the store is the newer;
// so migrating the same file twice (when the rename failed after the
// commit) adds nothing the second time. Of two records with one ID in the
// file, the later wins.
func (s *Store) Migrate(path string) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("jobstore: migrate: %w", err)
	}
	recs, err := parseJobsFile(data)
	if err != nil {
		return 0, fmt.Errorf("%w %s: %v; fix it, or move it away to start with no jobs", ErrBadJobsFile, path, err)
	}
	added := 0
	err = s.update(func(b buckets) error {
		for _, r := range recs {
			ok, err := b.put(r.id, r.ck, r.data, false)
			if err != nil {
				return err
			}
			if ok {
				added++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("jobstore: migrate %s: %w", path, err)
	}
	if err := os.Rename(path, path+MigratedSuffix); err != nil {
		return added, fmt.Errorf("jobstore: stored the %d jobs of %s but could not rename it: %w; rename or remove it yourself (migrating it again is harmless)", len(recs), path, err)
	}
	syncDir(filepath.Dir(path))
	return added, nil
}

type migrated struct {
	id   string
	ck   [8]byte
	data []byte
}

// parseJobsFile checks every record of a jobs file and returns them
// compacted, the last of each ID only.
func parseJobsFile(data []byte) ([]migrated, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, fmt.Errorf("not a JSON array of jobs: %v", err)
	}
	recs := make([]migrated, 0, len(raws))
	at := make(map[string]int, len(raws))
	for i, raw := range raws {
		r, err := parseJob(raw)
		if err != nil && r.id != "" {
			return nil, fmt.Errorf("job %d of %d (id %q): %v", i+1, len(raws), r.id, err)
		}
		if err != nil {
			return nil, fmt.Errorf("job %d of %d: %v", i+1, len(raws), err)
		}
		if k, ok := at[r.id]; ok {
			recs[k] = r
			continue
		}
		at[r.id] = len(recs)
		recs = append(recs, r)
	}
	return recs, nil
}

func parseJob(raw json.RawMessage) (migrated, error) {
	var head struct {
		ID      *string          `json:"id"`
		Created *json.RawMessage `json:"created"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return migrated{}, err
	}
	if head.ID == nil {
		return migrated{}, errors.New(`no "id"`)
	}
	if err := checkID(*head.ID); err != nil {
		return migrated{}, err
	}
	r := migrated{id: *head.ID}
	if head.Created == nil {
		return r, errors.New(`no "created"`)
	}
	var created time.Time
	if err := json.Unmarshal(*head.Created, &created); err != nil {
		return r, fmt.Errorf(`"created" %s is not an RFC 3339 time: %v`, truncate(string(*head.Created), 40), err)
	}
	ck, err := createdKey(created)
	if err != nil {
		return r, err
	}
	r.ck = ck
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return r, err
	}
	r.data = buf.Bytes()
	if len(r.data) > MaxRecordSize {
		return r, fmt.Errorf("%d bytes, at most %d", len(r.data), MaxRecordSize)
	}
	return r, nil
}

// syncDir makes a rename in dir durable, as far as the system allows; a
// rename that is lost only means migrating the same file again, which adds
// nothing.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	d.Sync()
	d.Close()
}
