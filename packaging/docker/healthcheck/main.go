// Command qpc-healthcheck is the container image's HEALTHCHECK probe. The
// final image has no shell and no curl, so this small static binary asks
// qpcd's ops endpoint /readyz and exits 0 when qpcd is ready, 1 otherwise.
//
// The URL is the first argument, else $QPC_HEALTHCHECK_URL, else
// http://127.0.0.1:7444/readyz.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// DefaultURL is qpcd's readiness endpoint on the default ops port.
const DefaultURL = "http://127.0.0.1:7444/readyz"

func main() {
	os.Exit(run(os.Args[1:], os.Getenv("QPC_HEALTHCHECK_URL"), os.Stderr))
}

func run(args []string, envURL string, stderr io.Writer) int {
	url := DefaultURL
	switch {
	case len(args) > 1:
		fmt.Fprintln(stderr, "usage: qpc-healthcheck [URL]")
		return 2
	case len(args) == 1:
		url = args[0]
	case envURL != "":
		url = envURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "qpc-healthcheck:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "qpc-healthcheck: qpcd not reachable:", err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "qpc-healthcheck: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
}
