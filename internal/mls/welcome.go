package mls

// Welcome, GroupInfo and GroupSecrets (RFC 9420 §12.4.3).

// GroupInfo describes a group to a joiner (RFC 9420 §12.4.3).
type GroupInfo struct {
	GroupContext    GroupContext
	Extensions      []Extension
	ConfirmationTag []byte
	Signer          uint32
	Signature       []byte
}

func (g *GroupInfo) encodeContent(e *encoder) {
	g.GroupContext.encode(e)
	encodeExtensions(e, g.Extensions)
	e.opaque(g.ConfirmationTag)
	e.u32(g.Signer)
}

func (g *GroupInfo) encode(e *encoder) {
	g.encodeContent(e)
	e.opaque(g.Signature)
}

func (g *GroupInfo) decode(d *decoder) {
	g.GroupContext.decode(d)
	g.Extensions = decodeExtensions(d)
	g.ConfirmationTag = d.opaque()
	g.Signer = d.u32()
	g.Signature = d.opaque()
}

// TBS returns GroupInfoTBS, the signed part of the GroupInfo.
func (g *GroupInfo) TBS() ([]byte, error) {
	e := &encoder{}
	g.encodeContent(e)
	return e.buf, e.err
}

// PathSecret is the path secret a joiner gets for the lowest common
// ancestor of itself and the committer.
type PathSecret struct {
	PathSecret Secret
}

// GroupSecrets is what a Welcome encrypts to each joiner (RFC 9420 §12.4.3).
type GroupSecrets struct {
	JoinerSecret Secret
	PathSecret   *PathSecret
	PSKs         []PreSharedKeyID
}

func (g *GroupSecrets) encode(e *encoder) {
	e.opaque(g.JoinerSecret.Bytes())
	e.optional(g.PathSecret != nil, func(e *encoder) { e.opaque(g.PathSecret.PathSecret.Bytes()) })
	e.vector(func(e *encoder) {
		for i := range g.PSKs {
			g.PSKs[i].encode(e)
		}
	})
}

func (g *GroupSecrets) decode(d *decoder) {
	g.JoinerSecret = d.secret()
	if d.optional() {
		g.PathSecret = &PathSecret{PathSecret: d.secret()}
	}
	d.vector(func(d *decoder) {
		var p PreSharedKeyID
		p.decode(d)
		g.PSKs = append(g.PSKs, p)
	})
}

// Wipe zeroes the secrets.
func (g *GroupSecrets) Wipe() {
	g.JoinerSecret.Wipe()
	if g.PathSecret != nil {
		g.PathSecret.PathSecret.Wipe()
	}
}

// EncryptedGroupSecrets is GroupSecrets encrypted to one joiner's
// KeyPackage init key.
type EncryptedGroupSecrets struct {
	NewMember             []byte // KeyPackageRef
	EncryptedGroupSecrets HPKECiphertext
}

func (s *EncryptedGroupSecrets) encode(e *encoder) {
	e.opaque(s.NewMember)
	s.EncryptedGroupSecrets.encode(e)
}

func (s *EncryptedGroupSecrets) decode(d *decoder) {
	s.NewMember = d.opaque()
	s.EncryptedGroupSecrets.decode(d)
}

// Welcome adds new members to a group (RFC 9420 §12.4.3).
type Welcome struct {
	CipherSuite        CipherSuiteID
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
}

func (w *Welcome) encode(e *encoder) {
	e.u16(uint16(w.CipherSuite))
	e.vector(func(e *encoder) {
		for i := range w.Secrets {
			w.Secrets[i].encode(e)
		}
	})
	e.opaque(w.EncryptedGroupInfo)
}

func (w *Welcome) decode(d *decoder) {
	w.CipherSuite = CipherSuiteID(d.u16())
	d.vector(func(d *decoder) {
		var s EncryptedGroupSecrets
		s.decode(d)
		w.Secrets = append(w.Secrets, s)
	})
	w.EncryptedGroupInfo = d.opaque()
}
