package node

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
)

// A job's room on its submitter's disk. Its providers send its log and its
// outputs; this peer keeps of one job, over all its attempts, at most
// Config.JobLogBytes of log (as written, rank prefixes included),
// JobOutputBytes of outputs and JobOutputFiles output files and folders.
// An output file counts at the size its file frame announces from that
// frame on, whether its bytes come or not, and a member has one file open
// at a time. A member whose provider sends more is stopped and the job
// fails, its provider's fault (attempt.Overran); what it sent beyond the
// quota is not written.

// Defaults of a job's quotas on its submitter.
const (
	DefaultJobLogBytes    = 1 << 30  // 1 GiB of log a job
	DefaultJobOutputBytes = 20 << 30 // 20 GiB of outputs a job: five members' worth of a provider's 4 GiB
	DefaultJobOutputFiles = 10_000   // output files and folders a job
)

// quotaError is a provider sending more than this peer keeps of a job.
type quotaError struct{ why string }

func (e *quotaError) Error() string { return e.why }

// jobLogBytes, jobOutputBytes and jobOutputFiles are the quotas this peer
// applies.
func (n *Node) jobLogBytes() int64 {
	if n.cfg.JobLogBytes > 0 {
		return n.cfg.JobLogBytes
	}
	return DefaultJobLogBytes
}

func (n *Node) jobOutputBytes() int64 {
	if n.cfg.JobOutputBytes > 0 {
		return n.cfg.JobOutputBytes
	}
	return DefaultJobOutputBytes
}

func (n *Node) jobOutputFiles() int {
	if n.cfg.JobOutputFiles > 0 {
		return n.cfg.JobOutputFiles
	}
	return DefaultJobOutputFiles
}

// outputQuota counts a job's outputs on this peer: every member's reader
// reserves room in it before it creates a file. Its lock guards the
// counts and dirs.
type outputQuota struct {
	root       string // the job's outputs folder
	maxBytes   int64
	maxEntries int

	mu      sync.Mutex
	bytes   int64
	entries int             // files and folders
	dirs    map[string]bool // folders under root counted already
}

// newOutputQuota counts what earlier attempts of the job left under root.
func newOutputQuota(root string, maxBytes int64, maxEntries int) (*outputQuota, error) {
	q := &outputQuota{root: filepath.Clean(root), maxBytes: maxBytes, maxEntries: maxEntries, dirs: map[string]bool{}}
	err := filepath.WalkDir(q.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == q.root {
			return nil
		}
		q.entries++
		if d.IsDir() {
			q.dirs[path] = true
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		q.bytes += info.Size()
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("count the job's outputs: %w", err)
	}
	return q, nil
}

// reserve takes room for a file at path (under root) of size bytes, and
// for the folders it needs that are not counted yet.
func (q *outputQuota) reserve(path string, size int64, shown string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var dirs []string
	for d := filepath.Dir(path); strings.HasPrefix(d, q.root+string(filepath.Separator)) && !q.dirs[d]; d = filepath.Dir(d) {
		dirs = append(dirs, d)
	}
	if q.entries+1+len(dirs) > q.maxEntries {
		return &quotaError{fmt.Sprintf("output %s would be file or folder %d of the job, and this peer keeps %d a job (--job-output-files)",
			shown, q.entries+1+len(dirs), q.maxEntries)}
	}
	if size > q.maxBytes-q.bytes {
		return &quotaError{fmt.Sprintf("output %s of %s would bring the job's outputs to %s, and this peer keeps %s a job (--job-output-quota)",
			shown, FormatSize(size), FormatSize(q.bytes+size), FormatSize(q.maxBytes))}
	}
	q.entries += 1 + len(dirs)
	q.bytes += size
	for _, d := range dirs {
		q.dirs[d] = true
	}
	return nil
}
