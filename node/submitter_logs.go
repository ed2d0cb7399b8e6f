package node

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/gpumesh/gpumesh/internal/text"
)

// A job's logs, on its submitter: every member's output, a line at a time,
// each prefixed by the member's rank ("[0] epoch 1 ..."), in the order the
// lines arrived, in jobs/<id>/log. Followers wait on changed. A provider's
// output is a stranger's: each line is made safe for a terminal
// (text.LogLine: no escape sequences, a carriage return keeps the line's
// last state, other controls shown as escapes) before it is written.

// maxLogLine is the longest line kept whole; longer ones are cut there.
const maxLogLine = 64 << 10

type jobLog struct {
	mu      sync.Mutex
	f       *os.File
	partial map[int][]byte // per rank: the line not yet ended
	changed chan struct{}  // closed and replaced on every write
	ended   bool
	size    int64 // bytes in the file
	max     int64 // bytes of members' output the file may reach (the job's log quota)
	full    bool  // a member's output passed max: no more of it is kept
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

// openLog opens (appending) the log of a job for its run; members' output
// is kept while the file is within max bytes.
func (n *Node) openLog(id string, max int64) (*jobLog, error) {
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
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	l := &jobLog{f: f, partial: map[int][]byte{}, changed: make(chan struct{}), size: info.Size(), max: max}
	n.logsMu.Lock()
	if n.logs == nil {
		n.logs = map[string]*jobLog{}
	}
	n.logs[id] = l
	n.logsMu.Unlock()
	return l, nil
}

// write adds output of a member; whole lines go to the file at once. Output
// that would take the file past its quota is dropped, with all that
// follows, and the first such write returns a *quotaError.
func (l *jobLog) write(rank int, data []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.full || l.ended {
		return nil
	}
	buf := append(l.partial[rank], data...)
	var out bytes.Buffer
	prefix := "[" + strconv.Itoa(rank) + "] "
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		out.WriteString(prefix)
		out.Write(text.LogLine(buf[:i]))
		out.WriteByte('\n')
		buf = buf[i+1:]
	}
	if len(buf) > maxLogLine {
		out.WriteString(prefix)
		out.Write(text.LogLine(buf))
		out.WriteByte('\n')
		buf = nil
	}
	if l.size+int64(out.Len()) > l.max {
		l.full, l.partial = true, nil
		return &quotaError{fmt.Sprintf("its output would take the job's log past %s, what this peer keeps of a job's log (--job-log-quota)", FormatSize(l.max))}
	}
	l.partial[rank] = append([]byte(nil), buf...)
	l.emit(out.Bytes())
	return nil
}

// note adds a line of the submitter's own ("[gpumesh] member 1 lost").
func (l *jobLog) note(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.emit([]byte("[gpumesh] " + text.Line(line) + "\n"))
}

func (l *jobLog) emit(b []byte) {
	if len(b) == 0 {
		return
	}
	k, _ := l.f.Write(b)
	l.size += int64(k)
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
		line := "[" + strconv.Itoa(rank) + "] " + string(text.LogLine(rest)) + "\n"
		if len(rest) > 0 && l.size+int64(len(line)) <= l.max {
			l.emit([]byte(line))
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
