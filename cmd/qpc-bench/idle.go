package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// idleSample is qpcd's resource use at one moment, read from its
// Prometheus endpoint (the Go and process collectors) on the ops listener.
type idleSample struct {
	AtSeconds    float64 `json:"at_s"`
	RSSBytes     float64 `json:"rss_bytes"`
	Goroutines   float64 `json:"goroutines"`
	HeapInuse    float64 `json:"heap_inuse_bytes"`
	HeapReleased float64 `json:"heap_released_bytes"`
	HeapSys      float64 `json:"heap_sys_bytes"`
	StackInuse   float64 `json:"stack_inuse_bytes"`
	Connections  float64 `json:"connections"`
	InFlight     float64 `json:"rpcs_in_flight"`
	Waiters      float64 `json:"long_poll_waiters"`
}

// idleReport is the result of -mode idle.
type idleReport struct {
	Mode    string `json:"mode"`
	Devices int    `json:"devices"`
	// Before: qpcd before the devices connected; Idle: with every device
	// connected and long-polling; After: the samples after they all left,
	// one a second for -after.
	Before idleSample   `json:"before"`
	Idle   idleSample   `json:"idle"`
	After  []idleSample `json:"after"`
	// IdleLive: the same moment right after a forced GC (taken with the
	// heap profile, -profile-dir), so its heap is the live heap alone.
	IdleLive *idleSample `json:"idle_after_gc,omitempty"`
	// Per long-polling device, from Before to Idle.
	RSSPerDevice        float64 `json:"rss_bytes_per_device"`
	GoroutinesPerDevice float64 `json:"goroutines_per_device"`
	HeapPerDevice       float64 `json:"heap_inuse_bytes_per_device"`
	LiveHeapPerDevice   float64 `json:"live_heap_bytes_per_device,omitempty"`
	// qpcd's CPU while every device waited, over IdleSeconds.
	IdleSeconds     float64 `json:"idle_seconds"`
	IdleCPUPercent  float64 `json:"idle_cpu_percent_of_one_core"`
	IdleCPUPerDevUs float64 `json:"idle_cpu_us_per_device_per_s"`
	ConnectSeconds  float64 `json:"connect_seconds"`
	Polls           int64   `json:"polls_completed"`
	Errors          int64   `json:"errors"`
	FirstError      string  `json:"first_error,omitempty"`
	// Fanout is the fan-out step (-fanout), run while every device waits.
	Fanout *fanoutReport `json:"fanout,omitempty"`
}

// runIdle measures what idle long-polling devices cost qpcd: o.clients
// devices register, log in and wait in FetchWait (each on its own QUIC
// connection, renewing the poll when it times out) while nothing is sent;
// qpcd's RSS, goroutines and heap are read from its metrics before and
// while they wait, its CPU over o.duration, then again every second for
// o.after once they have all disconnected. With -profile-dir the heap and
// goroutine profiles are saved while they wait (qpcd with ops_pprof=on).
func runIdle(ctx context.Context, o options, stdout io.Writer) (idleReport, error) {
	addr, pin := o.addr, o.pin
	if o.serve {
		// In this process (tests): its CPU figure includes the devices'.
		srv, stop, err := startInProcess(ctx, o)
		if err != nil {
			return idleReport{}, err
		}
		defer stop()
		addr, pin, o.ops, o.serverPID = srv.QUICAddr(), srv.CertFingerprint(), srv.OpsAddr(), os.Getpid()
	} else if pin == "" {
		p, err := pinFromDataDir(o.dataDir)
		if err != nil {
			return idleReport{}, err
		}
		pin = p
	}
	r := idleReport{Mode: "idle", Devices: o.clients}
	t0 := time.Now()
	sample := func() (idleSample, error) {
		s, err := scrape(ctx, o.ops)
		s.AtSeconds = time.Since(t0).Seconds()
		return s, err
	}
	var err error
	if r.Before, err = sample(); err != nil {
		return r, err
	}

	run := make([]byte, 3)
	_, _ = rand.Read(run)
	prefix := "i" + hex.EncodeToString(run)

	// Each device long-polls as soon as it has logged in, until told to
	// stop: a connection that waited for all the others to be set up would
	// carry no RPC for longer than qpcd's idle timeout and be reaped.
	pctx, pstop := context.WithCancel(ctx)
	defer pstop()
	var polls, errs atomic.Int64
	var firstErr atomic.Value
	var pwg sync.WaitGroup
	var fan *fanout // set before any fan-out receiver polls
	var fanSetup time.Duration
	poll := func(d *device, receiver bool) {
		defer pwg.Done()
		// Read-ahead positions: what a poll returned is not returned
		// again (nothing is acknowledged; idle devices get nothing).
		pos := map[string]uint64{}
		if fan != nil && fan.head > 0 {
			pos[string(fan.chID)] = fan.head // joined before polling: from the head on
		}
		var inbox uint64
		for pctx.Err() == nil {
			req := &qpcv1.FetchWaitRequest{TimeoutMs: uint32(o.pollTimeout.Milliseconds()), Limit: 100, InboxAfter: inbox}
			for ch, seq := range pos {
				req.After = append(req.After, &qpcv1.ChannelCursor{ChannelId: []byte(ch), Seq: seq})
			}
			var f qpcv1.FetchResponse
			err := d.call(pctx, server.MethodFetchWait, req, &f)
			switch {
			case err == nil:
				now := time.Now()
				polls.Add(1)
				for _, m := range f.GetMessages() {
					pos[string(m.GetChannelId())] = max(pos[string(m.GetChannelId())], m.GetSeq())
				}
				for _, it := range f.GetInbox() {
					inbox = max(inbox, it.GetSeq())
				}
				if receiver && len(f.GetMessages()) > 0 {
					fan.received(now, f.GetMessages())
				}
			case pctx.Err() == nil:
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				select { // back off before polling again
				case <-pctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
	devs := make([]*device, o.clients)
	setup, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var setupErr error
	sem := make(chan struct{}, 16)
	// connect sets up devices from..to-1; with startPoll each starts to
	// long-poll at once.
	connect := func(from, to int, startPoll bool) {
		for i := from; i < to; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				d, err := newDevice(setup, addr, pin, fmt.Sprintf("%s-%d", prefix, i), o.keepAlive)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if setupErr == nil {
						setupErr = fmt.Errorf("device %d: %w (are limits.max_connections and max_connections_per_address at least -n, and the rate limit raised?)", i, err)
					}
					return
				}
				devs[i] = d
				if startPoll {
					pwg.Add(1)
					go poll(d, false)
				}
			}()
		}
		wg.Wait()
	}
	leave := func() {
		pstop()
		for _, d := range devs {
			if d != nil {
				_ = d.c.Close()
			}
		}
		if fan != nil && fan.owner != nil {
			_ = fan.owner.c.Close()
		}
		pwg.Wait()
	}
	if o.fanout > 0 {
		// The fan-out receivers first: they join the channel before any
		// of them polls, then poll like every other device.
		// Until they poll, a Ping every 15 s keeps qpcd from closing
		// their connections (no RPC for its 60 s idle timeout), as
		// setting up 1 000 devices on a loaded machine can take longer.
		fan, setupErr = newFanout(setup, addr, pin, prefix, o.keepAlive)
		kstop := make(chan struct{})
		kdone := make(chan struct{})
		go func() {
			defer close(kdone)
			keepAlive(setup, kstop, &mu, devs[:o.fanout], fan)
		}()
		if setupErr == nil {
			connect(0, o.fanout, false)
		}
		if setupErr == nil {
			setupErr = fan.join(setup, devs[:o.fanout])
		}
		close(kstop)
		<-kdone
		if setupErr == nil {
			for _, d := range devs[:o.fanout] {
				pwg.Add(1)
				go poll(d, true)
			}
			// The sender polls too (qpcd closes a connection that
			// carries no RPC for its idle timeout).
			pwg.Add(1)
			go poll(fan.owner, false)
			fanSetup = time.Since(t0)
		}
	}
	if setupErr == nil {
		connect(o.fanout, o.clients, true)
	}
	if setupErr != nil {
		leave()
		return r, setupErr
	}

	// Wait until qpcd holds every poll, then let it settle.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s, err := sample()
		if err == nil && s.InFlight >= float64(o.clients) {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			leave()
			return r, fmt.Errorf("qpcd holds %v of %d polls (after %v; %d poll errors, first: %v)", s.InFlight, o.clients,
				time.Since(t0).Round(time.Second), errs.Load(), firstErr.Load())
		}
		time.Sleep(200 * time.Millisecond) // polling qpcd's metrics
	}
	r.ConnectSeconds = time.Since(t0).Seconds()
	if !sleepCtx(ctx, 2*time.Second) { // settle after the connection storm
		leave()
		return r, ctx.Err()
	}
	var profWG sync.WaitGroup
	if secs := int(o.duration / time.Second); o.profileDir != "" && secs > 0 {
		// What qpcd spends its idle CPU on (the profiler's own cost is
		// in the figure too: 100 samples a second, small).
		profWG.Add(1)
		go func() {
			defer profWG.Done()
			if err := saveProfile(ctx, o.ops, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), o.profileDir, "idle-cpu.pb.gz"); err != nil {
				fmt.Fprintln(stdout, "qpc-bench: idle CPU profile:", err)
			}
		}()
	}
	cpu0, cpuErr := processCPU(o.serverPID)
	idleStart := time.Now()
	if !sleepCtx(ctx, o.duration) {
		leave()
		return r, ctx.Err()
	}
	profWG.Wait()
	cpu1, cpuErr1 := processCPU(o.serverPID)
	r.IdleSeconds = time.Since(idleStart).Seconds()
	if o.serverPID > 0 && cpuErr == nil && cpuErr1 == nil {
		used := float64((cpu1 - cpu0).Microseconds())
		r.IdleCPUPercent = used / (r.IdleSeconds * 1e6) * 100
		r.IdleCPUPerDevUs = used / r.IdleSeconds / float64(o.clients)
	}
	if r.Idle, err = sample(); err != nil {
		leave()
		return r, err
	}
	n := float64(o.clients)
	if o.profileDir != "" {
		if err := saveProfiles(ctx, o.ops, o.profileDir); err != nil {
			fmt.Fprintln(stdout, "qpc-bench: profiles:", err)
		} else if s, err := sample(); err == nil {
			r.IdleLive = &s
			r.LiveHeapPerDevice = (s.HeapInuse - r.Before.HeapInuse) / n
		}
	}
	r.RSSPerDevice = (r.Idle.RSSBytes - r.Before.RSSBytes) / n
	r.GoroutinesPerDevice = (r.Idle.Goroutines - r.Before.Goroutines) / n
	r.HeapPerDevice = (r.Idle.HeapInuse - r.Before.HeapInuse) / n

	if fan != nil {
		// Every device waits; the receivers' polls are parked again
		// before each message (but for renewals in flight: 1 %).
		fr, err := fan.run(ctx, o, o.clients+1-o.clients/100, stdout)
		fr.SetupSeconds = fanSetup.Seconds()
		r.Fanout = &fr
		if err != nil {
			leave()
			return r, err
		}
	}

	// Leave: close every connection, then watch qpcd give memory back.
	leave()
	r.Polls, r.Errors = polls.Load(), errs.Load()
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
	}
	for end := time.Now().Add(o.after); ; {
		s, err := sample()
		if err == nil {
			r.After = append(r.After, s)
		}
		if !time.Now().Before(end) || !sleepCtx(ctx, time.Second) { // one sample a second
			break
		}
	}
	return r, ctx.Err()
}

// keepAlive pings every device of devs (those set up so far) and the
// fan-out sender every 15 s until stop is closed.
func keepAlive(ctx context.Context, stop <-chan struct{}, mu *sync.Mutex, devs []*device, fan *fanout) {
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mu.Lock()
		ds := slices.Clone(devs)
		mu.Unlock()
		if fan != nil {
			ds = append(ds, fan.owner)
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for _, d := range ds {
			if d == nil {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				_ = d.call(ctx, server.MethodPing, &qpcv1.PingRequest{}, &qpcv1.PingResponse{})
			}()
		}
		wg.Wait()
	}
}

// sleepCtx waits for d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// scrape reads the gauges idleSample holds from qpcd's /metrics.
func scrape(ctx context.Context, ops string) (idleSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ops+"/metrics", nil)
	if err != nil {
		return idleSample{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return idleSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return idleSample{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var s idleSample
	want := map[string]*float64{
		"process_resident_memory_bytes":   &s.RSSBytes,
		"go_goroutines":                   &s.Goroutines,
		"go_memstats_heap_inuse_bytes":    &s.HeapInuse,
		"go_memstats_heap_released_bytes": &s.HeapReleased,
		"go_memstats_heap_sys_bytes":      &s.HeapSys,
		"go_memstats_stack_inuse_bytes":   &s.StackInuse,
		"qpcd_connections":                &s.Connections,
		"qpcd_rpc_in_flight":              &s.InFlight,
		"qpcd_long_poll_waiters":          &s.Waiters,
	}
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if p := want[name]; ok && p != nil {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				*p = v
				found++
			}
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if found < len(want) {
		return s, fmt.Errorf("qpcd's /metrics lacks some of %d gauges (found %d)", len(want), found)
	}
	return s, nil
}

// saveProfiles fetches qpcd's heap profile and goroutine dump (ops_pprof=on).
func saveProfiles(ctx context.Context, ops, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for file, path := range map[string]string{
		"heap.pb.gz":     "/debug/pprof/heap?gc=1", // after a GC: the live heap
		"goroutines.txt": "/debug/pprof/goroutine?debug=1",
	} {
		if err := saveProfile(ctx, ops, path, dir, file); err != nil {
			return err
		}
	}
	return nil
}

// saveProfile fetches one of qpcd's /debug/pprof paths into dir/file.
func saveProfile(ctx context.Context, ops, path, dir, file string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ops+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s (is ops_pprof on?)", path, resp.Status)
	}
	return os.WriteFile(filepath.Join(dir, file), b, 0o644)
}

func printIdle(w io.Writer, r idleReport) {
	mib := func(b float64) float64 { return b / (1 << 20) }
	fmt.Fprintf(w, "idle: %d long-polling devices (connected in %.1f s)\n", r.Devices, r.ConnectSeconds)
	fmt.Fprintf(w, "  before: RSS %.1f MiB, heap in use %.1f MiB, %.0f goroutines\n", mib(r.Before.RSSBytes), mib(r.Before.HeapInuse), r.Before.Goroutines)
	fmt.Fprintf(w, "  idle:   RSS %.1f MiB, heap in use %.1f MiB, %.0f goroutines, %.0f connections, %.0f polls held\n",
		mib(r.Idle.RSSBytes), mib(r.Idle.HeapInuse), r.Idle.Goroutines, r.Idle.Connections, r.Idle.InFlight)
	fmt.Fprintf(w, "  per device: %.1f KiB RSS, %.1f KiB heap (%.1f KiB live after a GC), %.1f KiB stacks, %.2f goroutines; qpcd CPU while idle: %.2f%% of one core (%.1f µs per device per second)\n",
		r.RSSPerDevice/1024, r.HeapPerDevice/1024, r.LiveHeapPerDevice/1024, (r.Idle.StackInuse-r.Before.StackInuse)/float64(r.Devices)/1024, r.GoroutinesPerDevice, r.IdleCPUPercent, r.IdleCPUPerDevUs)
	if n := len(r.After); n > 0 {
		a := r.After[n-1]
		fmt.Fprintf(w, "  %.0f s after they left: RSS %.1f MiB, heap in use %.1f MiB, released %.1f MiB, %.0f goroutines, %.0f connections\n",
			a.AtSeconds-r.After[0].AtSeconds, mib(a.RSSBytes), mib(a.HeapInuse), mib(a.HeapReleased), a.Goroutines, a.Connections)
	}
	if r.Fanout != nil {
		printFanout(w, *r.Fanout)
	}
	if r.Errors > 0 {
		fmt.Fprintf(w, "  %d poll errors (first: %s)\n", r.Errors, r.FirstError)
	}
}
