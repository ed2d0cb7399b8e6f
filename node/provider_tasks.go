package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/atomicfile"
)

// A provider's members on disk, so that a crash leaves nothing behind:
// before a member's work starts, a record of it (its run folder, GPUs, and
// for a process its process group) goes to the data dir's tasks/ folder;
// it is removed once the member has ended and its folder is gone. A record
// still there at the next start is work this provider was running when it
// died: Start kills what is left of it (the process group, or the
// container), removes its folder and keeps an ended record saying so,
// before the GPUs are offered again.

// Folders of a provider's tasks in the data dir.
const (
	tasksDir      = "tasks"       // one record a running member
	endedTasksDir = "tasks/ended" // members a restart ended
	maxEndedTasks = 64            // ended records kept, newest first
	reapWait      = 10 * time.Second
)

// DefaultJobDir is where a root node's process jobs get their folders,
// one folder a peer.
const DefaultJobDir = "/var/lib/gpumesh-jobs"

// taskState is the process executor's setup and the records of tasks.
type taskState struct {
	jobUser     *exec.JobUser // the process executor's user; nil: this node's own
	workRoot    string        // where process tasks get their folders
	workRootTmp bool          // made for a node without a data dir: removed at Close

	endedMu sync.Mutex
	ended   []EndedTask // newest first

	recMu sync.Mutex // orders the writes of task records (a member's, its execs')
}

// taskRecord is a member's work while it runs.
type taskRecord struct {
	Task      string             `json:"task"`
	Job       string             `json:"job"`
	Attempt   int                `json:"attempt"`
	Rank      int                `json:"rank"`
	Submitter string             `json:"submitter"`
	Executor  string             `json:"executor"`
	RunDir    string             `json:"runDir"`
	GPUs      []string           `json:"gpus"`
	Group     *exec.ProcessGroup `json:"group,omitempty"` // a process task's, once it exists
	// Execs are the process groups of the terminal execs running in a
	// process task (job exec -t): each leads a session of its own, out
	// of Group's reach.
	Execs   []exec.ProcessGroup `json:"execs,omitempty"`
	Created time.Time           `json:"created"`
}

// EndedTask is a member whose work this provider was running when it
// stopped without ending it (killed, crashed, the machine lost power), and
// what its next start did about it.
type EndedTask struct {
	Task     string    `json:"task"`
	Job      string    `json:"job"`
	Attempt  int       `json:"attempt"`
	Rank     int       `json:"rank"`
	Executor string    `json:"executor"`
	GPUs     int       `json:"gpus"`
	Started  time.Time `json:"started"` // when its record was made
	Ended    time.Time `json:"ended"`   // when the restart ended it
	Reason   string    `json:"reason"`
}

// startTasks sets up the process executor (its user and folder) and ends
// the work a crash left; it runs before this peer offers its GPUs.
func (n *Node) startTasks(ctx context.Context) error {
	if err := n.prepareProcess(); err != nil {
		return err
	}
	if n.dir == nil {
		return nil // a fresh identity each start: nothing of its own is left
	}
	n.loadEnded()
	n.reapTasks(ctx)
	return nil
}

func (n *Node) offersExecutor(name string) bool {
	for _, e := range n.executors() {
		if e == name {
			return true
		}
	}
	return false
}

// prepareProcess finds (or makes) the job user and the job folder, and
// closes the data dir to everyone else.
func (n *Node) prepareProcess() error {
	if !n.offersExecutor("process") {
		return nil
	}
	if n.dir != nil {
		if fi, err := os.Stat(n.dir.Path); err == nil && fi.Mode().Perm() != 0o700 {
			if err := os.Chmod(n.dir.Path, 0o700); err != nil {
				return fmt.Errorf("data dir %s: making it 0700 so that jobs cannot read it: %w", n.dir.Path, err)
			}
			n.log.Info("data dir closed to other users (mode 0700) for the process executor", "dir", n.dir.Path, "was", fi.Mode().Perm())
		}
	}
	root := os.Geteuid() == 0
	if root {
		name, create := n.cfg.JobUser, false
		if name == "" {
			name, create = exec.DefaultJobUser, true
		}
		u, err := exec.LookupJobUser(name, create)
		if err != nil {
			return &ConfigError{Flag: "job-user", Err: err}
		}
		n.jobUser = &u
	}
	dir := n.cfg.JobDir
	switch {
	case dir != "":
	case n.dir == nil:
		d, err := os.MkdirTemp("", "gpumesh-jobs-")
		if err != nil {
			return fmt.Errorf("job folder: %w", err)
		}
		dir, n.workRootTmp = d, true
	case root:
		dir = filepath.Join(DefaultJobDir, n.id.PeerID.String())
	default:
		cache, err := os.UserCacheDir()
		if err != nil {
			return &ConfigError{Flag: "job-dir", Err: fmt.Errorf("no folder for process jobs (%v); name one with --job-dir", err)}
		}
		dir = filepath.Join(cache, "gpumesh-jobs", n.id.PeerID.String())
	}
	if n.dir != nil && within(n.dir.Path, dir) {
		return &ConfigError{Flag: "job-dir", Err: fmt.Errorf("--job-dir %s is inside the data dir, which jobs must never see; put it elsewhere", dir)}
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("job folder: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil { // others may pass through, not list it
		return fmt.Errorf("job folder: %w", err)
	}
	n.workRoot = dir
	if n.jobUser != nil {
		if err := enterable(dir); err != nil {
			return &ConfigError{Flag: "job-dir", Err: fmt.Errorf("job folder %s: %w, so the job user %s cannot reach its work; use a --job-dir that other users may enter, such as %s", dir, err, n.jobUser.Name, DefaultJobDir)}
		}
	}
	return nil
}

// enterable checks that other users may pass through every folder above
// dir (the execute bit for others).
func enterable(dir string) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %o) lets no other user in", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func (n *Node) closeTasks() {
	if n.workRootTmp && n.workRoot != "" {
		_ = os.RemoveAll(n.workRoot)
	}
}

// processExecutor runs work as the job user where this node is root.
func (n *Node) processExecutor() exec.Executor {
	return exec.Process{User: n.jobUser}
}

// runDir is a task's folder: for a process, in the job folder (outside
// the data dir); for a container, in the state dir's runs/ (the container
// sees only its outputs folder).
func (n *Node) runDir(executor, task string) (string, error) {
	if executor == "process" {
		if n.workRoot == "" {
			return "", errors.New("the process executor has no job folder")
		}
		return filepath.Join(n.workRoot, task), nil
	}
	state, err := n.stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, "runs", task), nil
}

// giveToJobUser hands a process task's folders to the job user.
func (n *Node) giveToJobUser(dirs ...string) error {
	if n.jobUser == nil {
		return nil
	}
	for _, d := range dirs {
		if err := os.Chown(d, int(n.jobUser.UID), int(n.jobUser.GID)); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) taskFile(task string) (string, error) {
	state, err := n.stateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, tasksDir, task+".json"), nil
}

// recordTask keeps rec on disk (fsynced) before the work starts.
func (n *Node) recordTask(rec taskRecord) error {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	return n.writeTask(rec)
}

// writeTask writes rec; recMu is held.
func (n *Node) writeTask(rec taskRecord) error {
	path, err := n.taskFile(rec.Task)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("task record: %w", err)
	}
	return nil
}

// recordExec adds g, the process group of a terminal exec in task, to
// task's record (or, add false, removes it), so that a restart after a
// crash kills it too. A task with no record (its work has ended) is left
// as it is.
func (n *Node) recordExec(task string, g exec.ProcessGroup, add bool) error {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	path, err := n.taskFile(task)
	if err != nil {
		return err
	}
	data, err := readBounded(path, 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("task record: %w", err)
	}
	var rec taskRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("task record %s: %w", path, err)
	}
	rec.Execs = slices.DeleteFunc(rec.Execs, func(e exec.ProcessGroup) bool { return e.PGID == g.PGID })
	if add {
		rec.Execs = append(rec.Execs, g)
	}
	return n.writeTask(rec)
}

// forgetTask removes a task's record once it has ended cleanly.
func (n *Node) forgetTask(task string) {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	if path, err := n.taskFile(task); err == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			n.log.Warn("task record not removed", "task", task, "err", err)
		}
	}
}

// reapTasks ends the work a crash left: the records still in tasks/.
func (n *Node) reapTasks(ctx context.Context) {
	dir := filepath.Join(n.dir.Path, tasksDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			n.log.Warn("task records unreadable", "dir", dir, "err", err)
		}
		return
	}
	dockerChecked, dockerErr := false, error(nil)
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		var rec taskRecord
		data, err := readBounded(path, 1<<20)
		if err == nil {
			err = json.Unmarshal(data, &rec)
		}
		if err != nil || rec.Task != strings.TrimSuffix(e.Name(), ".json") {
			n.log.Warn("task record unreadable; removed", "file", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		var what []string
		switch rec.Executor {
		case "process":
			if rec.Group == nil {
				what = append(what, "its work had not started")
				break
			}
			k, err := exec.KillGroup(*rec.Group, reapWait)
			for _, g := range rec.Execs { // terminal execs: sessions of their own
				ke, eerr := exec.KillGroup(g, reapWait)
				k += ke
				err = errors.Join(err, eerr)
			}
			switch {
			case err != nil:
				what = append(what, fmt.Sprintf("killing its processes failed: %v", err))
			case k == 1:
				what = append(what, "killed the 1 process it had left")
			case k > 1:
				what = append(what, fmt.Sprintf("killed the %d processes it had left", k))
			default:
				what = append(what, "none of its processes was left")
			}
		case "docker":
			if !dockerChecked { // removes every container of this peer's
				dockerChecked = true
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, dockerErr = n.dockerExecutor(dctx)
				cancel()
			}
			if dockerErr != nil {
				what = append(what, fmt.Sprintf("its container could not be removed: %v", dockerErr))
			} else {
				what = append(what, "removed its container")
			}
		}
		switch {
		case rec.RunDir == "":
		case !n.ownRunDir(rec.RunDir):
			what = append(what, fmt.Sprintf("left its folder %s, which is not in this peer's job folder now (was --job-dir changed?)", rec.RunDir))
		default:
			if err := os.RemoveAll(rec.RunDir); err != nil {
				what = append(what, fmt.Sprintf("its folder could not be removed: %v", err))
			} else {
				what = append(what, "removed its folder")
			}
		}
		what = append(what, fmt.Sprintf("freed its %d GPUs", len(rec.GPUs)))
		end := EndedTask{
			Task: rec.Task, Job: rec.Job, Attempt: rec.Attempt, Rank: rec.Rank, Executor: rec.Executor,
			GPUs: len(rec.GPUs), Started: rec.Created, Ended: time.Now().UTC(),
			Reason: "this provider stopped (killed or crashed) while the work ran; at its restart it " + strings.Join(what, ", "),
		}
		n.keepEnded(end)
		_ = os.Remove(path)
		n.log.Warn("job member ended by a restart", "job", rec.Job, "rank", rec.Rank, "task", rec.Task, "reason", end.Reason)
	}
}

// ownRunDir reports whether dir is a task folder of this peer's (in the
// job folder or the state dir's runs/), so that a damaged record never
// removes anything else.
func (n *Node) ownRunDir(dir string) bool {
	var roots []string
	if n.workRoot != "" {
		roots = append(roots, n.workRoot)
	}
	if n.dir != nil {
		roots = append(roots, filepath.Join(n.dir.Path, "runs"))
	}
	if n.cfg.JobDir == "" && os.Geteuid() == 0 {
		roots = append(roots, filepath.Join(DefaultJobDir, n.id.PeerID.String()))
	}
	for _, r := range roots {
		if within(r, dir) && filepath.Clean(dir) != filepath.Clean(r) {
			return true
		}
	}
	return false
}

// keepEnded records an ended task in the data dir, keeping the newest
// maxEndedTasks.
func (n *Node) keepEnded(t EndedTask) {
	dir := filepath.Join(n.dir.Path, endedTasksDir)
	if err := os.MkdirAll(dir, 0o700); err == nil {
		data, _ := json.Marshal(t)
		if err := atomicfile.Write(filepath.Join(dir, t.Task+".json"), data, 0o600); err != nil {
			n.log.Warn("ended task not recorded", "task", t.Task, "err", err)
		}
	}
	n.endedMu.Lock()
	n.ended = append([]EndedTask{t}, n.ended...)
	for len(n.ended) > maxEndedTasks {
		old := n.ended[len(n.ended)-1]
		_ = os.Remove(filepath.Join(dir, old.Task+".json"))
		n.ended = n.ended[:len(n.ended)-1]
	}
	n.endedMu.Unlock()
}

// loadEnded reads the ended records of earlier starts.
func (n *Node) loadEnded() {
	dir := filepath.Join(n.dir.Path, endedTasksDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var ended []EndedTask
	for _, e := range ents {
		data, err := readBounded(filepath.Join(dir, e.Name()), 1<<16)
		var t EndedTask
		if err != nil || json.Unmarshal(data, &t) != nil {
			continue
		}
		ended = append(ended, t)
	}
	sort.Slice(ended, func(i, k int) bool { return ended[i].Ended.After(ended[k].Ended) })
	n.endedMu.Lock()
	n.ended = ended
	n.endedMu.Unlock()
}

// EndedTasks are the members whose work a restart of this provider ended,
// newest first (at most 64).
func (n *Node) EndedTasks() []EndedTask {
	n.endedMu.Lock()
	defer n.endedMu.Unlock()
	return append([]EndedTask(nil), n.ended...)
}
