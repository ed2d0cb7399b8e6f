package exec

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcessGroup names a process task's group so that a provider restarted
// after a crash can find what is left of it: the group's ID, the start time
// of its leader (in clock ticks since boot, from /proc/PID/stat) and the
// boot it ran in. Pids are reused; the start time and the boot tell a
// reused pid from the task's own.
type ProcessGroup struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"` // the leader's start time, clock ticks since boot; 0: unknown
	Boot  string `json:"boot"`  // /proc/sys/kernel/random/boot_id of the boot it ran in
	// Session: the leader leads a session (a command under a terminal),
	// and the group is the whole session: a shell with job control puts
	// each background job in a process group of its own, still in the
	// shell's session.
	Session bool `json:"session,omitempty"`
}

// GroupOf is the process group led by pid (a task's first process).
func GroupOf(pid int) (ProcessGroup, error) {
	st, err := readStat(pid)
	if err != nil {
		return ProcessGroup{}, err
	}
	return ProcessGroup{PGID: st.pgrp, Start: st.start, Boot: bootID()}, nil
}

// KillGroup kills (SIGKILL) every process still in g and waits up to wait
// for them to be gone; it returns how many there were. A group of another
// boot, or whose ID is now another process's (its leader started at
// another time), is left alone. A member that left the group (setsid) is
// out of its reach; of a Session group, one that left the session is.
func KillGroup(g ProcessGroup, wait time.Duration) (int, error) {
	if g.PGID <= 1 {
		return 0, fmt.Errorf("process group %d: not a task's group", g.PGID)
	}
	if g.Boot != "" && g.Boot != bootID() {
		return 0, nil // the machine rebooted since: nothing of it is left
	}
	members, reused := groupMembers(g)
	if reused || len(members) == 0 {
		return 0, nil
	}
	if err := syscall.Kill(-g.PGID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return len(members), fmt.Errorf("kill process group %d: %w", g.PGID, err)
	}
	if g.Session {
		for _, pid := range members { // those in groups of their own
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(wait)
	for {
		left, _ := groupMembers(g)
		if len(left) == 0 {
			return len(members), nil
		}
		if time.Now().After(deadline) {
			return len(members), fmt.Errorf("process group %d: %d of its processes still there %s after SIGKILL (pids %v)", g.PGID, len(left), wait, left)
		}
		time.Sleep(20 * time.Millisecond) // polling /proc: the processes are not ours to wait for
	}
}

// groupMembers lists the live processes (zombies excepted) of g, and says
// whether g's ID now belongs to a group that is not g.
func groupMembers(g ProcessGroup) (pids []int, reused bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		in := st.pgrp == g.PGID || (g.Session && st.session == g.PGID)
		if err != nil || !in || st.state == "Z" || st.state == "X" {
			if err == nil && pid == g.PGID && g.Start != 0 && st.start != g.Start {
				return nil, true // the leader's pid is another process's now
			}
			continue
		}
		if pid == g.PGID && g.Start != 0 && st.start != g.Start {
			return nil, true
		}
		if st.start < g.Start { // older than the leader: not of this group
			continue
		}
		pids = append(pids, pid)
	}
	return pids, false
}

type procStat struct {
	state   string
	pgrp    int
	session int
	start   uint64
}

// readStat reads the fields of /proc/PID/stat that KillGroup needs.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime priority nice threads
	// itrealvalue starttime ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	pgrp, err1 := strconv.Atoi(f[2])
	session, err3 := strconv.Atoi(f[3])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: bad pgrp, session or start time", pid)
	}
	return procStat{state: f[0], pgrp: pgrp, session: session, start: start}, nil
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// JobUser is the unprivileged account the process executor runs work as,
// so that the work cannot read what this peer's own user can (its data
// dir, whose key.json is its wallet).
type JobUser struct {
	Name string
	UID  uint32
	GID  uint32
}

// DefaultJobUser is the account made for process tasks when none is named.
const DefaultJobUser = "gpumesh-job"

// LookupJobUser finds the account name; with create, a missing one is made
// as a system user with no home and no login shell (useradd, which needs
// root). The account must not be root, nor in root's group.
func LookupJobUser(name string, create bool) (JobUser, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) && create {
		if err = addSystemUser(name); err == nil {
			u, err = user.Lookup(name)
		}
	}
	if err != nil {
		if errors.As(err, &unknown) {
			return JobUser{}, fmt.Errorf("job user %q does not exist; make it with `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s`, or leave --job-user out to have %q made", name, name, DefaultJobUser)
		}
		return JobUser{}, fmt.Errorf("job user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return JobUser{}, fmt.Errorf("job user %q has uid %q and gid %q: want numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 || gid == 0 {
		return JobUser{}, fmt.Errorf("job user %q is root or in root's group (uid %d, gid %d): jobs must run unprivileged; name another with --job-user", name, uid, gid)
	}
	return JobUser{Name: name, UID: uint32(uid), GID: uint32(gid)}, nil
}

// addSystemUser runs useradd; another process making the same user at the
// same time is fine.
func addSystemUser(name string) error {
	var last error
	for try := range 5 {
		out, err := osexec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err == nil {
			return nil
		}
		if _, lerr := user.Lookup(name); lerr == nil {
			return nil // made by someone else meanwhile
		}
		last = fmt.Errorf("useradd %s: %v: %s", name, err, bytes.TrimSpace(out))
		time.Sleep(time.Duration(try+1) * 100 * time.Millisecond) // /etc/passwd was locked by another useradd
	}
	return fmt.Errorf("making job user %q: %w; make it yourself (useradd --system --user-group %s) or name one with --job-user", name, last, name)
}
