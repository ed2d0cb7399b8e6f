package node

import (
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

func TestRelayFlagsAreCheckedWithTheFix(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{RelayService: "sometimes"}, "--relay-service sometimes: want auto"},
		{Config{RelayMaxReservations: -1}, "--relay-max-reservations -1"},
		{Config{RelayData: -5}, "--relay-data -5"},
		{Config{RelayDuration: -time.Second}, "--relay-duration -1s"},
	} {
		err := tc.cfg.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
	for _, mode := range []string{"", RelayAuto, RelayOn, RelayOff} {
		if err := (&Config{RelayService: mode}).validate(); err != nil {
			t.Errorf("--relay-service %q: %v", mode, err)
		}
	}
}

func TestRelayModeAndLimits(t *testing.T) {
	for _, tc := range []struct {
		service string
		noNAT   bool
		want    string
	}{
		{"", false, RelayAuto},
		{"", true, RelayOff}, // no AutoNAT to wait for
		{RelayAuto, true, RelayOff},
		{RelayOn, true, RelayOn},
		{RelayOff, false, RelayOff},
	} {
		c := Config{RelayService: tc.service, NoNAT: tc.noNAT}
		if got := c.relayMode(); got != tc.want {
			t.Errorf("service %q, NoNAT %v: mode %q, want %q", tc.service, tc.noNAT, got, tc.want)
		}
	}
	rc := (&Config{}).relayResources()
	if rc.MaxReservations != DefaultRelayReservations || rc.Limit.Data != DefaultRelayData || rc.Limit.Duration != DefaultRelayDuration {
		t.Errorf("defaults: %d reservations, %d bytes, %v; want %d, %d, %v", rc.MaxReservations, rc.Limit.Data, rc.Limit.Duration,
			DefaultRelayReservations, DefaultRelayData, DefaultRelayDuration)
	}
	rc = (&Config{RelayMaxReservations: 3, RelayData: 1 << 20, RelayDuration: time.Minute}).relayResources()
	if rc.MaxReservations != 3 || rc.MaxReservationsPerIP > 3 || rc.Limit.Data != 1<<20 || rc.Limit.Duration != time.Minute {
		t.Errorf("set: %+v limit %+v", rc, rc.Limit)
	}
}

func TestRelayedAddressNamesItsRelay(t *testing.T) {
	relay := "12D3KooWQMtsHzQ1W2Ganzm26mgahidsAqLoPUKt1btU52q85gGQ"
	for _, tc := range []struct {
		addr, relay string
		ok          bool
	}{
		{"/ip4/11.0.0.2/tcp/4021/p2p/" + relay + "/p2p-circuit", relay, true},
		{"/ip4/11.0.0.2/tcp/4021/p2p/" + relay + "/p2p-circuit/p2p/12D3KooWFoUG1FNG6k9AdeKLRjh3fSD3yvXdrPjAVzGTnQ87mBMB", relay, true},
		{"/p2p-circuit", "", true},
		{"/ip4/11.0.0.2/tcp/4021", "", false},
	} {
		got, ok := isRelayed(ma.StringCast(tc.addr))
		if got != tc.relay || ok != tc.ok {
			t.Errorf("%s: %q %v, want %q %v", tc.addr, got, ok, tc.relay, tc.ok)
		}
	}
}

func TestPunchLogKeepsSuccessesAndStaysBounded(t *testing.T) {
	var l punchLog
	a, b := peer.ID("a"), peer.ID("b")
	now := time.Now()
	l.Trace(&holepunch.Event{Remote: a, Timestamp: now.UnixNano(), Evt: &holepunch.EndHolePunchEvt{Success: true, EllapsedTime: time.Second}})
	l.Trace(&holepunch.Event{Remote: b, Timestamp: now.UnixNano(), Evt: &holepunch.EndHolePunchEvt{Success: false}})
	l.Trace(&holepunch.Event{Remote: b, Timestamp: now.UnixNano(), Evt: &holepunch.StartHolePunchEvt{}})
	if since, ok := l.punchedSince(a); !ok || !since.Equal(time.Unix(0, now.UnixNano()).Add(-time.Second)) {
		t.Errorf("a: %v %v, want the punch's start", since, ok)
	}
	if _, ok := l.punchedSince(b); ok {
		t.Error("a failed punch was logged as one that worked")
	}
	for i := range 3 * maxPunchLog {
		l.Trace(&holepunch.Event{Remote: peer.ID(rune(i)), Timestamp: now.Add(time.Duration(i)).UnixNano(), Evt: &holepunch.EndHolePunchEvt{Success: true}})
	}
	if n := len(l.punched); n > maxPunchLog {
		t.Errorf("%d peers logged, want at most %d", n, maxPunchLog)
	}
}
