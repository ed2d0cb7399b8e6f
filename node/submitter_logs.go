package node

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// A job's logs, on its submitter: every member's output, a line at a time,
// each prefixed by the member's rank ("[0] epoch 1 ..."), in the order the
// lines arrived, in jobs/<id>/log. Followers wait on changed.

// maxLogLine is the longest line kept whole; longer ones are cut there.
const maxLogLine = 64 << 10

type jobLog struct {
	mu      sync.Mutex
	f       *os.File
	partial map[int][]byte // per rank: the line not yet ended
	changed chan struct{}  // closed and replaced on every write
	ended   bool
}

// StateDir is where this peer keeps its state: the data dir, or a
// temporary folder for a peer without one.
func (n *Node) StateDir() string {
	d, _ := n.stateDir()
	return d
}

// jobDir is the folder of a job's logs and outputs on its submitter.
func (n *Node) jobDir(id string) (string, error) {
	state, err := n.stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, "jobs", id), nil
}

// openLog opens (appending) the log of a job for its run.
func (n *Node) openLog(id string) (*jobLog, error) {
	dir, err := n.jobDir(id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	l := &jobLog{f: f, partial: map[int][]byte{}, changed: make(chan struct{})}
	n.logsMu.Lock()
	if n.logs == nil {
		n.logs = map[string]*jobLog{}
	}
	n.logs[id] = l
	n.logsMu.Unlock()
	return l, nil
}

// write adds output of a member; whole lines go to the file at once.
func (l *jobLog) write(rank int, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := append(l.partial[rank], data...)
	var out bytes.Buffer
	prefix := "[" + strconv.Itoa(rank) + "] "
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		out.WriteString(prefix)
		out.Write(buf[:i+1])
		buf = buf[i+1:]
	}
	if len(buf) > maxLogLine {
		out.WriteString(prefix)
		out.Write(buf)
		out.WriteByte('\n')
		buf = nil
	}
	l.partial[rank] = append([]byte(nil), buf...)
	l.emit(out.Bytes())
}

// note adds a line of the submitter's own ("[gpumesh] member 1 lost").
func (l *jobLog) note(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.emit([]byte("[gpumesh] " + line + "\n"))
}

func (l *jobLog) emit(b []byte) {
	if len(b) == 0 {
		return
	}
	_, _ = l.f.Write(b)
	close(l.changed)
	l.changed = make(chan struct{})
}

// end writes what is left of unended lines and closes the file.
func (l *jobLog) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	for rank, rest := range l.partial {
		if len(rest) > 0 {
			l.emit([]byte("[" + strconv.Itoa(rank) + "] " + string(rest) + "\n"))
		}
	}
	l.ended = true
	_ = l.f.Close()
	close(l.changed)
}

// wait returns a channel closed at the next write, and whether the log has
// ended.
func (l *jobLog) wait() (<-chan struct{}, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed, l.ended
}

// closeLog ends a job's log of a run and forgets it: followers find the
// rest in the file.
func (n *Node) closeLog(id string, l *jobLog) {
	l.end()
	n.logsMu.Lock()
	if n.logs[id] == l {
		delete(n.logs, id)
	}
	n.logsMu.Unlock()
}

func (n *Node) liveLog(id string) *jobLog {
	n.logsMu.Lock()
	defer n.logsMu.Unlock()
	return n.logs[id]
}

// serveLog answers a log request: the log from its start, and with follow
// what arrives until the job has ended.
func (n *Node) serveLog(ctx context.Context, w http.ResponseWriter, id string, follow bool) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if err := n.WriteLog(ctx, w, id, follow); err != nil {
		n.log.Debug("job log", "job", id, "err", err)
	}
}

// WriteLog writes a job's log to w from its start; with follow it goes on
// as lines arrive until the job has ended or ctx is done.
func (n *Node) WriteLog(ctx context.Context, w io.Writer, id string, follow bool) error {
	dir, err := n.jobDir(id)
	if err != nil {
		return err
	}
	flusher, _ := w.(http.Flusher)
	for follow { // a job still negotiating: wait for its run to start
		moved := n.jobMoved()
		j, ok := n.Job(id)
		if !ok || j.State.Ended() || n.liveLog(id) != nil {
			break
		}
		if flusher != nil {
			flusher.Flush() // the headers: the client sees the request taken
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return nil
		}
	}
	var off int64
	buf := make([]byte, 64<<10)
	copyNew := func() error {
		f, err := os.Open(filepath.Join(dir, "log"))
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		for {
			k, err := f.ReadAt(buf, off)
			if k > 0 {
				if _, werr := w.Write(buf[:k]); werr != nil {
					return werr
				}
				off += int64(k)
			}
			if err != nil || k == 0 {
				break
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	for {
		l := n.liveLog(id)
		var changed <-chan struct{}
		ended := true
		if l != nil {
			changed, ended = l.wait()
		}
		if err := copyNew(); err != nil {
			return err
		}
		if !follow || ended {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
