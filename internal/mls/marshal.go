package mls

// Exported Marshal/Unmarshal for every wire struct: Marshal returns the TLS
// encoding; Unmarshal decodes all of b (trailing bytes are an error wrapping
// ErrDecode) into the receiver, replacing its previous contents.

// Marshal returns the TLS encoding of MLSMessage.
func (v *MLSMessage) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as MLSMessage.
func (v *MLSMessage) Unmarshal(b []byte) error { return unmarshal(b, v) }

// UnmarshalAliased is Unmarshal whose byte fields share b's memory instead
// of copying it (secrets are still copied): for reading a message without
// keeping it, as the server reads the framing of every enqueued message
// without copying its ciphertext. b must not change while v is in use.
func (v *MLSMessage) UnmarshalAliased(b []byte) error {
	*v = MLSMessage{}
	d := newDecoder(b)
	d.alias = true
	v.decode(d)
	return d.finish()
}

// Marshal returns the TLS encoding of PublicMessage.
func (v *PublicMessage) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as PublicMessage.
func (v *PublicMessage) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of PrivateMessage.
func (v *PrivateMessage) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as PrivateMessage.
func (v *PrivateMessage) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of FramedContent.
func (v *FramedContent) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as FramedContent.
func (v *FramedContent) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of AuthenticatedContent.
func (v *AuthenticatedContent) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as AuthenticatedContent.
func (v *AuthenticatedContent) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Sender.
func (v *Sender) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Sender.
func (v *Sender) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of GroupContext.
func (v *GroupContext) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as GroupContext.
func (v *GroupContext) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of KeyPackage.
func (v *KeyPackage) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as KeyPackage.
func (v *KeyPackage) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of LeafNode.
func (v *LeafNode) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as LeafNode.
func (v *LeafNode) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Credential.
func (v *Credential) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Credential.
func (v *Credential) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Capabilities.
func (v *Capabilities) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Capabilities.
func (v *Capabilities) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Lifetime.
func (v *Lifetime) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Lifetime.
func (v *Lifetime) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of HPKECiphertext.
func (v *HPKECiphertext) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as HPKECiphertext.
func (v *HPKECiphertext) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of ParentNode.
func (v *ParentNode) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as ParentNode.
func (v *ParentNode) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Node.
func (v *Node) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Node.
func (v *Node) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of RatchetTree.
func (v *RatchetTree) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as RatchetTree.
func (v *RatchetTree) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of UpdatePathNode.
func (v *UpdatePathNode) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as UpdatePathNode.
func (v *UpdatePathNode) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of UpdatePath.
func (v *UpdatePath) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as UpdatePath.
func (v *UpdatePath) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of PreSharedKeyID.
func (v *PreSharedKeyID) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as PreSharedKeyID.
func (v *PreSharedKeyID) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Add.
func (v *Add) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Add.
func (v *Add) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Update.
func (v *Update) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Update.
func (v *Update) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Remove.
func (v *Remove) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Remove.
func (v *Remove) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of PreSharedKey.
func (v *PreSharedKey) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as PreSharedKey.
func (v *PreSharedKey) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of ReInit.
func (v *ReInit) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as ReInit.
func (v *ReInit) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of ExternalInit.
func (v *ExternalInit) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as ExternalInit.
func (v *ExternalInit) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of GroupContextExtensions.
func (v *GroupContextExtensions) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as GroupContextExtensions.
func (v *GroupContextExtensions) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Proposal.
func (v *Proposal) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Proposal.
func (v *Proposal) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of ProposalOrRef.
func (v *ProposalOrRef) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as ProposalOrRef.
func (v *ProposalOrRef) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Commit.
func (v *Commit) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Commit.
func (v *Commit) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of GroupInfo.
func (v *GroupInfo) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as GroupInfo.
func (v *GroupInfo) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of GroupSecrets.
func (v *GroupSecrets) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as GroupSecrets.
func (v *GroupSecrets) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of EncryptedGroupSecrets.
func (v *EncryptedGroupSecrets) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as EncryptedGroupSecrets.
func (v *EncryptedGroupSecrets) Unmarshal(b []byte) error { return unmarshal(b, v) }

// Marshal returns the TLS encoding of Welcome.
func (v *Welcome) Marshal() ([]byte, error) { return marshal(v) }

// Unmarshal decodes b as Welcome.
func (v *Welcome) Unmarshal(b []byte) error { return unmarshal(b, v) }
