// stateroot: the command-line interface.
#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "stateroot/engine/proof.hpp"
#include "stateroot/indexer/change_file.hpp"

namespace stateroot::tools {
namespace {

using engine::Engine;

Result<Bytes> parse_hex_arg(const std::string& text, const char* what) {
    auto b = from_hex(text);
    if (!b)
        return make_error(ErrorCode::kInvalidArgument, fmt::format("{} is not valid hex", what));
    return *b;
}

std::optional<std::uint64_t> opt_height(const CLI::Option* opt, std::uint64_t value) {
    return opt->count() > 0 ? std::optional<std::uint64_t>(value) : std::nullopt;
}

int cmd_apply(const std::string& db, const std::string& file) {
    auto e = Engine::open(db);
    if (!e) return fail(e.error());
    auto print = [](const engine::CommitResult& r) {
        fmt::print("{} {}\n", r.height, r.root.hex());
    };
    Status s;
    if (file == "-") {
        s = indexer::apply_change_stream(**e, std::cin, "<stdin>", print);
    } else {
        std::ifstream in(file, std::ios::binary);
        if (!in) return fail(fmt::format("cannot open {}", file));
        s = indexer::apply_change_stream(**e, in, file, print);
    }
    std::fflush(stdout);
    return s ? kExitOk : fail(s.error());
}

int cmd_root(const std::string& db, std::optional<std::uint64_t> height) {
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    auto v = (*e)->view();
    if (!v) return fail(v.error());
    auto h = resolve_height(*v, height);
    if (!h) return fail(h.error());
    auto root = v->root(*h);
    if (!root) return fail(root.error());
    fmt::print("{}\n", root->hex());
    return kExitOk;
}

int cmd_get(const std::string& db, const std::string& key_hex,
            std::optional<std::uint64_t> height) {
    auto key = parse_hex_arg(key_hex, "--key");
    if (!key) return fail(key.error());
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    auto v = (*e)->view();
    if (!v) return fail(v.error());
    auto h = resolve_height(*v, height);
    if (!h) return fail(h.error());
    auto value = v->get(*key, *h);
    if (!value) return fail(value.error());
    if (!*value) {
        std::cerr << fmt::format("stateroot: key {} is absent at height {}\n", to_hex(*key), *h);
        return kExitNo;
    }
    fmt::print("{}\n", to_hex(**value));
    return kExitOk;
}

int cmd_prove(const std::string& db, const std::string& key_hex,
              std::optional<std::uint64_t> height) {
    auto key = parse_hex_arg(key_hex, "--key");
    if (!key) return fail(key.error());
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    auto v = (*e)->view();
    if (!v) return fail(v.error());
    auto h = resolve_height(*v, height);
    if (!h) return fail(h.error());
    auto proof = v->prove(*key, *h);
    if (!proof) return fail(proof.error());
    fmt::print("{}\n", engine::to_json(*proof).dump(2));
    return kExitOk;
}

int cmd_verify(const std::string& file, const std::string& root_hex, const std::string& db) {
    std::ifstream in(file == "-" ? "/dev/stdin" : file, std::ios::binary);
    if (!in) return fail(fmt::format("cannot open {}", file));
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
        return fail(fmt::format("{} is not a proof: not JSON", file));
    }
    auto proof = engine::proof_from_json(j);
    if (!proof) return fail(with_context(proof.error(), file).error());
    engine::Hash root = proof->root;
    if (!root_hex.empty()) {
        auto r = parse_hex_arg(root_hex, "--root");
        if (!r) return fail(r.error());
        if (r->size() != 32) return fail("--root must be 32 bytes");
        root = engine::Hash::from(*r);
    } else if (!db.empty()) {
        // The trusted root is the database's root at the proof's height.
        auto e = open_for_reading(db);
        if (!e) return fail(e.error());
        auto v = (*e)->view();
        if (!v) return fail(v.error());
        auto r = v->root(proof->height);
        if (!r) return fail(r.error());
        root = *r;
    }
    if (Status s = engine::verify(*proof, root); !s) {
        fmt::print("invalid: {}\n", s.error().message);
        return kExitNo;
    }
    fmt::print("valid\n");
    return kExitOk;
}

int cmd_rollback(const std::string& db, std::int64_t height) {
    engine::EngineOptions options;
    options.must_exist = true;
    auto e = Engine::open(db, options);
    if (!e) return fail(e.error());
    const auto target = height < 0 ? std::nullopt : std::optional<std::uint64_t>(height);
    if (Status s = (*e)->rollback(target); !s) return fail(s.error());
    if ((*e)->tip()) {
        fmt::print("{} {}\n", *(*e)->tip(), (*e)->root().hex());
    } else {
        fmt::print("empty\n");
    }
    return kExitOk;
}

int cmd_blockhash(const std::string& db, std::optional<std::uint64_t> height) {
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    auto v = (*e)->view();
    if (!v) return fail(v.error());
    auto h = resolve_height(*v, height);
    if (!h) return fail(h.error());
    auto rec = v->record(*h);
    if (!rec) return fail(rec.error());
    if (!rec->block_hash) {
        std::cerr << fmt::format("stateroot: height {} has no block hash\n", *h);
        return kExitNo;
    }
    fmt::print("{}\n", rec->block_hash->hex());
    return kExitOk;
}

int cmd_info(const std::string& db) {
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    const Engine& eng = **e;
    nlohmann::json j{
        {"format_version", engine::schema::kFormatVersion},
        {"first", eng.first() ? nlohmann::json(*eng.first()) : nlohmann::json(nullptr)},
        {"tip", eng.tip() ? nlohmann::json(*eng.tip()) : nlohmann::json(nullptr)},
        {"root", eng.tip() ? nlohmann::json(eng.root().hex()) : nlohmann::json(nullptr)},
        {"live_keys", eng.live_keys()},
        {"bytes_on_disk", (*e)->store().disk_bytes()}};
    fmt::print("{}\n", j.dump(2));
    return kExitOk;
}

int cmd_check(const std::string& db, std::optional<std::uint64_t> height) {
    auto e = open_for_reading(db);
    if (!e) return fail(e.error());
    auto v = (*e)->view();
    if (!v) return fail(v.error());
    auto h = resolve_height(*v, height);
    if (!h) return fail(h.error());
    auto stored = v->root(*h);
    if (!stored) return fail(stored.error());
    auto recomputed = v->recompute_root(*h);
    if (!recomputed) return fail(recomputed.error());
    if (*stored != *recomputed) {
        fmt::print("mismatch at height {}: stored root {}, recomputed {}\n", *h, stored->hex(),
                   recomputed->hex());
        return kExitNo;
    }
    fmt::print("ok {} {}\n", *h, stored->hex());
    return kExitOk;
}

}  // namespace

int fail(const Error& error) { return fail(error.message); }

int fail(const std::string& message) {
    std::fflush(stdout);
    std::cerr << "stateroot: " << message << "\n";
    return kExitError;
}

Result<std::unique_ptr<Engine>> open_for_reading(const std::string& db) {
    engine::EngineOptions options;
    options.read_only = true;
    return Engine::open(db, options);
}

Result<std::uint64_t> resolve_height(const engine::View& view,
                                     std::optional<std::uint64_t> height) {
    if (height) return *height;
    if (!view.tip()) return make_error(ErrorCode::kNotFound, "the database is empty");
    return *view.tip();
}

int main(int argc, char** argv) {
    CLI::App app{"stateroot: height-versioned state with a sparse Merkle state root per height"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "Show the help of every command");

    std::string db, file, key, root_hex;
    std::uint64_t height = 0;
    std::int64_t signed_height = 0;

    auto* apply = app.add_subcommand(
        "apply", "Apply a change file (JSON lines, one height each; - for stdin)");
    apply->add_option("--db", db, "Database directory (created if missing)")->required();
    apply->add_option("file", file, "Change file, or - for stdin")->required();

    auto* root = app.add_subcommand("root", "Print the state root at a height (default: the tip)");
    root->add_option("--db", db, "Database directory")->required();
    auto* root_h = root->add_option("--height", height, "Height");

    auto* get =
        app.add_subcommand("get", "Print the value of a key at a height (exit 1 if absent)");
    get->add_option("--db", db, "Database directory")->required();
    get->add_option("--key", key, "Key in hex")->required();
    auto* get_h = get->add_option("--height", height, "Height (default: the tip)");

    auto* prove =
        app.add_subcommand("prove", "Print an inclusion or exclusion proof of a key (JSON)");
    prove->add_option("--db", db, "Database directory")->required();
    prove->add_option("--key", key, "Key in hex")->required();
    auto* prove_h = prove->add_option("--height", height, "Height (default: the tip)");

    auto* verify = app.add_subcommand(
        "verify", "Verify a proof file: prints valid (exit 0) or invalid: <reason> (exit 1)");
    verify->add_option("--proof", file, "Proof file (JSON, as printed by prove; - for stdin)")
        ->required();
    verify->add_option("--root", root_hex,
                       "Trusted root to check against (default: the proof's own root)");
    verify->add_option("--db", db, "Check against this database's root at the proof's height");

    auto* rollback = app.add_subcommand(
        "rollback", "Remove every height above --height (-1 or below the first: all)");
    rollback->add_option("--db", db, "Database directory")->required();
    rollback->add_option("--height", signed_height, "Height to keep as the new tip")->required();

    auto* info =
        app.add_subcommand("info", "Print format version, tip, live keys and bytes on disk (JSON)");
    info->add_option("--db", db, "Database directory")->required();

    auto* check = app.add_subcommand(
        "check", "Recompute the root at a height from the stored values and compare");
    check->add_option("--db", db, "Database directory")->required();
    auto* check_h = check->add_option("--height", height, "Height (default: the tip)");

    auto* blockhash = app.add_subcommand(
        "blockhash", "Print the block hash stored for a height (display order; exit 1 if none)");
    blockhash->add_option("--db", db, "Database directory")->required();
    auto* blockhash_h = blockhash->add_option("--height", height, "Height (default: the tip)");

    IndexOptions index_opts;
    std::uint64_t exit_at = 0, start_height = 0;
    auto* index = app.add_subcommand(
        "index", "Replay blocks from files in height order along the best chain (reorg-safe)");
    index->add_option("--db", index_opts.db, "Database directory (created if missing)")->required();
    index->add_option("--blocks", index_opts.block_files,
                      "blk-framed or raw block files, in any order");
    index->add_option("--blocks-dir", index_opts.blocks_dir,
                      "A Bitcoin Core blocks directory (blk?????.dat, xor.dat)");
    index
        ->add_option("--network", index_opts.network,
                     "mainnet, testnet3, testnet4, signet or regtest")
        ->capture_default_str();
    index->add_option("--indexer", index_opts.indexer, "The indexer turning blocks into changes")
        ->capture_default_str();
    auto* exit_at_opt = index->add_option("--exit-at", exit_at, "Stop after this height");
    index
        ->add_option("--max-reorg-depth", index_opts.max_reorg_depth,
                     "Deepest rollback a reorg may make")
        ->capture_default_str();
    index->add_flag("--allow-missing-prevouts", index_opts.allow_missing_prevouts,
                    "Start mid-chain: skip spends of unknown outputs; on an empty database the "
                    "first block may have an unknown parent");
    auto* start_opt =
        index->add_option("--start-height", start_height,
                          "Height of that first block (default: its BIP34 coinbase height)");

    BenchOptions bench_opts;
    auto* bench = app.add_subcommand(
        "bench", "Measure commit throughput and latency against this machine's ceilings");
    bench->add_option("--keys", bench_opts.keys, "Keys preloaded before measuring (N)")
        ->capture_default_str();
    bench->add_option("--block-keys", bench_opts.block_keys, "Changed keys per height (K)")
        ->capture_default_str();
    bench->add_option("--blocks", bench_opts.blocks, "Heights measured (B)")->capture_default_str();
    bench->add_option("--db", bench_opts.db,
                      "Database directory (default: a temporary one, removed after)");
    bench->add_flag("--json", bench_opts.json,
                    "Print one JSON object with the results as the last line");
    bench->add_option("--seed", bench_opts.seed, "Random seed")->capture_default_str();
    bench
        ->add_option("--preload-batch", bench_opts.preload_batch,
                     "Keys per height while preloading")
        ->capture_default_str();
    bench->add_option("--cache-mb", bench_opts.cache_mb, "RocksDB block cache in MiB")
        ->capture_default_str();

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? kExitOk : kExitError;
    }

    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("stateroot", sink));
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

    if (apply->parsed()) return cmd_apply(db, file);
    if (root->parsed()) return cmd_root(db, opt_height(root_h, height));
    if (get->parsed()) return cmd_get(db, key, opt_height(get_h, height));
    if (prove->parsed()) return cmd_prove(db, key, opt_height(prove_h, height));
    if (verify->parsed()) return cmd_verify(file, root_hex, db);
    if (rollback->parsed()) return cmd_rollback(db, signed_height);
    if (info->parsed()) return cmd_info(db);
    if (check->parsed()) return cmd_check(db, opt_height(check_h, height));
    if (bench->parsed()) return run_bench(bench_opts);
    if (blockhash->parsed()) return cmd_blockhash(db, opt_height(blockhash_h, height));
    if (index->parsed()) {
        index_opts.exit_at = opt_height(exit_at_opt, exit_at);
        index_opts.start_height = opt_height(start_opt, start_height);
        return run_index_command(index_opts);
    }
    return kExitError;
}

}  // namespace stateroot::tools

int main(int argc, char** argv) { return stateroot::tools::main(argc, argv); }
