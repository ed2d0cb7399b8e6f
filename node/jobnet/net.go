package jobnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// Defaults and bounds of forwarding.
const (
	// DefaultRateBytes bounds the bytes a second one member is sent from
	// other providers; more are dropped. BenchmarkJobNetAgainstVeth
	// measured 820-920 MB/s member to member (both providers on one
	// loaded 2-core machine): twice that leaves a faster machine room and
	// a flood none.
	DefaultRateBytes = 2 << 30
	// DefaultRatePackets bounds the packets a second one member is sent
	// from other providers: at the MTU, the benchmark's 900 MB/s is 14,000
	// packets a second; small packets (a collective's acks, pings) come
	// at most a few times as often as big ones.
	DefaultRatePackets = 200_000
	// queuePackets is how many packets wait for one provider's stream;
	// more are dropped, as a full link drops them. Each holds a buffer of
	// MTU bytes: 8 MiB a link at most, about 9 ms at the benchmark's rate.
	queuePackets = 128
	// helloTimeout bounds the wait for a stream's hello, openTimeout the
	// opening of a stream.
	helloTimeout = 10 * time.Second
	openTimeout  = 10 * time.Second
	// retryAfter is how long packets to a provider are dropped after a
	// stream to it could not be opened or failed.
	retryAfter = 200 * time.Millisecond
	// writeTimeout bounds one write to a provider that stops reading.
	writeTimeout = 10 * time.Second
	// batchBytes is about the most packets queued together that go out in
	// one write, bytes; readBytes the read buffer of a stream.
	batchBytes = 128 << 10
	readBytes  = 256 << 10
)

// Config is how a Net forwards. The zero value of each field is its
// default.
type Config struct {
	Log         *slog.Logger
	RateBytes   int64 // bytes a second a member is sent from other providers; 0: DefaultRateBytes
	RatePackets int   // packets a second, likewise; 0: DefaultRatePackets
}

// Net is a provider's side of its members' job networks: it reads what
// each member sends on its interface and forwards it to the provider of
// the member it is for, over a stream of Protocol, and writes what other
// providers send for its members into their interfaces, after checking it
// with the job's Plan.
type Net struct {
	h   host.Host
	cfg Config

	mu      sync.Mutex // guards jobs and closed
	jobs    map[jobKey]*job
	closed  bool
	streams sync.WaitGroup // goroutines serving streams
}

type jobKey struct {
	job     string
	attempt int
}

// job is a job network with a member on this provider.
type job struct {
	plan    *Plan
	members map[int]*Member            // this provider's members, by rank
	out     map[peer.ID]*outLink       // to the other providers, opened when first needed
	in      map[peer.ID]network.Stream // from them: one a provider
}

// Meter is what crossed a member's interface.
type Meter struct {
	SentBytes, SentPackets         int64 // the member sent, forwarded
	ReceivedBytes, ReceivedPackets int64 // the member was sent, written to it
	Dropped                        int64 // packets for it dropped: over its rates, or its interface full
	Refused                        int64 // packets it sent that did not go: not to a member of its job, or a full link
	// Direct and Relayed count the other providers of its job this
	// provider was connected to when it was metered: directly (or
	// hole-punched), or only through a relay.
	Direct, Relayed int
}

// Member is one member of a job on this provider, on its job network.
type Member struct {
	n     *Net
	plan  *Plan
	key   jobKey
	rank  int
	iface *Iface
	bytes *rate.Limiter // what other providers may send it
	pkts  *rate.Limiter
	done  chan struct{} // closed when its reader ended

	sentB, sentP, recvB, recvP, dropped, refused atomic.Int64
	warned                                       atomic.Bool // a refused packet was logged
}

// New makes a Net on host h; Start serves the protocol.
func New(h host.Host, cfg Config) *Net {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RateBytes <= 0 {
		cfg.RateBytes = DefaultRateBytes
	}
	if cfg.RatePackets <= 0 {
		cfg.RatePackets = DefaultRatePackets
	}
	return &Net{h: h, cfg: cfg, jobs: map[jobKey]*job{}}
}

// Start serves Protocol.
func (n *Net) Start() { n.h.SetStreamHandler(Protocol, n.handle) }

// Close stops serving Protocol and ends every link; members still joined
// keep their interfaces until they Leave. Safe to call twice.
func (n *Net) Close() {
	n.h.RemoveStreamHandler(Protocol)
	n.mu.Lock()
	n.closed = true
	for k, j := range n.jobs {
		n.dropLinks(j)
		delete(n.jobs, k)
	}
	n.mu.Unlock()
	n.streams.Wait()
}

// Join puts member rank of plan's job (one of this provider's) on the job
// network through iface, which it owns from now: Leave closes it. The
// other providers are dialled through the host's peerstore and routing.
func (n *Net) Join(plan *Plan, rank int, iface *Iface) (*Member, error) {
	if rank < 0 || rank >= len(plan.Peers) || plan.Peers[rank] != plan.Local {
		return nil, fmt.Errorf("jobnet: member %d of job %s is not this provider's", rank, plan.Job)
	}
	k := jobKey{plan.Job, plan.Attempt}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("jobnet: closed")
	}
	j := n.jobs[k]
	if j == nil {
		j = &job{plan: plan, members: map[int]*Member{}, out: map[peer.ID]*outLink{}, in: map[peer.ID]network.Stream{}}
		n.jobs[k] = j
	}
	if j.members[rank] != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("jobnet: member %d of job %s joined twice", rank, plan.Job)
	}
	m := &Member{n: n, plan: plan, key: k, rank: rank, iface: iface, done: make(chan struct{}),
		bytes: rate.NewLimiter(rate.Limit(n.cfg.RateBytes), int(min(n.cfg.RateBytes, 1<<30))),
		pkts:  rate.NewLimiter(rate.Limit(n.cfg.RatePackets), n.cfg.RatePackets)}
	j.members[rank] = m
	n.mu.Unlock()
	go m.read()
	return m, nil
}

// Leave takes the member off its job network, removes its interface and
// says what crossed it (and the connections it went over). The last
// member of a job on this provider ends its links. Safe to call twice.
func (m *Member) Leave() Meter {
	mt := m.Meter()
	_ = m.iface.Close()
	<-m.done
	n := m.n
	n.mu.Lock()
	if j := n.jobs[m.key]; j != nil && j.members[m.rank] == m {
		delete(j.members, m.rank)
		if len(j.members) == 0 {
			n.dropLinks(j)
			delete(n.jobs, m.key)
		}
	}
	n.mu.Unlock()
	last := m.Meter()
	last.Direct, last.Relayed = mt.Direct, mt.Relayed
	return last
}

// Meter says what crossed the member's interface so far, and how this
// provider is connected to the job's other providers now.
func (m *Member) Meter() Meter {
	mt := Meter{SentBytes: m.sentB.Load(), SentPackets: m.sentP.Load(), ReceivedBytes: m.recvB.Load(),
		ReceivedPackets: m.recvP.Load(), Dropped: m.dropped.Load(), Refused: m.refused.Load()}
	seen := map[peer.ID]bool{}
	for _, p := range m.plan.Peers {
		if p == m.plan.Local || seen[p] {
			continue
		}
		seen[p] = true
		direct, relayed := false, false
		for _, c := range m.n.h.Network().ConnsToPeer(p) {
			if c.Stat().Limited {
				relayed = true
			} else {
				direct = true
			}
		}
		switch {
		case direct:
			mt.Direct++
		case relayed:
			mt.Relayed++
		}
	}
	return mt
}

// dropLinks ends a job's streams; n.mu is held.
func (n *Net) dropLinks(j *job) {
	for p, l := range j.out {
		l.close()
		delete(j.out, p)
	}
	for p, s := range j.in {
		_ = s.Reset()
		delete(j.in, p)
	}
}

func (m *Member) refuse(err error) {
	m.refused.Add(1)
	if !m.warned.Swap(true) {
		m.n.cfg.Log.Info("job network packet dropped (logged once a member)", "job", m.key.job, "rank", m.rank, "err", err)
	}
}

// read forwards what the member sends, until its interface closes.
func (m *Member) read() {
	defer close(m.done)
	n := m.n
	for {
		buf := getBuf()
		k, err := m.iface.Read(buf)
		if err != nil {
			putBuf(buf)
			return
		}
		pkt := buf[:k]
		if k > 0 && pkt[0]>>4 == 6 { // the kernel's own IPv6 chatter: the job network is IPv4
			putBuf(buf)
			continue
		}
		n.mu.Lock()
		j := n.jobs[m.key]
		if j == nil {
			n.mu.Unlock()
			putBuf(buf)
			return
		}
		to, err := j.plan.Outbound(m.rank, pkt)
		if err != nil {
			n.mu.Unlock()
			putBuf(buf)
			m.refuse(err)
			continue
		}
		dst := j.plan.Peers[to]
		if dst == j.plan.Local { // a member of the same job on this provider
			peerM := j.members[to]
			n.mu.Unlock()
			if peerM != nil && peerM.deliver(pkt) {
				m.sentB.Add(int64(k))
				m.sentP.Add(1)
			} else {
				m.refused.Add(1)
			}
			putBuf(buf)
			continue
		}
		l := j.out[dst]
		if l == nil {
			l = newOutLink(n, m.key, dst)
			j.out[dst] = l
		}
		n.mu.Unlock()
		if l.send(pkt) { // the link owns buf now
			m.sentB.Add(int64(k))
			m.sentP.Add(1)
		} else {
			putBuf(buf)
			m.refused.Add(1)
		}
	}
}

// deliver writes a packet for the member into its interface, within its
// rates.
func (m *Member) deliver(pkt []byte) bool {
	now := time.Now()
	if !m.pkts.AllowN(now, 1) || !m.bytes.AllowN(now, len(pkt)) {
		m.dropped.Add(1)
		return false
	}
	if _, err := m.iface.Write(pkt); err != nil {
		m.dropped.Add(1)
		return false
	}
	m.recvB.Add(int64(len(pkt)))
	m.recvP.Add(1)
	return true
}

// handle serves a stream another provider opened: its hello, then its
// packets, each checked with the job's plan before it is delivered.
func (n *Net) handle(s network.Stream) {
	from := s.Conn().RemotePeer()
	_ = s.SetReadDeadline(time.Now().Add(helloTimeout))
	br := bufio.NewReaderSize(s, readBytes)
	h, err := ReadHello(br)
	if err != nil {
		_ = s.Reset()
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	k := jobKey{h.Job, h.Attempt}
	n.mu.Lock()
	j := n.jobs[k]
	if j == nil || n.closed || !j.plan.Runs(from) || from == j.plan.Local {
		n.mu.Unlock()
		_ = s.Reset()
		return
	}
	if old := j.in[from]; old != nil { // one stream a provider: the newest
		_ = old.Reset()
	}
	j.in[from] = s
	plan := j.plan
	n.streams.Add(1)
	n.mu.Unlock()
	defer n.streams.Done()
	defer func() {
		n.mu.Lock()
		if j.in[from] == s {
			delete(j.in, from)
		}
		n.mu.Unlock()
		_ = s.Reset()
	}()
	pr := NewPacketReader(br)
	for {
		pkt, err := pr.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				n.cfg.Log.Debug("job network stream ended", "job", h.Job, "from", from, "err", err)
			}
			return
		}
		to, err := plan.Inbound(from, pkt)
		n.mu.Lock()
		var m *Member
		if err == nil {
			m = j.members[to]
		}
		n.mu.Unlock()
		if err != nil {
			// Not for a member of this provider, or not from one of the
			// sender's: a peer that speaks the protocol wrongly is cut off.
			n.cfg.Log.Info("job network: a provider sent a packet it may not; its stream is closed", "job", h.Job, "from", from, "err", err)
			return
		}
		if m != nil {
			m.deliver(pkt)
		}
	}
}

// outLink is the stream to one other provider of a job, opened when first
// needed and again after it failed (not sooner than retryAfter).
type outLink struct {
	n     *Net
	key   jobKey
	to    peer.ID
	q     chan []byte
	stop  chan struct{}
	once  sync.Once
	retry atomic.Int64 // unix ns before which packets are dropped
}

func newOutLink(n *Net, k jobKey, to peer.ID) *outLink {
	l := &outLink{n: n, key: k, to: to, q: make(chan []byte, queuePackets), stop: make(chan struct{})}
	n.streams.Add(1)
	go l.run()
	return l
}

func (l *outLink) close() { l.once.Do(func() { close(l.stop) }) }

// send queues pkt, a buffer of getBuf's that the link then owns and puts
// back; false: dropped, and the caller keeps it.
func (l *outLink) send(pkt []byte) bool {
	if time.Now().UnixNano() < l.retry.Load() {
		return false
	}
	select {
	case l.q <- pkt:
		return true
	default:
		return false
	}
}

func (l *outLink) run() {
	defer l.n.streams.Done()
	var s network.Stream
	defer func() {
		if s != nil {
			_ = s.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	fail := func(err error) {
		l.n.cfg.Log.Debug("job network link failed", "job", l.key.job, "to", l.to, "err", err)
		if s != nil {
			_ = s.Reset()
		}
		s = nil
		l.retry.Store(time.Now().Add(retryAfter).UnixNano())
	}
	batch := make([]byte, 0, batchBytes+MTU+2)
	for {
		var pkt []byte
		select {
		case <-l.stop:
			return
		case pkt = <-l.q:
		}
		batch = batch[:0]
		if s == nil {
			octx, ocancel := context.WithTimeout(ctx, openTimeout)
			ns, err := l.n.h.NewStream(octx, l.to, Protocol)
			ocancel()
			if err != nil {
				putBuf(pkt)
				fail(err)
				continue
			}
			s = ns
			batch, _ = AppendHello(batch, Hello{Job: l.key.job, Attempt: l.key.attempt})
		}
		// What else waits goes out in the same write.
		for pkt != nil {
			batch, _ = AppendPacket(batch, pkt)
			putBuf(pkt)
			pkt = nil
			if len(batch) < batchBytes {
				select {
				case pkt = <-l.q:
				default:
				}
			}
		}
		_ = s.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := s.Write(batch); err != nil {
			fail(err)
		}
	}
}

var bufs = sync.Pool{New: func() any { b := make([]byte, MTU); return &b }}

func getBuf() []byte { return (*bufs.Get().(*[]byte))[:MTU] }

func putBuf(b []byte) {
	b = b[:cap(b)]
	bufs.Put(&b)
}
