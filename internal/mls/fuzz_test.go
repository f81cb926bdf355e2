package mls

import (
	"bytes"
	"testing"
)

// Native fuzz targets for the decoders (go test -fuzz=FuzzDecodeX). Seeds
// come from the official vectors; any input that decodes must re-encode to
// the same bytes, and no input may panic. Crashers found are kept under
// testdata/fuzz/<target>/ and run as regression cases by plain go test.

// vectorMessages returns the serialized MLSMessages of messages.json (the
// first n cases), message-protection.json and welcome.json.
func vectorMessages(f *testing.F, n int) [][]byte {
	f.Helper()
	var out [][]byte
	for i, c := range readVectors[messagesCase](f, "messages.json") {
		if i == n {
			break
		}
		out = append(out, c.MLSWelcome, c.MLSGroupInfo, c.MLSKeyPackage, c.PublicMessageApplication,
			c.PublicMessageProposal, c.PublicMessageCommit, c.PrivateMessage)
	}
	for _, c := range readVectors[messageProtectionCase](f, "message-protection.json") {
		out = append(out, c.ProposalPub, c.ProposalPriv, c.CommitPub, c.CommitPriv, c.ApplicationPriv)
	}
	for _, c := range readVectors[welcomeCase](f, "welcome.json") {
		out = append(out, c.KeyPackage, c.Welcome)
	}
	return out
}

// seedBodies adds the body of every seed MLSMessage of wire format wf.
func seedBodies(f *testing.F, wf WireFormat) {
	for _, b := range vectorMessages(f, 40) {
		if len(b) > 4 && WireFormat(uint16(b[2])<<8|uint16(b[3])) == wf {
			f.Add(b[4:])
		}
	}
}

func checkRoundTrip(t *testing.T, v wireStruct, in []byte) {
	if err := v.Unmarshal(in); err != nil {
		return
	}
	out, err := v.Marshal()
	if err != nil {
		t.Fatalf("decoded input does not re-encode: %v", err)
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("round trip differs:\n in %x\nout %x", in, out)
	}
}

func FuzzDecodeMLSMessage(f *testing.F) {
	for _, b := range vectorMessages(f, 40) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkRoundTrip(t, new(MLSMessage), in)
		checkAliasedDecode(t, in)
	})
}

// checkAliasedDecode: UnmarshalAliased accepts exactly what Unmarshal does
// and re-encodes to the same bytes.
func checkAliasedDecode(t *testing.T, in []byte) {
	t.Helper()
	var copied, aliased MLSMessage
	errC, errA := copied.Unmarshal(in), aliased.UnmarshalAliased(in)
	if (errC == nil) != (errA == nil) {
		t.Fatalf("Unmarshal error %v, UnmarshalAliased error %v", errC, errA)
	}
	if errC != nil {
		return
	}
	bc, err1 := copied.Marshal()
	ba, err2 := aliased.Marshal()
	if err1 != nil || err2 != nil || !bytes.Equal(bc, ba) {
		t.Fatalf("aliased decode re-encodes differently (%v, %v)", err1, err2)
	}
}

func FuzzDecodeKeyPackage(f *testing.F) {
	seedBodies(f, WireFormatKeyPackage)
	f.Fuzz(func(t *testing.T, in []byte) { checkRoundTrip(t, new(KeyPackage), in) })
}

func FuzzDecodeWelcome(f *testing.F) {
	seedBodies(f, WireFormatWelcome)
	f.Fuzz(func(t *testing.T, in []byte) { checkRoundTrip(t, new(Welcome), in) })
}

func FuzzDecodeGroupInfo(f *testing.F) {
	seedBodies(f, WireFormatGroupInfo)
	f.Fuzz(func(t *testing.T, in []byte) { checkRoundTrip(t, new(GroupInfo), in) })
}

// FuzzDecodeRatchetTree covers the ratchet_tree extension a joiner parses
// from a Welcome (part 2 builds the tree from it).
func FuzzDecodeRatchetTree(f *testing.F) {
	for i, c := range readVectors[messagesCase](f, "messages.json") {
		if i == 40 {
			break
		}
		f.Add([]byte(c.RatchetTree))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkRoundTrip(t, new(RatchetTree), in) })
}

// UnmarshalAliased shares the input's memory: no copy of the ciphertext.
func TestUnmarshalAliasedSharesInput(t *testing.T) {
	raw, err := (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatPrivateMessage,
		PrivateMessage: &PrivateMessage{GroupID: []byte("group"), Epoch: 7, ContentType: ContentTypeApplication,
			EncryptedSenderData: []byte("sender"), Ciphertext: []byte("ciphertext")}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m MLSMessage
	if err := m.UnmarshalAliased(raw); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte("ciphertext"))
	raw[i] = 'C'
	if string(m.PrivateMessage.Ciphertext) != "Ciphertext" || m.PrivateMessage.Epoch != 7 {
		t.Fatalf("ciphertext %q: not aliased to the input", m.PrivateMessage.Ciphertext)
	}
	if cap(m.PrivateMessage.GroupID) != len(m.PrivateMessage.GroupID) {
		t.Fatal("an aliased field's capacity reaches into the next field: an append would overwrite the input")
	}
}
