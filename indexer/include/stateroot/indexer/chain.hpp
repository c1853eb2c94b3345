// ChainIndex: every block header known (from the database and this run's input), their
// heights and cumulative proof of work, and the best chain among them.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "stateroot/indexer/bitcoin.hpp"
#include "stateroot/indexer/block_source.hpp"

namespace stateroot::indexer {

// An unsigned 256-bit integer, for chain work.
struct Work {
    std::array<std::uint64_t, 4> limb{};  // least significant first

    // The expected number of hashes for a header with compact target `bits`:
    // 2^256 / (target + 1); zero for an invalid or zero target.
    static Work from_bits(std::uint32_t bits);
    Work operator+(const Work& o) const;
    std::strong_ordering operator<=>(const Work& o) const;
    bool operator==(const Work& o) const = default;
};

// Checks that the header's hash, as a number, is at most the target its `bits` encode
// (its proof of work is real) and that the target is within the network's limit
// (Bitcoin Core's powLimit, which needs no earlier block to check). kInvalidArgument
// saying which check failed ("its bits ... encode no valid target", "... easier than
// mainnet's limit", "its hash is above the target ...").
Status check_work(const BlockHeader& header, Network network);
inline bool meets_target(const BlockHeader& header, Network network) {
    return check_work(header, network).has_value();
}

struct ChainEntry {
    BlockHeader header;
    std::optional<BlockLocation> location;  // where this run's input has the block
    // Further copies in the input (a node that crashed mid-write stores a block again),
    // tried in order when the first does not parse.
    std::vector<BlockLocation> other_copies;
    bool body_stored = false;               // the block is kept in the database
    bool invalid = false;                   // marked bad in the database, or descends from one
    std::uint64_t seq = 0;                  // order first seen; ties in work go to the lower
    // Set by connect() for blocks that descend from the root (and are not invalid).
    std::optional<std::uint64_t> height;
    bool below_root = false;  // set by connect(): an ancestor of the root, or a branch off one
    Work chain_work;
    const ChainEntry* parent = nullptr;
};

class ChainIndex {
  public:
    // Adds a header; returns the entry, which is new if `*added` is set. A known header
    // keeps its sequence number and gains the location (as another copy if it had one).
    ChainEntry& add(const BlockHeader& header, std::optional<BlockLocation> location,
                    std::uint64_t seq, bool* added = nullptr);
    ChainEntry* find(const Hash& hash);
    std::size_t size() const { return entries_.size(); }
    std::uint64_t next_seq() const { return next_seq_; }

    // Gives heights and cumulative work to the root (at `root_height`) and everything
    // descending from it but invalid blocks and their descendants (which it marks
    // invalid); marks what lies below the root.
    void connect(const Hash& root, std::uint64_t root_height);
    // Entries that connect() could not place (neither connected, invalid nor below the
    // root), in sequence order.
    std::vector<const ChainEntry*> unconnected() const;
    // The connected entry with the most work (the lowest sequence among equals).
    const ChainEntry* best() const;
    // The entries from the root to `tip`, by height.
    static std::vector<const ChainEntry*> path_to(const ChainEntry& tip);

  private:
    struct HashOf {
        std::size_t operator()(const Hash& h) const;
    };
    std::unordered_map<Hash, std::unique_ptr<ChainEntry>, HashOf> entries_;
    std::uint64_t next_seq_ = 0;
};

}  // namespace stateroot::indexer
