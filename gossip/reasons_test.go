package gossip

import (
	"errors"
	"fmt"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
)

// Every refusal's reason is a word from a fixed set, whatever the error
// wraps or says.
func TestReasonIsAFixedWord(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("%w: submitter x, signer y", ErrForgedRequest), "forged"},
		{fmt.Errorf("%w: provider x", ErrForgedTick), "forged"},
		{fmt.Errorf("%w: 3s ago", ErrStaleRequest), "stale"},
		{ErrRequestRate, "rate"},
		{ErrRateLimited, "rate"},
		{ErrTooManyRequests, "open_requests"},
		{fmt.Errorf("%w: %w", ErrBadNegotiation, errors.New("peer-chosen text \x1b[2J")), "malformed"},
		{errors.New("peer-chosen text"), "other"},
		{nil, "none"},
	} {
		if got := Reason(c.err); got != c.want {
			t.Errorf("Reason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if got := pubsubReason(pubsub.RejectInvalidSignature); got != "bad_signature" {
		t.Errorf("pubsub's invalid signature: %q", got)
	}
	if got := pubsubReason("anything a future GossipSub says"); got != "other" {
		t.Errorf("an unknown GossipSub reason: %q, want other", got)
	}
}
