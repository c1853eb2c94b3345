// The state commands: apply, root, get, prove, verify, rollback, info, check, blockhash.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <malloc.h>

#include <filesystem>
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
    if (!b) return make_error(ErrorCode::kInvalidArgument, fmt::format("{} is not valid hex", what));
    return *b;
}

// An existing database opened for reading (beside a possible writer), a view of it, and
// the height a query is about (the tip if none was given).
struct Reading {
    std::unique_ptr<Engine> engine;
    std::optional<engine::View> view;
    std::uint64_t height = 0;
};

Result<std::unique_ptr<Engine>> open_for_reading(const Config& c) {
    if (Status s = require_db(c); !s) return std::unexpected(s.error());
    engine::EngineOptions o = engine_options(c);
    o.read_only = true;
    return Engine::open(c.db, o);
}

Result<Reading> read_at(const Config& c, std::optional<std::uint64_t> height) {
    auto e = open_for_reading(c);
    if (!e) return std::unexpected(e.error());
    auto v = (*e)->view();
    if (!v) return std::unexpected(v.error());
    Reading r{std::move(*e), std::move(*v), 0};
    if (height) {
        r.height = *height;
    } else if (r.view->tip()) {
        r.height = *r.view->tip();
    } else {
        return make_error(ErrorCode::kNotFound, "the database is empty");
    }
    return r;
}

}  // namespace

int cmd_apply(const Config& c, const std::string& file) {
    if (Status s = require_db(c); !s) return fail(s.error());
    // The input first: a mistyped file name creates no database.
    std::ifstream in;
    if (file != "-") {
        if (Status s = not_a_directory(file); !s) return fail(s.error());
        in.open(file, std::ios::binary);
        if (!in) return fail(fmt::format("cannot open {}", file));
    }
    const bool existed = path_exists(c.db);
    auto e = Engine::open(c.db, engine_options(c));
    if (!e) return fail(e.error());
    NewDatabase created(c.db, !existed, *e);
    auto print = [](const engine::CommitResult& r) { fmt::print("{} {}\n", r.height, r.root.hex()); };
    Status s;
    try {
        s = file == "-" ? indexer::apply_change_stream(**e, std::cin, "<stdin>", print)
                        : indexer::apply_change_stream(**e, in, file, print);
    } catch (const std::system_error& write_failed) {  // fmt::print's
        return fail(
            fmt::format("cannot write to standard output: {}; heights through {} are committed",
                        write_failed.code().message(),
                        (*e)->tip() ? std::to_string(*(*e)->tip()) : "none"));
    }
    if (!s) return fail(s.error());
    created.keep();
    return kExitOk;
}

int cmd_root(const Config& c, std::optional<std::uint64_t> height) {
    auto r = read_at(c, height);
    if (!r) return fail(r.error());
    auto root = r->view->root(r->height);
    if (!root) return fail(root.error());
    fmt::print("{}\n", root->hex());
    return kExitOk;
}

int cmd_get(const Config& c, const std::string& key_hex, std::optional<std::uint64_t> height) {
    auto key = parse_hex_arg(key_hex, "--key");
    if (!key) return fail(key.error());
    auto r = read_at(c, height);
    if (!r) return fail(r.error());
    auto value = r->view->get(*key, r->height);
    if (!value) return fail(value.error());
    if (!*value) {
        std::cerr << fmt::format("stateroot: key {} is absent at height {}\n", to_hex(*key), r->height);
        return kExitNo;
    }
    fmt::print("{}\n", to_hex(**value));
    return kExitOk;
}

int cmd_prove(const Config& c, const std::string& key_hex, std::optional<std::uint64_t> height) {
    auto key = parse_hex_arg(key_hex, "--key");
    if (!key) return fail(key.error());
    auto r = read_at(c, height);
    if (!r) return fail(r.error());
    auto proof = r->view->prove(*key, r->height);
    if (!proof) return fail(proof.error());
    fmt::print("{}\n", engine::to_json(*proof).dump(2));
    return kExitOk;
}

int cmd_verify(const Config& c, const std::string& file, const std::optional<std::string>& root_hex) {
    std::ifstream in(file == "-" ? "/dev/stdin" : file, std::ios::binary);
    if (!in) return fail(fmt::format("cannot open {}", file));
    std::string text;
    try {
        text.assign(std::istreambuf_iterator<char>(in), {});
    } catch (const std::ios_base::failure& e) {  // a directory, say
        return fail(fmt::format("cannot read {}: {}", file, e.code().message()));
    }
    auto proof = engine::parse_proof(text);
    if (!proof) return fail(with_context(proof.error(), file).error());
    // An empty --root is a caller's variable that was never set: taking the proof's own
    // root instead would call any self-consistent forgery valid.
    engine::Hash root = proof->root;
    if (root_hex) {
        auto r = parse_hex_arg(*root_hex, "--root");
        if (!r) return fail(r.error());
        if (r->size() != 32) return fail("--root must be 32 bytes");
        root = engine::Hash::from(*r);
    } else if (!c.db.empty()) {
        // The trusted root is the database's root at the proof's height.
        auto r = read_at(c, proof->height);
        if (!r) return fail(r.error());
        auto stored = r->view->root(proof->height);
        if (!stored) return fail(stored.error());
        root = *stored;
    }
    if (Status s = engine::verify(*proof, root); !s) {
        fmt::print("invalid: {}\n", s.error().message);
        return kExitNo;
    }
    fmt::print("valid\n");
    if (!root_hex && c.db.empty()) {
        std::cerr << "stateroot: checked against the proof's own root only; give --root or --db to "
                     "check it against a root you trust\n";
    }
    return kExitOk;
}

int cmd_rollback(const Config& c, std::optional<std::uint64_t> height) {
    if (Status s = require_db(c); !s) return fail(s.error());
    engine::EngineOptions options = engine_options(c);
    options.must_exist = true;
    auto e = Engine::open(c.db, options);
    if (!e) return fail(e.error());
    if (Status s = (*e)->rollback(height); !s) return fail(s.error());
    if ((*e)->tip()) {
        fmt::print("{} {}\n", *(*e)->tip(), (*e)->root().hex());
    } else {
        fmt::print("empty\n");
    }
    return kExitOk;
}

int cmd_blockhash(const Config& c, std::optional<std::uint64_t> height) {
    auto r = read_at(c, height);
    if (!r) return fail(r.error());
    auto rec = r->view->record(r->height);
    if (!rec) return fail(rec.error());
    if (!rec->block_hash) {
        std::cerr << fmt::format("stateroot: height {} has no block hash\n", r->height);
        return kExitNo;
    }
    fmt::print("{}\n", rec->block_hash->hex());
    return kExitOk;
}

int cmd_info(const Config& c) {
    auto e = open_for_reading(c);
    if (!e) return fail(e.error());
    const Engine& eng = **e;
    auto view = eng.view();
    if (!view) return fail(view.error());
    const auto opt = [](std::optional<std::uint64_t> v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
    nlohmann::json j{
        {"format_version", eng.format_version()},
        {"first", opt(eng.first())},
        {"tip", opt(eng.tip())},
        // Values, change lists and proofs are kept from here on (null: all).
        {"pruned", opt(view->pruned())},
        {"root", eng.tip() ? nlohmann::json(eng.root().hex()) : nlohmann::json(nullptr)},
        {"live_keys", eng.live_keys()},
        {"bytes_on_disk", (*e)->store().disk_bytes()}};
    fmt::print("{}\n", j.dump(2));
    return kExitOk;
}

int cmd_check(const Config& c, std::optional<std::uint64_t> height) {
    auto r = read_at(c, height);
    if (!r) return fail(r.error());
    auto stored = r->view->root(r->height);
    if (!stored) return fail(stored.error());
    auto recomputed = r->view->recompute_root(r->height);
    if (!recomputed) return fail(recomputed.error());
    if (*stored != *recomputed) {
        fmt::print("mismatch at height {}: stored root {}, recomputed {}\n", r->height, stored->hex(),
                   recomputed->hex());
        return kExitNo;
    }
    fmt::print("ok {} {}\n", r->height, stored->hex());
    return kExitOk;
}

int cmd_prune(const Config& c, std::uint64_t keep) {
    if (Status s = require_db(c); !s) return fail(s.error());
    if (keep == 0) return fail("--keep must be at least 1");
    engine::EngineOptions options = engine_options(c);
    options.must_exist = true;
    auto e = Engine::open(c.db, options);
    if (!e) return fail(e.error());
    Engine& eng = **e;
    if (!eng.tip()) return fail("the database is empty");
    const auto per_key = [&] {
        return eng.live_keys() ? static_cast<double>(eng.store().disk_bytes()) / static_cast<double>(eng.live_keys()) : 0.0;
    };
    if (Status s = eng.store().compact(); !s) return fail(s.error());
    const double before = per_key();
    const std::uint64_t first_kept = *eng.tip() + 1 > keep ? *eng.tip() + 1 - keep : 0;
    auto r = eng.prune(first_kept);
    if (!r) return fail(r.error());
    if (Status s = eng.store().compact(); !s) return fail(s.error());
    const double after = per_key();
    spdlog::info("removed {} value versions and {} tree nodes; {:.0f} -> {:.0f} bytes on disk per live key",
                 r->values_removed, r->nodes_removed, before, after);
    fmt::print("{} {}\n", r->first_kept, *eng.tip());
    return kExitOk;
}

int fail(const Error& error) { return fail(error.message); }

int fail(const std::string& message) {
    std::fflush(stdout);
    std::cerr << "stateroot: " << message << "\n";
    return kExitError;
}

engine::EngineOptions engine_options(const Config& c) {
    engine::EngineOptions o;
    if (c.cache_mb > 0) set_memory_budget(o, c.cache_mb);
    // Set on its own, the node cache's size wins over its share of the budget.
    if (c.node_cache_mb > 0) o.node_cache_mb = c.node_cache_mb;
    o.store.sync = c.sync;
    return o;
}

void set_memory_budget(engine::EngineOptions& options, std::uint64_t mb) {
    options.set_memory_budget_mb(mb);
    // glibc gives a block of at least M_MMAP_THRESHOLD pages of its own, returned when
    // it is freed, but raises the threshold (up to 32 MiB) whenever such a block is
    // freed. After the first heights, a height's batch and rows, RocksDB's 2 MiB
    // compaction read-ahead and its memtable blocks then come from the heaps and their
    // pages stay there. The threshold is per process: set here, by the process's owner.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
}

bool path_exists(const std::string& dir) {
    std::error_code ec;
    return std::filesystem::exists(dir, ec) || ec;  // unsure: taken as existing
}

NewDatabase::~NewDatabase() {
    if (!created_ || !engine_ || engine_->tip()) return;
    engine_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);  // at worst an empty database stays
}

Status not_a_directory(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_directory(path, ec)) return {};
    return make_error(ErrorCode::kInvalidArgument,
                      fmt::format("cannot read {}: {}", path,
                                  std::make_error_code(std::errc::is_a_directory).message()));
}

Status require_db(const Config& c) {
    if (!c.db.empty()) return {};
    return make_error(ErrorCode::kInvalidArgument, "--db is required (or STATEROOT_DB, or \"db\" in --config)");
}

}  // namespace stateroot::tools
