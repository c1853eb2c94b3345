// The low-level SHA256_* calls are deprecated in OpenSSL 3 but avoid the per-call
// algorithm fetch of the EVP and one-shot APIs, which costs more than the hash itself
// on 65-byte node preimages.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "stateroot/engine/hash.hpp"

#include <openssl/sha.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <atomic>
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

namespace {

std::atomic<bool> lanes_on{true};

#if defined(__x86_64__)
bool cpu_has_sha_ni() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool ssse3 = (c & bit_SSSE3) != 0;
    const bool sse41 = (c & bit_SSE4_1) != 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return ssse3 && sse41 && (b & bit_SHA) != 0;
}

const bool kShaNi = cpu_has_sha_ni();

// SHA-256's round constants (FIPS 180-4, section 4.2.2).
alignas(16) constexpr std::uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define STATEROOT_SHA_NI __attribute__((target("sha,sse4.1,ssse3")))

// The shuffle that turns each 32-bit word of a register between little- and big-endian.
STATEROOT_SHA_NI inline __m128i word_byte_swap() {
    return _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
}

// One 64-byte block into each of N states. The state is in the order SHA-NI wants it:
// abef = (a, b, e, f) and cdgh = (c, d, g, h), most significant lane first. The N
// chains are independent, so each round's instructions of one lane overlap the
// latency of the others'.
template <int N>
STATEROOT_SHA_NI inline void compress(__m128i* abef, __m128i* cdgh, const std::uint8_t (*block)[64]) {
    const __m128i big_endian = word_byte_swap();
    __m128i w[N][4], abef0[N], cdgh0[N];
    for (int j = 0; j < N; ++j) {
        abef0[j] = abef[j];
        cdgh0[j] = cdgh[j];
    }
    // Four rounds per step: w[j][i % 4] holds the message words of step i.
    for (int i = 0; i < 16; ++i) {
        const __m128i k = _mm_load_si128(reinterpret_cast<const __m128i*>(kRound + 4 * i));
        for (int j = 0; j < N; ++j) {
            __m128i m;
            if (i < 4) {
                m = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block[j] + 16 * i)),
                                     big_endian);
            } else {
                m = _mm_sha256msg1_epu32(w[j][i & 3], w[j][(i + 1) & 3]);
                m = _mm_add_epi32(m, _mm_alignr_epi8(w[j][(i + 3) & 3], w[j][(i + 2) & 3], 4));
                m = _mm_sha256msg2_epu32(m, w[j][(i + 3) & 3]);
            }
            w[j][i & 3] = m;
            __m128i x = _mm_add_epi32(m, k);
            cdgh[j] = _mm_sha256rnds2_epu32(cdgh[j], abef[j], x);
            x = _mm_shuffle_epi32(x, 0x0e);
            abef[j] = _mm_sha256rnds2_epu32(abef[j], cdgh[j], x);
        }
    }
    for (int j = 0; j < N; ++j) {
        abef[j] = _mm_add_epi32(abef[j], abef0[j]);
        cdgh[j] = _mm_add_epi32(cdgh[j], cdgh0[j]);
    }
}

// The node hashes of N pairs: each preimage (65 bytes) is two blocks, the second its
// last byte and the padding.
template <int N>
STATEROOT_SHA_NI void node_hashes_sha_ni(const Hash* const* left, const Hash* const* right, Hash* const* out) {
    alignas(16) std::uint8_t first[N][64];
    alignas(16) std::uint8_t second[N][64];
    for (int j = 0; j < N; ++j) {
        first[j][0] = kNodePrefix;
        std::memcpy(first[j] + 1, left[j]->data(), 32);
        std::memcpy(first[j] + 33, right[j]->data(), 31);
        std::memset(second[j], 0, 64);
        second[j][0] = right[j]->bytes[31];
        second[j][1] = 0x80;
        // The message length in bits, 65 * 8 = 520, big-endian.
        second[j][62] = 0x02;
        second[j][63] = 0x08;
    }
    __m128i abef[N], cdgh[N];
    for (int j = 0; j < N; ++j) {
        abef[j] = _mm_set_epi32(0x6a09e667, static_cast<int>(0xbb67ae85), 0x510e527f, static_cast<int>(0x9b05688c));
        cdgh[j] = _mm_set_epi32(0x3c6ef372, static_cast<int>(0xa54ff53a), 0x1f83d9ab, 0x5be0cd19);
    }
    compress<N>(abef, cdgh, first);
    compress<N>(abef, cdgh, second);
    const __m128i big_endian = word_byte_swap();
    for (int j = 0; j < N; ++j) {
        // (a, b, e, f) and (c, d, g, h) back to a..h, each word big-endian.
        const __m128i ab_ef = _mm_shuffle_epi32(abef[j], 0x1b);
        const __m128i cd_gh = _mm_shuffle_epi32(cdgh[j], 0x1b);
        const __m128i abcd = _mm_unpacklo_epi64(ab_ef, cd_gh);
        const __m128i efgh = _mm_unpackhi_epi64(ab_ef, cd_gh);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j]->data()), _mm_shuffle_epi8(abcd, big_endian));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j]->data() + 16), _mm_shuffle_epi8(efgh, big_endian));
    }
}

#else
constexpr bool kShaNi = false;
#endif

}  // namespace

bool hash_lanes() { return kShaNi && lanes_on.load(std::memory_order_relaxed); }
void use_hash_lanes(bool on) { lanes_on.store(on, std::memory_order_relaxed); }

void node_hashes(int n, const Hash* const* left, const Hash* const* right, Hash* const* out) {
    assert(n >= 1 && n <= kHashLanes);
    // One alone is faster through OpenSSL, whose code for a single chain is tuned.
#if defined(__x86_64__)
    static_assert(kHashLanes == 4);
    if (n >= 2 && hash_lanes()) {
        switch (n) {
            case 2: return node_hashes_sha_ni<2>(left, right, out);
            case 3: return node_hashes_sha_ni<3>(left, right, out);
            default: return node_hashes_sha_ni<4>(left, right, out);
        }
    }
#endif
    for (int i = 0; i < n; ++i) *out[i] = node_hash(*left[i], *right[i]);
}

int common_prefix_bits(const Hash& a, const Hash& b) {
    for (int i = 0; i < 32; ++i) {
        const std::uint8_t x = a.bytes[i] ^ b.bytes[i];
        if (x != 0) return i * 8 + std::countl_zero(x);
    }
    return 256;
}

}  // namespace stateroot::engine
