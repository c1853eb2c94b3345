// Shared pieces of the `stateroot` commands.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "stateroot/engine/engine.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::tools {

// Exit codes of every command.
inline constexpr int kExitOk = 0;
inline constexpr int kExitNo = 1;     // not found / invalid: an answer, not a failure
inline constexpr int kExitError = 2;  // an error, reported on stderr

// Prints "stateroot: <message>" to stderr and returns kExitError.
int fail(const Error& error);
int fail(const std::string& message);

// Opens an existing database for reading (beside a possible writer).
Result<std::unique_ptr<engine::Engine>> open_for_reading(const std::string& db);

// The height a query is about: `height` if given, else the tip (kNotFound if empty).
Result<std::uint64_t> resolve_height(const engine::View& view, std::optional<std::uint64_t> height);

struct BenchOptions {
    std::uint64_t keys = 1'000'000;
    std::uint64_t block_keys = 10'000;
    std::uint64_t blocks = 20;
    std::string db;  // empty: a temporary directory, removed afterwards
    bool json = false;
    std::uint64_t seed = 1;
    std::uint64_t preload_batch = 100'000;
    std::size_t cache_mb = 128;
};
int run_bench(const BenchOptions& options);

struct IndexOptions {
    std::string db;
    std::vector<std::string> block_files;
    std::string blocks_dir;
    std::string network = "mainnet";
    std::string indexer = "utxo";
    std::optional<std::uint64_t> exit_at;
    std::uint64_t max_reorg_depth = 100;
    bool allow_missing_prevouts = false;
    std::optional<std::uint64_t> start_height;
};
int run_index_command(const IndexOptions& options);

}  // namespace stateroot::tools
