// Changes: the puts and deletes of one height, as an indexer hands them to the engine.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::engine {

inline constexpr std::size_t kMaxKeySize = 4096;        // bytes
inline constexpr std::size_t kMaxValueSize = 1u << 20;  // bytes (1 MiB)

struct Changes {
    std::uint64_t height = 0;
    std::optional<Hash> block_hash;  // display byte order
    // A put with an empty value is a delete (docs/smt-spec.md section 5).
    std::vector<std::pair<Bytes, Bytes>> puts;
    std::vector<Bytes> deletes;
    // Written from a change file (`stateroot apply`): its block hash, if any, is the
    // writer's word, not a block the block indexer read. The indexer neither builds on
    // such a height nor rolls it back.
    bool from_change_file = false;
};

// One change after normalisation: keyed by path, an empty put turned into a delete.
// Borrows the key and value from the Changes it came from.
struct NormalChange {
    Hash path;
    const Bytes* key = nullptr;
    const Bytes* value = nullptr;  // null for a delete
    Hash value_hash;               // puts only
};

// Checks the limits (keys 1..kMaxKeySize bytes, values up to kMaxValueSize) and that no
// key appears twice, and returns the changes sorted by path. Fails with
// kInvalidArgument naming the offending key.
Result<std::vector<NormalChange>> normalize(const Changes& changes);

// A digest identifying a normalised change set (independent of order and hex case):
// SHA-256 over, per change in path order, path ‖ 0x01 ‖ value_hash for a put or
// path ‖ 0x00 for a delete.
Hash changes_digest(const std::vector<NormalChange>& changes);

// Checks that a key is 1..kMaxKeySize bytes: kInvalidArgument otherwise.
Status check_key_size(ByteView key);

// A short printable form of a key for error messages: hex, elided past 32 bytes.
std::string key_for_message(ByteView key);

}  // namespace stateroot::engine
