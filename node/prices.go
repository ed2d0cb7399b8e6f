package node

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// Timing of the price loop.
const (
	priceTick = 5 * time.Second  // the loop's period: board upkeep, resends
	priceStep = 30 * time.Second // a pricing policy's step

	// A closing provider's last ticks say it has no GPUs available
	// (withdrawAsks); they stand for withdrawnLife, and Close waits at
	// most withdrawWait for them to be written to its topic peers.
	withdrawnLife = time.Minute
	withdrawWait  = 2 * time.Second
)

// An unchanged ask is gossiped again as Config.PriceResend paces it: every
// Q/0.25 s when the board holds Q live quotes (30 s .. 1 h; a tick stands
// three intervals), so the swarm re-sends about one tick every 4 s whatever
// the number of providers. A changed ask goes out at the next loop pass.

// priceState is the node's part of the spot market: the price board fed by
// the swarm's price topic, and this peer's asks, set by its pricing policy
// (or Quote) and gossiped as ticks.
type priceState struct {
	unit   gossip.Unit
	policy *gossip.Policy // nil: this peer quotes only what Quote is told
	feed   *gossip.PriceFeed

	// pubMu serializes making and publishing this peer's ticks, so their
	// sequences go out in order (a peer ignores one older than the last).
	pubMu sync.Mutex

	priceMu  sync.Mutex // guards the fields below
	board    *gossip.PriceBoard
	asks     map[string]*localAsk // class -> this peer's quote
	lastSeq  uint64
	lastStep time.Time // of the policy
	closing  bool      // the asks were withdrawn: no tick goes out any more
	watchers map[int]func(gossip.Tick)
	watchID  int

	// The board sync (pricesync.go): whom this peer answered when, and
	// the answers being written.
	boardServeMu sync.Mutex // guards boardServed
	boardServed  map[peer.ID]time.Time
	boardSlots   chan struct{}
}

// localAsk is this peer's quote for one class.
type localAsk struct {
	ask       uint64
	available uint32
	manual    bool        // set by Quote, not by the policy
	sent      gossip.Tick // last tick published; zero: none yet
	alone     bool        // it went out with no topic peer: send again soon
	jitter    float64     // of the wait before the next re-send (gossip.Resend.Due), drawn at each send
	// taken is when available fell below what the last tick told (GPUs
	// taken); zero: it has not. A fall is told once it is
	// Config.TakenTickDelay old (see freeTicks).
	taken time.Time
}

// LocalAsk is one of this peer's quotes in GET /v0/prices.
type LocalAsk struct {
	Class     string    `json:"class"`
	Ask       uint64    `json:"ask"` // per GPU-hour in the smallest unit
	Available uint32    `json:"available"`
	Sent      time.Time `json:"sent,omitzero"` // last gossiped
}

// Prices answers GET /v0/prices: the board and this peer's own quotes.
// Prices are integers of the unit's smallest unit per GPU-hour.
type Prices struct {
	Token    string            `json:"token"`    // e.g. "USDC"
	Decimals int               `json:"decimals"` // of the smallest unit: 6 means 2_100_000 is 2.10
	Policy   string            `json:"policy,omitempty"`
	Asks     []LocalAsk        `json:"asks"`
	Classes  []gossip.Quote    `json:"classes"`
	Topic    string            `json:"topic"`
	Gossip   gossip.TopicStats `json:"gossip"`
}

// Unit is the unit of the answer's prices.
func (p Prices) Unit() gossip.Unit { return gossip.Unit{Token: p.Token, Decimals: uint8(p.Decimals)} }

// configurePrices checks the pricing part of the config and sets up the
// board (at New: the directory may ask for this peer's asks before the
// price topic is joined).
func (n *Node) configurePrices() error {
	u, err := gossip.ParseUnit(n.cfg.PriceUnit)
	if err != nil {
		return fmt.Errorf("price unit: %w", err)
	}
	n.unit = u
	if err := n.cfg.PriceBoard.Check(); err != nil {
		return err
	}
	if n.cfg.Price != "" {
		p, err := gossip.ParsePolicy(n.cfg.Price, u)
		if err != nil {
			return err
		}
		n.policy = &p
	}
	board := n.cfg.PriceBoard
	if n.cfg.Swarm.Private() {
		board.Trusted = true // its members hold the swarm key: no probation
	}
	n.board = gossip.NewPriceBoard(board)
	n.asks = make(map[string]*localAsk)
	n.watchers = make(map[int]func(gossip.Tick))
	return nil
}

// startPrices joins the swarm's price topic and starts the pricing policy.
func (n *Node) startPrices(ctx context.Context) error {
	feed, err := n.gossip.JoinPrices(gossip.PriceFeedConfig{
		Validator: gossip.ValidatorConfig{Unit: n.unit},
		Now:       n.cfg.Clock,
		Logger:    n.log,
	})
	if err != nil {
		return err
	}
	n.feed = feed
	n.wg.Add(2)
	go n.readTicks(ctx)
	n.startBoardSync(ctx)
	// The first asks are set (and gossiped to whoever is there) before
	// Start returns; the loop sends them again once the mesh has formed.
	n.stepPrices(ctx, n.now())
	go n.priceLoop(ctx)
	return nil
}

// closePrices leaves the price topic.
func (n *Node) closePrices() error {
	if n.feed == nil {
		return nil
	}
	return n.feed.Close()
}

// readTicks puts every accepted tick on the board until ctx ends.
func (n *Node) readTicks(ctx context.Context) {
	defer n.wg.Done()
	for {
		st, err := n.feed.NextSigned(ctx)
		if err != nil {
			return
		}
		n.takeTick(st)
	}
}

// takeTick puts a checked tick on the board and tells the watchers if the
// board took it.
func (n *Node) takeTick(st gossip.SignedTick) bool {
	n.priceMu.Lock()
	applied := n.board.ApplySigned(st, n.now())
	var ws []func(gossip.Tick)
	if applied {
		for _, w := range n.watchers {
			ws = append(ws, w)
		}
	}
	n.priceMu.Unlock()
	for _, w := range ws {
		w(st.Tick)
	}
	return applied
}

// priceLoop runs the pricing policy, gossips this peer's asks and keeps the
// board, until ctx ends.
func (n *Node) priceLoop(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(priceTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := n.now()
		n.priceMu.Lock()
		n.board.Advance(now)
		n.priceMu.Unlock()
		n.stepPrices(ctx, now)
	}
}

// supply is what the pricing policy knows of one local GPU class.
type supply struct {
	utilization float64
	available   uint32
}

// localSupply reads the directory's view of this peer's GPUs: per class,
// how busy they are and how many are available: those no job holds, once
// negotiation has counted them (all of them before).
func (n *Node) localSupply() map[string]supply {
	util := n.LocalUtilization()
	out := make(map[string]supply, len(util))
	for _, g := range n.LocalGPUs().Inventory.GPUs {
		if !gossip.ValidClass(g.Class) {
			continue
		}
		s := out[g.Class]
		s.utilization = util[g.Class]
		s.available = min(s.available+1, gossip.MaxAvailable)
		out[g.Class] = s
	}
	for class, f := range n.FreeGPUs() {
		if s, ok := out[class]; ok {
			s.available = min(f, gossip.MaxAvailable)
			out[class] = s
		}
	}
	return out
}

// stepPrices moves the policy's asks (when a step is due), then gossips
// every ask that changed, is due a heartbeat, or last went out to no one.
// It tells the directory when an ask changed.
func (n *Node) stepPrices(ctx context.Context, now time.Time) {
	var sup map[string]supply
	if n.policy != nil {
		sup = n.localSupply()
	}
	changed := false
	var out []string
	n.priceMu.Lock()
	if n.policy != nil {
		due := now.Sub(n.lastStep) >= priceStep
		if due {
			n.lastStep = now
		}
		for class, s := range sup {
			a := n.asks[class]
			if a == nil {
				a = &localAsk{}
				n.asks[class] = a
			}
			if due || a.ask == 0 || a.manual {
				median, _ := n.board.Median(class, now, n.id.PeerID)
				next := n.policy.Next(a.ask, gossip.Market{Utilization: s.utilization, Median: median})
				changed = changed || next != a.ask
				a.ask, a.manual = next, false
			}
			a.available = s.available
		}
		for class, a := range n.asks {
			if _, ok := sup[class]; !ok && !a.manual {
				delete(n.asks, class) // the GPUs are gone
				changed = true
			}
		}
	}
	quotes := n.board.Len()
	addrs := gossip.TickAddrs(n.host.Addrs())
	for class, a := range n.asks {
		moved := a.sent.Available != a.available
		if a.available < a.sent.Available { // GPUs taken: told once it has lasted
			if a.taken.IsZero() {
				a.taken = now
			}
			moved = !now.Before(a.taken.Add(n.takenTickDelay()))
		} else {
			a.taken = time.Time{}
		}
		// Addresses that changed go out with the next tick, at most a
		// minute after the last one: a peer's addresses settle in its
		// first minutes (observed, relayed) and can flap.
		readdr := !now.Before(a.sent.Time.Add(time.Minute)) && !slices.EqualFunc(a.sent.Addrs, addrs, ma.Multiaddr.Equal)
		if a.sent.Ask != a.ask || moved || a.alone || readdr || n.cfg.PriceResend.Due(a.sent, quotes, now, a.jitter) {
			out = append(out, class)
		}
	}
	n.priceMu.Unlock()
	sort.Strings(out)
	for _, class := range out {
		n.publishAsk(ctx, class)
	}
	if changed {
		n.OffersChanged()
	}
}

// publishAsk gossips this peer's current ask for class as a new tick and
// records that it went out.
func (n *Node) publishAsk(ctx context.Context, class string) error {
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	now := n.now()
	n.priceMu.Lock()
	a := n.asks[class]
	if a == nil || n.closing {
		n.priceMu.Unlock()
		return nil // withdrawn meanwhile
	}
	n.lastSeq = max(n.lastSeq+1, uint64(now.UnixNano())) // grows across restarts too
	t := gossip.Tick{
		Provider:  n.id.PeerID,
		Class:     class,
		Unit:      n.unit,
		Ask:       a.ask,
		Available: a.available,
		Seq:       n.lastSeq,
		Time:      now,
		Until:     n.cfg.PriceResend.Until(now, n.board.Len()),
		Addrs:     gossip.TickAddrs(n.host.Addrs()),
	}
	n.priceMu.Unlock()
	alone := n.feed.Peers() == 0
	if err := n.feed.Publish(ctx, t); err != nil {
		if ctx.Err() == nil {
			n.log.Warn("price tick not sent", "class", class, "err", err)
		}
		return err
	}
	n.priceMu.Lock()
	if a := n.asks[class]; a != nil {
		a.sent, a.alone, a.jitter, a.taken = t, alone, 0.9+0.1*rand.Float64(), time.Time{}
	}
	n.priceMu.Unlock()
	n.log.Debug("price tick sent", "class", class, "ask", n.unit.Format(t.Ask), "available", t.Available, "alone", alone)
	return nil
}

// withdrawAsks sends, as this peer's last ticks, one for each class it
// told GPUs available in: the same ask with none available, standing for
// withdrawnLife. Every peer that takes it stops naming this peer as a
// seller (PriceBoard.Sellers) at once, rather than when its last ask
// expires, up to the board's TTL (3 h) later; a search for a count or a
// submitter picking providers then does not name a peer that is gone.
// Close calls it while the host is still up, and waits for the ticks to
// be written to the topic's peers (at most withdrawWait); no tick goes out
// after it. A peer that dies without closing withdraws nothing.
func (n *Node) withdrawAsks() {
	if n.feed == nil {
		return
	}
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	now := n.now()
	n.priceMu.Lock()
	n.closing = true
	var out []gossip.Tick
	for _, class := range slices.Sorted(maps.Keys(n.asks)) {
		a := n.asks[class]
		if a.sent.Seq == 0 || a.sent.Available == 0 {
			continue // never told, or told none available
		}
		n.lastSeq = max(n.lastSeq+1, uint64(now.UnixNano()))
		t := a.sent
		t.Available, t.Seq, t.Time, t.Until, t.Addrs = 0, n.lastSeq, now, now.Add(withdrawnLife), nil
		out = append(out, t)
	}
	n.priceMu.Unlock()
	if len(out) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), withdrawWait)
	defer cancel()
	for _, t := range out {
		written, err := n.feed.PublishFlushed(ctx, t)
		if err != nil {
			n.log.Warn("asks not withdrawn", "class", t.Class, "err", err)
			return
		}
		n.log.Info("ask withdrawn", "class", t.Class, "peers", written)
	}
}

// learnAskAddrs adds the addresses a provider's tick lists to the
// peerstore for a while (peerstore.TempAddrTTL), unless this peer is
// connected to it: a peer about to name the provider (a search for a
// count, a direct request for bids) then dials it at once instead of
// walking the DHT to its peer ID first. They are the provider's own word,
// signed with its tick; a dial checks the peer ID. A search whose fetch
// fails with them still walks (dht.Directory.Among), and they are not
// dialed again for unansweredFor (badAskAddrs).
func (n *Node) learnAskAddrs(t gossip.Tick) {
	if n.cfg.IgnoreAskAddrs || len(t.Addrs) == 0 || t.Provider == n.id.PeerID ||
		n.host.Network().Connectedness(t.Provider) == network.Connected || n.badAskAddrs.has(t.Provider, n.now()) {
		return
	}
	n.host.Peerstore().AddAddrs(t.Provider, t.Addrs, peerstore.TempAddrTTL)
}

// Quote sets this peer's ask for a GPU class, per GPU-hour in the smallest
// unit of the swarm's price unit, with available GPUs, and gossips it now.
// The ask is kept and gossiped again as Config.PriceResend paces it. With
// a pricing policy and GPUs of that class, the policy takes the ask over
// again within a few seconds. Tools and tests use it to quote without GPUs.
func (n *Node) Quote(ctx context.Context, class string, ask uint64, available int) error {
	if n.feed == nil {
		return fmt.Errorf("quote: node not started")
	}
	if available < 0 || available > gossip.MaxAvailable {
		return fmt.Errorf("quote: %d GPUs available, want 0..%d", available, gossip.MaxAvailable)
	}
	now := n.now()
	t := gossip.Tick{Provider: n.id.PeerID, Class: class, Unit: n.unit, Ask: ask, Available: uint32(available), Seq: 1, Time: now, Until: now.Add(time.Minute)}
	if err := t.Check(); err != nil {
		return fmt.Errorf("quote: %w", err)
	}
	n.priceMu.Lock()
	old := n.asks[class]
	a := &localAsk{ask: ask, available: uint32(available), manual: true}
	if old != nil {
		a.sent = old.sent
	}
	n.asks[class] = a
	n.priceMu.Unlock()
	if old == nil || old.ask != ask {
		n.OffersChanged()
	}
	return n.publishAsk(ctx, class)
}

// Ask is this peer's asking price for one GPU-hour of class, in the swarm
// token's smallest unit; ok is false when the peer has no price for it.
func (n *Node) Ask(class string) (price uint64, ok bool) {
	n.priceMu.Lock()
	defer n.priceMu.Unlock()
	if a := n.asks[class]; a != nil && a.ask > 0 {
		return a.ask, true
	}
	return 0, false
}

// PriceUnit is the unit of this peer's prices.
func (n *Node) PriceUnit() gossip.Unit { return n.unit }

// Prices reads the price board (one class, or all when class is "") and
// this peer's own quotes.
func (n *Node) Prices(class string) Prices {
	now := n.now()
	p := Prices{Token: n.unit.Token, Decimals: int(n.unit.Decimals), Asks: []LocalAsk{}, Classes: []gossip.Quote{}}
	if n.policy != nil {
		p.Policy = n.policy.Format(n.unit)
	}
	if n.feed != nil {
		p.Topic = n.feed.Topic()
		p.Gossip = n.gossip.Stats(p.Topic)
	}
	n.priceMu.Lock()
	defer n.priceMu.Unlock()
	if class == "" {
		p.Classes = n.board.Quotes(now)
	} else if q, ok := n.board.Quote(class, now); ok {
		p.Classes = append(p.Classes, q)
	}
	for c, a := range n.asks {
		if class == "" || c == class {
			p.Asks = append(p.Asks, LocalAsk{Class: c, Ask: a.ask, Available: a.available, Sent: a.sent.Time})
		}
	}
	sort.Slice(p.Asks, func(i, j int) bool { return p.Asks[i].Class < p.Asks[j].Class })
	return p
}

// WatchPrices calls f with every tick the board takes, after it took it, on
// the goroutine that reads the price topic: f must not block. stop ends it.
func (n *Node) WatchPrices(f func(gossip.Tick)) (stop func()) {
	n.priceMu.Lock()
	defer n.priceMu.Unlock()
	n.watchID++
	id := n.watchID
	n.watchers[id] = f
	return func() {
		n.priceMu.Lock()
		delete(n.watchers, id)
		n.priceMu.Unlock()
	}
}
