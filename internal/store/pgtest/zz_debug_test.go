package pgtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestDebugKill(t *testing.T) {
	for i := 0; i < 3; i++ {
		c, err := Start(context.Background(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		s := time.Now()
		pid := 0
		c.mu.Lock()
		err = killPostmaster(filepath.Join(c.Dir, "data"))
		c.running = false
		c.mu.Unlock()
		t.Logf("kill took %v err %v pid %d", time.Since(s), err, pid)
		s = time.Now()
		c.Stop()
		t.Logf("stop took %v", time.Since(s))
	}
}
