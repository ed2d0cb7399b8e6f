package jobspec

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/gpumesh/gpumesh/internal/text"
)

// Input is a file or folder every member of a job reads, read-only, at
// Dst. It comes from one of three places:
//
//	inputs:
//	  - src: ./train/                      # on the submitting peer's machine
//	    dst: /inputs/train
//	  - url: https://example.org/data.tar  # fetched by each provider
//	    sha256: 9f86d0...                  # required with url
//	    dst: /inputs/data.tar
//	  - cid: bafybei...                    # content on the mesh, by its CID
//	    dst: /inputs/weights
//
// The submitting peer adds a src to its content store at submit and sends
// the job with its CID instead (a src never leaves the submitter); a
// provider fetches a CID over the mesh once (its cache is keyed by hash),
// and a URL itself, checking its SHA-256. A container sees Dst as a
// read-only mount; the process executor finds it under its work folder
// (Dst without its leading "/", relative to where it runs), read-only.
type Input struct {
	Src    string `yaml:"src,omitempty" json:"src,omitempty"`       // a file or folder of the submitter (absolute, or relative to the spec file)
	CID    string `yaml:"cid,omitempty" json:"cid,omitempty"`       // a UnixFS DAG of SHA-256 blocks (CIDv1, or v0), on the mesh
	URL    string `yaml:"url,omitempty" json:"url,omitempty"`       // http or https
	SHA256 string `yaml:"sha256,omitempty" json:"sha256,omitempty"` // hex of the URL's body, required with url
	Dst    string `yaml:"dst" json:"dst"`                           // an absolute path, such as /inputs/train
}

// Bounds of inputs.
const (
	MaxInputs     = 32
	maxInputPath  = 1024 // bytes of a src or dst
	maxInputURL   = 2048 // bytes of a url
	maxInputCID   = 128  // characters of a CID
	reservedMount = "/outputs"
)

// From names where an input comes from, for messages: its src, url or
// cid.
func (in Input) From() string {
	switch {
	case in.URL != "":
		return in.URL
	case in.Src != "":
		return in.Src
	}
	return in.CID
}

// ParseCID reads a CID an input may name: CIDv0 or CIDv1 of a dag-pb or
// raw block, hashed with SHA-256.
func ParseCID(s string) (cid.Cid, error) {
	if len(s) > maxInputCID {
		return cid.Undef, fmt.Errorf("%d characters, at most %d", len(s), maxInputCID)
	}
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, err
	}
	if t := c.Type(); t != cid.DagProtobuf && t != cid.Raw {
		return cid.Undef, fmt.Errorf("codec %#x: want a UnixFS file or folder (dag-pb or raw)", t)
	}
	if c.Prefix().MhType != mh.SHA2_256 {
		return cid.Undef, fmt.Errorf("not a SHA-256 CID")
	}
	return c, nil
}

func checkInputs(ins []Input, bad func(field, format string, a ...any)) {
	if len(ins) > MaxInputs {
		bad("inputs", "at most %d, got %d", MaxInputs, len(ins))
		return
	}
	var dsts []string
	for i, in := range ins {
		field := fmt.Sprintf("inputs[%d]", i)
		sources := 0
		for _, v := range []string{in.Src, in.CID, in.URL} {
			if v != "" {
				sources++
			}
		}
		// A src the submitter has added carries its CID: both are fine.
		if sources == 2 && in.Src != "" && in.CID != "" {
			sources = 1
		}
		if sources != 1 {
			bad(field, "want exactly one of src (a local file or folder), url (with sha256) or cid")
		}
		switch {
		case in.Src != "" && (len(in.Src) > maxInputPath || strings.IndexByte(in.Src, 0) >= 0):
			bad(field+".src", "want a path of at most %d bytes", maxInputPath)
		}
		if in.CID != "" {
			if _, err := ParseCID(in.CID); err != nil {
				bad(field+".cid", "want a CID such as bafybei... : %s: %v", text.Clip(in.CID), err)
			}
		}
		if in.URL != "" {
			u, err := url.Parse(in.URL)
			switch {
			case len(in.URL) > maxInputURL:
				bad(field+".url", "at most %d bytes, got %d", maxInputURL, len(in.URL))
			case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
				bad(field+".url", "want an http:// or https:// URL, got %s", text.Clip(in.URL))
			}
			if in.SHA256 == "" {
				bad(field+".sha256", "required with url: the hex SHA-256 of what the URL serves (sha256sum FILE), so every provider can check it")
			}
		}
		if in.SHA256 != "" {
			if b, err := hex.DecodeString(in.SHA256); err != nil || len(b) != 32 {
				bad(field+".sha256", "want 64 hex digits, got %s", text.Clip(in.SHA256))
			} else if in.URL == "" {
				bad(field+".sha256", "only with url")
			}
		}
		d := in.Dst
		switch {
		case d == "":
			bad(field+".dst", "required: where the job sees it, an absolute path such as /inputs/train")
		case len(d) > maxInputPath || !path.IsAbs(d) || path.Clean(d) != d || d == "/" || strings.ContainsAny(d, "\x00\\:,"):
			bad(field+".dst", "want a clean absolute path such as /inputs/train (no .., no trailing /, no \\ : or ,), got %s", text.Clip(d))
		case within(d, reservedMount):
			bad(field+".dst", "%s is where outputs go; put inputs elsewhere, such as /inputs", reservedMount)
		default:
			for _, o := range dsts {
				if within(d, o) || within(o, d) {
					bad(field+".dst", "%s overlaps %s of another input", d, o)
				}
			}
			dsts = append(dsts, d)
		}
	}
}

// within says whether p is dir or under it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// Checkpoint is a folder a job writes its progress in, which the network
// keeps for it:
//
//	checkpoint:
//	  path: /checkpoints   # the job writes here ($GPUMESH_CHECKPOINT)
//	  every: 5m            # and member 0's node syncs what changed this often, and at the end
//	  replicas: 1          # and the submitter has this many other peers keep a copy (0..3)
//
// Member 0's folder is added to its provider's content store every Every
// (only chunks not seen before are new) and sent by CID to the submitter,
// which fetches it and keeps the latest complete one. A retry (a lost
// member, retries:) starts every member with that checkpoint at Path and
// GPUMESH_RESUMED=1. With Replicas, the submitter also asks that many
// peers it is connected to (none of the job's providers) to keep its
// latest checkpoint; a retry fetches it back from them when the
// submitter's own copy is gone. A job should write each checkpoint file whole under
// another name and rename it, so a sync never takes half a file.
type Checkpoint struct {
	Path     string `yaml:"path" json:"path"`                             // an absolute path, such as /checkpoints
	Every    string `yaml:"every,omitempty" json:"every,omitempty"`       // a duration, 1s..24h; "": 5m
	Replicas int    `yaml:"replicas,omitempty" json:"replicas,omitempty"` // peers that keep a copy, 0..MaxCheckpointReplicas
}

// MaxCheckpointReplicas is the most replicas a checkpoint may ask for.
const MaxCheckpointReplicas = 3

// Checkpoint intervals.
const (
	DefaultCheckpointEvery = 5 * time.Minute
	minCheckpointEvery     = time.Second
	maxCheckpointEvery     = 24 * time.Hour
)

// Interval is how often the checkpoint is synced.
func (c Checkpoint) Interval() time.Duration {
	if d, err := time.ParseDuration(c.Every); err == nil && d >= minCheckpointEvery {
		return d
	}
	return DefaultCheckpointEvery
}

func checkCheckpoint(c *Checkpoint, ins []Input, bad func(field, format string, a ...any)) {
	if c == nil {
		return
	}
	d := c.Path
	switch {
	case d == "":
		bad("checkpoint.path", "required: the folder the job writes its checkpoints in, such as /checkpoints")
	case len(d) > maxInputPath || !path.IsAbs(d) || path.Clean(d) != d || d == "/" || strings.ContainsAny(d, "\x00\\:,"):
		bad("checkpoint.path", "want a clean absolute path such as /checkpoints (no .., no trailing /, no \\ : or ,), got %s", text.Clip(d))
	case within(d, reservedMount) || within(reservedMount, d):
		bad("checkpoint.path", "%s is where outputs go; put checkpoints elsewhere, such as /checkpoints", reservedMount)
	default:
		for _, in := range ins {
			if within(d, in.Dst) || within(in.Dst, d) {
				bad("checkpoint.path", "%s overlaps the input at %s", d, in.Dst)
			}
		}
	}
	if c.Every != "" {
		e, err := time.ParseDuration(c.Every)
		if err != nil || e < minCheckpointEvery || e > maxCheckpointEvery {
			bad("checkpoint.every", "must be a duration like 5m, 1s..24h, got %s", text.Clip(c.Every))
		}
	}
	if c.Replicas < 0 || c.Replicas > MaxCheckpointReplicas {
		bad("checkpoint.replicas", "want 0..%d peers that keep a copy, got %d", MaxCheckpointReplicas, c.Replicas)
	}
}
