package reputation

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The evidence exchange: a peer asks a provider for the anchored receipts
// it can show, and the provider answers with their proofs (as
// `gpumesh proof verify` reads them), newest first. One request, one
// response, on a stream of Protocol; each frame is a uvarint length and
// that many bytes of JSON. The asker checks every proof before it counts
// (see the package doc); the frames only bound what a stranger can send.

// Protocol is the evidence exchange's protocol ID.
const Protocol = "/gpumesh/evidence/1.0.0"

// WireVersion is the version of the frames.
const WireVersion = 1

// Bounds of the exchange.
const (
	MaxProofs       = 64        // proofs in one response
	MaxProofBytes   = 256 << 10 // bytes of one proof (as chain.MaxProofSize)
	MaxRequestBytes = 256       // bytes of a request frame
	MaxResponseSize = 4 << 20   // bytes of a response frame
)

// ErrBadFrame marks a frame that is malformed or out of bounds.
var ErrBadFrame = errors.New("bad evidence frame")

// Request asks a provider for at most Max of its anchored receipts.
type Request struct {
	V   int `json:"v"`
	Max int `json:"max"` // 1..MaxProofs
}

// Response is a provider's anchored receipts: proof files, newest first,
// and how many it has anchored in all.
type Response struct {
	V      int               `json:"v"`
	Proofs []json.RawMessage `json:"proofs"`
	Total  int               `json:"total"`
	Error  string            `json:"error,omitempty"` // why it shows none (no anchoring, say)
}

// Check says what is wrong with a request, if anything.
func (r Request) Check() error {
	switch {
	case r.V != WireVersion:
		return fmt.Errorf("%w: version %d, this peer speaks %d", ErrBadFrame, r.V, WireVersion)
	case r.Max < 1 || r.Max > MaxProofs:
		return fmt.Errorf("%w: asks for %d proofs, want 1..%d", ErrBadFrame, r.Max, MaxProofs)
	}
	return nil
}

// Check says what is wrong with a response, if anything (the proofs' own
// contents are the asker's to check).
func (r Response) Check(asked int) error {
	switch {
	case r.V != WireVersion:
		return fmt.Errorf("%w: version %d, this peer speaks %d", ErrBadFrame, r.V, WireVersion)
	case len(r.Proofs) > min(asked, MaxProofs):
		return fmt.Errorf("%w: %d proofs, asked for %d", ErrBadFrame, len(r.Proofs), asked)
	case r.Total < len(r.Proofs) || r.Total > 1<<40:
		return fmt.Errorf("%w: a total of %d with %d proofs", ErrBadFrame, r.Total, len(r.Proofs))
	case len(r.Error) > 1024:
		return fmt.Errorf("%w: an error of %d bytes", ErrBadFrame, len(r.Error))
	}
	for i, p := range r.Proofs {
		if len(p) == 0 || len(p) > MaxProofBytes {
			return fmt.Errorf("%w: proof %d has %d bytes, at most %d", ErrBadFrame, i, len(p), MaxProofBytes)
		}
		if p[0] != '{' {
			return fmt.Errorf("%w: proof %d is not a JSON object (a proof file)", ErrBadFrame, i)
		}
	}
	return nil
}

// WriteFrame writes v as one frame.
func WriteFrame(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	buf := binary.AppendUvarint(nil, uint64(len(data)))
	_, err = w.Write(append(buf, data...))
	return err
}

// readFrame reads one frame's bytes, at most limit of them.
func readFrame(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: length: %v", ErrBadFrame, err)
	}
	if n == 0 || n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, want 1..%d", ErrBadFrame, n, limit)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("%w: %d-byte frame cut short: %v", ErrBadFrame, n, err)
	}
	return data, nil
}

// ReadRequest reads and checks a request frame.
func ReadRequest(r *bufio.Reader) (Request, error) {
	data, err := readFrame(r, MaxRequestBytes)
	if err != nil {
		return Request{}, err
	}
	return DecodeRequest(data)
}

// ReadResponse reads and checks a response frame to a request for asked
// proofs.
func ReadResponse(r *bufio.Reader, asked int) (Response, error) {
	data, err := readFrame(r, MaxResponseSize)
	if err != nil {
		return Response{}, err
	}
	return DecodeResponse(data, asked)
}

func decode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the frame", ErrBadFrame)
	}
	return nil
}

// DecodeRequest reads and checks a request frame's bytes.
func DecodeRequest(data []byte) (Request, error) {
	var r Request
	if len(data) > MaxRequestBytes {
		return r, fmt.Errorf("%w: request of %d bytes, at most %d", ErrBadFrame, len(data), MaxRequestBytes)
	}
	if err := decode(data, &r); err != nil {
		return r, err
	}
	return r, r.Check()
}

// DecodeResponse reads and checks a response frame's bytes, to a request
// for asked proofs.
func DecodeResponse(data []byte, asked int) (Response, error) {
	var r Response
	if len(data) > MaxResponseSize {
		return r, fmt.Errorf("%w: response of %d bytes, at most %d", ErrBadFrame, len(data), MaxResponseSize)
	}
	if err := decode(data, &r); err != nil {
		return r, err
	}
	return r, r.Check(asked)
}
