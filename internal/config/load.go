package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// LoadOptions says where Load reads the configuration layers from.
type LoadOptions struct {
	File  string         // --config path (YAML); "" = no file
	Env   []string       // environment in os.Environ() form; nil = os.Environ(), []string{} = none
	Flags *pflag.FlagSet // optional; only flags that were set (Changed) override
}

// RegisterFlags defines qpcd's configuration flags on fs, with the built-in
// defaults as their shown defaults. It does not define --config.
func RegisterFlags(fs *pflag.FlagSet) {
	d := Default()
	for _, o := range options {
		if o.flag == "" {
			continue
		}
		usage := o.help + " (" + o.env() + ")"
		switch p := o.ptr(&d).(type) {
		case *string:
			fs.String(o.flag, *p, usage)
		case *int:
			fs.Int(o.flag, *p, usage)
		case *float64:
			fs.Float64(o.flag, *p, usage)
		default:
			// Durations and secrets have no flags; the table never gives them one.
			fs.String(o.flag, o.text(d), usage)
		}
	}
}

// Load builds the effective configuration: defaults, then the YAML file, then
// QPC_* variables from the environment, then flags that were set, and
// validates it. Every invalid value is reported as a *FieldError (errors.As),
// which also matches ErrInvalid (errors.Is). The result is not Resolved.
func Load(opts LoadOptions) (Config, error) {
	v := viper.New()
	def := Default()
	for _, o := range options {
		v.SetDefault(o.key, o.value(def))
	}

	layer := map[string]any{}
	if opts.File != "" {
		m, err := readFile(opts.File)
		if err != nil {
			return Config{}, err
		}
		layer = m
	}
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	// Environment values are merged over the file's, so they win over it.
	overlayEnv(layer, env)
	if err := v.MergeConfigMap(layer); err != nil {
		return Config{}, fmt.Errorf("config: merging file and environment: %w", err)
	}

	if opts.Flags != nil {
		for _, o := range options {
			if o.flag == "" {
				continue
			}
			if f := opts.Flags.Lookup(o.flag); f != nil {
				if err := v.BindPFlag(o.key, f); err != nil {
					return Config{}, fmt.Errorf("config: binding --%s: %w", o.flag, err)
				}
			}
		}
	}

	var c Config
	fail := func(err error) (Config, error) {
		c.DB.Key.Wipe()
		c.Postgres.DSN.Wipe()
		return Config{}, err
	}
	given := make(map[string]string, len(options))
	for _, o := range options {
		s, fe := scalar(o, v.Get(o.key))
		if fe != nil {
			return fail(fe)
		}
		if fe := o.set(&c, s); fe != nil {
			return fail(fe)
		}
		if !o.secret() {
			given[o.key] = strings.TrimSpace(s)
		}
	}
	if err := c.Validate(); err != nil {
		// Report the value as the operator wrote it ("1m", not "60s"); an
		// empty option keeps the derived value the check complained about.
		if fe, ok := err.(*FieldError); ok {
			if raw := given[fe.Key]; raw != "" {
				fe.Value = raw
			}
		}
		return fail(err)
	}
	return c, nil
}

// scalar turns a layered value into the string to parse. Mappings and lists
// where a single value is expected are type errors.
func scalar(o option, raw any) (string, *FieldError) {
	switch x := raw.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	val := "(a mapping or list)"
	if o.secret() {
		val = secret.Redacted
	}
	return "", &FieldError{Key: o.key, Value: val, Expected: "a single value such as " + strconv.Quote(o.text(Default()))}
}

// readFile reads and strictly checks the YAML file: every key must be a
// documented option given once, sections must be mappings and values
// scalars. It returns the values as a nested map of strings exactly as they
// were written ("key:" and null give ""), so "0123" stays "0123" and a hex
// key is never read as a number.
func readFile(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &FieldError{Key: "--config", Value: path, Expected: "a readable YAML file (" + causeText(err) + ")", Err: err}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, &FieldError{Key: "--config", Value: path, Expected: "a YAML mapping of options (" + err.Error() + ")", Err: err}
	}
	out := map[string]any{}
	if doc.Kind == 0 || len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return out, nil // empty file
	}
	root := deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, &FieldError{Key: "--config", Value: path, Expected: "a YAML mapping of options at the top level"}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, val := root.Content[i].Value, deref(root.Content[i+1])
		if !sections[k] {
			s, fe := fileScalar(k, val, seen)
			if fe != nil {
				return nil, fe
			}
			out[k] = s
			continue
		}
		if isNull(val) {
			continue
		}
		if val.Kind != yaml.MappingNode {
			return nil, &FieldError{Key: k, Value: val.Value, Expected: "a mapping of " + k + ".* options, see .env.example"}
		}
		m, _ := out[k].(map[string]any)
		if m == nil {
			m = map[string]any{}
			out[k] = m
		}
		for j := 0; j+1 < len(val.Content); j += 2 {
			sk := val.Content[j].Value
			s, fe := fileScalar(k+"."+sk, deref(val.Content[j+1]), seen)
			if fe != nil {
				return nil, fe
			}
			m[sk] = s
		}
	}
	return out, nil
}

// fileScalar checks that key is a documented option not seen before and n a
// scalar, and returns n's text.
func fileScalar(key string, n *yaml.Node, seen map[string]bool) (string, *FieldError) {
	o, known := optionByKey(key)
	if !known {
		return "", unknownKey(key)
	}
	if seen[key] {
		return "", &FieldError{Key: key, Value: "(given twice)", Expected: "each option at most once in the file"}
	}
	seen[key] = true
	if isNull(n) {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode {
		val := "(a mapping or list)"
		if o.secret() {
			val = secret.Redacted
		}
		return "", &FieldError{Key: key, Value: val, Expected: "a single value such as " + strconv.Quote(o.text(Default()))}
	}
	return n.Value, nil
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func unknownKey(k string) *FieldError {
	return &FieldError{Key: k, Value: "(unknown option)", Expected: "one of the documented options, see .env.example or docs/configuration.md"}
}

// overlayEnv sets the options named by QPC_* variables in env into layer.
// Unknown QPC_* variables are ignored (clients and qpcctl use the prefix too).
// A later duplicate wins, as with exec.Cmd.Env.
func overlayEnv(layer map[string]any, env []string) {
	byEnv := make(map[string]option, len(options))
	for _, o := range options {
		byEnv[o.env()] = o
	}
	for _, kv := range env {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "QPC_") {
			continue
		}
		o, known := byEnv[name]
		if !known {
			continue
		}
		section, leaf, nested := strings.Cut(o.key, ".")
		if !nested {
			layer[o.key] = val
			continue
		}
		m, _ := layer[section].(map[string]any)
		if m == nil {
			m = map[string]any{}
			layer[section] = m
		}
		m[leaf] = val
	}
}
