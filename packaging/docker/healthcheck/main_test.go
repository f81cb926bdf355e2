package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()

	if code := run([]string{srv.URL + "/readyz"}, "", io.Discard); code != 0 {
		t.Fatalf("ready: exit %d, want 0", code)
	}
	if code := run(nil, srv.URL+"/readyz", io.Discard); code != 0 {
		t.Fatalf("ready via $QPC_HEALTHCHECK_URL: exit %d, want 0", code)
	}
	status = http.StatusServiceUnavailable
	if code := run([]string{srv.URL + "/readyz"}, "", io.Discard); code != 1 {
		t.Fatalf("draining (503): exit %d, want 1", code)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/readyz"
	l.Close()
	if code := run([]string{closed}, "", io.Discard); code != 1 {
		t.Fatalf("nothing listening: exit %d, want 1", code)
	}
	if code := run([]string{"a", "b"}, "", io.Discard); code != 2 {
		t.Fatalf("two arguments: exit %d, want 2", code)
	}
}
