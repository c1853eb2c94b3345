// The effective configuration of a command: defaults, overridden by a JSON file
// (--config FILE), then by environment variables (STATEROOT_<OPTION>), then by flags.
// configs/default.json lists every option with its default and what it does.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "stateroot/storage/result.hpp"

namespace stateroot::tools {

inline constexpr const char* kDefaultRpcAddr = "127.0.0.1:8080";

// What a command does depends on the options' values only, not on whether they were
// set, so a file listing the defaults (configs/default.json) changes nothing. Where a
// default depends on the command or on another option, it is written as an empty or
// zero value (rpc_addr, node_cache_mb).
struct Config {
    std::string db;                          // database directory (no default)
    std::string rpc_addr;                    // HOST:PORT of the JSON-RPC/REST server; empty: serve
                                             // listens on kDefaultRpcAddr, index serves nothing
    std::string rpc_token;                   // bearer token; required to bind a non-loopback address
    std::uint64_t rpc_threads = 8;           // server event loops, each answering its connections
    std::uint64_t rpc_max_connections = 1024;  // open connections; beyond, the longest-waiting is closed
    std::uint64_t rpc_timeout_ms = 10'000;   // to send a whole request, and to take an answer
    std::uint64_t rpc_idle_ms = 60'000;      // an idle keep-alive connection is closed after this
    std::string secondary;                   // serve as a read replica keeping its files here
    std::uint64_t catch_up_ms = 500;         // how often a replica catches up with the primary
    std::string network = "mainnet";         // block network: mainnet, testnet3, testnet4, signet, regtest
    std::uint64_t max_reorg_depth = 100;     // deepest rollback a reorg may make
    std::uint64_t cache_mb = 0;              // memory budget (EngineOptions::set_memory_budget_mb); 0: none
    std::uint64_t node_cache_mb = 0;         // tree node cache for proofs; 0: 64 MiB, or 1/16 of cache_mb
    bool sync = false;                       // fsync every commit (power-loss durability)
    std::string log_level = "info";          // trace, debug, info, warn, error
};

// Values given on the command line, by option name, as typed.
using ConfigFlags = std::map<std::string, std::string>;

// Builds the effective configuration. `file` may be empty. `env` looks up an
// environment variable (std::getenv by default). Errors name the file, variable or
// flag and the option: an unknown option in the file, or a value of the wrong type.
Result<Config> load_config(const std::string& file, const ConfigFlags& flags,
                           const std::function<const char*(const char*)>& env = nullptr);

// Every option and its value, as configs/default.json spells them.
nlohmann::json to_json(const Config& config);

// A whole number in decimal digits only (no sign, no base prefix), as options take
// them; nullopt if `text` is not one or exceeds 64 bits.
std::optional<std::uint64_t> parse_decimal(std::string_view text);

// The option names, in the order they are documented.
std::vector<std::string> config_option_names();

}  // namespace stateroot::tools
