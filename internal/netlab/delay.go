package netlab

// Userspace netem: where the kernel has no netem qdisc, Link slows a host's
// uplink in the test process instead. iptables in the host's namespace
// hands every packet leaving and entering it by its uplink to an NFQUEUE
// (queue 0 out, 1 in; queues are per namespace); the lab reads each queue
// on a netlink socket opened inside that namespace and gives each packet
// its verdict — accept, or drop for loss — once its delay has passed.
// Packets of one direction leave in the order they came (jitter delays
// the queue behind a slow packet rather than reordering: a TCP link
// sees delay and loss, not reordering that netem's jitter would add).
//
// The queue holds each packet's metadata only (NFQNL_COPY_META), so the
// cost is a few netlink messages a packet.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Netfilter queue netlink constants (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue  = 3
	nfqnlMsgPacket   = 0
	nfqnlMsgVerdict  = 1
	nfqnlMsgConfig   = 2
	nfqaCfgCmd       = 1
	nfqaCfgParams    = 2
	nfqaCfgQueueMax  = 3
	nfqaPacketHdr    = 1
	nfqaVerdictHdr   = 2
	nfqnlCfgCmdBind  = 1
	nfqnlCopyMeta    = 1
	nfAccept         = 1
	nfDrop           = 0
	delayQueueMaxLen = 16384
)

// delayQueue is one direction of one host's slowed uplink.
type delayQueue struct {
	fd    int
	queue uint16
	n     Netem
	rng   *rand.Rand
	last  time.Time // release time of the packet before: none leaves earlier
	out   chan verdict
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

type verdict struct {
	id   uint32
	at   time.Time
	drop bool
}

// userLink slows h's uplink with queues read in this process.
func (h *Host) userLink(n Netem) error {
	l := h.lab
	for i, hook := range []struct{ chain, dir string }{{"OUTPUT", "-o"}, {"INPUT", "-i"}} {
		q, err := openDelayQueue(h.NS, uint16(i), n)
		if err != nil {
			return fmt.Errorf("netlab: userspace delay of %s (%s): %w", h.Name, hook.chain, err)
		}
		l.mu.Lock()
		l.delays = append(l.delays, q)
		l.mu.Unlock()
		l.in(h.NS, "iptables", "-A", hook.chain, hook.dir, h.uplink, "-j", "NFQUEUE", "--queue-num", fmt.Sprint(i))
	}
	return nil
}

// openDelayQueue binds queue num in namespace ns and starts reading it.
func openDelayQueue(ns string, num uint16, n Netem) (*delayQueue, error) {
	fd, err := socketIn(ns)
	if err != nil {
		return nil, err
	}
	q := &delayQueue{fd: fd, queue: num, n: n, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(num))),
		out: make(chan verdict, delayQueueMaxLen), done: make(chan struct{})}
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_INET}
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params, 0xffff)
	params[4] = nfqnlCopyMeta
	maxLen := binary.BigEndian.AppendUint32(nil, delayQueueMaxLen)
	for _, attrs := range [][]attr{{{nfqaCfgCmd, cmd}}, {{nfqaCfgParams, params}, {nfqaCfgQueueMax, maxLen}}} {
		if err := q.request(nfqnlMsgConfig, attrs, true); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("bind queue %d: %w", num, err)
		}
	}
	q.wg.Add(2)
	go q.read()
	go q.release()
	return q, nil
}

// socketIn opens a netfilter netlink socket inside namespace ns: a
// socket stays in the namespace it was made in.
func socketIn(ns string) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return -1, err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return -1, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return -1, fmt.Errorf("setns %s: %w", ns, err)
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is in the wrong namespace: let it die with the
		// goroutine rather than serve others (no UnlockOSThread).
		runtime.LockOSThread()
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("setns back: %w", err)
	}
	if serr != nil {
		return -1, serr
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	// Reads wake now and then to see whether the lab is closing.
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

type attr struct {
	typ  uint16
	data []byte
}

// request sends one nfqueue message; with ack it waits for the kernel's
// answer.
func (q *delayQueue) request(typ uint16, attrs []attr, ack bool) error {
	b := make([]byte, unix.NLMSG_HDRLEN, 64)
	b = append(b, unix.AF_UNSPEC, 0)
	b = binary.BigEndian.AppendUint16(b, q.queue)
	for _, a := range attrs {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(a.data)))
		b = binary.NativeEndian.AppendUint16(b, a.typ)
		b = append(b, a.data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	flags := uint16(unix.NLM_F_REQUEST)
	if ack {
		flags |= unix.NLM_F_ACK
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	if err := unix.Sendto(q.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	if !ack {
		return nil
	}
	buf := make([]byte, 8192)
	for range 100 {
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
		}
	}
	return errors.New("no answer from the kernel")
}

// read takes the queue's packets and schedules their verdicts.
func (q *delayQueue) read() {
	defer q.wg.Done()
	defer close(q.out)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-q.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		now := time.Now()
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			id, ok := packetID(m.Data[4:])
			if !ok {
				continue
			}
			v := verdict{id: id, at: q.releaseAt(now), drop: q.n.Loss > 0 && q.rng.Float64()*100 < q.n.Loss}
			select {
			case q.out <- v:
			case <-q.done:
				return
			}
		}
	}
}

// releaseAt is when a packet that came at now leaves: its delay and
// jitter after now, and not before the packet ahead of it.
func (q *delayQueue) releaseAt(now time.Time) time.Time {
	d := q.n.Delay
	if j := q.n.Jitter; j > 0 {
		d += time.Duration((q.rng.Float64()*2 - 1) * float64(j))
	}
	at := now.Add(max(d, 0))
	if at.Before(q.last) {
		at = q.last
	}
	q.last = at
	return at
}

// packetID finds the packet's ID in a queue message's attributes.
func packetID(b []byte) (uint32, bool) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		t := binary.NativeEndian.Uint16(b[2:]) & 0x3fff
		if l < 4 || l > len(b) {
			return 0, false
		}
		if t == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(b[4:]), true
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return 0, false
}

// release gives each packet its verdict at its time.
func (q *delayQueue) release() {
	defer q.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for v := range q.out {
		if d := time.Until(v.at); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-q.done:
				return
			}
		}
		verdict := uint32(nfAccept)
		if v.drop {
			verdict = nfDrop
		}
		hdr := binary.BigEndian.AppendUint32(nil, verdict)
		hdr = binary.BigEndian.AppendUint32(hdr, v.id)
		_ = q.request(nfqnlMsgVerdict, []attr{{nfqaVerdictHdr, hdr}}, false)
	}
}

// close stops the queue's goroutines and closes its socket; packets still
// queued are the namespace's to drop.
func (q *delayQueue) close() {
	q.once.Do(func() {
		close(q.done)
		q.wg.Wait()
		unix.Close(q.fd)
	})
}
