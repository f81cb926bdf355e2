// bench.mjs: the ts-mls side of scripts/bench-mls-peers.sh (make
// bench-mls-peers). For each group size it builds a "fresh" group the way
// internal/mls's BenchmarkGroupUpdateCommit/fresh does and times the last
// member's empty commit with a full UpdatePath, as PublicMessage.
//
//   node bench.mjs --sizes 100,1000 --iters 20,5 [--warmup 1] [--serve]
//
// The groups are built once (about two minutes at 1 000 members). Without
// --serve it measures once and exits; with --serve it prints {"ready":true}
// once the groups are built, then measures once per line read on stdin
// (the script interleaves these rounds with internal/mls's), ending each
// round with {"round_done":true}. Each measurement prints one JSON line per
// size and operation on stdout:
//   {"impl":"ts-mls","members":n,"op":...,"iters":k,"ms":[...],"cpu_ms":[...],
//    "ciphertexts":c,"ts_mls":"1.6.4","node":"v20..."}
// with every measured iteration's wall time (ms) and the process's CPU time
// (user + system, GC included) for it. Setup is not timed.
//
// Tree shape. Our fresh tree is the one right after the creator added all
// the others in one commit with a path: the creator's direct path is set
// (no unmerged leaves), every other parent is blank, so the last leaf's
// commit encrypts to the creator's node at the top and to every leaf of its
// own half. ts-mls commits Adds without a path and has no option to force
// one, so the same tree is made in two commits: add a spare member (no
// path), then remove it and add the n-1 others in one commit (a Remove
// requires a path). The number of path-secret ciphertexts of the measured
// commit is printed beside the timings so that the script can check that
// both sides encrypt to the same number of recipients.
//
// Operations:
//   commit+groupinfo: createCommit (PublicMessage) and the signed GroupInfo
//     with external_pub and the ratchet tree for the new epoch, both encoded
//     to bytes: what internal/mls's Commit returns (it always makes that
//     GroupInfo, for the server's external joins).
//   commit: createCommit alone, encoded (ts-mls without the GroupInfo
//     internal/mls produces; less work than ours).
import { readFileSync } from "node:fs"
import { createInterface } from "node:readline"
import { performance } from "node:perf_hooks"
import {
  createCommit,
  createGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
} from "ts-mls"

const SUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def
}

function ints(s, what) {
  const out = s.split(",").map((x) => Number.parseInt(x, 10))
  if (out.length === 0 || out.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`bad ${what}: ${s}`)
  return out
}

const sizes = ints(arg("sizes", "100,1000"), "--sizes")
const itersList = ints(arg("iters", "10"), "--iters")
const warmup = Math.max(1, Number.parseInt(arg("warmup", "1"), 10))
if (sizes.some((n) => n < 3)) throw new Error("sizes must be at least 3 (creator, spare slot, committer)")
const version = JSON.parse(readFileSync(new URL("./node_modules/ts-mls/package.json", import.meta.url))).version

const impl = await getCiphersuiteImpl(getCiphersuiteFromName(SUITE))
const enc = new TextEncoder()

async function keyPackage(name) {
  return generateKeyPackage({ credentialType: "basic", identity: enc.encode(name) }, defaultCapabilities(), defaultLifetime, [], impl)
}

// fresh returns the state of the last member (leaf n-1) of an n-member
// group in the fresh shape described above.
async function fresh(n) {
  const kps = []
  for (let i = 0; i < n; i++) kps.push(await keyPackage(`user${i}/d`))
  const spare = await keyPackage("spare/d")
  let creator = await createGroup(enc.encode(`bench-${n}-${Date.now()}`), kps[0].publicPackage, kps[0].privatePackage, [], impl)
  let r = await createCommit({ state: creator, cipherSuite: impl }, { extraProposals: [{ proposalType: "add", add: { keyPackage: spare.publicPackage } }] })
  creator = r.newState
  const adds = kps.slice(1).map((k) => ({ proposalType: "add", add: { keyPackage: k.publicPackage } }))
  r = await createCommit({ state: creator, cipherSuite: impl }, { extraProposals: [{ proposalType: "remove", remove: { removed: 1 } }, ...adds] })
  creator = r.newState
  if (!r.welcome) throw new Error("add-all commit made no Welcome")
  const last = kps[n - 1]
  const b = await joinGroup(r.welcome, last.publicPackage, last.privatePackage, emptyPskIndex, impl, creator.ratchetTree)
  if (Number(b.privatePath.leafIndex) !== n - 1) throw new Error(`committer at leaf ${b.privatePath.leafIndex}, want ${n - 1}`)
  // The shape: n leaves, no unmerged leaves, only the creator's path set.
  let leaves = 0
  for (let i = 0; i < b.ratchetTree.length; i++) {
    const node = b.ratchetTree[i]
    if (!node) continue
    if (node.nodeType === "leaf") leaves++
    else if (node.parent.unmergedLeaves.length > 0) throw new Error(`parent ${i} has unmerged leaves`)
  }
  if (leaves !== n) throw new Error(`tree has ${leaves} leaves, want ${n}`)
  return b
}

function ciphertexts(commit) {
  const path = commit.publicMessage.content.commit.path
  if (!path) throw new Error("commit has no path")
  return path.nodes.reduce((s, x) => s + x.encryptedPathSecret.length, 0)
}

const ops = {
  async "commit+groupinfo"(state) {
    const r = await createCommit({ state, cipherSuite: impl }, { wireAsPublicMessage: true })
    const gi = await createGroupInfoWithExternalPubAndRatchetTree(r.newState, [], impl)
    const msg = encodeMlsMessage(r.commit)
    const giBytes = encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi })
    return { commit: r.commit, bytes: msg.length + giBytes.length }
  },
  async commit(state) {
    const r = await createCommit({ state, cipherSuite: impl }, { wireAsPublicMessage: true })
    return { commit: r.commit, bytes: encodeMlsMessage(r.commit).length }
  },
}

const states = []
for (const [si, n] of sizes.entries()) {
  const t0 = performance.now()
  states.push({ n, iters: itersList[Math.min(si, itersList.length - 1)], state: await fresh(n) })
  process.stderr.write(`ts-mls: ${n}-member group built in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`)
}

async function measure() {
  for (const { n, iters, state } of states) {
    for (const [op, f] of Object.entries(ops)) {
      let cts = ciphertexts((await f(state)).commit)
      for (let i = 1; i < warmup; i++) cts = ciphertexts((await f(state)).commit)
      const ms = []
      const cpu = []
      for (let i = 0; i < iters; i++) {
        const c0 = process.cpuUsage()
        const t0 = performance.now()
        const out = await f(state)
        const t1 = performance.now()
        const c1 = process.cpuUsage(c0)
        if (out.bytes <= 0) throw new Error("empty output")
        ms.push(t1 - t0)
        cpu.push((c1.user + c1.system) / 1000)
      }
      process.stdout.write(JSON.stringify({ impl: "ts-mls", members: n, op, iters, ms, cpu_ms: cpu, ciphertexts: cts, ts_mls: version, node: process.version }) + "\n")
    }
  }
}

if (process.argv.includes("--serve")) {
  process.stdout.write(JSON.stringify({ ready: true }) + "\n")
  for await (const _ of createInterface({ input: process.stdin })) {
    await measure()
    process.stdout.write(JSON.stringify({ round_done: true }) + "\n")
  }
} else {
  await measure()
}
