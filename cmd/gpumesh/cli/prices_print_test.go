package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
)

// The robust index says beside its figures how many quotes it counts when
// some are left out; a board that counts every quote says nothing.
func TestPricesLabelTheIndexWhenQuotesAreNotCounted(t *testing.T) {
	base := node.Prices{Token: "USDC", Decimals: 6}
	for _, tc := range []struct {
		name      string
		q         gossip.Quote
		want, not []string
	}{
		{
			name: "one of four counted",
			q:    gossip.Quote{Class: "H100-80GB", Providers: 4, Counted: 1, GPUs: 32, Best: 2_050_000, Median: 2_150_000, Mean: 2_150_000, EWMA: 2_150_000},
			want: []string{"H100-80GB  2.05  32    4          2.15    2.15  2.15  (1 of 4 counted)", "count a new provider after a probation"},
		},
		{
			name: "all on probation: asks shown, no index yet",
			q:    gossip.Quote{Class: "H100-80GB", Providers: 2, GPUs: 16, Best: 2_100_000},
			want: []string{"H100-80GB  2.10  16    2          -       -     -     (0 of 2 counted)"},
		},
		{
			name: "every quote counted",
			q:    gossip.Quote{Class: "H100-80GB", Providers: 2, Counted: 2, Mature: 2, GPUs: 16, Best: 2_100_000, Median: 2_100_000, Mean: 2_100_000, EWMA: 2_100_000},
			want: []string{"H100-80GB  2.10  16    2          2.10    2.10  2.10"},
			not:  []string{"counted", "probation"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.Classes = []gossip.Quote{tc.q}
			var buf bytes.Buffer
			printPrices(&buf, p, "")
			got := buf.String()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(got, w) {
					t.Errorf("output has %q:\n%s", w, got)
				}
			}
		})
	}
}
