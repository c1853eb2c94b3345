// SHA-256 and the SMT's node hashes (docs/smt-spec.md section 4).
//
// OpenSSL appears only behind this header.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <string>

#include "stateroot/storage/bytes.hpp"

namespace stateroot::engine {

// A 32-byte SHA-256 digest: node hashes, value hashes, and paths.
struct Hash {
    std::array<std::uint8_t, 32> bytes{};

    auto operator<=>(const Hash&) const = default;
    const std::uint8_t* data() const { return bytes.data(); }
    std::uint8_t* data() { return bytes.data(); }
    ByteView view() const { return {bytes.data(), bytes.size()}; }
    std::string hex() const { return to_hex(view()); }
    // The hash in `b`, which must be exactly 32 bytes.
    static Hash from(ByteView b);
};

// The placeholder: 32 zero bytes, the hash of every empty subtree (not H("")).
inline constexpr Hash kZeroHash{};

// Preimage prefixes: a leaf's data starts with 0x00, an internal node's with 0x01.
inline constexpr std::uint8_t kLeafPrefix = 0x00;
inline constexpr std::uint8_t kNodePrefix = 0x01;

// SHA-256 of arbitrary bytes.
Hash sha256(ByteView data);

// H(0x00 || path || value_hash): the hash of the leaf for (path, value).
Hash leaf_hash(const Hash& path, const Hash& value_hash);

// H(0x01 || left || right): the hash of an internal node.
Hash node_hash(const Hash& left, const Hash& right);

// How many independent node hashes node_hashes() computes together.
inline constexpr int kHashLanes = 4;

// *out[i] = node_hash(*left[i], *right[i]) for each i < n, 1 <= n <= kHashLanes. Where
// the CPU has SHA-NI, the n hashes are interleaved: one SHA-256 alone leaves the CPU's
// SHA unit waiting on each round's result most of the time, and four together take
// about 2.5 times as long as one. Otherwise (or with lanes turned off) one OpenSSL
// hash after the other. out[i] may be left[i] or right[i].
void node_hashes(int n, const Hash* const* left, const Hash* const* right, Hash* const* out);

// Whether node_hashes() interleaves: the CPU has SHA-NI and lanes are not turned off.
bool hash_lanes();
// Turns interleaving off or back on, process-wide (to compare the two: the results
// are the same either way).
void use_hash_lanes(bool on);

// Bit `i` of a path, 0 = most significant bit of byte 0 (docs/smt-spec.md section 1).
inline int bit(const Hash& path, int i) { return (path.bytes[i >> 3] >> (7 - (i & 7))) & 1; }

// Common-prefix length of two paths in bits: 256 if equal.
int common_prefix_bits(const Hash& a, const Hash& b);

}  // namespace stateroot::engine
