// The indexer loop: applies blocks in height order along the best known chain, rolling
// back to the fork point when another branch wins.
//
// Every header ever seen is kept in the database (indexer rows "blk/"), so a branch can
// win in a later run; block bodies are kept ("body/") only within max_reorg_depth of
// the best known tip, the only place a reorg can reach. A reorg indexes the winning
// blocks up to the old tip before it rolls anything back, so a bad or missing block
// changes nothing; a block the indexer refuses is marked invalid ("bad/") and passed by
// from then on. Each height is one atomic commit, so a run killed at any moment leaves
// a consistent height and a re-run continues from it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "stateroot/engine/engine.hpp"
#include "stateroot/indexer/block_indexer.hpp"
#include "stateroot/indexer/block_source.hpp"

namespace stateroot::indexer {

struct LoopProgress {
    std::uint64_t height = 0;  // just committed
    std::uint64_t target = 0;  // the height the run is heading for
    std::uint64_t blocks = 0;  // this run so far
    std::uint64_t txs = 0;
    std::uint64_t changed_keys = 0;
    double seconds = 0;
    // Of which: reading and parsing blocks, turning them into changes, committing.
    double parse_seconds = 0, index_seconds = 0, commit_seconds = 0;
};

struct LoopOptions {
    // Stop after this height (default: the best known tip).
    std::optional<std::uint64_t> exit_at;
    // Deepest rollback allowed for a reorg (default 100); deeper is an error.
    std::uint64_t max_reorg_depth = 100;
    // On an empty database, the first block may have an unknown parent (default false).
    bool allow_missing_prevouts = false;
    // Height of that first block (default: the height in its coinbase, BIP34, for a
    // block of version 2 or more; where BIP34 is in force, one given must agree).
    std::optional<std::uint64_t> start_height;
    // The chain the blocks are of: where BIP34 is in force.
    Network network = Network::kMainnet;
    // Keep values and proofs of the last N heights only (at least max_reorg_depth + 1),
    // pruning every 64 heights and at the end of the run (default: keep everything).
    std::optional<std::uint64_t> prune_keep;
    // Polled between heights; true stops the run after the height in progress.
    std::function<bool()> stop_requested;
    // Called after each committed height.
    std::function<void(const LoopProgress&)> on_progress;
    // Called first, for each record of the input passed over for want of valid proof of
    // work (a torn header), with what is wrong with it.
    std::function<void(const std::string&)> on_passed_over;
};

struct LoopResult {
    std::optional<std::uint64_t> tip;
    Hash block_hash;  // internal order
    Hash root;
    LoopProgress totals;
    std::uint64_t target = 0;
    std::uint64_t rolled_back = 0;  // heights undone by reorgs
    bool stopped = false;           // stop_requested() ended the run early
};

// The heights LoopOptions::prune_keep keeps: at least max_reorg_depth + 1, every height
// a reorg may roll back to (all of them when the depth is unlimited).
std::uint64_t heights_kept(std::uint64_t prune_keep, std::uint64_t max_reorg_depth);

// Runs the loop over `input` (blocks in the order found). Errors name the file and
// offset, and the height or hash when known; the database stays at its last good height.
Result<LoopResult> run_index(engine::Engine& engine, BlockIndexer& indexer,
                             const std::vector<FoundBlock>& input, const LoopOptions& options);

}  // namespace stateroot::indexer
