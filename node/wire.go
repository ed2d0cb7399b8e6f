package node

import (
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/libp2p/go-libp2p/core/record"
)

// The negotiation protocol's envelope, for peers that speak it without a
// Node (tools, and the hostile peers of node/meshtest): one signed
// message a stream on NegotiateProtocol.

// SealNegotiation encodes msg and signs it with id's key, as a message of
// NegotiateProtocol is sent. The protocol takes it only when id is the
// message's author.
func SealNegotiation(id Identity, msg gossip.Message) ([]byte, error) {
	data, err := gossip.MarshalNegotiation(msg)
	if err != nil {
		return nil, err
	}
	env, err := record.Seal(&negRecord{data: data}, id.Key)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// OpenNegotiation checks a signed negotiation message (its size, the
// signature, that the signer is the author it names) and decodes it.
func OpenNegotiation(data []byte) (gossip.Message, error) { return openNegotiation(data) }
