package jobwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// ReplicaProtocol asks a peer to keep a copy of a job's checkpoint: the
// submitter (the stream's remote peer, authenticated by the connection)
// opens a stream, sends one ReplicaRequest and reads one ReplicaAnswer.
// The submitter grants the peer the CID first; the peer fetches it from
// the submitter before it answers ok. Frames are a uvarint length and a
// JSON object, as on Protocol.
const ReplicaProtocol = protocol.ID("/gpumesh/replica/1.0.0")

// Bounds of the replica protocol.
const (
	MaxReplicaFrame = 4 << 10             // bytes of a request or an answer
	MaxReplicaKeep  = 30 * 24 * time.Hour // the longest a request may ask a copy kept
	MaxReplicaBytes = 1 << 40             // the most bytes a request may name
)

// ReplicaRequest asks the peer to keep checkpoint CID of job Job (Bytes
// of blocks in all) until Until (Unix seconds), in place of the copy of
// that job it keeps for the same submitter.
type ReplicaRequest struct {
	Job   string `json:"job"`
	CID   string `json:"cid"`
	Bytes int64  `json:"bytes"`
	Until int64  `json:"until"`
}

// ReplicaAnswer is the peer's answer: OK once the checkpoint is whole in
// its store and pinned, else why not.
type ReplicaAnswer struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// Check checks a request's bounds against now.
func (r ReplicaRequest) Check(now time.Time) error {
	var jid gossip.JobID
	if jid.UnmarshalText([]byte(r.Job)) != nil {
		return fmt.Errorf("%w: replica: job ID %s", ErrBadFrame, text.Clip(r.Job))
	}
	if _, err := jobspec.ParseCID(r.CID); err != nil {
		return fmt.Errorf("%w: replica: checkpoint %s: %v", ErrBadFrame, text.Clip(r.CID), err)
	}
	if r.Bytes < 1 || r.Bytes > MaxReplicaBytes {
		return fmt.Errorf("%w: replica: %d bytes, want 1..%d", ErrBadFrame, r.Bytes, int64(MaxReplicaBytes))
	}
	until := time.Unix(r.Until, 0)
	if !until.After(now) || until.After(now.Add(MaxReplicaKeep)) {
		return fmt.Errorf("%w: replica: keep until %d, want a time in the next %s", ErrBadFrame, r.Until, MaxReplicaKeep)
	}
	return nil
}

// WriteReplica writes one request or answer.
func WriteReplica(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(data) > MaxReplicaFrame {
		return fmt.Errorf("%w: replica frame of %d bytes, at most %d", ErrBadFrame, len(data), MaxReplicaFrame)
	}
	buf := binary.AppendUvarint(make([]byte, 0, len(data)+binary.MaxVarintLen64), uint64(len(data)))
	_, err = w.Write(append(buf, data...))
	return err
}

// ReadReplicaRequest reads one request and checks it against now.
func ReadReplicaRequest(r *bufio.Reader, now time.Time) (ReplicaRequest, error) {
	var req ReplicaRequest
	if err := readReplica(r, &req); err != nil {
		return ReplicaRequest{}, err
	}
	return req, req.Check(now)
}

// ReadReplicaAnswer reads one answer.
func ReadReplicaAnswer(r *bufio.Reader) (ReplicaAnswer, error) {
	var a ReplicaAnswer
	if err := readReplica(r, &a); err != nil {
		return ReplicaAnswer{}, err
	}
	if len(a.Reason) > 512 {
		a.Reason = a.Reason[:512]
	}
	return a, nil
}

func readReplica(r *bufio.Reader, v any) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	if n == 0 || n > MaxReplicaFrame {
		return fmt.Errorf("%w: replica frame of length %d, want 1..%d", ErrBadFrame, n, MaxReplicaFrame)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: replica: %v", ErrBadFrame, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: replica: data after the frame", ErrBadFrame)
	}
	return nil
}
