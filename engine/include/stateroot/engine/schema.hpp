// The persisted layout: every key prefix the engine writes and the encoding of each
// row. docs/schema.md is the document of record; this header implements it, and the
// two change together (with kFormatVersion when the change is incompatible).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::storage {
class WriteBatch;
}

namespace stateroot::engine::schema {

// Written to disk as part of `m` "format"; bump on any incompatible change.
inline constexpr std::uint32_t kFormatVersion = 4;
// The oldest version this build reads. Version 3 lacks only the height record's flag
// bit 1, which it never sets: a writer opening it rewrites the format row to the
// current version, so that an older build refuses the database instead of calling a
// record with that bit corrupt.
inline constexpr std::uint32_t kOldestFormatVersion = 3;
inline constexpr std::string_view kMagic = "stateroot";

// One-byte key prefixes (written to disk: never renumber).
enum Prefix : std::uint8_t {
    kMeta = 'm',     // m ‖ name                     -> per-name value
    kHeight = 'h',   // h ‖ height (8 BE)            -> HeightRecord
    kChanges = 'c',  // c ‖ height (8 BE)            -> change index of that height
    kValue = 'v',    // v ‖ path (32) ‖ ~height (8 BE) -> value version
    kNodes = 'n',    // n ‖ chunk (8 BE)             -> node chunk
    kStale = 's',    // s ‖ height (8 BE)            -> ids of nodes superseded at that height
    kAux = 'x',      // x ‖ indexer key              -> indexer value (not versioned by height)
};

// The prefixes whose keys are written in rising order of height or chunk, kept apart
// from the value rows (storage::StoreOptions::rising_prefixes).
inline constexpr char kRisingPrefixes[] = {kHeight, kChanges, kNodes, kStale, 0};

// Names of the meta rows.
inline constexpr std::string_view kMetaFormat = "format";  // magic ‖ version (4 BE)
inline constexpr std::string_view kMetaTip = "tip";        // tip height (8 BE); absent if empty
inline constexpr std::string_view kMetaFirst = "first";    // first height (8 BE); absent if empty
// The next node chunk to write (8 BE). Never decreases, not even on rollback, so a node
// id names the same record for the life of the database.
inline constexpr std::string_view kMetaNextChunk = "next_chunk";
// The first height whose values, changes and proofs are kept (8 BE); absent if nothing
// was pruned. Roots of every height are kept.
inline constexpr std::string_view kMetaPruned = "pruned";
// Every height below this one has been cleaned by pruning (8 BE); an interrupted prune
// resumes from here.
inline constexpr std::string_view kMetaPrunedDone = "pruned_done";

// Node ids: chunk * kChunkNodes + index within the chunk.
using NodeId = std::uint64_t;
inline constexpr NodeId kNoNode = ~NodeId{0};
inline constexpr std::uint64_t kChunkNodes = 256;

Bytes meta_key(std::string_view name);
Bytes height_key(std::uint64_t height);
Bytes changes_key(std::uint64_t height);
Bytes stale_key(std::uint64_t height);
Bytes node_chunk_key(std::uint64_t chunk);
inline constexpr std::size_t kNodeChunkKeySize = 1 + 8;
Bytes aux_key(ByteView key);
// Versions of a path sort newest first: the height is stored inverted.
Bytes value_key(const Hash& path, std::uint64_t height);
inline constexpr std::size_t kValueKeySize = 1 + 32 + 8;
// Prefix shared by all versions of one path: the unit of the store's seek filters.
inline constexpr std::size_t kValueSeekPrefix = 1 + 32;
// The height of a value key (which must be kValueKeySize bytes with prefix kValue).
std::uint64_t value_key_height(ByteView key);
// Whether `key` is a value key of the same path as the value key `of`: what a seek in
// the value rows must check before taking the row it lands on.
bool same_path(ByteView key, ByteView of);

Bytes format_value();
// Checks the `m` "format" row: kCorruption naming what it found if it is not ours,
// kInvalidArgument for a version this build does not read. Returns the version.
Result<std::uint32_t> check_format(ByteView value);

// Per-height record, the value of `h` ‖ height.
struct HeightRecord {
    Hash root;                      // the state root after this height
    NodeId root_id = kNoNode;       // the root node, kNoNode for the empty tree
    std::uint64_t first_chunk = 0;  // node chunks [first_chunk, end_chunk) were written here
    std::uint64_t end_chunk = 0;
    std::uint64_t live_keys = 0;     // keys present after this height
    Hash digest;                     // changes_digest of this height's changes
    std::optional<Hash> block_hash;  // display byte order
    bool from_change_file = false;   // Changes::from_change_file
};
Bytes encode(const HeightRecord& record);
Result<HeightRecord> decode_height_record(ByteView value, std::uint64_t height);

// One entry of a height's change index.
struct ChangeEntry {
    bool put = false;  // false: delete
    Bytes key;
};
Bytes encode_change_index(const std::vector<ChangeEntry>& entries);
Result<std::vector<ChangeEntry>> decode_change_index(ByteView value, std::uint64_t height);

// A value version: 0x01 ‖ the value, or 0x00 for a delete (a tombstone). Adds the row
// value_key(path, height) to `batch` without building the key or the value first (a
// height adds one per change).
void put_value_row(storage::WriteBatch& batch, const Hash& path, std::uint64_t height,
                   std::optional<ByteView> value);
Result<std::optional<ByteView>> decode_value_row(ByteView row);

// The ids of the nodes a height superseded, ascending.
Bytes encode_stale(const std::vector<NodeId>& ids);
Result<std::vector<NodeId>> decode_stale(ByteView value, std::uint64_t height);

}  // namespace stateroot::engine::schema
