package gossip

import (
	"errors"
	"sort"
	"strings"
	"sync/atomic"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
)

// Reason names why a message was refused, for counting: a word from a
// fixed set, never anything the message or its peer chose, so a metric
// labelled with it stays bounded. Errors of this package's validators and
// decoders have their own; anything else is "other".
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	if err == nil {
		return "none"
	}
	return "other"
}

var reasons = []struct {
	err  error
	name string
}{
	{ErrForgedTick, "forged"},
	{ErrForgedRequest, "forged"},
	{ErrOtherUnit, "other_unit"},
	{ErrStaleTick, "stale"},
	{ErrStaleRequest, "stale"},
	{ErrFutureTick, "future"},
	{ErrFarRequest, "future"},
	{ErrReplay, "replay"},
	{ErrRateLimited, "rate"},
	{ErrRequestRate, "rate"},
	{ErrTooMany, "too_many_classes"},
	{ErrTooManyRequests, "open_requests"},
	{ErrBadTick, "malformed"},
	{ErrBadNegotiation, "malformed"},
	{ErrBadPrice, "malformed"},
}

// pubsubReason is Reason for GossipSub's own reasons (pubsub.Reject*).
func pubsubReason(r string) string {
	switch r {
	case pubsub.RejectInvalidSignature:
		return "bad_signature"
	case pubsub.RejectMissingSignature:
		return "missing_signature"
	case pubsub.RejectUnexpectedSignature, pubsub.RejectUnexpectedAuthInfo:
		return "unexpected_signature"
	case pubsub.RejectValidationQueueFull:
		return "queue_full"
	case pubsub.RejectValidationThrottled:
		return "throttled"
	case pubsub.RejectBlacklstedPeer, pubsub.RejectBlacklistedSource:
		return "blacklisted"
	case pubsub.RejectSelfOrigin:
		return "self_origin"
	}
	return "other"
}

// TopicRefusal is how many messages of a topic this peer refused with one
// verdict for one reason.
type TopicRefusal struct {
	Topic   string // the topic's short name ("prices", "rfb")
	Verdict string // "reject" (with blame: the delivering peer loses score) or "ignore"
	Reason  string // see Reason; "prefiltered": dropped unchecked, its submitter over its rate
	Count   uint64
}

type refusalKey struct{ verdict, reason string }

// refuse counts a refusal of one of the topic's messages.
func (c *topicCounters) refuse(verdict, reason string) {
	v, ok := c.refusals.Load(refusalKey{verdict, reason})
	if !ok {
		v, _ = c.refusals.LoadOrStore(refusalKey{verdict, reason}, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// Refusals is what this peer refused of each topic it joined, by verdict
// and reason, sorted.
func (g *Gossip) Refusals() []TopicRefusal {
	var out []TopicRefusal
	g.stats.topics.Range(func(k, v any) bool {
		name := shortTopic(k.(string))
		v.(*topicCounters).refusals.Range(func(rk, n any) bool {
			key := rk.(refusalKey)
			out = append(out, TopicRefusal{Topic: name, Verdict: key.verdict, Reason: key.reason, Count: n.(*atomic.Uint64).Load()})
			return true
		})
		return true
	})
	sort.Slice(out, func(i, k int) bool {
		a, b := out[i], out[k]
		if a.Topic != b.Topic {
			return a.Topic < b.Topic
		}
		if a.Verdict != b.Verdict {
			return a.Verdict < b.Verdict
		}
		return a.Reason < b.Reason
	})
	return out
}

// shortTopic is a topic's name without its swarm and version
// ("/gpumesh/<swarm>/<name>/1" → "<name>").
func shortTopic(t string) string {
	parts := strings.Split(t, "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2]
	}
	return t
}
