# Plots scripts/bench-peers.sh's results (bench-out/bench-peers.tsv) to a PNG:
#   gnuplot -e "tsv='bench-out/bench-peers.tsv'; png='bench-out/bench-peers.png'; senders='32 64'; sub1='machine'; sub2='load'" scripts/bench-peers.gp
# Columns: system, then per concurrency in `senders`: median msgs/s, min,
# max, median CPU µs per message.
if (!exists("tsv")) tsv = 'bench-out/bench-peers.tsv'
if (!exists("png")) png = 'bench-out/bench-peers.png'
if (!exists("senders")) senders = '32 64'
if (!exists("sub1")) sub1 = ''
if (!exists("sub2")) sub2 = ''
ns = words(senders)

set datafile separator "\t"
set terminal pngcairo size 1400,1000 enhanced font ',10'
set output png
set multiplot layout 2,1 title "qpcd durable enqueue and its peers (scripts/bench-peers.sh)\n".sub1."\n".sub2 noenhanced
set grid ytics
set key top right
set style fill solid 0.7 border -1
set boxwidth 0.9
set xtics noenhanced
set yrange [0:*]

set title 'messages/s: median of the rounds, bars from min to max (higher is better); nats-default is not durable'
set style histogram errorbars gap 2 lw 1
set style data histograms
plot for [i=1:ns] tsv using (column(2+4*(i-1))):(column(3+4*(i-1))):(column(4+4*(i-1))):xtic(1) title word(senders, i).' senders'

set title 'CPU µs per message, every process of the system (lower is better; logarithmic scale)'
set style histogram clustered gap 2
set logscale y
set yrange [10:*]
plot for [i=1:ns] tsv using (column(5+4*(i-1))):xtic(1) title word(senders, i).' senders'

unset multiplot
