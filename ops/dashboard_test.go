package ops_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

type dashPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		Y int `json:"y"`
	} `json:"gridPos"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
}

// TestDashboardPerNode: the dashboard lets an operator of several nodes
// pick them (a multi-value instance variable with All, filled from the
// scraped nodes), every panel query on a per-node metric honours that
// choice, and the Nodes row has one series per node for each of the
// signals that tell a sick node from a sick deployment: up, request rate,
// latency, errors, connections.
func TestDashboardPerNode(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
				Multi      bool   `json:"multi"`
				IncludeAll bool   `json:"includeAll"`
			} `json:"list"`
		} `json:"templating"`
		Panels []dashPanel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range dash.Templating.List {
		if v.Name == "instance" {
			found = true
			if v.Type != "query" || !v.Multi || !v.IncludeAll || !strings.Contains(v.Definition, `job="qpcd"`) || !strings.Contains(v.Definition, "instance") {
				t.Errorf("instance variable %+v: want a multi-value query over the qpcd job's instances, with All", v)
			}
		}
	}
	if !found {
		t.Fatal("no instance variable")
	}

	// Recording rules aggregate the whole deployment (SLOs); everything
	// else is scraped per node and must follow the selector.
	perNodeMetric := regexp.MustCompile(`\b(up|qpcd_[a-z_]+|process_[a-z_]+|go_[a-z_]+)\{`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range perNodeMetric.FindAllStringIndex(tg.Expr, -1) {
				end := strings.IndexByte(tg.Expr[m[1]:], '}')
				if end < 0 || !strings.Contains(tg.Expr[m[1]:m[1]+end], `instance=~"$instance"`) {
					t.Errorf("panel %q: %s does not filter instance=~\"$instance\"", p.Title, tg.Expr)
				}
			}
		}
	}

	// The Nodes row: the panels between its row header and the next.
	var nodes []dashPanel
	in := false
	for _, p := range dash.Panels {
		if p.Type == "row" {
			in = p.Title == "Nodes"
			continue
		}
		if in {
			nodes = append(nodes, p)
		}
	}
	want := map[string]*regexp.Regexp{
		"node up":      regexp.MustCompile(`^up\{`),
		"request rate": regexp.MustCompile(`^sum by \(instance\) \(rate\(qpcd_rpc_requests_total\{[^}]*\}`),
		"latency":      regexp.MustCompile(`^histogram_quantile\(0\.99, sum by \(instance, le\) \(rate\(qpcd_rpc_duration_seconds_bucket`),
		"errors":       regexp.MustCompile(`qpcd_rpc_requests_total\{[^}]*status=~"internal\|unavailable"`),
		"connections":  regexp.MustCompile(`^qpcd_connections\{`),
	}
	for what, re := range want {
		ok := false
		for _, p := range nodes {
			for _, tg := range p.Targets {
				// One series per node: grouped by instance or a bare per-node
				// selector, and the legend names the node.
				if re.MatchString(tg.Expr) && strings.Contains(tg.LegendFormat, "{{instance}}") {
					ok = true
				}
			}
		}
		if !ok {
			t.Errorf("the Nodes row has no per-node %s panel", what)
		}
	}
	if len(nodes) < len(want) {
		t.Errorf("the Nodes row has %d panels", len(nodes))
	}
}
