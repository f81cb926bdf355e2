package keydir

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of kind.
const (
	kindPool       = "pool"
	kindLastResort = "last_resort"
)

type metrics struct {
	stock              *prometheus.GaugeVec   // qpcd_keypackages_stock{kind}
	suiteStock         *prometheus.GaugeVec   // qpcd_keypackages_suite_stock{suite,kind}
	accounts           prometheus.Gauge       // qpcd_keypackages_accounts
	uploaded           prometheus.Counter     // qpcd_keypackages_uploaded_total
	uploadedLastResort prometheus.Counter     // qpcd_keypackages_last_resort_uploaded_total
	rejected           *prometheus.CounterVec // qpcd_keypackages_rejected_total{reason}
	fetched            *prometheus.CounterVec // qpcd_keypackages_fetched_total{kind}
	missing            prometheus.Counter     // qpcd_keypackages_fetch_missing_total
	expired            prometheus.Counter     // qpcd_keypackages_expired_total
	fetchRefused       *prometheus.CounterVec // qpcd_keypackages_fetch_refused_total{reason}
}

func newMetrics() *metrics {
	m := &metrics{
		stock: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qpcd_keypackages_stock", Help: "Unexpired KeyPackages stored, by kind (pool, last_resort); refreshed by the sweeper.",
		}, []string{"kind"}),
		suiteStock: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qpcd_keypackages_suite_stock",
			Help: "Unexpired KeyPackages stored, by cipher suite (name; only allowlisted suites are stored) and kind (pool, last_resort); refreshed by the sweeper.",
		}, []string{"suite", "kind"}),
		accounts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qpcd_keypackages_accounts", Help: "Accounts with at least one unexpired pool KeyPackage; refreshed by the sweeper.",
		}),
		uploaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_keypackages_uploaded_total", Help: "Pool KeyPackages accepted by uploads.",
		}),
		uploadedLastResort: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_keypackages_last_resort_uploaded_total", Help: "Last-resort KeyPackages stored (each replaces the device's previous one).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_keypackages_rejected_total", Help: "Uploaded KeyPackages refused, by reason (invalid, suite, not_owner, uncertified).",
		}, []string{"reason"}),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_keypackages_fetched_total", Help: "KeyPackages handed out, by kind (pool: consumed; last_resort: pool was empty).",
		}, []string{"kind"}),
		missing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_keypackages_fetch_missing_total", Help: "Devices for which a fetch found no KeyPackage at all.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_keypackages_expired_total", Help: "KeyPackages deleted by the sweeper after their expiry.",
		}),
		fetchRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_keypackages_fetch_refused_total",
			Help: "KeyPackage fetches refused by the fetch limits, by reason (pair: one account fetching another's too often; target: all accounts together fetching one account's too often).",
		}, []string{"reason"}),
	}
	for _, k := range []string{kindPool, kindLastResort} {
		m.stock.WithLabelValues(k)
		m.fetched.WithLabelValues(k)
	}
	for _, r := range []string{"invalid", "suite", "not_owner", "uncertified"} {
		m.rejected.WithLabelValues(r)
	}
	for _, r := range []string{ReasonPair, ReasonTarget} {
		m.fetchRefused.WithLabelValues(r)
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.stock, m.suiteStock, m.accounts, m.uploaded, m.uploadedLastResort, m.rejected, m.fetched, m.missing, m.expired, m.fetchRefused} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("keydir: registering metrics: %w", errors.Join(errs...))
	}
	return nil
}
