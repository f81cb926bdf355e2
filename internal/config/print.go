package config

import (
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Redacted returns the configuration as nested maps keyed like the YAML file,
// with durations as strings, a set db.key as "[REDACTED]" and postgres.dsn
// with its password replaced (RedactDSN).
func (c Config) Redacted() map[string]any {
	out := map[string]any{}
	for _, o := range options {
		section, leaf, nested := strings.Cut(o.key, ".")
		if !nested {
			out[o.key] = o.value(c)
			continue
		}
		m, _ := out[section].(map[string]any)
		if m == nil {
			m = map[string]any{}
			out[section] = m
		}
		m[leaf] = o.value(c)
	}
	return out
}

// WriteYAML writes the configuration as a YAML file in the documented key
// order, with secrets redacted. It is what `qpcd config print` shows.
func (c Config) WriteYAML(w io.Writer) error {
	root := &yaml.Node{Kind: yaml.MappingNode}
	sectionNodes := map[string]*yaml.Node{}
	for _, o := range options {
		var val yaml.Node
		if err := val.Encode(o.value(c)); err != nil {
			return fmt.Errorf("config: encoding %s: %w", o.key, err)
		}
		val.LineComment = o.env()
		section, leaf, nested := strings.Cut(o.key, ".")
		if !nested {
			root.Content = append(root.Content, scalarNode(o.key), &val)
			continue
		}
		sn := sectionNodes[section]
		if sn == nil {
			sn = &yaml.Node{Kind: yaml.MappingNode}
			sectionNodes[section] = sn
			root.Content = append(root.Content, scalarNode(section), sn)
		}
		sn.Content = append(sn.Content, scalarNode(leaf), &val)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return fmt.Errorf("config: writing YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("config: writing YAML: %w", err)
	}
	return nil
}

func scalarNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}
