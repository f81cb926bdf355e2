// peer.mjs: one ts-mls MLS client driven over JSON lines (stdin requests,
// stdout replies) by the Go interop test (interop/tsmls_test.go, make
// interop). Binary values travel as base64. One request, one reply:
// {"ok":true,...} or {"ok":false,"error":"..."}.
import { createInterface } from "node:readline"
import {
  createApplicationMessage,
  createCommit,
  createGroup,
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

const b64 = (u8) => Buffer.from(u8).toString("base64")
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"))
const text = new TextEncoder()

let impl // CiphersuiteImpl
let own // this client's KeyPackage (public + private), reused for create/join
let state // ClientState once in a group

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
  async add({ key_package }) {
    const kp = decode(key_package, "mls_key_package").keyPackage
    const r = await createCommit({ state, cipherSuite: impl }, { extraProposals: [{ proposalType: "add", add: { keyPackage: kp } }], ratchetTreeExtension: true })
    state = r.newState
    return {
      commit: b64(encodeMlsMessage(r.commit)),
      welcome: b64(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: r.welcome })),
      epoch: Number(state.groupContext.epoch),
    }
  },
  async commit({ public_message }) {
    const r = await createCommit({ state, cipherSuite: impl }, { wireAsPublicMessage: !!public_message })
    state = r.newState
    return { commit: b64(encodeMlsMessage(r.commit)), epoch: Number(state.groupContext.epoch) }
  },
  async join({ welcome }) {
    const w = decode(welcome, "mls_welcome").welcome
    state = await joinGroup(w, own.publicPackage, own.privatePackage, emptyPskIndex, impl)
    return { epoch: Number(state.groupContext.epoch) }
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
    const out = { epoch: Number(state.groupContext.epoch), kind: r.kind }
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
