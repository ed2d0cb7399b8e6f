package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Timing of offer publication.
const (
	DefaultOfferTTL  = 10 * time.Minute // how long a published offer stays valid
	publishRetryMin  = time.Second      // first retry after a failed publish
	publishRetryMax  = 30 * time.Second // retries back off to this
	withdrawTimeout  = 5 * time.Second  // a stopping peer's last publish (a DHT put starts with a lookup)
	identifyDebounce = 500 * time.Millisecond
	tableSettle      = 100 * time.Millisecond // a peer identified, the DHT's table still empty: publish this much later
)

// directoryState is the node's part of the GPU directory: the local GPU
// inventory and the offer this peer publishes.
type directoryState struct {
	gpus      exec.GPUSource
	republish chan struct{} // a capacity or price change: publish now

	// unanswered are providers a search for a count named that failed
	// (dht.FindResult.Unanswered: no valid offer, not found, or silent
	// for the whole search), until when they are not named again.
	unanswered shunned
	// badAskAddrs are providers a search could not reach at the
	// addresses their ticks list (dht.FindResult.AddrsFailed), until when
	// those are not dialed again: a provider listing another's
	// addresses makes each peer dial them once in unansweredFor.
	badAskAddrs shunned

	dirMu       sync.Mutex // guards the fields below
	inventory   exec.Inventory
	offer       *dht.Offer // last offer published
	publishedAt time.Time
	publishErr  error
}

// LocalGPUs answers GET /v0/gpus/local.
type LocalGPUs struct {
	Inventory   exec.Inventory `json:"inventory"`
	Offer       *dht.Offer     `json:"offer,omitempty"` // as last published
	PublishedAt time.Time      `json:"publishedAt,omitzero"`
	Error       string         `json:"error,omitempty"` // of the last publish, if it failed
	// InUse maps the UUIDs of the GPUs that jobs run on now to the task there.
	InUse map[string]string `json:"inUse,omitempty"`
	// Ended are members whose work this provider was running when it
	// stopped, ended at its restart, newest first.
	Ended []EndedTask `json:"ended,omitempty"`
}

// startDirectory finds the local GPUs and, if there are any, starts
// publishing this peer's offer.
func (n *Node) startDirectory(ctx context.Context) error {
	src, err := exec.OpenGPUs(n.cfg.GPUs)
	if err != nil {
		return err
	}
	n.gpus = src
	inv, err := src.Inventory()
	if err != nil {
		return fmt.Errorf("GPU inventory: %w", err)
	}
	n.dirMu.Lock()
	n.inventory = inv
	n.dirMu.Unlock()
	if len(inv.GPUs) == 0 {
		n.log.Info("no GPUs to offer", "why", inv.Note)
		return nil
	}
	classes := map[string]int{}
	for _, g := range inv.GPUs {
		classes[g.Class]++
	}
	n.log.Info("GPUs found", "source", inv.Source, "classes", classes, "driver", inv.Machine.Driver, "cuda", inv.Machine.CUDA)
	n.republish = make(chan struct{}, 1)
	sub, err := n.host.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return err
	}
	// The event bus blocks its emitter (identify) while a subscriber's
	// buffer is full, so events are drained here, apart from the slow
	// publishing, into a signal that never blocks.
	identified := make(chan struct{}, 1)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-sub.Out():
				if !ok {
					return
				}
				select {
				case identified <- struct{}{}:
				default:
				}
			}
		}
	}()
	go n.publishLoop(ctx, identified)
	return nil
}

// publishLoop publishes the offer now, again before it expires, at once
// when OffersChanged is called, with backoff after a failure, and when the
// routing table has doubled since the last publication (a young swarm's
// first records land on the few peers there were) or a half of the
// directory got its first peers since.
func (n *Node) publishLoop(ctx context.Context, identified <-chan struct{}) {
	defer n.wg.Done()
	ttl := n.offerTTL()
	timer := time.NewTimer(0)
	defer timer.Stop()
	retry := publishRetryMin
	var lastTry time.Time
	tableAtPublish := 0
	deferred := false // a new peer came within identifyDebounce of the last try: the timer publishes, forced
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			force, deferred = deferred, false
		case <-n.republish:
		case <-identified:
			n.dirMu.Lock()
			failed := n.publishErr != nil || n.offer == nil
			n.dirMu.Unlock()
			grown := n.dht.RoutingTableSize() >= 2*max(tableAtPublish, 1) || n.dht.Unpublished()
			if !(failed || grown) {
				continue
			}
			if failed {
				retry = publishRetryMin // a new peer: earlier failures say little now
			}
			wait := identifyDebounce - time.Since(lastTry)
			if n.dht.RoutingTableSize() == 0 {
				// The DHT takes the new peer into its table on the same
				// event, maybe after this: a put now would find none.
				wait = max(wait, tableSettle)
			}
			if wait > 0 {
				// Publish once the debounce has passed, not at the next
				// retry or renewal (a new peer would find nothing
				// meanwhile).
				if !deferred {
					if !timer.Stop() {
						select {
						case <-timer.C:
						default:
						}
					}
					timer.Reset(wait)
					deferred = true
				}
				continue
			}
			force = grown
		}
		deferred = false
		lastTry = time.Now()
		err := n.publishOffer(ctx, false, force)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("publish offer", "err", err, "retry", retry)
			timer.Reset(retry)
			retry = min(2*retry, publishRetryMax)
			continue
		}
		retry = publishRetryMin
		tableAtPublish = n.dht.RoutingTableSize()
		timer.Reset(renewAfter(n.LocalGPUs().Offer, ttl))
	}
}

// renewAfter is when to publish again after publishing o: once half of
// the life it has left has passed. That life is the TTL less the time the
// publication took and less what the whole-second expiry cut off.
func renewAfter(o *dht.Offer, ttl time.Duration) time.Duration {
	if o == nil {
		return ttl / 2
	}
	return max(time.Until(o.ExpiresAt())/2, publishRetryMin)
}

func (n *Node) offerTTL() time.Duration {
	if n.cfg.OfferTTL > 0 {
		return n.cfg.OfferTTL
	}
	return DefaultOfferTTL
}

// buildOffer turns the inventory into this peer's offer: one entry per GPU
// class, all of it available (leases come with negotiation), or none of it
// when withdrawing.
func (n *Node) buildOffer(inv exec.Inventory, withdraw bool) *dht.Offer {
	byClass := map[string]*dht.GPUOffer{}
	var order []string
	for _, g := range inv.GPUs {
		c, ok := byClass[g.Class]
		if !ok {
			c = &dht.GPUOffer{Class: g.Class, Model: exec.Model(g.Name), VRAMGB: exec.VRAMGB(g.MemoryTotal), Compute: g.ComputeCapability}
			if p, ok := n.Ask(g.Class); ok {
				c.Price = p
			}
			byClass[g.Class] = c
			order = append(order, g.Class)
		}
		c.Total++
		if !withdraw {
			c.Available++
		}
	}
	sort.Strings(order)
	now := time.Now()
	o := &dht.Offer{
		Provider:  n.id.PeerID,
		Region:    n.cfg.Region,
		Token:     n.PriceUnit().String(),
		Executors: n.executors(),
		Seq:       uint64(now.UnixNano()), // later publications win, across restarts too
		Expires:   now.Add(n.offerTTL()).Unix(),
	}
	for _, a := range n.host.Addrs() {
		if len(o.Addrs) < 8 {
			o.Addrs = append(o.Addrs, a.String())
		}
	}
	for _, c := range order {
		o.GPUs = append(o.GPUs, *byClass[c])
	}
	return o
}

func (n *Node) executors() []string {
	if len(n.cfg.Executors) > 0 {
		return n.cfg.Executors
	}
	return []string{"docker"}
}

// publishOffer reads the GPUs, signs the offer and stores it in the DHT.
func (n *Node) publishOffer(ctx context.Context, withdraw, force bool) error {
	inv, err := n.gpus.Inventory()
	if err != nil {
		return err
	}
	o := n.buildOffer(inv, withdraw)
	sealed, err := dht.SealOffer(o, n.id.Key)
	if err == nil {
		err = n.dht.Publish(ctx, sealed, force)
	}
	n.dirMu.Lock()
	defer n.dirMu.Unlock()
	n.inventory = inv
	n.publishErr = err
	if err == nil {
		n.offer, n.publishedAt = o, time.Now()
		n.log.Debug("offer published", "gpus", o.AvailableGPUs(), "seq", o.Seq, "withdraw", withdraw)
	}
	return err
}

// closeDirectory withdraws this peer's offer (DHT values cannot be deleted:
// it publishes zero availability) and releases the GPUs.
func (n *Node) closeDirectory() error {
	if n.gpus == nil {
		return nil
	}
	n.dirMu.Lock()
	published := n.offer != nil
	n.dirMu.Unlock()
	if published && n.dht != nil {
		ctx, cancel := context.WithTimeout(context.Background(), withdrawTimeout)
		if err := n.publishOffer(ctx, true, false); err != nil {
			n.log.Warn("withdraw offer", "err", err)
		}
		cancel()
	}
	return n.gpus.Close()
}

// OffersChanged asks the directory to republish this peer's offer now (a
// price or capacity changed). It does not block.
func (n *Node) OffersChanged() {
	if n.republish == nil {
		return
	}
	select {
	case n.republish <- struct{}{}:
	default:
	}
}

// LocalUtilization is the mean NVML utilization (0..1) of this peer's GPUs
// per class, read now; a class this peer lacks is absent.
func (n *Node) LocalUtilization() map[string]float64 {
	n.refreshInventory()
	n.dirMu.Lock()
	defer n.dirMu.Unlock()
	sum, count := map[string]float64{}, map[string]int{}
	for _, g := range n.inventory.GPUs {
		count[g.Class]++
		if g.Utilization > 0 {
			sum[g.Class] += float64(g.Utilization) / 100
		}
	}
	out := make(map[string]float64, len(count))
	for c, k := range count {
		out[c] = sum[c] / float64(k)
	}
	return out
}

// refreshInventory reads the GPUs again (utilization moves; a GPU can be
// lost). A failed read keeps the last inventory.
func (n *Node) refreshInventory() {
	if n.gpus == nil {
		return
	}
	n.dirMu.Lock()
	none := len(n.inventory.GPUs) == 0
	n.dirMu.Unlock()
	if none {
		return
	}
	inv, err := n.gpus.Inventory()
	if err != nil {
		return
	}
	n.dirMu.Lock()
	n.inventory = inv
	n.dirMu.Unlock()
}

// LocalGPUs reports the inventory and the offer as last published.
func (n *Node) LocalGPUs() LocalGPUs {
	n.dirMu.Lock()
	l := LocalGPUs{Inventory: n.inventory, Offer: n.offer, PublishedAt: n.publishedAt}
	if n.publishErr != nil {
		l.Error = n.publishErr.Error()
	}
	n.dirMu.Unlock()
	return l
}

// localReport is LocalGPUs with the GPUs in use and the members a restart
// ended: what `gpumesh gpus local` shows.
func (n *Node) localReport() LocalGPUs {
	l := n.LocalGPUs()
	if use := n.GPUsInUse(); len(use) > 0 {
		l.InUse = use
	}
	l.Ended = n.EndedTasks()
	return l
}

// FindGPUs searches the swarm's directory. A search for a count of GPUs
// first asks only the cheapest providers the price board lists for the
// query's class, enough for twice the count (Among: no index lookup, one
// round trip where their addresses are known); when their offers make the
// count, that is the answer (FindResult.Named). When some of them did not
// answer (gone without a word: their asks stand on the board until they
// expire), the next cheapest are asked once more (namedRounds), the
// silent ones left out; only then is the index searched, as for every
// other query (docs/scale.md, "Lookups for a count").
func (n *Node) FindGPUs(ctx context.Context, q dht.Query) (dht.FindResult, error) {
	if q.Count > 0 && n.board != nil {
		if named := n.cheapestFor(q, n.now()); len(named) > 0 {
			start := time.Now()
			var silent, addrsFailed []peer.ID
			walks := 0
			for round := 1; ; round++ {
				actx, cancel := context.WithTimeout(ctx, namedFindTimeout)
				res := n.dht.Among(actx, q, named)
				cancel()
				n.unanswered.add(res.Unanswered, n.now(), unansweredFor)
				n.badAskAddrs.add(res.AddrsFailed, n.now(), unansweredFor)
				silent, addrsFailed = append(silent, res.Unanswered...), append(addrsFailed, res.AddrsFailed...)
				walks += res.Timing.PeerWalks
				if res.Enough {
					res.Elapsed, res.Unanswered, res.AddrsFailed, res.Timing.PeerWalks = time.Since(start), silent, addrsFailed, walks
					return res, nil
				}
				if len(res.Unanswered) == 0 || round == namedRounds || ctx.Err() != nil {
					break
				}
				if named = n.cheapestFor(q, n.now()); len(named) == 0 {
					break
				}
			}
			full, err := n.dht.Find(ctx, q)
			full.Elapsed = time.Since(start)
			return full, err
		}
	}
	return n.dht.Find(ctx, q)
}

// namedRounds bounds the rounds of asking the board's cheapest providers
// (each without those that failed the one before) before a search for a
// count falls back to the index.
const namedRounds = 2

// namedFindTimeout bounds asking the board's cheapest providers before a
// search for a count falls back to the index.
const namedFindTimeout = 2 * time.Second

// A provider that failed a search for a count (no valid offer, not
// found, or silent for the whole search) is not named again for
// unansweredFor; at most maxUnanswered are kept (one past that is named
// again). One that is only slower than the others is left out of that
// search's answer and named again (dht.Directory.Among).
const (
	unansweredFor = 10 * time.Minute
	maxUnanswered = 1024
)

// shunned is a bounded set of peers, each until a time.
type shunned struct {
	mu    sync.Mutex
	until map[peer.ID]time.Time
}

// add keeps ps until now+d; at most maxUnanswered peers (one past that
// is not kept).
func (s *shunned) add(ps []peer.ID, now time.Time, d time.Duration) {
	if len(ps) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = map[peer.ID]time.Time{}
	}
	for _, p := range ps {
		if _, ok := s.until[p]; !ok && len(s.until) >= maxUnanswered {
			for q, until := range s.until {
				if !now.Before(until) {
					delete(s.until, q)
				}
			}
			if len(s.until) >= maxUnanswered {
				return
			}
		}
		s.until[p] = now.Add(d)
	}
}

// has reports whether p is kept at now.
func (s *shunned) has(p peer.ID, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.until[p]
	return ok && now.Before(until)
}

// cheapestFor is the providers the price board has live asks of, GPUs
// free, of a class the query may take (its family or class; memory as the
// class names it), in the query's unit at or below its max price, that
// failed no recent search (unanswered): cheapest first, until their
// GPUs make twice the count and they are two or more (one provider
// claiming many GPUs and withholding its offer cannot send every search to
// the index alone), at most dht.MaxNamed. Nothing when they make less than
// the count.
func (n *Node) cheapestFor(q dht.Query, now time.Time) []peer.ID {
	match := func(class string) bool {
		family, mem, _ := strings.Cut(class, "-")
		if q.Model != "" && !strings.EqualFold(q.Model, class) && !strings.EqualFold(q.Model, family) {
			return false
		}
		if q.MinVRAMGB > 0 {
			gb, err := strconv.ParseUint(strings.TrimSuffix(strings.ToUpper(mem), "GB"), 10, 32)
			if err == nil && uint32(gb) < q.MinVRAMGB {
				return false
			}
		}
		return true
	}
	n.priceMu.Lock()
	ticks := n.board.Sellers(match, 4*dht.MaxNamed, now)
	n.priceMu.Unlock()
	var out []peer.ID
	gpus := 0
	for _, t := range ticks {
		if q.MaxPrice > 0 && (t.Unit.String() != q.Unit || t.Ask > q.MaxPrice) || n.unanswered.has(t.Provider, now) {
			continue
		}
		n.learnAskAddrs(t)
		out = append(out, t.Provider)
		gpus += int(t.Available)
		if gpus >= 2*q.Count && len(out) >= 2 || len(out) == dht.MaxNamed {
			break
		}
	}
	if gpus < q.Count {
		return nil
	}
	return out
}

// maxFindTime bounds one directory search from the local API.
const maxFindTime = 30 * time.Second

// ParseGPUQuery reads a directory query from named string parameters (URL
// query or flags): model, min-vram (GB), count, region, max-price (tokens of
// unit per GPU-hour, e.g. "2.50"). Every wrong one is reported at once.
func ParseGPUQuery(get func(string) string, unit gossip.Unit) (dht.Query, error) {
	q := dht.Query{Unit: unit.String()}
	var errs []error
	q.Model = strings.TrimSpace(get("model"))
	q.Region = strings.TrimSpace(get("region"))
	if len(q.Model) > 64 || len(q.Region) > 64 {
		errs = append(errs, errors.New("model and region: at most 64 characters"))
	}
	if v := get("min-vram"); v != "" {
		gb, err := strconv.ParseUint(strings.TrimSuffix(strings.ToUpper(v), "GB"), 10, 32)
		if err != nil || gb > 4096 {
			errs = append(errs, fmt.Errorf("min-vram: want whole GB 0..4096 (e.g. 80), got %q", v))
		}
		q.MinVRAMGB = uint32(gb)
	}
	if v := get("count"); v != "" {
		c, err := strconv.Atoi(v)
		if err != nil || c < 0 || c > 4096 {
			errs = append(errs, fmt.Errorf("count: want 0..4096 GPUs, got %q", v))
		}
		q.Count = c
	}
	if v := get("max-price"); v != "" {
		p, err := unit.Parse(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("max-price: want %s per GPU-hour such as 2.50: %w", unit.Token, err))
		}
		q.MaxPrice = p
	}
	return q, errors.Join(errs...)
}
