package mls

import (
	"testing"
)

type secretTreeCase struct {
	CipherSuite CipherSuiteID `json:"cipher_suite"`
	SenderData  struct {
		SenderDataSecret hexBytes `json:"sender_data_secret"`
		Ciphertext       hexBytes `json:"ciphertext"`
		Key              hexBytes `json:"key"`
		Nonce            hexBytes `json:"nonce"`
	} `json:"sender_data"`
	EncryptionSecret hexBytes `json:"encryption_secret"`
	Leaves           [][]struct {
		Generation       uint32   `json:"generation"`
		HandshakeKey     hexBytes `json:"handshake_key"`
		HandshakeNonce   hexBytes `json:"handshake_nonce"`
		ApplicationKey   hexBytes `json:"application_key"`
		ApplicationNonce hexBytes `json:"application_nonce"`
	} `json:"leaves"`
}

func TestSecretTreeVectors(t *testing.T) {
	runVectors(t, "secret-tree.json", func(c *secretTreeCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *secretTreeCase) {
			sd := tc.SenderData
			kn, err := s.SenderDataKeyNonce(NewSecret(sd.SenderDataSecret), sd.Ciphertext)
			mustNoErr(t, err, "SenderDataKeyNonce")
			mustHex(t, kn.Key.Bytes(), sd.Key, "sender data key")
			mustHex(t, kn.Nonce.Bytes(), sd.Nonce, "sender data nonce")

			tree, err := NewSecretTree(s, NewSecret(tc.EncryptionSecret), uint32(len(tc.Leaves)))
			mustNoErr(t, err, "NewSecretTree")
			for leaf, gens := range tc.Leaves {
				for _, g := range gens {
					hs, err := tree.Get(uint32(leaf), RatchetHandshake, g.Generation)
					mustNoErr(t, err, "handshake ratchet")
					mustHex(t, hs.Key.Bytes(), g.HandshakeKey, "handshake key")
					mustHex(t, hs.Nonce.Bytes(), g.HandshakeNonce, "handshake nonce")
					app, err := tree.Get(uint32(leaf), RatchetApplication, g.Generation)
					mustNoErr(t, err, "application ratchet")
					mustHex(t, app.Key.Bytes(), g.ApplicationKey, "application key")
					mustHex(t, app.Nonce.Bytes(), g.ApplicationNonce, "application nonce")
				}
			}
			// A consumed generation is refused; a skipped one is served once.
			if _, err := tree.Get(0, RatchetApplication, 15); err == nil {
				t.Error("generation 15 served twice")
			}
			if _, err := tree.Get(0, RatchetApplication, 3); err != nil {
				t.Errorf("skipped generation 3: %v", err)
			}
			tree.Wipe()
		})
}

type keyScheduleCase struct {
	CipherSuite       CipherSuiteID `json:"cipher_suite"`
	GroupID           hexBytes      `json:"group_id"`
	InitialInitSecret hexBytes      `json:"initial_init_secret"`
	Epochs            []struct {
		TreeHash                hexBytes `json:"tree_hash"`
		CommitSecret            hexBytes `json:"commit_secret"`
		PSKSecret               hexBytes `json:"psk_secret"`
		ConfirmedTranscriptHash hexBytes `json:"confirmed_transcript_hash"`
		GroupContext            hexBytes `json:"group_context"`
		JoinerSecret            hexBytes `json:"joiner_secret"`
		WelcomeSecret           hexBytes `json:"welcome_secret"`
		InitSecret              hexBytes `json:"init_secret"`
		SenderDataSecret        hexBytes `json:"sender_data_secret"`
		EncryptionSecret        hexBytes `json:"encryption_secret"`
		ExporterSecret          hexBytes `json:"exporter_secret"`
		EpochAuthenticator      hexBytes `json:"epoch_authenticator"`
		ExternalSecret          hexBytes `json:"external_secret"`
		ConfirmationKey         hexBytes `json:"confirmation_key"`
		MembershipKey           hexBytes `json:"membership_key"`
		ResumptionPSK           hexBytes `json:"resumption_psk"`
		ExternalPub             hexBytes `json:"external_pub"`
		Exporter                struct {
			// The label is used as the JSON string itself (which happens
			// to be hex text), not hex-decoded: that is what the vector
			// generator fed to MLS-Exporter.
			Label   string   `json:"label"`
			Context hexBytes `json:"context"`
			Length  int      `json:"length"`
			Secret  hexBytes `json:"secret"`
		} `json:"exporter"`
	} `json:"epochs"`
}

func TestKeyScheduleVectors(t *testing.T) {
	runVectors(t, "key-schedule.json", func(c *keyScheduleCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *keyScheduleCase) {
			initSecret := NewSecret(tc.InitialInitSecret)
			for i, ep := range tc.Epochs {
				gc := GroupContext{
					Version:                 ProtocolVersionMLS10,
					CipherSuite:             tc.CipherSuite,
					GroupID:                 tc.GroupID,
					Epoch:                   uint64(i),
					TreeHash:                ep.TreeHash,
					ConfirmedTranscriptHash: ep.ConfirmedTranscriptHash,
				}
				gcBytes, err := gc.Marshal()
				mustNoErr(t, err, "GroupContext")
				mustHex(t, gcBytes, ep.GroupContext, "group_context")

				joiner, err := s.JoinerSecret(initSecret, NewSecret(ep.CommitSecret), &gc)
				mustNoErr(t, err, "JoinerSecret")
				mustHex(t, joiner.Bytes(), ep.JoinerSecret, "joiner_secret")
				psk := NewSecret(ep.PSKSecret)
				welcome, err := s.WelcomeSecret(joiner, psk)
				mustNoErr(t, err, "WelcomeSecret")
				mustHex(t, welcome.Bytes(), ep.WelcomeSecret, "welcome_secret")
				es, err := s.EpochSecrets(joiner, psk, &gc)
				mustNoErr(t, err, "EpochSecrets")
				for _, c := range []struct {
					name      string
					got, want []byte
				}{
					{"init_secret", es.InitSecret.Bytes(), ep.InitSecret},
					{"sender_data_secret", es.SenderDataSecret.Bytes(), ep.SenderDataSecret},
					{"encryption_secret", es.EncryptionSecret.Bytes(), ep.EncryptionSecret},
					{"exporter_secret", es.ExporterSecret.Bytes(), ep.ExporterSecret},
					{"epoch_authenticator", es.EpochAuthenticator.Bytes(), ep.EpochAuthenticator},
					{"external_secret", es.ExternalSecret.Bytes(), ep.ExternalSecret},
					{"confirmation_key", es.ConfirmationKey.Bytes(), ep.ConfirmationKey},
					{"membership_key", es.MembershipKey.Bytes(), ep.MembershipKey},
					{"resumption_psk", es.ResumptionPSK.Bytes(), ep.ResumptionPSK},
				} {
					mustHex(t, c.got, c.want, c.name)
				}
				_, pub, err := es.ExternalKeyPair()
				mustNoErr(t, err, "ExternalKeyPair")
				mustHex(t, pub, ep.ExternalPub, "external_pub")
				exp, err := es.Export(ep.Exporter.Label, ep.Exporter.Context, ep.Exporter.Length)
				mustNoErr(t, err, "Export")
				mustHex(t, exp.Bytes(), ep.Exporter.Secret, "exporter.secret")

				initSecret = es.InitSecret.Clone()
				es.Wipe()
				joiner.Wipe()
			}
		})
}

type pskSecretCase struct {
	CipherSuite CipherSuiteID `json:"cipher_suite"`
	PSKs        []struct {
		PSKID    hexBytes `json:"psk_id"`
		PSK      hexBytes `json:"psk"`
		PSKNonce hexBytes `json:"psk_nonce"`
	} `json:"psks"`
	PSKSecret hexBytes `json:"psk_secret"`
}

func TestPSKSecretVectors(t *testing.T) {
	runVectors(t, "psk_secret.json", func(c *pskSecretCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *pskSecretCase) {
			var psks []PSKWithID
			for _, p := range tc.PSKs {
				psks = append(psks, PSKWithID{
					ID:  PreSharedKeyID{Type: PSKTypeExternal, PSKID: p.PSKID, PSKNonce: p.PSKNonce},
					PSK: NewSecret(p.PSK),
				})
			}
			got, err := s.PSKSecret(psks)
			mustNoErr(t, err, "PSKSecret")
			mustHex(t, got.Bytes(), tc.PSKSecret, "psk_secret")
		})
}

type transcriptCase struct {
	CipherSuite                  CipherSuiteID `json:"cipher_suite"`
	ConfirmationKey              hexBytes      `json:"confirmation_key"`
	AuthenticatedContent         hexBytes      `json:"authenticated_content"`
	InterimTranscriptHashBefore  hexBytes      `json:"interim_transcript_hash_before"`
	ConfirmedTranscriptHashAfter hexBytes      `json:"confirmed_transcript_hash_after"`
	InterimTranscriptHashAfter   hexBytes      `json:"interim_transcript_hash_after"`
}

func TestTranscriptHashVectors(t *testing.T) {
	runVectors(t, "transcript-hashes.json", func(c *transcriptCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *transcriptCase) {
			var ac AuthenticatedContent
			mustNoErr(t, ac.Unmarshal(tc.AuthenticatedContent), "decode AuthenticatedContent")
			if ac.Content.ContentType != ContentTypeCommit {
				t.Fatalf("content type %d, want commit", ac.Content.ContentType)
			}
			key := NewSecret(tc.ConfirmationKey)
			mustNoErr(t, s.VerifyConfirmationTag(key, tc.ConfirmedTranscriptHashAfter, ac.Auth.ConfirmationTag), "confirmation tag")
			confirmed, err := s.ConfirmedTranscriptHash(tc.InterimTranscriptHashBefore, &ac)
			mustNoErr(t, err, "ConfirmedTranscriptHash")
			mustHex(t, confirmed, tc.ConfirmedTranscriptHashAfter, "confirmed_transcript_hash_after")
			interim, err := s.InterimTranscriptHash(confirmed, ac.Auth.ConfirmationTag)
			mustNoErr(t, err, "InterimTranscriptHash")
			mustHex(t, interim, tc.InterimTranscriptHashAfter, "interim_transcript_hash_after")
			bad := append([]byte(nil), ac.Auth.ConfirmationTag...)
			bad[0] ^= 1
			if err := s.VerifyConfirmationTag(key, confirmed, bad); err == nil {
				t.Error("tampered confirmation tag verified")
			}
		})
}
