package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node/attempt"
	"github.com/gpumesh/gpumesh/node/reputation"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Reputation: what this peer can check itself of each provider, kept in
// evidence.db in the data dir (bbolt), and the score node/reputation
// computes from it.
//
//   - First-hand runs: when an attempt of one of this peer's jobs ends,
//     each member's run is recorded (finished, provider-failed, lost; see
//     attempt.Run.Fault) before the job's end is saved.
//   - Third-party receipts: a provider shows the anchored receipts it holds
//     over reputation.Protocol; this peer checks each (both signatures,
//     the Merkle proof and its anchoring transaction, the payments it
//     names, on its own --solana-rpc) and keeps what it found. Without an
//     RPC nothing third-party is fetched: nothing could be checked.
//
// Evidence is fetched on demand (`gpumesh provider show`, `gpus find`),
// at most once per evidenceTTL per provider unless asked to refresh.

// Bounds of the evidence kept and fetched.
const (
	evidenceDBFile       = "evidence.db"
	evidenceTTL          = 10 * time.Minute // a provider's receipts are fetched again after this
	evidenceFetchTimeout = 30 * time.Second // one provider's fetch and checks
	evidenceServeTimeout = 10 * time.Second // one request served
	maxReceiptsKept      = 1024             // third-party receipts kept per provider
	maxPaymentsChecked   = 16               // payment transactions checked per receipt
	maxEvidenceServing   = 4                // requests served at once
	maxBackgroundFetches = 4                // fetches gpus find starts at once
)

var (
	bucketRuns     = []byte("runs")     // provider \x00 key -> reputation.Run
	bucketReceipts = []byte("receipts") // provider \x00 key -> reputation.Receipt
	bucketFetched  = []byte("fetched")  // provider -> fetchRecord
)

// fetchRecord is when a provider's receipts were last fetched, and how.
type fetchRecord struct {
	At    time.Time `json:"at"`
	Shown int       `json:"shown"` // proofs it sent
	Total int       `json:"total"` // proofs it said it has
	Error string    `json:"error,omitempty"`
	Bad   []string  `json:"bad,omitempty"` // proofs that did not hold, and why (at most 8)
}

// repState is the node's part of reputation.
type repState struct {
	evidence *bolt.DB      // nil until started
	serving  chan struct{} // a slot per request being served
	fetchMu  sync.Mutex    // guards fetching
	fetching map[peer.ID]bool
}

func (n *Node) startReputation(context.Context) error {
	dir, err := n.stateDir()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, evidenceDBFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return fmt.Errorf("evidence: %s is locked; is another gpumesh node running on this data dir?", path)
	}
	if err != nil {
		return fmt.Errorf("evidence: open %s: %w; if it is damaged, move it away (the evidence is gathered again)", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRuns, bucketReceipts, bucketFetched} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return fmt.Errorf("evidence: %w", err)
	}
	n.evidence = db
	n.serving = make(chan struct{}, maxEvidenceServing)
	n.fetching = map[peer.ID]bool{}
	n.host.SetStreamHandler(reputation.Protocol, n.handleEvidence)
	return nil
}

func (n *Node) closeReputation() error {
	if n.evidence == nil {
		return nil
	}
	if n.host != nil {
		n.host.RemoveStreamHandler(reputation.Protocol)
	}
	return n.evidence.Close()
}

func evidenceKey(p, key string) []byte { return []byte(p + "\x00" + key) }

// recordRuns keeps the first-hand outcome of each member's run of an
// attempt that has ended: finished, provider-failed or lost (runs stopped
// by this peer count for nothing). It is saved before the job's end.
func (n *Node) recordRuns(j Job, runs []attempt.Run) {
	if n.evidence == nil {
		return
	}
	var out []reputation.Run
	for _, r := range runs {
		if r.Rank < 0 || r.Rank >= len(j.Members) {
			continue
		}
		var o reputation.Outcome
		switch {
		case r.State == attempt.MemberExited:
			o = reputation.Finished
		case r.Fault == attempt.FaultProvider:
			o = reputation.ProviderFailed
		case r.Fault == attempt.FaultLost:
			o = reputation.Lost
		default:
			continue
		}
		at := r.Ended
		if at.IsZero() {
			at = n.now()
		}
		out = append(out, reputation.Run{
			Key: fmt.Sprintf("%s-%d-%d", j.ID, j.Attempt, r.Rank), Provider: j.Members[r.Rank].Provider.String(),
			Outcome: o, Cosigned: r.Receipt == "countersigned", Reason: r.Error, At: at.UnixMilli(),
		})
	}
	if len(out) == 0 {
		return
	}
	if err := n.putRuns(out); err != nil {
		n.log.Warn("evidence: runs not recorded", "job", j.ID, "err", err)
	}
}

// recordRefusals keeps, as first-hand evidence, the providers that
// refused (or took back) an award of negotiation try of job id after they
// had bid, and those that did not answer one in time (silent): both count
// as reputation.Refused (a small weight, bounded), and both are awarded
// last for refusedRecently (Ranking). It runs off the negotiation loop
// (with the outcome), and before a retry asks again, so the retry's
// ranking asks them last.
func (n *Node) recordRefusals(id string, try string, refused, silent []peer.ID) {
	if n.evidence == nil || len(refused)+len(silent) == 0 {
		return
	}
	at := n.now().UnixMilli()
	runs := make([]reputation.Run, 0, len(refused)+len(silent))
	for _, p := range refused {
		runs = append(runs, reputation.Run{Key: id + "-refused-" + try, Provider: p.String(), Outcome: reputation.Refused, Reason: "refused an award after bidding", At: at})
	}
	for _, p := range silent {
		runs = append(runs, reputation.Run{Key: id + "-silent-" + try, Provider: p.String(), Outcome: reputation.Refused, Reason: "did not answer an award after bidding", At: at})
	}
	if err := n.putRuns(runs); err != nil {
		n.log.Warn("evidence: refusals not recorded", "job", id, "err", err)
	}
}

// refusedRecently is how long a provider that refused an award of this
// peer's (or did not answer one) is asked and awarded last
// (gossip.Ranking.Last), whatever Config.ScoreWeight says.
const refusedRecently = time.Hour

// reputationParams are the score's constants in this swarm's unit.
func (n *Node) reputationParams() reputation.Params {
	return reputation.Params{Decimals: int(n.PriceUnit().Decimals)}
}

// evidenceOf reads what is kept of one provider.
func (n *Node) evidenceOf(p string) (runs []reputation.Run, receipts []reputation.Receipt, fetched *fetchRecord) {
	if n.evidence == nil {
		return nil, nil, nil
	}
	prefix := []byte(p + "\x00")
	_ = n.evidence.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRuns).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r reputation.Run
			if json.Unmarshal(v, &r) == nil {
				runs = append(runs, r)
			}
		}
		c = tx.Bucket(bucketReceipts).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r reputation.Receipt
			if json.Unmarshal(v, &r) == nil {
				receipts = append(receipts, r)
			}
		}
		if v := tx.Bucket(bucketFetched).Get([]byte(p)); v != nil {
			var f fetchRecord
			if json.Unmarshal(v, &f) == nil {
				fetched = &f
			}
		}
		return nil
	})
	sort.Slice(runs, func(i, k int) bool { return runs[i].At > runs[k].At })
	sort.Slice(receipts, func(i, k int) bool { return receipts[i].Verified > receipts[k].Verified })
	return runs, receipts, fetched
}

// ProviderScore is a provider's score and the evidence behind it.
func (n *Node) ProviderScore(p peer.ID) reputation.Score {
	runs, receipts, _ := n.evidenceOf(p.String())
	return reputation.Compute(n.reputationParams(), p.String(), runs, receipts)
}

// Ranking is what this peer's negotiations weigh besides price: the score
// of every provider it has evidence of, and Config.ScoreWeight; and the
// providers that refused or did not answer an award of this peer's within
// refusedRecently, awarded last (gossip.Ranking.Last).
func (n *Node) Ranking() gossip.Ranking {
	params := n.reputationParams()
	unknown := reputation.Score{Score: params.Unknown()}.Rank()
	r := gossip.Ranking{Scores: map[peer.ID]float64{}, Unknown: unknown, Weight: n.cfg.ScoreWeight}
	if n.evidence == nil {
		return r
	}
	seen := map[string]bool{}
	_ = n.evidence.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRuns, bucketReceipts} {
			_ = tx.Bucket(b).ForEach(func(k, _ []byte) error {
				p, _, _ := strings.Cut(string(k), "\x00")
				seen[p] = true
				return nil
			})
		}
		return nil
	})
	since := n.now().Add(-refusedRecently).UnixMilli()
	for p := range seen {
		id, err := peer.Decode(p)
		if err != nil {
			continue
		}
		runs, receipts, _ := n.evidenceOf(p)
		r.Scores[id] = reputation.Compute(params, p, runs, receipts).Rank()
		if slices.ContainsFunc(runs, func(run reputation.Run) bool { return run.Outcome == reputation.Refused && run.At >= since }) {
			if r.Last == nil {
				r.Last = map[peer.ID]bool{}
			}
			r.Last[id] = true
		}
	}
	return r
}

// ProviderReport answers GET /v0/providers/{peer}: a provider's score,
// how it was computed, and the evidence behind it, newest first.
type ProviderReport struct {
	Peer       string               `json:"peer"`
	Address    string               `json:"address"` // its Solana address
	Score      reputation.Score     `json:"score"`
	Runs       []reputation.Run     `json:"runs"`
	Receipts   []reputation.Receipt `json:"receipts"`
	Fetched    time.Time            `json:"fetched,omitzero"` // when its receipts were last fetched
	Shown      int                  `json:"shown"`            // proofs it sent then
	Total      int                  `json:"total"`            // proofs it said it has
	FetchError string               `json:"fetchError,omitempty"`
	Bad        []string             `json:"bad,omitempty"` // proofs that did not hold, and why
}

// maxReportItems bounds the runs and receipts a report lists.
const maxReportItems = 100

// Provider reports a provider's score and evidence; with refresh (or when
// its receipts are older than evidenceTTL and an RPC is set) it fetches
// and checks its receipts first.
func (n *Node) Provider(ctx context.Context, p peer.ID, refresh bool) ProviderReport {
	_, _, f := n.evidenceOf(p.String())
	if n.cfg.SolanaRPC != "" && p != n.id.PeerID && (refresh || f == nil || n.now().Sub(f.At) > evidenceTTL) {
		if err := n.FetchEvidence(ctx, p); err != nil {
			n.log.Info("evidence: fetch", "peer", p, "err", err)
		}
	}
	runs, receipts, f := n.evidenceOf(p.String())
	rep := ProviderReport{Peer: p.String(), Address: solanaAddress(p),
		Score: reputation.Compute(n.reputationParams(), p.String(), runs, receipts)}
	rep.Runs, rep.Receipts = runs[:min(len(runs), maxReportItems)], receipts[:min(len(receipts), maxReportItems)]
	if rep.Runs == nil {
		rep.Runs = []reputation.Run{}
	}
	if rep.Receipts == nil {
		rep.Receipts = []reputation.Receipt{}
	}
	switch {
	case f != nil:
		rep.Fetched, rep.Shown, rep.Total, rep.FetchError, rep.Bad = f.At, f.Shown, f.Total, f.Error, f.Bad
	case n.cfg.SolanaRPC == "":
		rep.FetchError = "this peer has no --solana-rpc: third-party receipts cannot be checked, so only first-hand runs count"
	}
	return rep
}

// refreshEvidence fetches, in the background, the receipts of providers
// whose evidence is older than evidenceTTL (at most maxBackgroundFetches
// at once; the rest wait for a later call).
func (n *Node) refreshEvidence(ps []peer.ID) {
	if n.evidence == nil || n.cfg.SolanaRPC == "" {
		return
	}
	for _, p := range ps {
		if p == n.id.PeerID {
			continue
		}
		if _, _, f := n.evidenceOf(p.String()); f != nil && n.now().Sub(f.At) <= evidenceTTL {
			continue
		}
		n.fetchMu.Lock()
		busy := n.fetching[p] || len(n.fetching) >= maxBackgroundFetches
		if !busy {
			n.fetching[p] = true
		}
		n.fetchMu.Unlock()
		if busy {
			continue
		}
		ctx, done := n.lifeContext()
		if ctx == nil {
			return
		}
		go func() {
			defer done()
			defer func() { n.fetchMu.Lock(); delete(n.fetching, p); n.fetchMu.Unlock() }()
			if err := n.FetchEvidence(ctx, p); err != nil {
				n.log.Info("evidence: fetch", "peer", p, "err", err)
			}
		}()
	}
}

// FetchEvidence asks provider p for the anchored receipts it holds,
// checks each and keeps those that hold. Every proof is a stranger's
// until checked: signatures, Merkle path, anchoring transaction, that p is
// its provider, and each payment it names.
func (n *Node) FetchEvidence(ctx context.Context, p peer.ID) error {
	if n.evidence == nil {
		return errors.New("evidence: the node is not started")
	}
	if n.cfg.SolanaRPC == "" {
		return errors.New("evidence: no --solana-rpc to check receipts against")
	}
	ctx, cancel := context.WithTimeout(ctx, evidenceFetchTimeout)
	defer cancel()
	rec := fetchRecord{At: n.now()}
	resp, err := n.askEvidence(ctx, p)
	if err == nil && resp.Error != "" {
		err = fmt.Errorf("it shows none: %s", strings.ToValidUTF8(resp.Error, "?"))
	}
	if err != nil {
		rec.Error = err.Error()
		n.putFetched(p, rec)
		return fmt.Errorf("evidence of %s: %w", p, err)
	}
	rec.Shown, rec.Total = len(resp.Proofs), resp.Total
	var good []reputation.Receipt
	for _, raw := range resp.Proofs {
		r, err := n.checkEvidence(ctx, p, raw)
		if err != nil {
			if len(rec.Bad) < 8 {
				rec.Bad = append(rec.Bad, err.Error())
			}
			continue
		}
		good = append(good, r)
	}
	err = n.evidence.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketReceipts)
		prefix := []byte(p.String() + "\x00")
		kept := 0
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			kept++
		}
		for _, r := range good {
			k := evidenceKey(r.Provider, r.Key)
			if b.Get(k) == nil {
				if kept >= maxReceiptsKept {
					continue
				}
				kept++
			}
			data, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := b.Put(k, data); err != nil {
				return err
			}
		}
		return putFetchedTx(tx, p, rec)
	})
	if err != nil {
		return fmt.Errorf("evidence of %s: %w", p, err)
	}
	return nil
}

func putFetchedTx(tx *bolt.Tx, p peer.ID, rec fetchRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketFetched).Put([]byte(p.String()), data)
}

func (n *Node) putFetched(p peer.ID, rec fetchRecord) {
	_ = n.evidence.Update(func(tx *bolt.Tx) error { return putFetchedTx(tx, p, rec) })
}

// askEvidence sends one request to p and reads its response.
func (n *Node) askEvidence(ctx context.Context, p peer.ID) (reputation.Response, error) {
	s, err := n.host.NewStream(ctx, p, reputation.Protocol)
	if err != nil {
		return reputation.Response{}, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := reputation.WriteFrame(s, reputation.Request{V: reputation.WireVersion, Max: reputation.MaxProofs}); err != nil {
		_ = s.Reset()
		return reputation.Response{}, err
	}
	_ = s.CloseWrite()
	resp, err := reputation.ReadResponse(bufio.NewReader(s), reputation.MaxProofs)
	if err != nil {
		_ = s.Reset()
	}
	return resp, err
}

// checkEvidence checks one proof p showed, and what its consumer paid.
func (n *Node) checkEvidence(ctx context.Context, p peer.ID, raw []byte) (reputation.Receipt, error) {
	proof, sr, anchor, err := VerifyProof(ctx, n.cfg.SolanaRPC, raw)
	if err != nil {
		return reputation.Receipt{}, err
	}
	rc := sr.Receipt
	if rc.Provider != solanaAddress(p) {
		return reputation.Receipt{}, fmt.Errorf("%s: a receipt of provider %s, not of %s", rc.Key(), rc.Provider, p)
	}
	r := reputation.Receipt{
		Key: rc.Key(), Provider: p.String(), Consumer: rc.Consumer, Amount: rc.Amount, Unit: rc.Unit,
		Root: proof.Root.String(), Anchor: proof.Signature, Slot: anchor.Slot, Verified: n.now().UnixMilli(),
		Cosigned: len(sr.ConsumerSig) > 0, SelfPaid: rc.Consumer == rc.Provider, OwnJob: rc.Consumer == n.id.SolanaAddress,
	}
	// What the consumer paid counts only in this swarm's unit and currency,
	// as the chain shows it: transfers of the mint it settles in (System
	// transfers when it settles in SOL).
	if !r.Cosigned || r.SelfPaid || r.OwnJob || rc.Unit != n.PriceUnit().Token {
		return r, nil
	}
	full, cur := n.reputationParams().FullWeight(), n.currency()
	for i, sig := range rc.Payments {
		if i == maxPaymentsChecked || r.Paid >= full {
			break
		}
		amt, err := cur.PaidFor(ctx, n.cfg.SolanaRPC, sig, rc.Consumer, rc.Provider, rc.Key())
		if err != nil {
			continue // a payment that does not hold pays nothing
		}
		if r.Paid+amt >= r.Paid {
			r.Paid += amt
		}
	}
	return r, nil
}

// handleEvidence answers a request for this peer's anchored receipts:
// the newest co-signed ones with a proof, at most what was asked.
func (n *Node) handleEvidence(s network.Stream) {
	defer s.Close()
	_, done := n.lifeContext()
	if done == nil {
		_ = s.Reset() // closing
		return
	}
	defer done()
	select {
	case n.serving <- struct{}{}:
		defer func() { <-n.serving }()
	default:
		_ = s.Reset() // busy: the asker tries later
		return
	}
	_ = s.SetDeadline(time.Now().Add(evidenceServeTimeout))
	req, err := reputation.ReadRequest(bufio.NewReader(s))
	if err != nil {
		_ = s.Reset()
		return
	}
	_ = reputation.WriteFrame(s, n.evidenceResponse(req.Max))
}

// evidenceResponse is this peer's anchored, co-signed receipts, newest
// first, at most max of them and MaxResponseSize bytes.
func (n *Node) evidenceResponse(max int) reputation.Response {
	resp := reputation.Response{V: reputation.WireVersion, Proofs: []json.RawMessage{}}
	if n.anchor == nil {
		resp.Error = "this provider anchors no receipts (it runs without --solana-rpc)"
		return resp
	}
	me := n.id.SolanaAddress
	rs, _, err := n.receiptsWhere(func(m receiptMeta) bool { return m.cosigned }, 0)
	if err != nil {
		resp.Error = "its receipts cannot be read"
		return resp
	}
	size := 64
	for i := len(rs) - 1; i >= 0; i-- {
		sr := rs[i]
		if sr.Receipt.Provider != me || n.anchor.Status(sr.Receipt.Key()) != "anchored" {
			continue
		}
		resp.Total++
		if len(resp.Proofs) == max {
			continue
		}
		p, err := n.anchor.Proof(sr.Receipt.Key())
		if err != nil {
			continue
		}
		data, err := json.Marshal(p)
		if err != nil || len(data) > reputation.MaxProofBytes || size+len(data)+1 > reputation.MaxResponseSize {
			continue
		}
		size += len(data) + 1
		resp.Proofs = append(resp.Proofs, data)
	}
	return resp
}

// GPUsFound answers GET /v0/gpus/find: the directory's matches with each
// provider's score, those below the asked minimum left out.
type GPUsFound struct {
	dht.FindResult
	Scores     map[string]reputation.Score `json:"scores"`     // by provider peer ID
	MinScore   float64                     `json:"minScore"`   // the minimum asked; 0: none
	BelowScore int                         `json:"belowScore"` // matches left out for a score below it
}

// parseMinScore reads a min-score parameter: "" is 0 (any provider).
func parseMinScore(v string) (float64, error) {
	if v == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1 || f != f {
		return 0, fmt.Errorf("min-score: want a score 0..1 such as 0.8 (a provider nobody has seen scores %.1f), got %q", reputation.Params{}.Unknown(), v)
	}
	return f, nil
}

// scoreFound adds each provider's score to a directory search, leaves out
// those below minScore, and fetches stale evidence in the background.
func (n *Node) scoreFound(res dht.FindResult, count int, minScore float64) GPUsFound {
	out := GPUsFound{Scores: map[string]reputation.Score{}, MinScore: minScore}
	var ps []peer.ID
	for _, m := range res.Matches {
		p := m.Offer.Provider
		if _, ok := out.Scores[p.String()]; !ok {
			out.Scores[p.String()] = n.ProviderScore(p)
			ps = append(ps, p)
		}
	}
	kept := res.Matches[:0:0]
	providers := map[peer.ID]bool{}
	gpus := 0
	for _, m := range res.Matches {
		if out.Scores[m.Offer.Provider.String()].Score < minScore {
			out.BelowScore++
			continue
		}
		kept = append(kept, m)
		providers[m.Offer.Provider] = true
		gpus += int(m.GPU.Available)
	}
	if out.BelowScore > 0 {
		res.Matches, res.Providers, res.GPUs = kept, len(providers), gpus
		res.Enough = gpus >= count
	}
	out.FindResult = res
	n.refreshEvidence(ps)
	return out
}

// providerIDs lists the providers of a search, once each.
func providerIDs(res dht.FindResult) []peer.ID {
	seen := map[peer.ID]bool{}
	var out []peer.ID
	for _, m := range res.Matches {
		if p := m.Offer.Provider; !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// explorerProviders scores the providers offering now and those this peer
// has evidence of: best score first, then by peer ID.
func (n *Node) explorerProviders(offering []peer.ID) []ExplorerProvider {
	offers := map[peer.ID]bool{}
	for _, p := range offering {
		offers[p] = true
	}
	all := map[peer.ID]bool{}
	for p := range n.Ranking().Scores {
		all[p] = true
	}
	for p := range offers {
		all[p] = true
	}
	out := []ExplorerProvider{}
	for p := range all {
		runs, receipts, f := n.evidenceOf(p.String())
		ep := ExplorerProvider{Peer: p.String(), Offers: offers[p], Score: reputation.Compute(n.reputationParams(), p.String(), runs, receipts)}
		if f != nil {
			ep.Fetched = f.At
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, k int) bool {
		if out[i].Score.Score != out[k].Score.Score {
			return out[i].Score.Score > out[k].Score.Score
		}
		return out[i].Peer < out[k].Peer
	})
	return out[:min(len(out), explorerMaxProviders)]
}

// putRuns keeps runs as first-hand evidence, in one synced transaction.
func (n *Node) putRuns(runs []reputation.Run) error {
	return n.evidence.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRuns)
		for _, r := range runs {
			data, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := b.Put(evidenceKey(r.Provider, r.Key), data); err != nil {
				return err
			}
		}
		return nil
	})
}
