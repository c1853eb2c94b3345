// The `stateroot` commands. main.cpp parses the command line; each command gets the
// effective configuration (config.hpp) and its own arguments.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
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

// The engine settings of a configuration.
engine::EngineOptions engine_options(const Config& config);
// Shares a memory budget of `mb` MiB out in `options`
// (EngineOptions::set_memory_budget_mb), and has the allocator give large blocks back
// as soon as they are freed.
void set_memory_budget(engine::EngineOptions& options, std::uint64_t mb);
// kInvalidArgument unless the configuration names a database.
Status require_db(const Config& config);
// Whether `dir` exists: asked before a write command opens its database.
bool path_exists(const std::string& dir);

// A write command's database that the command itself created (`created`: it did not
// exist before): removed again if the command fails with no height in it (a first run
// refused at its first block or line), so that a refusal leaves nothing behind. It
// closes the engine itself first, so it is declared right after the engine (destroyed
// before it, after everything declared later that uses the engine).
class NewDatabase {
  public:
    NewDatabase(std::string dir, bool created, std::unique_ptr<engine::Engine>& engine)
        : dir_(std::move(dir)), created_(created), engine_(engine) {}
    ~NewDatabase();
    NewDatabase(const NewDatabase&) = delete;
    NewDatabase& operator=(const NewDatabase&) = delete;
    // The command succeeded: the database stays, empty or not.
    void keep() { created_ = false; }

  private:
    std::string dir_;
    bool created_;
    std::unique_ptr<engine::Engine>& engine_;
};

// kInvalidArgument "cannot read PATH: Is a directory" if `path` is a directory, which
// std::ifstream opens without complaint and then reads as empty.
Status not_a_directory(const std::string& path);

// State commands (commands.cpp). `height` nullopt means the tip.
int cmd_apply(const Config& c, const std::string& file);
int cmd_root(const Config& c, std::optional<std::uint64_t> height);
int cmd_get(const Config& c, const std::string& key_hex, std::optional<std::uint64_t> height);
int cmd_prove(const Config& c, const std::string& key_hex, std::optional<std::uint64_t> height);
int cmd_verify(const Config& c, const std::string& file, const std::optional<std::string>& root_hex);
int cmd_rollback(const Config& c, std::optional<std::uint64_t> height);
int cmd_info(const Config& c);
int cmd_check(const Config& c, std::optional<std::uint64_t> height);
int cmd_blockhash(const Config& c, std::optional<std::uint64_t> height);
int cmd_prune(const Config& c, std::uint64_t keep);

// Server commands (serve_cmd.cpp).
struct ServerOptions;
ServerOptions server_options(const Config& c);
int cmd_serve(const Config& c);
int cmd_snapshot(const Config& c, const std::string& out);
int cmd_config_print(const Config& c);

// Indexing (index_cmd.cpp): serves the query API meanwhile if rpc_addr is set.
struct IndexOptions {
    std::vector<std::string> block_files;
    std::string blocks_dir;
    std::string indexer = "utxo";
    std::optional<std::uint64_t> exit_at;
    bool allow_missing_prevouts = false;
    std::optional<std::uint64_t> start_height;
    std::optional<std::uint64_t> prune_keep;  // keep the last N heights' values and proofs
};
int cmd_index(const Config& c, const IndexOptions& options);

// Benchmark (bench.cpp).
struct BenchOptions {
    std::uint64_t keys = 1'000'000;
    std::uint64_t block_keys = 10'000;
    std::uint64_t blocks = 20;
    std::string db;  // empty: a temporary directory, removed afterwards
    bool json = false;
    std::uint64_t seed = 1;
    std::uint64_t preload_batch = 0;  // 0: 100,000, fewer under a budget (bench.cpp)
    std::size_t cache_mb = 0;
    bool pipelined_writes = false;
    int tree_threads = 2;  // 1: each height's tree on the calling thread
};
int run_bench(const BenchOptions& options);

}  // namespace stateroot::tools
