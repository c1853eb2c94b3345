// stateroot: the command-line interface. Parses the command line into the effective
// configuration (config.hpp) and the command's own arguments, then runs the command.
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <system_error>

#include "cli.hpp"

namespace stateroot::tools {
namespace {

// Registers --config and the named configuration options on a command; what the user
// types is collected in `flags` and applied over the file and the environment.
struct ConfigArgs {
    std::string file;
    ConfigFlags flags;

    void add(CLI::App* cmd, std::initializer_list<const char*> names) {
        cmd->add_option("--config", file, "JSON configuration file (see configs/default.json)");
        for (const char* name : names) {
            std::string flag = std::string("--") + name;
            std::replace(flag.begin(), flag.end(), '_', '-');
            if (std::string_view(name) == "sync") {
                cmd->add_flag_callback(flag, [this] { flags["sync"] = "true"; },
                                       "fsync every commit (survives power loss, not only crashes)");
                continue;
            }
            cmd->add_option_function<std::string>(flag, [this, name](const std::string& v) { flags[name] = v; },
                                                  help(name));
        }
    }

    static std::string help(std::string_view name) {
        if (name == "db") return "Database directory";
        if (name == "rpc_addr") return "Serve JSON-RPC and REST on HOST:PORT (serve's default 127.0.0.1:8080; index serves only when set)";
        if (name == "rpc_token") return "Bearer token clients must send (required off loopback)";
        if (name == "rpc_threads") return "Server threads, each an event loop answering its connections (default 8)";
        if (name == "rpc_max_connections") return "Open connections; beyond, the longest-waiting is closed (default 1024)";
        if (name == "rpc_timeout_ms") return "Time to send a whole request, and to take each 64 KiB of an answer (default 10000)";
        if (name == "rpc_idle_ms") return "Idle keep-alive connections are closed after this (default 60000)";
        if (name == "secondary") return "Serve as a read replica keeping its own files in this directory";
        if (name == "catch_up_ms") return "How often a replica catches up with the primary (default 500)";
        if (name == "network") return "mainnet (default), testnet3, testnet4, signet or regtest";
        if (name == "max_reorg_depth") return "Deepest rollback a reorg may make (default 100)";
        if (name == "cache_mb")
            return "Memory budget in MiB for RocksDB's caches and the writer's tree (default 0: no budget, "
                   "the whole tree stays in memory)";
        if (name == "node_cache_mb") return "Tree node cache for proofs in MiB (default 0: 64, or 1/16 of --cache-mb)";
        if (name == "log_level") return "trace, debug, info (default), warn, error, critical or off";
        return "";
    }
};

// Whole numbers on the command line are decimal, as in the configuration. CLI11 reads
// them with strtoull in base 0, which takes "010" for 8 and "0x10" for 16, wraps "-1"
// and saturates past 64 bits: a rollback or prune would act on another height than the
// one typed. The check rewrites the text without leading zeros for CLI11 to read.
CLI::Validator decimal() {
    return CLI::Validator(
        [](std::string& text) -> std::string {
            const auto v = parse_decimal(text);
            if (!v) return fmt::format("\"{}\" is not a decimal whole number from 0 to 18446744073709551615", text);
            text = std::to_string(*v);
            return {};
        },
        "UINT");
}

// rollback --height: a height, or -1 for "all of them". Only -1: another negative
// number ("-20", meant as twenty back) would empty the database as well.
CLI::Validator rollback_height() {
    return CLI::Validator(
        [](std::string& text) -> std::string {
            if (text == "-1") return {};
            const auto v = parse_decimal(text);
            if (!v)
                return fmt::format("\"{}\" is neither a decimal height nor -1 (all heights)", text);
            text = std::to_string(*v);
            return {};
        },
        "HEIGHT|-1");
}

std::optional<std::uint64_t> opt_height(const CLI::Option* opt, std::uint64_t value) {
    return opt->count() > 0 ? std::optional<std::uint64_t>(value) : std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"stateroot: height-versioned state with a sparse Merkle state root per height"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "Show the help of every command");

    ConfigArgs cfg;
    std::string file, key, root_hex, out;
    std::uint64_t height = 0;
    std::string rollback_to;
    const std::initializer_list<const char*> kRead = {"db", "cache_mb", "node_cache_mb", "log_level"};

    auto* apply = app.add_subcommand("apply", "Apply a change file (JSON lines, one height each; - for stdin)");
    cfg.add(apply, {"db", "cache_mb", "sync", "log_level"});
    apply->add_option("file", file, "Change file, or - for stdin")->required();

    auto* root = app.add_subcommand("root", "Print the state root at a height (default: the tip)");
    cfg.add(root, kRead);
    auto* root_h = root->add_option("--height", height, "Height")->transform(decimal());

    auto* get = app.add_subcommand("get", "Print the value of a key at a height (exit 1 if absent)");
    cfg.add(get, kRead);
    get->add_option("--key", key, "Key in hex")->required();
    auto* get_h = get->add_option("--height", height, "Height (default: the tip)")->transform(decimal());

    auto* prove = app.add_subcommand("prove", "Print an inclusion or exclusion proof of a key (JSON)");
    cfg.add(prove, kRead);
    prove->add_option("--key", key, "Key in hex")->required();
    auto* prove_h = prove->add_option("--height", height, "Height (default: the tip)")->transform(decimal());

    auto* verify = app.add_subcommand(
        "verify", "Verify a proof file: prints valid (exit 0) or invalid: <reason> (exit 1)");
    cfg.add(verify, kRead);
    verify->add_option("--proof", file, "Proof file (JSON, as printed by prove; - for stdin)")->required();
    auto* verify_root = verify->add_option("--root", root_hex, "Trusted root (default: --db's root at the proof's height, else the proof's own)");

    auto* rollback = app.add_subcommand("rollback", "Remove every height above --height (-1 or below the first: all)");
    cfg.add(rollback, {"db", "sync", "log_level"});
    rollback->add_option("--height", rollback_to, "Height to keep as the new tip")
        ->required()
        ->transform(rollback_height());

    auto* info = app.add_subcommand("info", "Print format version, tip, live keys and bytes on disk (JSON)");
    cfg.add(info, kRead);

    auto* check = app.add_subcommand("check", "Recompute the root at a height from the stored values and compare");
    cfg.add(check, kRead);
    auto* check_h = check->add_option("--height", height, "Height (default: the tip)")->transform(decimal());

    auto* blockhash = app.add_subcommand("blockhash", "Print the block hash stored for a height (display order; exit 1 if none)");
    cfg.add(blockhash, kRead);
    auto* blockhash_h = blockhash->add_option("--height", height, "Height (default: the tip)")->transform(decimal());

    IndexOptions index_opts;
    std::uint64_t exit_at = 0, start_height = 0;
    auto* index = app.add_subcommand("index", "Replay blocks from files in height order along the best chain (reorg-safe)");
    cfg.add(index, {"db", "network", "max_reorg_depth", "cache_mb", "node_cache_mb", "sync", "rpc_addr", "rpc_token",
                    "rpc_threads", "rpc_max_connections", "rpc_timeout_ms", "rpc_idle_ms", "log_level"});
    index->add_option("--blocks", index_opts.block_files, "blk-framed or raw block files, in any order");
    index->add_option("--blocks-dir", index_opts.blocks_dir, "A Bitcoin Core blocks directory (blk?????.dat, xor.dat)");
    index->add_option("--indexer", index_opts.indexer, "The indexer turning blocks into changes")->capture_default_str();
    auto* exit_at_opt = index->add_option("--exit-at", exit_at, "Stop after this height")->transform(decimal());
    index->add_flag("--allow-missing-prevouts", index_opts.allow_missing_prevouts,
                    "Start mid-chain: skip spends of unknown outputs; on an empty database the first block may "
                    "have an unknown parent");
    auto* start_opt =
        index->add_option("--start-height", start_height, "Height of that first block (default: its BIP34 height)")
            ->transform(decimal());
    std::uint64_t prune_keep = 0;
    auto* prune_opt = index->add_option("--prune-keep", prune_keep,
                                        "Prune as it goes, keeping values and proofs of the last N heights "
                                        "(at least --max-reorg-depth + 1)")
                         ->transform(decimal());

    std::uint64_t keep = 0;
    auto* prune = app.add_subcommand(
        "prune", "Keep values and proofs of the last --keep heights only (roots of all stay); prints <first kept> <tip>");
    cfg.add(prune, {"db", "log_level"});
    prune->add_option("--keep", keep, "Heights whose values and proofs are kept")->required()->transform(decimal());

    auto* serve = app.add_subcommand("serve", "Serve JSON-RPC (POST /) and REST (GET) queries");
    cfg.add(serve, {"db", "rpc_addr", "rpc_token", "rpc_threads", "rpc_max_connections", "rpc_timeout_ms", "rpc_idle_ms", "secondary", "catch_up_ms", "cache_mb",
                    "node_cache_mb", "log_level"});

    auto* snapshot = app.add_subcommand("snapshot", "Write a consistent copy of the database (with no other process writing it)");
    cfg.add(snapshot, {"db", "log_level"});
    snapshot->add_option("--out", out, "New directory for the copy")->required();

    bool print = false;
    auto* config = app.add_subcommand("config", "Show the effective configuration");
    cfg.add(config, {"db", "rpc_addr", "rpc_token", "rpc_threads", "rpc_max_connections", "rpc_timeout_ms", "rpc_idle_ms", "secondary", "catch_up_ms", "network",
                     "max_reorg_depth", "cache_mb", "node_cache_mb", "log_level", "sync"});
    config->add_flag("--print", print, "Print every option's effective value (JSON)")->required();

    BenchOptions bench_opts;
    auto* bench = app.add_subcommand("bench", "Measure commit throughput and latency against this machine's ceilings");
    bench->add_option("--keys", bench_opts.keys, "Keys preloaded before measuring (N)")->capture_default_str()
        ->transform(decimal());
    bench->add_option("--block-keys", bench_opts.block_keys, "Changed keys per height (K)")->capture_default_str()
        ->transform(decimal());
    bench->add_option("--blocks", bench_opts.blocks, "Heights measured (B)")->capture_default_str()
        ->transform(decimal());
    bench->add_option("--db", bench_opts.db, "Database directory (default: a temporary one, removed after)");
    bench->add_flag("--json", bench_opts.json, "Print one JSON object with the results as the last line");
    bench->add_option("--seed", bench_opts.seed, "Random seed")->capture_default_str()->transform(decimal());
    bench->add_option("--preload-batch", bench_opts.preload_batch,
                      "Keys per height while preloading (default 100,000; under --cache-mb, at most one "
                      "per 16 KiB of the budget)")
        ->transform(decimal());
    bench->add_option("--cache-mb", bench_opts.cache_mb,
                      "Memory budget in MiB for RocksDB's caches and the tree (0: no budget)")
        ->capture_default_str()
        ->transform(decimal());
    bench->add_flag("--pipelined-writes", bench_opts.pipelined_writes,
                    "Overlap each height's RocksDB write with the tree of the next");
    bench->add_option("--tree-threads", bench_opts.tree_threads,
                      "Threads updating a height's tree: 2 (the two subtrees under the root in "
                      "parallel) or 1")
        ->transform(decimal())
        ->check(CLI::Range(1, 2))
        ->capture_default_str();

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? kExitOk : kExitError;
    }

    auto c = load_config(cfg.file, cfg.flags);
    if (!c) return fail(c.error());
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("stateroot", sink));
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    spdlog::set_level(spdlog::level::from_str(c->log_level));  // one of its names (config.cpp)
    // RocksDB's messages are warnings and errors: shown as the log level shows ours.
    storage::set_store_log(spdlog::should_log(spdlog::level::warn)  ? storage::StoreLog::kWarnings
                           : spdlog::should_log(spdlog::level::err) ? storage::StoreLog::kErrors
                           : spdlog::should_log(spdlog::level::critical)
                               ? storage::StoreLog::kFatal
                               : storage::StoreLog::kNone);

    if (apply->parsed()) return cmd_apply(*c, file);
    if (root->parsed()) return cmd_root(*c, opt_height(root_h, height));
    if (get->parsed()) return cmd_get(*c, key, opt_height(get_h, height));
    if (prove->parsed()) return cmd_prove(*c, key, opt_height(prove_h, height));
    if (verify->parsed()) {
        return cmd_verify(*c, file, verify_root->count() > 0 ? std::optional(root_hex) : std::nullopt);
    }
    if (rollback->parsed()) return cmd_rollback(*c, rollback_to == "-1" ? std::nullopt : parse_decimal(rollback_to));
    if (info->parsed()) return cmd_info(*c);
    if (check->parsed()) return cmd_check(*c, opt_height(check_h, height));
    if (blockhash->parsed()) return cmd_blockhash(*c, opt_height(blockhash_h, height));
    if (index->parsed()) {
        index_opts.exit_at = opt_height(exit_at_opt, exit_at);
        index_opts.start_height = opt_height(start_opt, start_height);
        index_opts.prune_keep = opt_height(prune_opt, prune_keep);
        return cmd_index(*c, index_opts);
    }
    if (prune->parsed()) return cmd_prune(*c, keep);
    if (serve->parsed()) return cmd_serve(*c);
    if (snapshot->parsed()) return cmd_snapshot(*c, out);
    if (config->parsed()) return cmd_config_print(*c);
    if (bench->parsed()) return run_bench(bench_opts);
    return kExitError;
}

}  // namespace stateroot::tools

int main(int argc, char** argv) {
    // What throws is what the commands do not foresee: memory or a thread that cannot be
    // had. It ends the command like any other error; the database keeps its last height
    // (each height is one atomic write, and a write in flight ends before the engine is
    // closed).
    try {
        const int code = stateroot::tools::main(argc, argv);
        // An answer that never reached its reader (a full disk, a closed pipe) is no
        // success: said, and exit 2, rather than exit 0 with the output lost. A command
        // that failed has said why already.
        if (code != stateroot::tools::kExitError &&
            (std::fflush(stdout) != 0 || std::ferror(stdout))) {
            return stateroot::tools::fail(
                fmt::format("cannot write to standard output: {}", std::strerror(errno)));
        }
        return code;
    } catch (const std::bad_alloc&) {
        return stateroot::tools::fail("out of memory");
    } catch (const std::system_error& e) {
        return stateroot::tools::fail(fmt::format("system error: {}", e.what()));
    } catch (const std::exception& e) {
        return stateroot::tools::fail(fmt::format("unexpected error: {}", e.what()));
    }
}
