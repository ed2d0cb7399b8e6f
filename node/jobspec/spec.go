// Package jobspec reads and checks a job spec, the YAML (or JSON) a user
// submits: Parse reads the syntax, Validate says everything wrong with the
// values at once, and Needs turns a valid spec into what negotiation asks
// the swarm for. It is pure: the CLI checks a spec without linking a node.
package jobspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
)

// A job spec is what a user submits: a YAML file on the command line, or the
// same fields as JSON through the local API. Parse reads one (the
// syntax, the field names, the types); Validate checks the values and says
// everything that is wrong at once; Needs turns a valid spec into what the
// negotiation asks the swarm for.
//
//	name: resnet-train
//	image: pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime
//	command: [torchrun, train.py]
//	env: {EPOCHS: "3"}
//	resources:
//	  gpus: 8
//	  gpu: {model: H100, minVRAM: 80GB}
//	  perNode: 8
//	placement: colocated
//	launcher: torchrun
//	maxPrice: 2.50
//	timeout: 2h
//	queue: 30m        # wait up to 30 minutes for a cluster

// Bounds of a job spec.
const (
	MaxSize          = 64 << 10  // bytes of an encoded spec
	maxJobNameLen    = 63        // a DNS label
	maxImageLen      = 512       // bytes of an image reference
	maxCommandArgs   = 256       // arguments of command
	maxCommandArgLen = 4096      // bytes of one argument
	maxEnvVars       = 256       // variables of env
	maxEnvNameLen    = 256       // bytes of a variable name
	maxArgBytes      = 256 << 10 // bytes of command and env together
	maxMinVRAMGB     = 4096      // GB of resources.gpu.minVRAM
	maxRetries       = 10        // retries of a failed job
	minTimeout       = time.Second
	maxTimeout       = gossip.MaxLeaseSeconds * time.Second // 720h
)

// Launchers a job may name; "" is LauncherNone.
const (
	LauncherNone     = "none"     // run command (or the image) on every member as is
	LauncherTorchrun = "torchrun" // torchrun with the rendezvous of the cluster
	LauncherRay      = "ray"      // a Ray cluster over the members
)

// ErrBad marks a job spec that cannot be read or has wrong values.
// Every error of Parse, Validate and Needs wraps it.
var ErrBad = errors.New("bad job spec")

// Where a job's image comes from (Spec.ImageFrom).
const (
	ImageFromSubmitter = "submitter"
	ImageFromRegistry  = "registry"
)

// Spec is a job as a user writes it. Values are kept as written; Validate
// says which are wrong, and Needs converts them. The zero value is not a
// valid spec: name, image or command, resources.gpus,
// resources.gpu.model, maxPrice and timeout are required.
type Spec struct {
	Name      string            `yaml:"name" json:"name"`                               // 1..63 of a-z 0-9 -, starting and ending with a letter or digit
	Image     string            `yaml:"image,omitempty" json:"image,omitempty"`         // container image; "" runs command with the process executor
	ImageFrom string            `yaml:"imageFrom,omitempty" json:"imageFrom,omitempty"` // "": the submitter's engine's image over the mesh if it has it, else a registry; "submitter": its engine must have it; "registry"
	ImageCID  string            `yaml:"imageCid,omitempty" json:"imageCid,omitempty"`   // the image on the mesh: its manifest's CID (node/images), set by the submitter at submit
	Command   []string          `yaml:"command,omitempty" json:"command,omitempty"`     // argv; nil runs the image's entrypoint
	Env       map[string]string `yaml:"env,omitempty" json:"env,omitempty"`             // environment of the job's processes
	Resources Resources         `yaml:"resources" json:"resources"`                     // GPUs wanted
	Placement gossip.Placement  `yaml:"placement,omitempty" json:"placement,omitempty"` // colocated or spread; "": spread
	Launcher  string            `yaml:"launcher,omitempty" json:"launcher,omitempty"`   // none, torchrun or ray; "": none
	MaxPrice  Literal           `yaml:"maxPrice,omitempty" json:"maxPrice,omitempty"`   // tokens of the swarm's unit per GPU-hour, e.g. 2.50
	Timeout   string            `yaml:"timeout,omitempty" json:"timeout,omitempty"`     // how long the job may run, 1s..720h, e.g. 2h; the lease asked for
	Retries   int               `yaml:"retries,omitempty" json:"retries,omitempty"`     // runs after a failed one, 0..10; default 0
	Inputs    []Input           `yaml:"inputs,omitempty" json:"inputs,omitempty"`       // files every member reads, read-only at their dst (inputs.go)
	// Checkpoint, if set, is a folder the job writes and the network keeps:
	// synced to the submitter as the job runs and restored on a retry.
	Checkpoint *Checkpoint `yaml:"checkpoint,omitempty" json:"checkpoint,omitempty"`
	// Queue is how long the job may wait for a cluster when none can form
	// (1s..168h, e.g. 30m): it is queued and negotiates again when offers
	// change. "": it fails at once.
	Queue string `yaml:"queue,omitempty" json:"queue,omitempty"`
	// KeepAlive runs no command of the job's own: an idle process keeps
	// every member up (for `job exec`, port-forwards), billed like any
	// work until the job is cancelled or its timeout ends. Not with command.
	KeepAlive bool `yaml:"keepAlive,omitempty" json:"keepAlive,omitempty"`
	// Network is what the members may reach beyond their job: nil, none.
	Network *Network `yaml:"network,omitempty" json:"network,omitempty"`
}

// Network is what a job's members may reach beyond each other.
type Network struct {
	// Egress asks for the internet (never a provider's host, LAN,
	// link-local or metadata addresses), which each member gets where its
	// provider allows it (--job-egress). Container jobs only.
	Egress bool `yaml:"egress,omitempty" json:"egress,omitempty"`
}

// WantsEgress says whether the job asks for the internet.
func (s Spec) WantsEgress() bool { return s.Network != nil && s.Network.Egress }

// MaxQueue is the longest a job may wait for a cluster.
const MaxQueue = 168 * time.Hour

// IdleCommand is what a keepAlive member runs: the image's (or the
// machine's) shell, idle until it is told to stop, then exiting with 0.
var IdleCommand = []string{"sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"}

// Argv is the command every member runs: the spec's, or IdleCommand for a
// keepAlive job.
func (s Spec) Argv() []string {
	if s.KeepAlive && len(s.Command) == 0 {
		return IdleCommand
	}
	return s.Command
}

// QueueFor is how long a valid spec's job may wait for a cluster; 0: not
// at all.
func (s Spec) QueueFor() time.Duration {
	d, err := time.ParseDuration(s.Queue)
	if err != nil || d <= 0 {
		return 0
	}
	return d
}

// Resources is the GPUs a job wants.
type Resources struct {
	GPUs    int `yaml:"gpus" json:"gpus"`                           // GPUs in all, 1..4096
	GPU     GPU `yaml:"gpu" json:"gpu"`                             // which GPUs
	PerNode int `yaml:"perNode,omitempty" json:"perNode,omitempty"` // GPUs of every member, exactly; 0: any split
}

// GPU says which GPUs a job can use.
type GPU struct {
	Model   string  `yaml:"model" json:"model"`                         // family, e.g. H100, or class, e.g. H100-80GB; any case
	MinVRAM Literal `yaml:"minVRAM,omitempty" json:"minVRAM,omitempty"` // memory per GPU in GB: 80GB, "80 GB" or 80; "": any
}

// Literal is a scalar kept exactly as written, a number or a string: 2.50
// and "2.50" are both the literal 2.50. Prices are read from it without a
// float, so nothing is lost to rounding.
type Literal string

// UnmarshalYAML takes the text of any scalar.
func (l *Literal) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a number or a string", n.Line)
	}
	*l = Literal(n.Value)
	return nil
}

// MarshalYAML writes a string.
func (l Literal) MarshalYAML() (any, error) { return string(l), nil }

// UnmarshalJSON takes a number, as written, or a string.
func (l *Literal) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*l = Literal(s)
	case bytes.Equal(b, []byte("null")):
		// like a missing field
	case len(b) > 0 && (b[0] == '-' || b[0] >= '0' && b[0] <= '9'):
		*l = Literal(b)
	default:
		return fmt.Errorf("want a number or a string, got %s", text.Clip(string(b)))
	}
	return nil
}

// MarshalJSON writes a string.
func (l Literal) MarshalJSON() ([]byte, error) { return json.Marshal(string(l)) }

// FieldError is one thing wrong with a spec: the field's path
// (resources.gpus, env.FOO) and what is allowed.
type FieldError struct {
	Field   string
	Problem string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// Errors is every problem Validate found, in the order of the
// fields. Its message has one problem a line.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Is makes errors.Is(err, ErrBad) true.
func (es Errors) Is(target error) bool { return target == ErrBad }

// Parse reads a spec of at most MaxSize bytes in format
// "yaml" (or "yml") or "json". A field it does not know is an error, so a
// misspelt one is not silently ignored. It does not check values: call
// Validate.
func Parse(data []byte, format string) (s Spec, err error) {
	if len(data) > MaxSize {
		return Spec{}, fmt.Errorf("%w: %d bytes, at most %d (64 KiB)", ErrBad, len(data), MaxSize)
	}
	switch format {
	case "yaml", "yml":
		err = parseYAML(data, &s)
	case "json":
		err = parseJSON(data, &s)
	default:
		return Spec{}, fmt.Errorf("%w: format %q, want yaml or json", ErrBad, format)
	}
	if err != nil {
		return Spec{}, err
	}
	// YAML's !!binary can make a string of any bytes; JSON, the API's
	// format, cannot carry them, and no field needs them.
	if field := notUTF8(s); field != "" {
		return Spec{}, fmt.Errorf("%w: %s: not UTF-8 text", ErrBad, field)
	}
	// One value for "none": an empty list or map is a missing one.
	if len(s.Command) == 0 {
		s.Command = nil
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	if len(s.Inputs) == 0 {
		s.Inputs = nil
	}
	return s, nil
}

// notUTF8 names the first field of s that is not UTF-8, or is "".
func notUTF8(s Spec) string {
	fields := []struct{ name, value string }{
		{"name", s.Name},
		{"image", s.Image},
		{"imageFrom", s.ImageFrom},
		{"imageCid", s.ImageCID},
		{"resources.gpu.model", s.Resources.GPU.Model},
		{"resources.gpu.minVRAM", string(s.Resources.GPU.MinVRAM)},
		{"placement", string(s.Placement)},
		{"launcher", s.Launcher},
		{"maxPrice", string(s.MaxPrice)},
		{"timeout", s.Timeout},
		{"queue", s.Queue},
	}
	if c := s.Checkpoint; c != nil {
		fields = append(fields, struct{ name, value string }{"checkpoint.path", c.Path}, struct{ name, value string }{"checkpoint.every", c.Every})
	}
	for _, f := range fields {
		if !utf8.ValidString(f.value) {
			return f.name
		}
	}
	for i, in := range s.Inputs {
		for _, v := range []string{in.Src, in.CID, in.URL, in.SHA256, in.Dst} {
			if !utf8.ValidString(v) {
				return fmt.Sprintf("inputs[%d]", i)
			}
		}
	}
	for i, arg := range s.Command {
		if !utf8.ValidString(arg) {
			return fmt.Sprintf("command[%d]", i)
		}
	}
	for k, v := range s.Env {
		if !utf8.ValidString(k) {
			return "env: a name"
		}
		if !utf8.ValidString(v) {
			return "env." + text.Printable(k)
		}
	}
	return ""
}

func parseYAML(data []byte, s *Spec) (err error) {
	defer func() {
		// The spec comes from a user or the API: a bug in the YAML
		// library must not take the node down.
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: yaml: cannot read: %v", ErrBad, r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: empty", ErrBad)
		}
		return fmt.Errorf("%w: %s", ErrBad, yamlMessage(err))
	}
	var more yaml.Node
	if err := dec.Decode(&more); err != io.EOF {
		return fmt.Errorf("%w: yaml: more than one document (one job a file)", ErrBad)
	}
	return nil
}

// yamlMessage makes yaml.v3's errors name fields, not Go types.
func yamlMessage(err error) string {
	msg := err.Error()
	for _, t := range []string{"jobspec.Spec", "jobspec.Resources", "jobspec.GPU", "jobspec.Input", "node.Spec", "node.Resources", "node.GPU"} {
		msg = strings.ReplaceAll(msg, " in type "+t, "")
	}
	return msg
}

func parseJSON(data []byte, s *Spec) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: empty", ErrBad)
		}
		return fmt.Errorf("%w: json: %v", ErrBad, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: json: data after the spec", ErrBad)
	}
	return nil
}

// Validate says everything that is wrong with a spec, as Errors, or
// nil. unit is the swarm's price unit, the one maxPrice is in.
func (s Spec) Validate(unit gossip.Unit) error {
	_, errs := s.check(unit)
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Needs is what the negotiation asks the swarm for: the spec's GPUs, its
// price in unit's smallest units and its timeout as the lease, rounded up
// to a second. It fails as Validate does.
func (s Spec) Needs(unit gossip.Unit) (gossip.Needs, error) {
	n, errs := s.check(unit)
	if len(errs) > 0 {
		return gossip.Needs{}, errs
	}
	if err := n.Check(); err != nil {
		return gossip.Needs{}, fmt.Errorf("%w: %w", ErrBad, err)
	}
	return n, nil
}

// check validates every field, and converts those it can.
func (s Spec) check(unit gossip.Unit) (gossip.Needs, Errors) {
	var errs Errors
	bad := func(field, format string, a ...any) {
		errs = append(errs, FieldError{Field: field, Problem: fmt.Sprintf(format, a...)})
	}
	n := gossip.Needs{Unit: unit.String()}

	if !validJobName(s.Name) {
		bad("name", "must be 1..%d of a-z 0-9 -, starting and ending with a letter or digit, got %s", maxJobNameLen, text.Clip(s.Name))
	}

	switch {
	case s.KeepAlive && len(s.Command) > 0:
		bad("keepAlive", "pick one: a command of the job's own, or keepAlive (an idle session kept up until cancelled or its timeout), not both")
	case s.Image == "" && len(s.Command) == 0 && !s.KeepAlive:
		bad("image or command", "one is required (or keepAlive: true for an idle session)")
	}
	if s.WantsEgress() && s.Image == "" {
		bad("network.egress", "needs an image: the process executor's members have no egress of their own (give the job an image, or drop egress)")
	}
	if s.Image != "" && !validImage(s.Image) {
		bad("image", "want a reference such as pytorch/pytorch:2.4.0 (at most %d printable characters, no spaces), got %s", maxImageLen, text.Clip(s.Image))
	}
	switch s.ImageFrom {
	case "", ImageFromSubmitter, ImageFromRegistry:
	default:
		bad("imageFrom", "want submitter or registry (or nothing: the submitter's image if it has it, else a registry), got %s", text.Clip(s.ImageFrom))
	}
	if s.ImageCID != "" {
		if s.Image == "" {
			bad("imageCid", "an image on the mesh needs its name in image too")
		} else if _, err := ParseCID(s.ImageCID); err != nil {
			bad("imageCid", "want a CID such as bafybei... : %s: %v", text.Clip(s.ImageCID), err)
		}
	}
	if len(s.Command) > maxCommandArgs {
		bad("command", "at most %d arguments, got %d", maxCommandArgs, len(s.Command))
	} else {
		for i, arg := range s.Command {
			field := fmt.Sprintf("command[%d]", i)
			switch {
			case i == 0 && arg == "":
				bad(field, "the program must not be empty")
			case len(arg) > maxCommandArgLen:
				bad(field, "at most %d bytes, got %d", maxCommandArgLen, len(arg))
			case strings.IndexByte(arg, 0) >= 0:
				bad(field, "must not contain a NUL byte")
			}
		}
	}

	if len(s.Env) > maxEnvVars {
		bad("env", "at most %d variables, got %d", maxEnvVars, len(s.Env))
	} else {
		names := make([]string, 0, len(s.Env))
		for k := range s.Env {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			switch {
			case !validEnvName(k):
				bad("env."+text.Printable(k), "not a valid variable name (want A-Z a-z 0-9 _, not starting with a digit)")
			case strings.IndexByte(s.Env[k], 0) >= 0:
				bad("env."+k, "value must not contain a NUL byte")
			}
		}
	}

	if total := argBytes(s); total > maxArgBytes {
		bad("command and env", "at most %d KiB in all, got %d bytes", maxArgBytes>>10, total)
	}

	r := s.Resources
	gpusOK := r.GPUs >= 1 && r.GPUs <= gossip.MaxJobGPUs
	if !gpusOK {
		bad("resources.gpus", "must be 1..%d, got %d", gossip.MaxJobGPUs, r.GPUs)
	} else {
		n.GPUs = uint32(r.GPUs)
	}
	switch {
	case r.GPU.Model == "":
		bad("resources.gpu.model", "required, a GPU family such as H100 or A100")
	case !gossip.ValidClass(r.GPU.Model):
		bad("resources.gpu.model", "want a GPU family such as H100 (A-Z a-z 0-9 . _ + -), got %s", text.Clip(r.GPU.Model))
	default:
		// Classes and families are upper case where providers name them
		// (exec.Class): "h100" is H100. A class ("H100-80GB", what `gpus
		// local` and `gpus find` show) asks for that class exactly, as
		// `gpus find --model` reads it.
		m := strings.ToUpper(r.GPU.Model)
		if family, _, ok := strings.Cut(m, "-"); ok && family != "" {
			n.Class, n.Model = m, family
		} else {
			n.Model = m
		}
	}
	if r.GPU.MinVRAM != "" {
		gb, ok := parseGB(string(r.GPU.MinVRAM))
		if !ok {
			bad("resources.gpu.minVRAM", "want GB such as 80GB, 0..%d, got %s", maxMinVRAMGB, text.Clip(string(r.GPU.MinVRAM)))
		} else {
			n.MinVRAMGB = gb
		}
	}
	switch {
	case r.PerNode < 0 || r.PerNode > gossip.MaxJobGPUs:
		bad("resources.perNode", "must be 0 (any split) or 1..%d, got %d", gossip.MaxJobGPUs, r.PerNode)
	case r.PerNode > 0 && gpusOK && r.GPUs%r.PerNode != 0:
		bad("resources.perNode", "must divide resources.gpus (%d), got %d", r.GPUs, r.PerNode)
	default:
		n.PerNode = uint32(r.PerNode)
	}

	switch s.Placement {
	case "", gossip.Spread:
		n.Placement = gossip.Spread
	case gossip.Colocated:
		n.Placement = gossip.Colocated
	default:
		bad("placement", "must be colocated or spread, got %s", text.Clip(string(s.Placement)))
	}

	switch s.Launcher {
	case "", LauncherNone, LauncherTorchrun, LauncherRay:
	default:
		bad("launcher", "must be none, torchrun or ray, got %s", text.Clip(s.Launcher))
	}

	switch price, err := unit.Parse(string(s.MaxPrice)); {
	case s.MaxPrice == "":
		bad("maxPrice", "required, %s per GPU-hour such as 2.50", unit.Token)
	case err != nil:
		why := strings.TrimPrefix(err.Error(), gossip.ErrBadPrice.Error()+": ")
		bad("maxPrice", "want %s per GPU-hour such as 2.50: %s", unit.Token, why)
	case price == 0:
		bad("maxPrice", "must be more than 0 %s per GPU-hour, got %s", unit.Token, text.Clip(string(s.MaxPrice)))
	default:
		n.MaxPrice = price
	}

	d, err := time.ParseDuration(s.Timeout)
	if err != nil || d < minTimeout || d > maxTimeout {
		bad("timeout", "must be a duration like 2h or 90m, 1s..720h, got %s", text.Clip(s.Timeout))
	} else {
		n.LeaseSeconds = uint32((d + time.Second - 1) / time.Second)
	}

	n.Egress = s.WantsEgress()

	if s.Queue != "" {
		if d, err := time.ParseDuration(s.Queue); err != nil || d < time.Second || d > MaxQueue {
			bad("queue", "must be a duration like 30m or 2h, 1s..168h: how long the job may wait for a cluster, got %s", text.Clip(s.Queue))
		}
	}

	if s.Retries < 0 || s.Retries > maxRetries {
		bad("retries", "must be 0..%d, got %d", maxRetries, s.Retries)
	}
	checkInputs(s.Inputs, bad)
	checkCheckpoint(s.Checkpoint, s.Inputs, bad)
	return n, errs
}

func validJobName(s string) bool {
	if len(s) == 0 || len(s) > maxJobNameLen || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func validImage(s string) bool {
	if len(s) > maxImageLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func validEnvName(s string) bool {
	if len(s) == 0 || len(s) > maxEnvNameLen || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// parseGB reads "80GB", "80 GB", "80gb" or "80" as whole GB, 0..maxMinVRAMGB.
func parseGB(s string) (uint32, bool) {
	num := strings.TrimSpace(s)
	if len(num) >= 2 && strings.EqualFold(num[len(num)-2:], "GB") {
		num = strings.TrimRight(num[:len(num)-2], " ")
	}
	if num == "" || num[0] < '0' || num[0] > '9' {
		return 0, false
	}
	v, err := strconv.ParseUint(num, 10, 32)
	if err != nil || v > maxMinVRAMGB {
		return 0, false
	}
	return uint32(v), true
}

// argBytes is the size of a spec's command and environment.
func argBytes(s Spec) int {
	total := 0
	for _, a := range s.Command {
		total += len(a)
	}
	for k, v := range s.Env {
		total += len(k) + len(v)
	}
	return total
}
