// peer.mjs: one ts-mls 2.0 client, the same JSON-lines protocol as
// ../ts-mls/peer.mjs (see there), written against ts-mls 2.0's API.
import { createInterface } from "node:readline"
import {
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createGroupInfoWithExternalPubAndRatchetTree,
  createProposal,
  decode,
  defaultCapabilities,
  defaultLifetime,
  encode,
  generateKeyPackage,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  mlsExporter,
  mlsMessageDecoder,
  mlsMessageEncoder,
  processPrivateMessage,
  processPublicMessage,
  protocolVersions,
  unsafeTestingAuthenticationService,
  wireformats,
} from "ts-mls"
// ts-mls 2.0 does not export the ratchet tree codec from its entry point;
// import the module file directly (package exports apply to bare names).
const { ratchetTreeDecoder, ratchetTreeEncoder } = await import(new URL("./node_modules/ts-mls/dist/src/ratchetTree.js", import.meta.url))

const b64 = (u8) => Buffer.from(u8).toString("base64")
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"))
const text = new TextEncoder()

let context // MlsContext
let own
let state

function decodeMsg(raw, want) {
  const m = decode(mlsMessageDecoder, unb64(raw))
  if (!m) throw new Error("MLSMessage does not decode")
  if (want !== undefined && m.wireformat !== want) throw new Error(`wire format ${m.wireformat}, want ${want}`)
  return m
}
const enc = (m) => b64(encode(mlsMessageEncoder, m))
function tree(raw) {
  const t = decode(ratchetTreeDecoder, unb64(raw))
  if (!t) throw new Error("ratchet tree does not decode")
  return t
}

const ops = {
  async init({ suite, identity }) {
    // Credentials are checked by the application, not here: the test's
    // identities are plain strings.
    context = { cipherSuite: await getCiphersuiteImpl(suite), authService: unsafeTestingAuthenticationService }
    const credential = { credentialType: 1, identity: text.encode(identity) }
    own = await generateKeyPackage({ credential, capabilities: defaultCapabilities(), lifetime: defaultLifetime(), cipherSuite: context.cipherSuite })
    return { key_package: enc({ version: protocolVersions.mls10, wireformat: wireformats.mls_key_package, keyPackage: own.publicPackage }) }
  },
  async create({ group_id }) {
    state = await createGroup({ context, groupId: unb64(group_id), keyPackage: own.publicPackage, privateKeyPackage: own.privatePackage })
    return { epoch: Number(state.groupContext.epoch) }
  },
  // add commits an Add by value; tree_out_of_band leaves the ratchet tree
  // out of the Welcome (fetch it with members).
  async add({ key_package, tree_out_of_band }) {
    const kp = decodeMsg(key_package, wireformats.mls_key_package).keyPackage
    const r = await createCommit({ context, state, extraProposals: [{ proposalType: 1, add: { keyPackage: kp } }], ratchetTreeExtension: !tree_out_of_band })
    state = r.newState
    return { commit: enc(r.commit), welcome: enc(r.welcome), epoch: Number(state.groupContext.epoch) }
  },
  // remove commits a Remove of leaf by value.
  async remove({ leaf, public_message }) {
    const r = await createCommit({ context, state, extraProposals: [{ proposalType: 3, remove: { removed: leaf } }], wireAsPublicMessage: !!public_message })
    state = r.newState
    return { commit: enc(r.commit), epoch: Number(state.groupContext.epoch) }
  },
  // propose sends an Add (key_package) or Remove (leaf) proposal.
  async propose({ key_package, leaf, public_message }) {
    const proposal = key_package !== undefined
      ? { proposalType: 1, add: { keyPackage: decodeMsg(key_package, wireformats.mls_key_package).keyPackage } }
      : { proposalType: 3, remove: { removed: leaf } }
    const r = await createProposal({ context, state, wireAsPublicMessage: !!public_message, proposal })
    state = r.newState
    return { proposal: enc(r.message) }
  },
  // commit commits the pending proposals (by reference) with a path.
  async commit({ public_message, tree_out_of_band }) {
    const r = await createCommit({ context, state, wireAsPublicMessage: !!public_message, ratchetTreeExtension: !tree_out_of_band })
    state = r.newState
    const out = { commit: enc(r.commit), epoch: Number(state.groupContext.epoch) }
    if (r.welcome) out.welcome = enc(r.welcome)
    return out
  },
  async join({ welcome, ratchet_tree }) {
    const w = decodeMsg(welcome, wireformats.mls_welcome).welcome
    state = await joinGroup({ context, welcome: w, keyPackage: own.publicPackage, privateKeys: own.privatePackage, ratchetTree: ratchet_tree ? tree(ratchet_tree) : undefined })
    return { epoch: Number(state.groupContext.epoch), leaf: Number(state.privatePath.leafIndex) }
  },
  async group_info({ tree_out_of_band }) {
    const gi = tree_out_of_band
      ? await createGroupInfoWithExternalPub(state, [], context.cipherSuite)
      : await createGroupInfoWithExternalPubAndRatchetTree(state, [], context.cipherSuite)
    return { group_info: enc({ version: protocolVersions.mls10, wireformat: wireformats.mls_group_info, groupInfo: gi }), ratchet_tree: b64(encode(ratchetTreeEncoder, state.ratchetTree)) }
  },
  async external_join({ group_info, ratchet_tree }) {
    const gi = decodeMsg(group_info, wireformats.mls_group_info).groupInfo
    const r = await joinGroupExternal({ context, groupInfo: gi, keyPackage: own.publicPackage, privateKeys: own.privatePackage, resync: false, tree: ratchet_tree ? tree(ratchet_tree) : undefined })
    state = r.newState
    return { commit: enc({ version: protocolVersions.mls10, wireformat: wireformats.mls_public_message, publicMessage: r.publicMessage }), epoch: Number(state.groupContext.epoch), leaf: Number(state.privatePath.leafIndex) }
  },
  async members() {
    const out = []
    state.ratchetTree.forEach((n, i) => {
      if (i % 2 === 0 && n && n.leaf) out.push({ leaf: i / 2, identity: new TextDecoder().decode(n.leaf.credential.identity) })
    })
    return { members: out, ratchet_tree: b64(encode(ratchetTreeEncoder, state.ratchetTree)) }
  },
  async protect({ text: t }) {
    const r = await createApplicationMessage({ context, state, message: text.encode(t) })
    state = r.newState
    return { message: enc(r.message ?? { version: protocolVersions.mls10, wireformat: wireformats.mls_private_message, privateMessage: r.privateMessage }) }
  },
  async process({ message }) {
    const m = decodeMsg(message)
    let r
    if (m.wireformat === wireformats.mls_private_message) r = await processPrivateMessage({ context, state, privateMessage: m.privateMessage })
    else if (m.wireformat === wireformats.mls_public_message) r = await processPublicMessage({ context, state, publicMessage: m.publicMessage })
    else throw new Error(`cannot process wire format ${m.wireformat}`)
    state = r.newState
    const out = { epoch: Number(state.groupContext.epoch), kind: r.kind, active: state.groupActiveState.kind }
    if (r.kind === "applicationMessage") out.text = new TextDecoder().decode(r.message)
    return out
  },
  async export({ label, context: ctx, length }) {
    const s = await mlsExporter(state.keySchedule.exporterSecret, label, unb64(ctx), length, context.cipherSuite)
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
