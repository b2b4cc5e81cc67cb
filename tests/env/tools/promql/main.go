// Command promql-check parses PromQL expressions with Prometheus's own parser, so the chart's
// alert rules and dashboard queries are checked for syntax and types, not only for names.
// Input: a JSON array of expressions on stdin. Output: a JSON array of the same length, each
// element "" when the expression parses, else the parser's error.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-check: stdin must be a JSON array of strings:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	out := make([]string, len(exprs))
	for i, e := range exprs {
		if _, err := p.ParseExpr(e); err != nil {
			out[i] = err.Error()
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "promql-check:", err)
		os.Exit(1)
	}
}
