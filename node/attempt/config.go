package attempt

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Defaults of Config.
const (
	DefaultHeartbeat      = time.Second
	DefaultLostAfterBeats = 3
	DefaultStartTimeout   = 10 * time.Second
	DefaultStartWithin    = 5 * time.Minute
	DefaultStopWait       = 25 * time.Second
	MinBillSlack          = 2 * time.Second
)

// Member is one member of the cluster, as the negotiation formed it.
type Member struct {
	Name     string // short name of its provider for messages: "member 1 (Name)"; "": "member 1"
	Provider string // its provider's Solana address, as its receipt must name it
	GPUs     uint32 // GPUs leased, at least 1
	Class    string // GPU class, e.g. "H100-80GB"
	Price    uint64 // per GPU-hour, in the unit's smallest unit
	HostNet  bool   // its provider cannot make job networks: a job of several without MasterAddr meets on the host network
}

// Config is one attempt of a job. The zero value of every duration is its
// default.
type Config struct {
	Job      string   // the job's ID, as receipts name it
	Consumer string   // this peer's Solana address, as receipts name it
	Members  []Member // by rank; at least one
	Attempt  int      // this attempt, from 0
	Retries  int      // retries the spec allows

	Timeout     time.Duration // the spec's timeout; 0: the job has none
	TimeoutText string        // the spec's timeout as written ("2h"), for reasons; "": Timeout.String()

	Rendezvous bool // start member 0 first, the rest once it is ready (with its port)
	// MasterAddr, when set, is the rendezvous address every member gets,
	// member 0 included: member 0's address on the job's own network. ""
	// (no job network: one member, or a member's provider cannot make
	// one, Member.HostNet, and all meet on the host network, which the
	// job's log says): member 0's address as its stream reaches it.
	MasterAddr       string
	EndsWithRankZero bool // a head launcher: when member 0 exits, stop every member
	Settles          bool // this peer pays bills on chain as the job runs

	Heartbeat      time.Duration // how often members say they are alive; 0: 1 s
	LostAfterBeats int           // heartbeats missed before a member is lost; 0: 3
	StartTimeout   time.Duration // opening a member's stream; part of the job's deadline; 0: 10 s
	StartWithin    time.Duration // from a member's start to its started frame (image pull included); 0: 5 min; negative: no limit
	StopWait       time.Duration // from stopping every member to closing their streams; 0: 25 s
	BillSlack      time.Duration // billed time allowed beyond the time measured; 0: the larger of 2 s and Heartbeat

	Unit         string              // the price unit's token for messages, e.g. "SOL"; "": none
	FormatAmount func(uint64) string // writes an amount of the smallest unit for messages; nil: the integer
}

func (c Config) withDefaults() Config {
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.LostAfterBeats <= 0 {
		c.LostAfterBeats = DefaultLostAfterBeats
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StartWithin == 0 {
		c.StartWithin = DefaultStartWithin
	}
	if c.StopWait <= 0 {
		c.StopWait = DefaultStopWait
	}
	if c.BillSlack <= 0 {
		c.BillSlack = max(MinBillSlack, c.Heartbeat)
	}
	if c.TimeoutText == "" {
		c.TimeoutText = c.Timeout.String()
	}
	if c.FormatAmount == nil {
		c.FormatAmount = func(v uint64) string { return strconv.FormatUint(v, 10) }
	}
	return c
}

// ErrBadConfig marks a Config that cannot run.
var ErrBadConfig = errors.New("attempt: bad config")

func (c Config) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, a...))
	}
	switch {
	case len(c.Members) == 0:
		return bad("no members")
	case c.Attempt < 0:
		return bad("attempt %d is negative", c.Attempt)
	case c.Retries < 0:
		return bad("retries %d is negative", c.Retries)
	case c.Timeout < 0:
		return bad("timeout %s is negative", c.Timeout)
	}
	for r, m := range c.Members {
		if m.GPUs == 0 {
			return bad("member %d has no GPUs", r)
		}
	}
	return nil
}
