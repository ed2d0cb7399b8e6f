package dht

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpumesh/gpumesh/internal/lazystream"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
)

// fetchTimeout bounds asking a provider for its offer directly.
const fetchTimeout = 3 * time.Second

// OfferProtocol is "/gpumesh/<swarm>/offer/1.0.0": a peer opens a stream, and
// the provider answers with its current sealed offer (at most MaxOfferSize
// bytes) and closes it. The answer is checked like a DHT record.
func OfferProtocol(swarm string) protocol.ID {
	return ProtocolPrefix(swarm) + "/offer/1.0.0"
}

// serveOffer answers a direct request for this peer's offer.
func (d *Directory) serveOffer(s network.Stream) {
	defer s.Close()
	d.mu.Lock()
	own := d.own
	d.mu.Unlock()
	if own == nil {
		_ = s.Reset()
		return
	}
	_ = s.SetWriteDeadline(time.Now().Add(fetchTimeout))
	if _, err := s.Write(own); err != nil {
		_ = s.Reset()
	}
}

// fetchTiming is where one offer fetch's time went.
type fetchTiming struct {
	dialed     bool          // no connection to the provider before
	open, read time.Duration // opening the stream; reading the offer
}

// fetchOffer asks a provider for its offer over a direct stream: one round
// trip instead of a DHT value lookup, and as fresh as it gets.
func (d *Directory) fetchOffer(ctx context.Context, info peer.AddrInfo, ft *fetchTiming) (*Offer, error) {
	if info.ID == d.host.ID() { // this peer's own: no stream to itself
		d.mu.Lock()
		own := d.own
		d.mu.Unlock()
		if own == nil {
			return nil, fmt.Errorf("offer of %s: this peer has published none", info.ID)
		}
		return d.validator.open(OfferKey(info.ID), own)
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	if len(info.Addrs) > 0 {
		d.host.Peerstore().AddAddrs(info.ID, info.Addrs, time.Minute)
	}
	ft.dialed = d.host.Network().Connectedness(info.ID) != network.Connected
	t0 := time.Now()
	s, err := lazystream.Open(ctx, d.host, info.ID, d.offerProto, d.lookup.IdentifyFirst)
	ft.open = time.Since(t0)
	if err != nil {
		return nil, err
	}
	defer func() { ft.read = time.Since(t0) - ft.open }()
	// Not every transport honours deadlines; the context ends the stream too.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	_ = s.SetReadDeadline(time.Now().Add(fetchTimeout))
	_ = s.CloseWrite()
	data, err := io.ReadAll(io.LimitReader(s, MaxOfferSize+1))
	_ = s.Close()
	if err != nil {
		return nil, err
	}
	o, err := d.validator.open(OfferKey(info.ID), data)
	if err != nil {
		return nil, fmt.Errorf("offer from %s: %w", info.ID, err)
	}
	return o, nil
}

// Among fetches the offers of the providers named (the cheapest that the
// price board lists, say) and returns the live ones that match q, cheapest
// first: a search without the index lookup's walk. A provider this peer is
// neither connected to nor has an address of is first found by a DHT walk
// (Timing.PeerWalks, walkAndFetch); so is one whose fetch failed, before
// any connection to it, with the addresses this peer held. Once the offers
// in hand make q.Count, the providers still to answer get as long again as
// that took, and are left out if they have not answered by then: a silent
// provider delays the answer by at most what the others took. Only another
// provider's answer starts that clock (this peer's own offer takes no time
// to read). Being left out says nothing against a provider (one farther
// away, or behind a walk, is slower); a provider whose offer fetch failed,
// that answered with no valid offer, that no walk found, or that was still
// silent when ctx ended, is listed in Unanswered. No fallback to a
// provider's DHT record: a caller that finds too few searches the index.
// At most MaxNamed providers are asked.
func (d *Directory) Among(ctx context.Context, q Query, providers []peer.ID) FindResult {
	start := time.Now()
	seen := map[peer.ID]bool{}
	providers = slices.DeleteFunc(slices.Clone(providers), func(p peer.ID) bool {
		dup := seen[p]
		seen[p] = true
		return dup
	})
	providers = providers[:min(len(providers), MaxNamed)]
	res := FindResult{IndexKey: q.lookupKey(), Matches: []Match{}, Named: true, Indexed: len(providers)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		enough = make(chan struct{})
		once   sync.Once
		cut    atomic.Bool // the grace after the count was made has ended
		failed = map[peer.ID]bool{}
	)
	fail := func(p peer.ID) {
		if cut.Load() {
			return // left out by the grace, not failed
		}
		mu.Lock()
		failed[p] = true
		mu.Unlock()
	}
	sem := make(chan struct{}, maxParallelFetch)
	for _, p := range providers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			// Connected, or with an address here: fetched at once. A
			// fetch that found no way to the provider with the addresses
			// this peer holds (a stranger's word, perhaps false) is tried
			// again after a walk; with none, the walk comes first.
			connected := p == d.host.ID() || d.host.Network().Connectedness(p) == network.Connected
			held := !connected && len(d.host.Peerstore().Addrs(p)) > 0
			ok := (connected || held) && d.fetchAndMatch(ctx, peer.AddrInfo{ID: p}, q, &mu, &res, start, false)
			if !ok && !connected && ctx.Err() == nil && d.host.Network().Connectedness(p) != network.Connected {
				mu.Lock()
				res.Timing.PeerWalks++
				if held {
					res.AddrsFailed = append(res.AddrsFailed, p)
				}
				mu.Unlock()
				ok = d.walkAndFetch(ctx, p, q, &mu, &res, start)
			}
			if !ok {
				fail(p)
				return
			}
			mu.Lock()
			made := res.GPUs >= q.Count
			mu.Unlock()
			// This peer's own offer is read at once: it starts no clock, or
			// the grace would end before any other provider could answer.
			if made && p != d.host.ID() {
				once.Do(func() { close(enough) })
			}
		}()
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-enough:
		grace := time.NewTimer(time.Since(start))
		select {
		case <-all:
		case <-grace.C:
			cut.Store(true)
		}
		grace.Stop()
	}
	cancel()
	<-all
	for _, p := range providers {
		if failed[p] {
			res.Unanswered = append(res.Unanswered, p)
		}
	}
	sortMatches(res.Matches, q.Unit)
	res.Enough = res.GPUs >= q.Count
	res.Elapsed = time.Since(start)
	return res
}

// walkAndFetch fetches the offer of a provider this peer has no working
// address of. A DHT walk to its peer ID finds the addresses; the fetch
// starts at the first answer that lists them, while the walk goes on (the
// walk would dial the provider and ask it for its closest peers before
// returning: a round trip the fetch need not wait for). An answer's
// addresses are a stranger's word: if the fetch fails with them, it is
// tried once more when the walk has ended, with every address the walk's
// answers listed for the provider (at most maxWalkAddrs) and what the walk
// found. So a peer that answers with a false address costs a failed dial,
// not the provider's offer. (A false address makes the DHT's own walk
// fail: it does not dial a peer again once a dial failed.)
func (d *Directory) walkAndFetch(ctx context.Context, p peer.ID, q Query, mu *sync.Mutex, res *FindResult, start time.Time) bool {
	if d.lookup.WalkThenFetch {
		found, err := d.FindPeer(ctx, p)
		return err == nil && d.fetchAndMatch(ctx, found, q, mu, res, start, false)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the walk once the offer is in hand
	walkCtx, endEvents := context.WithCancel(ctx)
	defer endEvents()
	evctx, events := routing.RegisterForQueryEvents(walkCtx)
	var (
		found   peer.AddrInfo
		walkErr error
		walked  = make(chan struct{})
		drained = make(chan struct{})
		listed  = make(chan peer.AddrInfo, 1)
		addrs   []ma.Multiaddr // every address an answer listed for p; read once drained
	)
	go func() {
		found, walkErr = d.FindPeer(evctx, p)
		close(walked)
	}()
	go func() { // until walkCtx ends, which closes events once they are read
		defer close(drained)
		for ev := range events {
			if ev.Type != routing.PeerResponse {
				continue
			}
			for _, r := range ev.Responses {
				if r.ID != p || len(r.Addrs) == 0 {
					continue
				}
				if addrs == nil {
					listed <- peer.AddrInfo{ID: p, Addrs: slices.Clone(r.Addrs)}
				}
				addrs = addAddrs(addrs, r.Addrs)
			}
		}
	}()
	var tried []ma.Multiaddr
	select {
	case info := <-listed:
		if d.fetchAndMatch(ctx, info, q, mu, res, start, false) {
			return true
		}
		tried = info.Addrs
		<-walked
	case <-walked:
	}
	endEvents()
	<-drained
	// What the walk found first: a peer that fills its answers with
	// addresses cannot crowd that out of the bound.
	addrs = addAddrs(addAddrs(nil, found.Addrs), addrs)
	fresh := slices.ContainsFunc(addrs, func(a ma.Multiaddr) bool { return !slices.ContainsFunc(tried, a.Equal) })
	if walkErr != nil && !fresh {
		return false // the walk found nothing this peer has not tried
	}
	return d.fetchAndMatch(ctx, peer.AddrInfo{ID: p, Addrs: addrs}, q, mu, res, start, false)
}

// maxWalkAddrs bounds the addresses of a provider walkAndFetch keeps from
// a walk's answers.
const maxWalkAddrs = 32

// addAddrs appends to dst the addresses of src it lacks, up to maxWalkAddrs.
func addAddrs(dst, src []ma.Multiaddr) []ma.Multiaddr {
	for _, a := range src {
		if len(dst) < maxWalkAddrs && !slices.ContainsFunc(dst, a.Equal) {
			dst = append(dst, a)
		}
	}
	return dst
}

// MaxNamed bounds the providers one Among asks.
const MaxNamed = 64
