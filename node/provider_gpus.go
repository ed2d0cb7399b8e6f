package node

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/jobnet"
	"github.com/gpumesh/gpumesh/node/jobwire"
	"github.com/libp2p/go-libp2p/core/peer"
)

// newReservations makes this peer's provider side from its GPUs and asks;
// nil when it has nothing to offer.
func (n *Node) newReservations() (*gossip.Reservations, error) {
	inv := n.LocalGPUs().Inventory
	byClass := map[string]*gossip.Capacity{}
	var classes []string
	for _, g := range inv.GPUs {
		c, ok := byClass[g.Class]
		if !ok {
			price, _ := n.Ask(g.Class)
			c = &gossip.Capacity{Class: g.Class, Model: exec.Model(g.Name), VRAMGB: exec.VRAMGB(g.MemoryTotal), Price: price}
			byClass[g.Class] = c
			classes = append(classes, g.Class)
		}
		c.GPUs++
	}
	sort.Strings(classes)
	var caps []gossip.Capacity
	for _, c := range classes {
		if byClass[c].Price > 0 { // no ask, no bid
			caps = append(caps, *byClass[c])
		}
	}
	if len(caps) == 0 {
		return nil, nil
	}
	var addrs []string
	for _, a := range n.host.Addrs() {
		if len(addrs) < 8 {
			addrs = append(addrs, a.String())
		}
	}
	// A member of several meets the others on its job's network
	// (provider_jobnet.go), which this provider may be unable to make.
	// Then, in a private swarm, its bids say so and the members of a job
	// that takes it meet on the host network; in the public swarm it bids
	// only on jobs it takes whole (gossip.ProviderConfig.NoJobNet).
	noJobNet, hostNetOK := false, n.cfg.Swarm.Private() && !n.cfg.NoHostNetwork
	if err := probeJobNet(n); err != nil {
		noJobNet = true
		if hostNetOK {
			n.log.Warn("members of jobs of several run on this provider's host network (a private swarm): it cannot make job networks", "err", err)
		} else {
			n.log.Warn("bidding only on jobs this provider takes whole: it cannot give members of several a job network", "err", err)
		}
	}
	return gossip.NewReservations(gossip.ProviderConfig{
		ID: n.id.PeerID, Unit: n.PriceUnit().String(), Zone: n.cfg.Region, Addrs: addrs, GPUs: caps,
		NoJobNet: noJobNet, HostNetOK: hostNetOK, Egress: n.cfg.JobEgress,
		NoHostNet: n.cfg.Swarm.Private() && n.cfg.NoHostNetwork, // said where host-network clusters form
	})
}

// syncAsks brings the prices this provider bids at to its asks of now (an
// auto policy moves them; a class without an ask gets no bid).
func (n *Node) syncAsks(res *gossip.Reservations) {
	var done []string
	for _, g := range n.LocalGPUs().Inventory.GPUs {
		if slices.Contains(done, g.Class) {
			continue
		}
		done = append(done, g.Class)
		price, _ := n.Ask(g.Class)
		res.SetPrice(g.Class, price)
	}
}

// noteFree records the unreserved GPUs per class for FreeGPUs.
func (n *Node) noteFree(res *gossip.Reservations, now time.Time) {
	free := map[string]uint32{}
	for _, g := range n.LocalGPUs().Inventory.GPUs {
		free[g.Class] = res.Free(g.Class, now)
	}
	n.freeMu.Lock()
	changed := !maps.Equal(n.free, free)
	n.free = free
	n.freeMu.Unlock()
	if changed && n.freeMoved != nil {
		select {
		case n.freeMoved <- struct{}{}:
		default:
		}
	}
}

// freeTicks gossips this provider's asks again after its free GPUs change
// (GPUs leased, a member ended, a reservation lapsed), at most once a
// second (the price topic allows a provider 2 ticks a second). GPUs freed
// are told at once, so a submitter whose job is queued hears of them
// rather than at the next heartbeat. GPUs taken are told once they have
// stayed taken Config.TakenTickDelay (2 s; stepPrices holds the fall back
// till then, and the price loop's steps with it): the tick is not urgent
// (a submitter that asks meanwhile gets a smaller bid or none, and asks
// others); a tick sent at once floods every peer while the cluster that
// took the GPUs is still forming (each peer checks its signature: ~1,000
// checks a member at 1,000 peers, docs/scale.md); and GPUs freed again
// before then (a job cancelled, or failed at its start) cost no tick.
func (n *Node) freeTicks(ctx context.Context) {
	defer n.wg.Done()
	var last time.Time
	told := n.FreeGPUs()   // free GPUs as of the last tick
	var settle *time.Timer // a fall waiting to be told
	var settled <-chan time.Time
	defer func() {
		if settle != nil {
			settle.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.freeMoved:
			switch free := n.FreeGPUs(); {
			case freedSince(told, free):
			case maps.Equal(told, free): // taken and freed again: nothing to tell here
				if settle != nil {
					settle.Stop()
					settle, settled = nil, nil
				}
				// But a price step may have told the fall since told was
				// set: stepPrices sends the GPUs freed if it did (at most
				// one a fall, and falls wait TakenTickDelay), else nothing.
				n.stepPrices(ctx, n.now())
				continue
			default: // taken: told once it has lasted (stepPrices notes when it began)
				n.stepPrices(ctx, n.now())
				if settle == nil {
					settle = time.NewTimer(n.takenTickDelay())
					settled = settle.C
				}
				continue
			}
		case <-settled:
		}
		if settle != nil {
			settle.Stop()
			settle, settled = nil, nil
		}
		if wait := time.Second - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		told = n.FreeGPUs()
		n.stepPrices(ctx, n.now())
	}
}

// takenTickDelay is how long after GPUs are taken a tick tells of it
// (Config.TakenTickDelay; stepPrices holds the fall back until then,
// freeTicks steps the prices then).
func (n *Node) takenTickDelay() time.Duration {
	return cmp.Or(n.cfg.TakenTickDelay, 2*time.Second)
}

// freedSince reports whether a class has more free GPUs now than before.
func freedSince(before, now map[string]uint32) bool {
	for c, f := range now {
		if f > before[c] {
			return true
		}
	}
	return false
}

// FreeGPUs is this provider's GPUs per class that no job holds (nil for a
// peer that offers none).
func (n *Node) FreeGPUs() map[string]uint32 {
	n.freeMu.Lock()
	defer n.freeMu.Unlock()
	out := make(map[string]uint32, len(n.free))
	for c, f := range n.free {
		out[c] = f
	}
	return out
}

// allocGPUs takes the GPUs of a reservation for a task: two tasks never
// hold one GPU. (A reservation runs one member at a time: the negotiation
// loop's Reservations.Start refuses a second start before this.)
func (n *Node) allocGPUs(held gossip.Reservation, task string) ([]exec.GPU, error) {
	inv := n.LocalGPUs().Inventory
	n.gpuMu.Lock()
	defer n.gpuMu.Unlock()
	if n.gpuUse == nil {
		n.gpuUse = map[string]string{}
	}
	count, class := int(held.GPUs), held.Class
	var got []exec.GPU
	for _, g := range inv.GPUs {
		if g.Class == class && n.gpuUse[g.UUID] == "" && len(got) < count {
			got = append(got, g)
		}
	}
	if len(got) < count {
		return nil, fmt.Errorf("only %d of the %d reserved %s GPUs are free on this provider", len(got), count, class)
	}
	for _, g := range got {
		n.gpuUse[g.UUID] = task
	}
	return got, nil
}

// freeGPUs gives back what a task took.
func (n *Node) freeGPUs(task string) {
	n.gpuMu.Lock()
	defer n.gpuMu.Unlock()
	for u, t := range n.gpuUse {
		if t == task {
			delete(n.gpuUse, u)
		}
	}
}

// GPUsInUse maps the UUIDs of this provider's GPUs that jobs run on to the
// task running there.
func (n *Node) GPUsInUse() map[string]string {
	n.gpuMu.Lock()
	defer n.gpuMu.Unlock()
	out := make(map[string]string, len(n.gpuUse))
	for u, t := range n.gpuUse {
		out[u] = t
	}
	return out
}

// startReservation asks the negotiation loop to run a member on a job's
// reservation held for submitter: it is confirmed, and it no longer lapses
// or ends under its member (releaseReservation ends it). A reservation runs
// one member: a second start gets gossip.ErrMemberRuns.
func (n *Node) startReservation(ctx context.Context, job gossip.JobID, submitter peer.ID) (gossip.Reservation, error) {
	reply := make(chan startReply, 1)
	select {
	case n.in <- negEvent{start: &startQuery{job: job, submitter: submitter, reply: reply}}:
	case <-ctx.Done():
		return gossip.Reservation{}, ctx.Err()
	}
	select {
	case r := <-reply:
		return r.res, r.err
	case <-ctx.Done():
		return gossip.Reservation{}, ctx.Err()
	}
}

// releaseReservation gives a job's GPUs back once its member has ended.
func (n *Node) releaseReservation(ctx context.Context, held gossip.Reservation) {
	n.deliver(ctx, negEvent{ended: &held})
}

type startQuery struct {
	job       gossip.JobID
	submitter peer.ID
	reply     chan startReply
}

type startReply struct {
	res gossip.Reservation
	err error
}

// probeJobNet says whether this peer can make job networks
// (jobnet.Probe): a test may play a provider that cannot
// (export_test.go).
func probeJobNet(n *Node) error {
	if f := jobNetProbe.Load(); f != nil {
		return (*f)(n.cfg.Region)
	}
	return jobnet.Probe()
}

// jobNetProbe, when set, replaces jobnet.Probe, given the node's region.
var jobNetProbe atomic.Pointer[func(region string) error]

// bidForPeer is msg as it goes to peer to: a bid marked NoHostNet goes
// without the mark (older true) to a submitter of a version before it,
// which decodes bids strictly and would drop the whole bid; that
// submitter may then put this provider in a cluster on the host network,
// and the member is refused at its start, as before. A peer of this
// version serves jobwire.Protocol11, which came with the mark; one whose
// protocols are not known (identify has not run) counts as older.
func (n *Node) bidForPeer(to peer.ID, msg gossip.Message) (m gossip.Message, older bool) {
	b, ok := msg.(*gossip.Bid)
	if !ok || !b.NoHostNet {
		return msg, false
	}
	if ps, err := n.host.Peerstore().SupportsProtocols(to, jobwire.Protocol11); err == nil && len(ps) > 0 {
		return msg, false
	}
	plain := *b
	plain.NoHostNet = false
	return &plain, true
}
