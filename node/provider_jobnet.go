package node

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobwire"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/vishvananda/netns"
)

// A member's job network, the provider's side: the start frame names the
// provider of every member; this provider gives its member an interface on
// the job's subnet and forwards its packets (package node/jobnet).

// memberNet is one member's place on its job network.
type memberNet struct {
	n      *Node
	plan   *jobnet.Plan
	rank   int
	member atomic.Pointer[jobnet.Member] // once joined
	left   *jobwire.NetMeter
}

// memberNet reads a start frame's job network; nil where it has none.
func (n *Node) memberNet(st jobwire.StartFrame) (*memberNet, error) {
	if len(st.Net) == 0 {
		return nil, nil
	}
	if n.jobnet == nil {
		return nil, fmt.Errorf("this provider has no job network")
	}
	peers := make([]string, len(st.Net))
	for i, m := range st.Net {
		peers[i] = m.Peer
	}
	plan, err := jobnet.NewPlan(st.Job, st.Attempt, peers, n.id.PeerID)
	if err != nil {
		return nil, err
	}
	if plan.Peers[st.Rank] != n.id.PeerID {
		return nil, fmt.Errorf("the start frame's job network puts member %d on %s, not on this provider", st.Rank, plan.Peers[st.Rank])
	}
	// Where the other providers listen, as the submitter knows them: they
	// may never have met.
	for i, m := range st.Net {
		if plan.Peers[i] == n.id.PeerID {
			continue
		}
		for _, s := range m.Addrs {
			if a, err := ma.NewMultiaddr(s); err == nil {
				n.host.Peerstore().AddAddr(plan.Peers[i], a, peerAddrTTL)
			}
		}
	}
	return &memberNet{n: n, plan: plan, rank: st.Rank}, nil
}

// peerAddrTTL is how long a job network's provider addresses are kept.
const peerAddrTTL = 24 * time.Hour

// join is the executor's JoinNet: the interface in the namespace of the
// work's first process, and the member on the job network. nil for no job
// network.
func (jn *memberNet) join() func(pid int) error {
	if jn == nil {
		return nil
	}
	return func(pid int) error {
		ns, err := netns.GetFromPid(pid)
		if err != nil {
			return fmt.Errorf("the work's network namespace: %w", err)
		}
		defer ns.Close()
		iface, err := jobnet.Attach(ns, jn.plan.Prefix(jn.rank), jobnet.MTU)
		if err != nil {
			return err
		}
		m, err := jn.n.jobnet.Join(jn.plan, jn.rank, iface)
		if err != nil {
			iface.Close()
			return err
		}
		jn.member.Store(m)
		return nil
	}
}

// leave takes the member off its job network, once, and says what crossed
// it (nil: it never joined).
func (jn *memberNet) leave() *jobwire.NetMeter {
	if jn == nil || jn.member.Load() == nil {
		return nil
	}
	if jn.left == nil {
		m := jn.member.Load().Leave()
		jn.n.log.Info("job network member left", "job", jn.plan.Job, "rank", jn.rank, "addr", jn.plan.Addr(jn.rank),
			"sentBytes", m.SentBytes, "receivedBytes", m.ReceivedBytes, "dropped", m.Dropped, "refused", m.Refused)
		jn.left = &jobwire.NetMeter{SentBytes: m.SentBytes, ReceivedBytes: m.ReceivedBytes, Dropped: m.Dropped + m.Refused,
			Direct: m.Direct, Relayed: m.Relayed}
	}
	return jn.left
}

// netBeats is how often a heartbeat carries the member's job network
// meter, in heartbeats: the submitter keeps the job's record up to date
// with it (job status shows it live), and writes it each time.
const netBeats = 5

// live is the member's job network so far, for a heartbeat: nil before it
// joined (or without one).
func (jn *memberNet) live() *jobwire.NetMeter {
	if jn == nil {
		return nil
	}
	m := jn.member.Load()
	if m == nil {
		return nil
	}
	mt := m.Meter()
	return &jobwire.NetMeter{SentBytes: mt.SentBytes, ReceivedBytes: mt.ReceivedBytes, Dropped: mt.Dropped + mt.Refused,
		Direct: mt.Direct, Relayed: mt.Relayed}
}
