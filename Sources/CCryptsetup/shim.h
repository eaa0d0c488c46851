// libcryptsetup for Swift (KeyholdLUKS is its only user).
#include <libcryptsetup.h>
#include <stdint.h>

// Flags written as UINT32_C(1) << n do not reach Swift: re-exported here.
static const uint32_t keyhold_CRYPT_PBKDF_NO_BENCHMARK = CRYPT_PBKDF_NO_BENCHMARK;
static const int keyhold_CRYPT_ANY_TOKEN = CRYPT_ANY_TOKEN;
static const int keyhold_CRYPT_ANY_SLOT = CRYPT_ANY_SLOT;
