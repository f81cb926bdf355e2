# Plots a soak CSV (internal/chaos TestSoak, `make soak`) to a PNG:
#   gnuplot -e "csv='bin/soak-sqlcipher.csv'; png='bin/soak-sqlcipher.png'" scripts/soak.gp
# Columns: t_s rss_bytes goroutines open_fds db_bytes wal_bytes ops errors
#          latency_p50_ms latency_p99_ms retention_in_force rpc_mean_ms
if (!exists("csv")) csv = 'bin/soak-sqlcipher.csv'
if (!exists("png")) png = 'bin/soak-sqlcipher.png'

set datafile separator ','
set key autotitle columnhead
set terminal pngcairo size 1400,1000 noenhanced font ',10'
set output png
set multiplot layout 2,2 title sprintf('qpcd soak: %s', csv)
set grid
set xlabel 'minutes'

set title 'memory and storage (MiB)'
plot csv using ($1/60):($2/1048576) with lines title 'RSS', \
     '' using ($1/60):($5/1048576) with lines title 'database', \
     '' using ($1/60):($6/1048576) with lines title 'WAL'

set title 'goroutines and open file descriptors'
plot csv using ($1/60):3 with lines title 'goroutines', \
     '' using ($1/60):4 with lines title 'open fds'

set title 'latency (ms): client operations p50/p99, qpcd RPC mean'
set logscale y
plot csv using ($1/60):9 with lines title 'client p50', \
     '' using ($1/60):10 with lines title 'client p99', \
     '' using ($1/60):12 with lines title 'qpcd RPC mean'
unset logscale y

set title 'operations and errors per sample'
plot csv using ($1/60):7 with lines title 'operations', \
     '' using ($1/60):8 with impulses title 'errors'

unset multiplot
