// peer.mjs: one ts-mls MLS client driven over JSON lines (stdin requests,
// stdout replies) by the Go interop test (interop/tsmls_test.go, make
// interop). Binary values travel as base64. One request, one reply:
// {"ok":true,...} or {"ok":false,"error":"..."}.
import { createInterface } from "node:readline"
import {
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createGroupInfoWithExternalPubAndRatchetTree,
  createProposal,
  joinGroupExternal,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  mlsExporter,
  processPrivateMessage,
  processPublicMessage,
} from "ts-mls"
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js"

const b64 = (u8) => Buffer.from(u8).toString("base64")
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"))
const text = new TextEncoder()

let impl // CiphersuiteImpl
let own // this client's KeyPackage (public + private), reused for create/join
let state // ClientState once in a group

function tree(raw) {
  const d = decodeRatchetTree(unb64(raw), 0)
  if (!d) throw new Error("ratchet tree does not decode")
  return d[0]
}

function committed(r) {
  return { commit: b64(encodeMlsMessage(r.commit)), epoch: Number(state.groupContext.epoch) }
}

function decode(raw, want) {
  const d = decodeMlsMessage(unb64(raw), 0)
  if (!d) throw new Error("MLSMessage does not decode")
  const m = d[0]
  if (want && m.wireformat !== want) throw new Error(`wire format ${m.wireformat}, want ${want}`)
  return m
}

const ops = {
  async init({ suite, identity }) {
    impl = await getCiphersuiteImpl(getCiphersuiteFromName(suite))
    const cred = { credentialType: "basic", identity: text.encode(identity) }
    own = await generateKeyPackage(cred, defaultCapabilities(), defaultLifetime, [], impl)
    return { key_package: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: own.publicPackage })) }
  },
  async create({ group_id }) {
    state = await createGroup(unb64(group_id), own.publicPackage, own.privatePackage, [], impl)
    return { epoch: Number(state.groupContext.epoch) }
  },
  // add commits an Add by value; tree_out_of_band leaves the ratchet tree
  // out of the Welcome and returns it as ratchet_tree.
  async add({ key_package, tree_out_of_band }) {
    const kp = decode(key_package, "mls_key_package").keyPackage
    const r = await createCommit({ state, cipherSuite: impl }, { extraProposals: [{ proposalType: "add", add: { keyPackage: kp } }], ratchetTreeExtension: !tree_out_of_band })
    state = r.newState
    return { ...committed(r), welcome: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: r.welcome })) }
  },
  // remove commits a Remove of leaf by value.
  async remove({ leaf, public_message }) {
    const r = await createCommit({ state, cipherSuite: impl }, { extraProposals: [{ proposalType: "remove", remove: { removed: leaf } }], wireAsPublicMessage: !!public_message })
    state = r.newState
    return committed(r)
  },
  // propose sends an Add (key_package) or Remove (leaf) proposal, kept
  // for a later commit by reference.
  async propose({ key_package, leaf, public_message }) {
    const p = key_package !== undefined
      ? { proposalType: "add", add: { keyPackage: decode(key_package, "mls_key_package").keyPackage } }
      : { proposalType: "remove", remove: { removed: leaf } }
    const r = await createProposal(state, !!public_message, p, impl)
    state = r.newState
    return { proposal: b64(encodeMlsMessage(r.message)) }
  },
  // commit commits the pending proposals (by reference) with a path.
  async commit({ public_message, tree_out_of_band }) {
    const r = await createCommit({ state, cipherSuite: impl }, { wireAsPublicMessage: !!public_message, ratchetTreeExtension: !tree_out_of_band })
    state = r.newState
    const out = committed(r)
    if (r.welcome) out.welcome = b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: r.welcome }))
    return out
  },
  async join({ welcome, ratchet_tree }) {
    const w = decode(welcome, "mls_welcome").welcome
    state = await joinGroup(w, own.publicPackage, own.privatePackage, emptyPskIndex, impl, ratchet_tree ? tree(ratchet_tree) : undefined)
    return { epoch: Number(state.groupContext.epoch), leaf: Number(state.privatePath.leafIndex) }
  },
  // group_info returns a GroupInfo with external_pub, with the ratchet
  // tree in its extension or (tree_out_of_band) beside it.
  async group_info({ tree_out_of_band }) {
    const gi = tree_out_of_band
      ? await createGroupInfoWithExternalPub(state, [], impl)
      : await createGroupInfoWithExternalPubAndRatchetTree(state, [], impl)
    return { group_info: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi })), ratchet_tree: b64(encodeRatchetTree(state.ratchetTree)) }
  },
  // external_join joins by external commit (new KeyPackage keys, same identity).
  async external_join({ group_info, ratchet_tree }) {
    const gi = decode(group_info, "mls_group_info").groupInfo
    const r = await joinGroupExternal(gi, own.publicPackage, own.privatePackage, false, impl, ratchet_tree ? tree(ratchet_tree) : undefined)
    state = r.newState
    return { commit: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_public_message", publicMessage: r.publicMessage })), epoch: Number(state.groupContext.epoch), leaf: Number(state.privatePath.leafIndex) }
  },
  // members lists the occupied leaves.
  async members() {
    const out = []
    state.ratchetTree.forEach((n, i) => {
      if (i % 2 === 0 && n && n.nodeType === "leaf") out.push({ leaf: i / 2, identity: new TextDecoder().decode(n.leaf.credential.identity) })
    })
    return { members: out, ratchet_tree: b64(encodeRatchetTree(state.ratchetTree)) }
  },
  async protect({ text: t }) {
    const r = await createApplicationMessage(state, text.encode(t), impl)
    state = r.newState
    return { message: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: r.privateMessage })) }
  },
  async process({ message }) {
    const m = decode(message)
    let r
    if (m.wireformat === "mls_private_message") r = await processPrivateMessage(state, m.privateMessage, emptyPskIndex, impl)
    else if (m.wireformat === "mls_public_message") r = await processPublicMessage(state, m.publicMessage, emptyPskIndex, impl)
    else throw new Error(`cannot process wire format ${m.wireformat}`)
    state = r.newState
    const out = { epoch: Number(state.groupContext.epoch), kind: r.kind, active: state.groupActiveState.kind }
    if (r.kind === "applicationMessage") out.text = new TextDecoder().decode(r.message)
    return out
  },
  async export({ label, context, length }) {
    const s = await mlsExporter(state.keySchedule.exporterSecret, label, unb64(context), length, impl)
    return { secret: b64(s), epoch: Number(state.groupContext.epoch) }
  },
}

const rl = createInterface({ input: process.stdin })
for await (const line of rl) {
  let reply
  try {
    const req = JSON.parse(line)
    const f = ops[req.op]
    if (!f) throw new Error(`unknown op ${req.op}`)
    reply = { ok: true, ...(await f(req)) }
  } catch (e) {
    reply = { ok: false, error: String(e && e.stack ? e.stack : e) }
  }
  process.stdout.write(JSON.stringify(reply) + "\n")
}
