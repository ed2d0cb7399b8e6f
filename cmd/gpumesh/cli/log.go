package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	golog "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/gologshim"
)

// newLogger builds the process's logger from --log-level and --log-format,
// and routes libp2p's own logs into it (at warn and above, all of them at
// debug) so one stream carries everything.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	var gf golog.LogFormat
	switch strings.ToLower(format) {
	case "text":
		h, gf = slog.NewTextHandler(w, opts), golog.PlaintextOutput
	case "json":
		h, gf = slog.NewJSONHandler(w, opts), golog.JSONOutput
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	// The DHT (go-log) warns of every failed refresh, which a peer alone in
	// a new swarm always has: only its errors reach the log unless debugging.
	libLevel, golevel := slog.LevelWarn, golog.LevelError
	if lvl <= slog.LevelDebug {
		libLevel, golevel = slog.LevelDebug, golog.LevelDebug
	}
	if lvl > libLevel {
		libLevel = lvl
	}
	gologshim.SetDefaultHandler(minLevel{Handler: h, min: libLevel})
	golog.SetupLogging(golog.Config{Format: gf, Level: golevel, Stderr: true})
	return slog.New(h), nil
}

// minLevel drops records below min before they reach the handler.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{Handler: m.Handler.WithAttrs(a), min: m.min}
}

func (m minLevel) WithGroup(g string) slog.Handler {
	return minLevel{Handler: m.Handler.WithGroup(g), min: m.min}
}
