// SQLCipher crypto provider backed by Go's crypto packages (AES-NI and
// assembly SHA-2), see sqlcipher_provider.go for why.
//
// go-sqlcipher v4.4.2 compiles SQLCipher 4.4.2 with its libtomcrypt
// provider built LTC_NO_ASM: table-driven AES and portable SHA-512, about
// 50 µs of CPU per 4 KiB page. SQLCipher's documented extension point,
// sqlcipher_register_provider, swaps the page crypto without touching the
// file format: the same AES-256-CBC, HMAC-SHA512 and PBKDF2, so files move
// freely between the two providers (TestCryptoProvidersInteroperate).

#include <string.h>
#include "_cgo_export.h"

// The provider table of SQLCipher 4.4 (src/crypto.h). Field order and
// types must match the bundled SQLCipher exactly: useProvider installs this
// one only if PRAGMA cipher_version starts with providerFor, and
// TestCryptoProvidersInteroperate fails if the layout or the operations
// drift (page HMACs would not verify across providers).
typedef struct {
  int (*activate)(void *ctx);
  int (*deactivate)(void *ctx);
  const char *(*get_provider_name)(void *ctx);
  int (*add_random)(void *ctx, void *buffer, int length);
  int (*random)(void *ctx, void *buffer, int length);
  int (*hmac)(void *ctx, int algorithm, unsigned char *hmac_key, int key_sz, unsigned char *in, int in_sz, unsigned char *in2, int in2_sz, unsigned char *out);
  int (*kdf)(void *ctx, int algorithm, const unsigned char *pass, int pass_sz, unsigned char *salt, int salt_sz, int workfactor, int key_sz, unsigned char *key);
  int (*cipher)(void *ctx, int mode, unsigned char *key, int key_sz, unsigned char *iv, unsigned char *in, int in_sz, unsigned char *out);
  const char *(*get_cipher)(void *ctx);
  int (*get_key_sz)(void *ctx);
  int (*get_iv_sz)(void *ctx);
  int (*get_block_sz)(void *ctx);
  int (*get_hmac_sz)(void *ctx, int algorithm);
  int (*ctx_init)(void **ctx);
  int (*ctx_free)(void **ctx);
  int (*fips_status)(void *ctx);
  const char *(*get_provider_version)(void *ctx);
} qpc_sqlcipher_provider;

// Defined (non-static) in go-sqlcipher's amalgamation.
extern int sqlite3_initialize(void);
extern void *sqlcipher_malloc(unsigned long long);
extern void sqlcipher_activate(void);
extern int sqlcipher_register_provider(qpc_sqlcipher_provider *);
extern qpc_sqlcipher_provider *sqlcipher_get_provider(void);
extern int sqlcipher_ltc_setup(qpc_sqlcipher_provider *);

static int qp_ok(void *ctx) { return 0; }
static int qp_ctx_ok(void **ctx) { return 0; }
static const char *qp_name(void *ctx) { return "go"; }
static const char *qp_version(void *ctx) { return "crypto/aes+crypto/hmac"; }
// Entropy comes from the kernel (crypto/rand); nothing to mix in.
static int qp_add_random(void *ctx, void *buffer, int length) { return 0; }
static int qp_random(void *ctx, void *buffer, int length) {
  return qpcProviderRandom(buffer, length);
}
static int qp_hmac(void *ctx, int algorithm, unsigned char *key, int key_sz, unsigned char *in, int in_sz, unsigned char *in2, int in2_sz, unsigned char *out) {
  if (in == NULL) return 1;
  return qpcProviderHMAC(algorithm, key, key_sz, in, in_sz, in2, in2 == NULL ? 0 : in2_sz, out);
}
static int qp_kdf(void *ctx, int algorithm, const unsigned char *pass, int pass_sz, unsigned char *salt, int salt_sz, int workfactor, int key_sz, unsigned char *key) {
  return qpcProviderKDF(algorithm, (unsigned char *)pass, pass_sz, salt, salt_sz, workfactor, key_sz, key);
}
static int qp_cipher(void *ctx, int mode, unsigned char *key, int key_sz, unsigned char *iv, unsigned char *in, int in_sz, unsigned char *out) {
  return qpcProviderCipher(mode, key, key_sz, iv, in, in_sz, out);
}
static const char *qp_get_cipher(void *ctx) { return "aes-256-cbc"; }
static int qp_key_sz(void *ctx) { return 32; }
static int qp_block_sz(void *ctx) { return 16; }
static int qp_hmac_sz(void *ctx, int algorithm) {
  switch (algorithm) {
  case 0: return 20; // HMAC_SHA1
  case 1: return 32; // HMAC_SHA256
  case 2: return 64; // HMAC_SHA512
  }
  return 0;
}

static int qpc_pinned = 0;

// qpc_use_provider makes new SQLCipher connections use the Go provider
// (go != 0) or the bundled libtomcrypt one. Connections copy the provider
// when they are keyed, so open ones keep theirs. The caller serialises
// calls (store.providerMu).
int qpc_use_provider(int go) {
  if (!qpc_pinned) {
    // SQLCipher frees the registered provider and falls back to its
    // compiled-in one whenever its last keyed connection closes. One
    // activation that is never released keeps the choice made here.
    if (sqlite3_initialize() != 0) return 1;
    sqlcipher_activate();
    qpc_pinned = 1;
  }
  qpc_sqlcipher_provider *p = sqlcipher_malloc(sizeof *p);
  if (p == NULL) return 1;
  memset(p, 0, sizeof *p);
  if (!go) {
    sqlcipher_ltc_setup(p);
  } else {
    p->activate = qp_ok;
    p->deactivate = qp_ok;
    p->get_provider_name = qp_name;
    p->add_random = qp_add_random;
    p->random = qp_random;
    p->hmac = qp_hmac;
    p->kdf = qp_kdf;
    p->cipher = qp_cipher;
    p->get_cipher = qp_get_cipher;
    p->get_key_sz = qp_key_sz;
    p->get_iv_sz = qp_block_sz;
    p->get_block_sz = qp_block_sz;
    p->get_hmac_sz = qp_hmac_sz;
    p->ctx_init = qp_ctx_ok;
    p->ctx_free = qp_ctx_ok;
    p->fips_status = qp_ok;
    p->get_provider_version = qp_version;
  }
  return sqlcipher_register_provider(p);
}
