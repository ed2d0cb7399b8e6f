package jobwire

import (
	"bufio"
	"bytes"
	"testing"
	"time"
)

const replicaJob = "0123456789abcdef0123456789abcdef"

func TestReplicaRequestBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	good := ReplicaRequest{Job: replicaJob, CID: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", Bytes: 10, Until: now.Add(time.Hour).Unix()}
	var buf bytes.Buffer
	if err := WriteReplica(&buf, good); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadReplicaRequest(bufio.NewReader(&buf), now); err != nil || got != good {
		t.Fatalf("read %+v, %v; want %+v", got, err, good)
	}
	for name, r := range map[string]ReplicaRequest{
		"bad job":    {Job: "x", CID: good.CID, Bytes: 10, Until: good.Until},
		"bad cid":    {Job: replicaJob, CID: "nope", Bytes: 10, Until: good.Until},
		"no bytes":   {Job: replicaJob, CID: good.CID, Bytes: 0, Until: good.Until},
		"past":       {Job: replicaJob, CID: good.CID, Bytes: 10, Until: now.Unix()},
		"too far":    {Job: replicaJob, CID: good.CID, Bytes: 10, Until: now.Add(MaxReplicaKeep + time.Hour).Unix()},
		"huge bytes": {Job: replicaJob, CID: good.CID, Bytes: MaxReplicaBytes + 1, Until: good.Until},
	} {
		if err := r.Check(now); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
}

func FuzzReadReplicaRequest(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteReplica(&buf, ReplicaRequest{Job: replicaJob, CID: "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", Bytes: 10, Until: 1_800_003_600})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ReadReplicaRequest(bufio.NewReader(bytes.NewReader(data)), now)
		if err == nil {
			if r.Check(now) != nil {
				t.Fatalf("read a request that fails its check: %+v", r)
			}
		}
	})
}
