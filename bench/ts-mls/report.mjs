// report.mjs: summarises the samples of scripts/bench-mls-peers.sh.
//
//   node report.mjs SAMPLES.jsonl META.json OUT.json OUT.md
//
// SAMPLES has one JSON line per implementation, round, size and operation:
// {"impl","round","members","op","ms":[...],"cpu_ms":[...],"ciphertexts"}.
// For internal/mls each ms value is one `go test -bench` run's mean over
// its iterations; for ts-mls each is one iteration. A round's figure is the
// median of its values; a row's ms_median is the median of its rounds'
// figures, ms_min and ms_max their range. Ratios compare ts-mls's medians
// with internal/mls's at the same size. It fails if the two sides' commits
// do not carry the same number of path-secret ciphertexts (the tree shapes
// would differ and the comparison would mean nothing), or if a size lacks
// either side.
import { readFileSync, writeFileSync } from "node:fs"

const [samplesPath, metaPath, outJSON, outMD] = process.argv.slice(2)
if (!outMD) {
  process.stderr.write("usage: node report.mjs SAMPLES.jsonl META.json OUT.json OUT.md\n")
  process.exit(2)
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const round3 = (x) => Math.round(x * 1000) / 1000

const samples = readFileSync(samplesPath, "utf8").split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l))
const meta = JSON.parse(readFileSync(metaPath, "utf8"))

const groups = new Map()
for (const s of samples) {
  for (const k of ["impl", "round", "members", "op", "ms", "cpu_ms", "ciphertexts"]) {
    if (s[k] === undefined) throw new Error(`sample without ${k}: ${JSON.stringify(s)}`)
  }
  if (s.ms.length === 0) throw new Error(`sample without values: ${JSON.stringify(s)}`)
  const key = `${s.impl}\u0000${s.members}\u0000${s.op}`
  if (!groups.has(key)) groups.set(key, { impl: s.impl, members: s.members, op: s.op, rounds: [], ciphertexts: new Set() })
  const g = groups.get(key)
  g.rounds.push({ round: s.round, ms: median(s.ms), cpu_ms: median(s.cpu_ms), values: s.ms.length })
  g.ciphertexts.add(s.ciphertexts)
}

const rows = [...groups.values()]
  .sort((a, b) => a.members - b.members || a.impl.localeCompare(b.impl) || a.op.localeCompare(b.op))
  .map((g) => {
    if (g.ciphertexts.size !== 1) throw new Error(`${g.impl} n=${g.members} ${g.op}: ciphertext counts differ between rounds: ${[...g.ciphertexts]}`)
    const ms = g.rounds.map((r) => r.ms)
    return {
      impl: g.impl,
      members: g.members,
      op: g.op,
      ms_median: round3(median(ms)),
      ms_min: round3(Math.min(...ms)),
      ms_max: round3(Math.max(...ms)),
      cpu_ms_median: round3(median(g.rounds.map((r) => r.cpu_ms))),
      ciphertexts: [...g.ciphertexts][0],
      rounds: g.rounds.map((r) => ({ round: r.round, ms: round3(r.ms), cpu_ms: round3(r.cpu_ms), values: r.values })),
    }
  })

const OURS = "internal/mls"
const ratios = []
for (const n of [...new Set(rows.map((r) => r.members))]) {
  const ours = rows.find((r) => r.members === n && r.impl === OURS)
  const theirs = rows.filter((r) => r.members === n && r.impl !== OURS)
  if (!ours || theirs.length === 0) throw new Error(`n=${n}: missing ${ours ? "ts-mls" : OURS}`)
  for (const t of theirs) {
    if (t.ciphertexts !== ours.ciphertexts) {
      throw new Error(`n=${n}: ${t.impl} ${t.op} encrypts ${t.ciphertexts} path secrets, ${OURS} ${ours.ciphertexts}: not the same tree`)
    }
    ratios.push({
      members: n,
      theirs: `${t.impl} ${t.op}`,
      ours: `${OURS} ${ours.op}`,
      wall: round3(t.ms_median / ours.ms_median),
      cpu: round3(t.cpu_ms_median / ours.cpu_ms_median),
    })
  }
}

writeFileSync(outJSON, JSON.stringify({ ...meta, rows, ratios }, null, 2) + "\n")

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2))
const lines = [
  "| Implementation | Operation | Members | ms/op median (range) | CPU ms/op | ciphertexts |",
  "|---|---|---:|---:|---:|---:|",
  ...rows.map((r) => `| ${r.impl} | ${r.op} | ${r.members} | ${fmt(r.ms_median)} (${fmt(r.ms_min)}-${fmt(r.ms_max)}) | ${fmt(r.cpu_ms_median)} | ${r.ciphertexts} |`),
  "",
  "| Members | ts-mls operation | wall ratio | CPU ratio |",
  "|---:|---|---:|---:|",
  ...ratios.map((r) => `| ${r.members} | ${r.theirs.replace(/^ts-mls /, "")} | ${r.wall.toFixed(1)}x | ${r.cpu.toFixed(1)}x |`),
]
writeFileSync(outMD, lines.join("\n") + "\n")
process.stdout.write(lines.join("\n") + "\n")
