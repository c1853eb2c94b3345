// The low-level SHA256_* calls are deprecated in OpenSSL 3 but avoid the per-call
// algorithm fetch of the EVP and one-shot APIs, which costs more than the hash itself
// on 65-byte node preimages.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "stateroot/engine/hash.hpp"

#include <openssl/sha.h>

#include <bit>
#include <cassert>
#include <cstring>

namespace stateroot::engine {

Hash Hash::from(ByteView b) {
    assert(b.size() == 32);
    Hash h;
    std::memcpy(h.bytes.data(), b.data(), 32);
    return h;
}

Hash sha256(ByteView data) {
    Hash out;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data.data(), data.size());
    SHA256_Final(out.bytes.data(), &ctx);
    return out;
}

namespace {
Hash hash65(std::uint8_t prefix, const Hash& a, const Hash& b) {
    std::uint8_t buf[65];
    buf[0] = prefix;
    std::memcpy(buf + 1, a.bytes.data(), 32);
    std::memcpy(buf + 33, b.bytes.data(), 32);
    return sha256({buf, sizeof buf});
}
}  // namespace

Hash leaf_hash(const Hash& path, const Hash& value_hash) {
    return hash65(kLeafPrefix, path, value_hash);
}

Hash node_hash(const Hash& left, const Hash& right) { return hash65(kNodePrefix, left, right); }

int common_prefix_bits(const Hash& a, const Hash& b) {
    for (int i = 0; i < 32; ++i) {
        const std::uint8_t x = a.bytes[i] ^ b.bytes[i];
        if (x != 0) return i * 8 + std::countl_zero(x);
    }
    return 256;
}

}  // namespace stateroot::engine
