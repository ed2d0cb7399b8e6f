// Package dht is the GPU directory: a Kademlia DHT (go-libp2p-kad-dht) whose
// protocol carries the swarm's ID, so two swarms never share a routing table.
// Every peer in server mode holds a shard of it.
//
// In the public swarm the directory is kad-dht's dual DHT (halves.go): a
// LAN half, where peers reached at private or loopback addresses serve each
// other with no flag (peers on one LAN or one machine form a directory of
// their own), and a WAN half of publicly reachable peers. Offers and index
// announcements go into every half that has peers; lookups ask both and
// merge. A private swarm runs one DHT over every address instead.
//
// A provider stores one signed Offer under its peer ID (PutValue, guarded on
// every peer by a validator: signed by the peer the key names, unexpired,
// bounded; the highest sequence wins) and announces itself with provider
// records under index keys: its classes ("class/H100-80GB"), models
// ("model/H100"), memory buckets ("vram/80") and "any". Find looks up the
// narrowest index key of a query, fetches each provider's offer (from the
// provider itself over "/gpumesh/<swarm>/offer/1.0.0", one round trip; from
// the DHT's stored copy if the provider does not answer), checks it like a
// DHT record, and keeps the live ones that match. The DHT's requests and
// the fetches go out without waiting for identify (messenger.go); a quick
// lookup (LookupOptions) also returns once the peers closest to the key
// have answered and every provider named is in hand.
//
// A server's shard is bounded against strangers (shard.go): offers from the
// wire are admitted by sender rate and quota, per peer and per /24, and when
// full by the closeness of their key to the server.
package dht

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	kaddht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
)

// Mode says whether a peer serves DHT records to others.
type Mode string

// Modes. Auto serves only once the peer learns it is publicly reachable, so a
// peer behind NAT does not hold shards it cannot serve.
const (
	ModeAuto   Mode = "auto"
	ModeServer Mode = "server"
	ModeClient Mode = "client"
)

// ParseMode turns a flag value into a Mode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeServer, ModeClient:
		return m, nil
	}
	return "", fmt.Errorf("dht mode %q: want auto, server or client", s)
}

// Config of a Directory. The zero value is the public swarm's directory: a
// LAN half (server) and a WAN half (auto mode). Seeding it is the caller's:
// connect to peers, then call Bootstrap.
type Config struct {
	Swarm string // swarm ID; "" means "public"
	// Mode is the WAN half's ("" means ModeAuto); the LAN half serves
	// unless it is ModeClient. In a private swarm, the one DHT's.
	Mode Mode
	// Private: one DHT for the whole swarm over every address, instead of a
	// LAN and a WAN half (a private swarm's members are trusted).
	Private bool
	Now     func() time.Time // clock of the offer validator and the shard's rates; nil means time.Now
	// RefreshPeriod is how often the routing table refreshes the buckets
	// no lookup has touched since (a lookup of itself and of a random key
	// in each such bucket); 0 means DefaultRefreshPeriod.
	RefreshPeriod time.Duration

	// Lookup: how a lookup spends its round trips; the scale harness
	// sets the ways of before and the quick lookup, to measure them.
	Lookup LookupOptions

	limits shardLimits // what remote peers may store here, per half; zero means defaultShardLimits (tests shrink it)
}

// LookupOptions choose how a lookup spends its round trips (docs/scale.md,
// "Lookup round trips"): the zero value is the default.
type LookupOptions struct {
	// QuickIndexLookup returns an index lookup once the indexClosest
	// (10) peers closest to the key that it knows of have answered and
	// every provider named is in hand (answerWatch), rather than when the
	// DHT's query ends (its follow-up: the 20 closest it heard of all
	// asked). Off by default: announcements made into a young routing
	// table sit on peers that are not the closest, and only the whole
	// query finds them all (docs/scale.md, "Lookup round trips").
	QuickIndexLookup bool
	// IdentifyFirst waits for identify on a new connection before a DHT
	// request or an offer fetch is sent (the libp2p host's NewStream, as
	// kad-dht's own message sender opens its streams), one round trip
	// more to every peer not connected yet.
	IdentifyFirst bool
	// WalkThenFetch fetches the offer of a named provider this peer holds
	// no address of (Among) once the DHT walk to it has ended, as before,
	// rather than at the first answer that lists its addresses: a
	// baseline for the scale harness (-scale.oldwalk).
	WalkThenFetch bool
}

// indexClosest is how many of the peers closest to an index key that a
// lookup knows of must have answered before it returns with the records
// in hand (answerWatch): half of the 20 its announcements went to, where
// kad-dht's own query ends at its three closest (its resiliency, beta)
// and then asks the rest of the 20 it heard of (its follow-up). Three
// lost an offer in a 32-peer mesh whose providers first announced into a
// young table (1 lookup in ~130), and ten did in a 30-peer one: so the
// quick lookup is not the default (docs/scale.md, "Lookup round trips").
const indexClosest = 10

// DefaultRefreshPeriod is how often a peer refreshes its routing table when
// nothing else does (kad-dht's own default is 10 minutes). At rest a
// refresh is most of what the directory sends: about 100 KB a peer at 300
// peers (a lookup of itself, one per bucket, and a FIND_NODE to check each
// peer the lookups newly connect to; docs/scale.md), 180 B/s a peer every
// 10 minutes. An hour is enough for the table: a joining peer's own
// lookups put it in its neighbours' tables, every peer that connects to
// this one is checked and added, a lookup that cannot reach a peer drops
// it from the table at once, and a lookup of a bucket's range refreshes
// that bucket for free. What the refresh still adds is filling buckets
// no lookup visited, and the liveness check of peers not heard from for
// ~18 periods.
const DefaultRefreshPeriod = time.Hour

// ProtocolPrefix is "/gpumesh/<swarm>", so the DHT protocols are
// "/gpumesh/<swarm>/kad/1.0.0" (WAN, or a private swarm's) and
// "/gpumesh/<swarm>/lan/kad/1.0.0" (LAN).
func ProtocolPrefix(swarm string) protocol.ID {
	if swarm == "" {
		swarm = "public"
	}
	return protocol.ID("/gpumesh/" + swarm)
}

// Directory is the swarm's DHT on one peer: a LAN and a WAN half, or a
// private swarm's one DHT.
type Directory struct {
	halves    []*half // each with its own bounded shard: values and provider records
	route     router  // lookups over every half, merged
	validator offerValidator

	host       host.Host
	offerProto protocol.ID
	lookup     LookupOptions

	mu       sync.Mutex           // guards provided, put and own
	provided map[string]time.Time // half + " " + index key -> last announcement there
	put      map[string]bool      // halves this peer's offer went into
	own      []byte               // this peer's sealed offer, served on offerProto

	closeOnce sync.Once
	closeErr  error
}

// New starts the DHT on h. Close stops it.
func New(ctx context.Context, h host.Host, cfg Config) (*Directory, error) {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	lim := cfg.limits
	if lim == (shardLimits{}) {
		lim = defaultShardLimits
	}
	d := &Directory{
		validator:  offerValidator{now: now},
		provided:   map[string]time.Time{},
		put:        map[string]bool{},
		host:       h,
		offerProto: OfferProtocol(cfg.Swarm),
		lookup:     cfg.Lookup,
	}
	if cfg.RefreshPeriod < 0 {
		return nil, fmt.Errorf("dht: refresh period %v: want a positive duration, or 0 for %v", cfg.RefreshPeriod, DefaultRefreshPeriod)
	}
	if err := d.startHalves(h, cfg, lim, now); err != nil {
		return nil, err
	}
	h.SetStreamHandler(d.offerProto, d.serveOffer)
	return d, nil
}

// Bootstrap refreshes the routing table from the peers connected so far.
func (d *Directory) Bootstrap(ctx context.Context) error {
	return d.route.Bootstrap(ctx)
}

// Refresh runs a routing table refresh of every half and waits for them.
func (d *Directory) Refresh(ctx context.Context) error {
	return d.refresh(ctx, false)
}

// RefreshAll refreshes every bucket of every half's routing table, whether
// a lookup touched it lately or not (as the periodic refresh does at rest,
// when no lookup did), and waits: what one periodic refresh costs.
func (d *Directory) RefreshAll(ctx context.Context) error {
	return d.refresh(ctx, true)
}

func (d *Directory) refresh(ctx context.Context, all bool) error {
	var errs []error
	for _, x := range d.halves {
		done := x.kad.RefreshRoutingTable
		if all {
			done = x.kad.ForceRefresh
		}
		select {
		case err := <-done():
			if err != nil && len(d.halves) > 1 && x.kad.RoutingTable().Size() == 0 {
				continue // a half with no peers (no LAN, no internet) has nothing to refresh
			}
			errs = append(errs, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// FindPeer finds a peer's addresses by its ID: from this peer's own
// connections and routing table if it knows them, else by asking the DHT.
func (d *Directory) FindPeer(ctx context.Context, id peer.ID) (peer.AddrInfo, error) {
	return d.route.FindPeer(ctx, id)
}

// Requests counts the DHT requests this peer has served since it
// started, every half's together, by type ("FIND_NODE", "GET_VALUE",
// "PUT_VALUE", "ADD_PROVIDER", "GET_PROVIDERS", "PING").
func (d *Directory) Requests() map[string]uint64 {
	out := map[string]uint64{}
	for _, x := range d.halves {
		for t := range x.store.requests {
			if v := x.store.requests[t].Load(); v > 0 {
				out[pb.Message_MessageType(t).String()] += v
			}
		}
	}
	return out
}

// FindNodes counts the FIND_NODE requests this peer has served since it
// started, every half's together, by what the asker was doing (told from
// the key asked for): "check" (a liveness check of this peer before or
// while it is in the asker's routing table), "self" (the asker's routing
// table refresh looking itself up), "refresh" (its refresh of a bucket),
// "offer" (the lookup before putting an offer), "index" (the lookup before
// an index announcement), "peer" (a FindPeer).
func (d *Directory) FindNodes() map[string]uint64 {
	out := map[string]uint64{}
	for _, x := range d.halves {
		for k := range x.store.findNode {
			if v := x.store.findNode[k].Load(); v > 0 {
				out[findNodeKindNames[k]] += v
			}
		}
	}
	return out
}

// RoutingTableSize is the number of peers in this peer's routing tables,
// every half's together.
func (d *Directory) RoutingTableSize() int {
	n := 0
	for _, x := range d.halves {
		n += x.kad.RoutingTable().Size()
	}
	return n
}

// Server reports whether this peer currently serves DHT records in any
// half.
func (d *Directory) Server() bool {
	for _, x := range d.halves {
		if x.kad.Mode() == kaddht.ModeServer {
			return true
		}
	}
	return false
}

// Close stops the DHT. It is safe to call twice.
func (d *Directory) Close() error {
	if d == nil {
		return nil
	}
	d.closeOnce.Do(func() {
		d.host.RemoveStreamHandler(d.offerProto)
		var errs []error
		for _, x := range d.halves {
			if err := x.kad.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, err)
			}
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// Query selects offers. The zero value matches every live offer.
type Query struct {
	Model     string // family ("H100") or class ("H100-80GB"), case-insensitive; "" any
	MinVRAMGB uint32 // memory per GPU, GB
	Count     int    // GPUs wanted; the result says whether they were found
	Region    string // region label prefix, e.g. "eu" matches "eu-west/ams1"
	MaxPrice  uint64 // per GPU-hour in Unit's smallest unit; 0 any
	Unit      string // price unit of MaxPrice and of the order, "TOKEN:DECIMALS"; offers in another unit sort last and never pass MaxPrice
}

// matches reports whether one class offer meets the query.
func (q Query) matches(o *Offer, g GPUOffer) bool {
	switch {
	case g.Available == 0:
		return false
	case q.Model != "" && !strings.EqualFold(q.Model, g.Model) && !strings.EqualFold(q.Model, g.Class):
		return false
	case g.VRAMGB < q.MinVRAMGB:
		return false
	case q.Region != "" && !strings.HasPrefix(strings.ToLower(o.Region), strings.ToLower(q.Region)):
		return false
	case q.MaxPrice > 0 && (g.Price == 0 || g.Price > q.MaxPrice || o.Token != q.Unit):
		return false
	}
	return true
}

// Match is one class of one provider's live offer that meets a query.
type Match struct {
	Offer *Offer   `json:"offer"`
	GPU   GPUOffer `json:"gpu"`
}

// FindResult is what a query found, cheapest first.
type FindResult struct {
	Matches   []Match       `json:"matches"`
	Providers int           `json:"providers"` // providers with a matching live offer
	Indexed   int           `json:"indexed"`   // providers listed under the index key
	GPUs      int           `json:"gpus"`      // available GPUs in the matches
	Enough    bool          `json:"enough"`    // GPUs >= the query's Count
	Partial   bool          `json:"partial"`   // the search ran out of time or hit MaxIndexed; there may be more
	IndexKey  string        `json:"indexKey"`
	Hops      int           `json:"hops"`    // longest chain of referrals in the index lookup
	Queried   int           `json:"queried"` // peers that answered, over the whole search
	Elapsed   time.Duration `json:"elapsedNs"`
	Timing    FindTiming    `json:"timing"`
	// Named: the providers were named by the caller (Among: the cheapest
	// the price board lists), not looked up under the index key; Indexed
	// counts them. Cheaper offers the caller did not name may exist.
	Named bool `json:"named,omitempty"`
	// Unanswered are the named providers that failed: no valid offer,
	// not found, or silent until the search's time was up (Among).
	Unanswered []peer.ID `json:"unanswered,omitempty"`
	// AddrsFailed are the named providers not reached at the addresses
	// this peer held of them (a stranger's, their ticks', or from
	// before), walked to in the DHT then (Among).
	AddrsFailed []peer.ID `json:"addrsFailed,omitempty"`
}

// FindTiming is where a Find's time went: when the index lookup brought
// its first and last new provider, when it ended, when the last offer was
// in hand, and the round trips of its DHT requests and offer fetches.
// Durations are from the start of the Find.
type FindTiming struct {
	FirstProvider time.Duration `json:"firstProviderNs"` // first provider record in hand
	LastProvider  time.Duration `json:"lastProviderNs"`  // last new provider record in hand
	LookupEnd     time.Duration `json:"lookupEndNs"`     // the index lookup returned
	LastOffer     time.Duration `json:"lastOfferNs"`     // the last offer checked
	Requests      int           `json:"requests"`        // DHT requests answered
	RequestTime   time.Duration `json:"requestNs"`       // of them, sent to answered, all together
	Fetches       int           `json:"fetches"`         // offers asked of their providers
	FetchOpen     time.Duration `json:"fetchOpenNs"`     // of them, opening the stream (dial, identify, negotiation), all together
	FetchRead     time.Duration `json:"fetchReadNs"`     // of them, reading the offer, all together
	FetchDialed   int           `json:"fetchDialed"`     // fetches that found no connection to the provider
	PeerWalks     int           `json:"peerWalks"`       // providers named without an address here, found by a DHT walk first (Among)
}

// maxParallelFetch bounds the offer fetches a Find runs at once.
const maxParallelFetch = 32

// MaxIndexed bounds the providers one Find considers.
const MaxIndexed = 1000

// Find looks up the providers indexed under the query's key, fetches their
// signed offers, and returns the live ones that match, cheapest first
// (offers without a fixed ask last). Offers that fail validation, are
// expired or withdrawn (nothing available) are left out.
func (d *Directory) Find(ctx context.Context, q Query) (FindResult, error) {
	start := time.Now()
	res := FindResult{IndexKey: q.lookupKey(), Matches: []Match{}}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evctx, events := routing.RegisterForQueryEvents(ctx)
	var hops hopCounter
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		for ev := range events {
			hops.observe(ev)
		}
	}()

	// A fixed pool fetches offers while the index lookup streams providers
	// in; a lookup that names more than MaxIndexed is cut short (Partial),
	// whatever a hostile peer answers.
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		work    = make(chan peer.AddrInfo)
		indexed = map[peer.ID]bool{}
	)
	for range maxParallelFetch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for info := range work {
				d.fetchAndMatch(evctx, info, q, &mu, &res, start, true)
			}
		}()
	}
	lookup, stopLookup := context.WithCancel(evctx)
	defer stopLookup()
	key := indexKeyCID(res.IndexKey)
	watch := newAnswerWatch(d.host.ID(), key.Hash())
	var protos []protocol.ID // of the halves the lookup asks
	for _, x := range d.halves {
		if x.kad.RoutingTable().Size() > 0 {
			protos = append(protos, x.proto)
			watch.seed(x.proto, x.kad.RoutingTable().NearestPeers(kb.ConvertKey(string(key.Hash())), kbucketSize))
		}
	}
	if d.lookup.QuickIndexLookup {
		lookup = context.WithValue(lookup, answersKey{}, watch)
	}
	answered := func() bool {
		return d.lookup.QuickIndexLookup && len(protos) > 0 && watch.answeredBy(protos, indexed, indexClosest)
	}
	found := d.route.FindProvidersAsync(lookup, key, 0)
	for found != nil {
		var info peer.AddrInfo
		select {
		case i, ok := <-found:
			if !ok {
				found = nil
				continue
			}
			info = i
		case <-watch.changed:
			if answered() {
				stopLookup() // the records in hand answer it; the channel closes soon
			}
			continue
		}
		if indexed[info.ID] {
			continue
		}
		if len(indexed) == 0 {
			res.Timing.FirstProvider = time.Since(start)
		}
		res.Timing.LastProvider = time.Since(start)
		if len(indexed) == MaxIndexed {
			res.Partial = true
			stopLookup() // the channel closes soon; fetches go on
			continue
		}
		indexed[info.ID] = true
		select {
		case work <- info:
		case <-evctx.Done():
		}
		if answered() {
			stopLookup()
		}
	}
	mu.Lock()
	res.Timing.LookupEnd = time.Since(start)
	mu.Unlock()
	close(work)
	wg.Wait()
	if parent.Err() != nil {
		res.Partial = true
	}
	cancel()
	<-evDone
	if err := parent.Err(); err != nil && len(indexed) == 0 {
		return res, fmt.Errorf("dht: find %s: %w", res.IndexKey, err)
	}
	sortMatches(res.Matches, q.Unit)
	res.Indexed = len(indexed)
	res.Enough = res.GPUs >= q.Count
	res.Hops, res.Queried = hops.result()
	res.Timing.Requests, res.Timing.RequestTime = hops.requests()
	res.Elapsed = time.Since(start)
	return res, nil
}

// offerFallbackTimeout bounds reading a provider's offer from the DHT when
// the provider itself does not answer.
const offerFallbackTimeout = 5 * time.Second

// fetchAndMatch reads one provider's offer (from the provider, else, with
// fallback, from the DHT) and adds what matches q to res.
func (d *Directory) fetchAndMatch(ctx context.Context, info peer.AddrInfo, q Query, mu *sync.Mutex, res *FindResult, start time.Time, fallback bool) (valid bool) {
	if ctx.Err() != nil {
		return false
	}
	var ft fetchTiming
	o, err := d.fetchOffer(ctx, info, &ft)
	mu.Lock()
	res.Timing.Fetches++
	res.Timing.FetchOpen += ft.open
	res.Timing.FetchRead += ft.read
	if ft.dialed {
		res.Timing.FetchDialed++
	}
	mu.Unlock()
	defer func() {
		mu.Lock()
		res.Timing.LastOffer = max(res.Timing.LastOffer, time.Since(start))
		mu.Unlock()
	}()
	if err != nil {
		if !fallback {
			return false
		}
		fctx, cancel := context.WithTimeout(ctx, offerFallbackTimeout)
		o, err = d.Offer(fctx, info.ID)
		cancel()
		if err != nil {
			return false
		}
	}
	if err := o.Check(d.validator.now()); err != nil {
		return false
	}
	mu.Lock()
	defer mu.Unlock()
	matched := false
	for _, g := range o.GPUs {
		if q.matches(o, g) {
			res.Matches = append(res.Matches, Match{Offer: o, GPU: g})
			res.GPUs += int(g.Available)
			matched = true
		}
	}
	if matched {
		res.Providers++
	}
	return true
}

// sortMatches orders matches by price in unit (no fixed ask, or an ask in
// another unit, last), then by more GPUs available, then by provider.
func sortMatches(m []Match, unit string) {
	price := func(x Match) uint64 {
		if x.Offer.Token != unit {
			return 0
		}
		return x.GPU.Price
	}
	sort.SliceStable(m, func(i, j int) bool {
		a, b := m[i], m[j]
		pa, pb := price(a), price(b)
		if (pa == 0) != (pb == 0) {
			return pb == 0
		}
		if pa != pb {
			return pa < pb
		}
		if a.GPU.Available != b.GPU.Available {
			return a.GPU.Available > b.GPU.Available
		}
		return a.Offer.Provider < b.Offer.Provider
	})
}

// Offer fetches and checks the current offer of one provider.
func (d *Directory) Offer(ctx context.Context, provider peer.ID) (*Offer, error) {
	data, err := d.route.GetValue(withLocal(ctx), OfferKey(provider))
	if err != nil {
		return nil, fmt.Errorf("dht: offer of %s: %w", provider, err)
	}
	o, err := d.validator.open(OfferKey(provider), data)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// Publish stores a sealed offer under its provider's key and announces the
// provider under the index keys of the classes it has GPUs available in.
// Index announcements are repeated only every reprovideInterval unless
// force is set (the routing table changed a lot since).
func (d *Directory) Publish(ctx context.Context, sealed []byte, force bool) error {
	o, err := OpenOffer(sealed)
	if err != nil {
		return err
	}
	if o.Provider == d.host.ID() {
		d.mu.Lock()
		d.own = sealed
		d.mu.Unlock()
	}
	var keys []string
	for _, g := range o.GPUs {
		if g.Available > 0 {
			keys = append(keys, IndexKeys(g)...)
		}
	}
	// Into every half that has peers: a LAN neighbour and a peer across the
	// internet each find the offer in the half they share with it.
	var errs []error
	for _, x := range d.active() {
		if err := d.publishIn(ctx, x, o.Provider, sealed, keys, force); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", x.name, err))
			continue
		}
		if o.Provider == d.host.ID() {
			d.mu.Lock()
			d.put[x.name] = true
			d.mu.Unlock()
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("dht: %w", errors.Join(errs...))
	}
	return nil
}

// publishIn puts the offer and announces its index keys in one half.
func (d *Directory) publishIn(ctx context.Context, x *half, provider peer.ID, sealed []byte, keys []string, force bool) error {
	if err := x.kad.PutValue(withLocal(ctx), OfferKey(provider), sealed); err != nil {
		return fmt.Errorf("put offer: %w", err)
	}
	now := time.Now()
	var errs []error
	for _, k := range keys {
		done := x.name + " " + k
		d.mu.Lock()
		last, ok := d.provided[done]
		d.mu.Unlock()
		if ok && !force && now.Sub(last) < reprovideInterval {
			continue
		}
		if err := x.kad.Provide(ctx, indexKeyCID(k), true); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", k, err))
			continue
		}
		d.mu.Lock()
		d.provided[done] = now
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Unpublished reports whether a half has peers but not this peer's offer
// yet (its first peers came after the last Publish): time to publish again.
func (d *Directory) Unpublished() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.own == nil {
		return false
	}
	for _, x := range d.halves {
		if !d.put[x.name] && x.kad.RoutingTable().Size() > 0 {
			return true
		}
	}
	return false
}

// reprovideInterval is how often a provider repeats its index announcements
// (DHT provider records live 48 h; offers expire far sooner and are checked).
const reprovideInterval = 30 * time.Minute

// Records counts what this peer stores for others, its shard of the
// directory: offer values, and provider records under the given index keys
// (provider records are kept in a cache with batched writes, so they are
// counted key by key).
func (d *Directory) Records(ctx context.Context, indexKeys []string) (values, providers int, err error) {
	for _, x := range d.halves {
		v, p, err := x.records(ctx, indexKeys)
		values, providers = values+v, providers+p
		if err != nil {
			return values, providers, err
		}
	}
	return values, providers, nil
}

func (x *half) records(ctx context.Context, indexKeys []string) (values, providers int, err error) {
	for _, k := range indexKeys {
		ps, err := x.kad.ProviderStore().GetProviders(ctx, indexKeyCID(k).Hash())
		if err != nil {
			return 0, 0, err
		}
		providers += len(ps)
	}
	res, err := x.store.queryKeys(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer res.Close()
	for r := range res.Next() {
		if r.Error != nil {
			return values, providers, r.Error
		}
		if !strings.HasPrefix(r.Key, "/providers/") {
			values++
		}
	}
	return values, providers, nil
}

// hopCounter follows the referrals in a DHT lookup: a peer first named by
// peer p is one hop further than p; peers queried from the routing table
// are one hop away.
type hopCounter struct {
	mu      sync.Mutex
	depth   map[peer.ID]int
	max     int
	answers int
	sent    map[peer.ID]time.Time // requests sent, not yet answered
	took    time.Duration         // answered requests, sent to answered, all together
}

func (h *hopCounter) observe(ev *routing.QueryEvent) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if ev.Type == routing.SendingQuery {
		if h.sent == nil {
			h.sent = map[peer.ID]time.Time{}
		}
		h.sent[ev.ID] = now
		return
	}
	if ev.Type != routing.PeerResponse {
		return
	}
	if t, ok := h.sent[ev.ID]; ok {
		h.took += now.Sub(t)
		delete(h.sent, ev.ID)
	}
	if h.depth == nil {
		h.depth = map[peer.ID]int{}
	}
	d, ok := h.depth[ev.ID]
	if !ok {
		d = 1
		h.depth[ev.ID] = 1
	}
	h.answers++
	h.max = max(h.max, d)
	for _, r := range ev.Responses {
		if _, seen := h.depth[r.ID]; !seen {
			h.depth[r.ID] = d + 1
		}
	}
}

// requests is the requests answered and their round trips together.
func (h *hopCounter) requests() (int, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.answers, h.took
}

func (h *hopCounter) result() (hops, answers int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.max, h.answers
}

// Get returns the raw record stored under key, after validation.
func (d *Directory) Get(ctx context.Context, key string) ([]byte, error) {
	return d.route.GetValue(withLocal(ctx), key)
}

// Put stores a raw record under key, in every half that has peers. This
// peer's validator checks it first, and every peer that is asked to store
// it checks it again.
func (d *Directory) Put(ctx context.Context, key string, value []byte) error {
	var errs []error
	for _, x := range d.active() {
		if err := x.kad.PutValue(withLocal(ctx), key, value); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", x.name, err))
		}
	}
	return errors.Join(errs...)
}
