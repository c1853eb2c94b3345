// `stateroot index`: replays blocks from files into the state, with progress.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>

#include "cli.hpp"
#include "rpc.hpp"
#include "server.hpp"
#include "signals.hpp"
#include "stateroot/indexer/chain.hpp"
#include "stateroot/indexer/loop.hpp"

namespace stateroot::tools {
namespace {

using Clock = std::chrono::steady_clock;

std::string eta(double seconds) {
    if (seconds < 0 || seconds > 1e7) return "?";
    const auto s = static_cast<std::uint64_t>(seconds);
    return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

std::string progress_line(const indexer::LoopProgress& p, std::uint64_t first_height) {
    const double span = static_cast<double>(p.target - first_height + 1);
    const double done = static_cast<double>(p.height - first_height + 1);
    const double secs = std::max(p.seconds, 1e-9);
    const double bps = static_cast<double>(p.blocks) / secs;
    return fmt::format(
        "height {} / {} ({:.1f} %)  {:.0f} blocks/s  {:.0f} tx/s  {:.0f} keys/s  ETA {}", p.height,
        p.target, 100 * done / span, bps, static_cast<double>(p.txs) / secs,
        static_cast<double>(p.changed_keys) / secs,
        eta(bps > 0 ? static_cast<double>(p.target - p.height) / bps : -1));
}

// The blocks of the files given: blk-framed when a file starts with the network magic
// (or zero padding), else one raw block.
Result<std::vector<indexer::FoundBlock>> scan_inputs(const IndexOptions& o,
                                                     indexer::Network network) {
    if (!o.blocks_dir.empty()) return indexer::scan_blocks_dir(o.blocks_dir, network);
    std::vector<indexer::FoundBlock> all;
    const auto magic = indexer::network_magic(network);
    for (const std::string& file : o.block_files) {
        if (Status s = not_a_directory(file); !s) return std::unexpected(s.error());
        std::ifstream in(file, std::ios::binary);
        if (!in)
            return make_error(ErrorCode::kInvalidArgument, fmt::format("cannot read {}", file));
        std::array<std::uint8_t, 4> head{};
        in.read(reinterpret_cast<char*>(head.data()), 4);
        if (in.gcount() == 0) continue;  // no blocks, as in a file of zeros
        for (indexer::Network other :
             {indexer::Network::kMainnet, indexer::Network::kTestnet3, indexer::Network::kTestnet4,
              indexer::Network::kSignet, indexer::Network::kRegtest}) {
            if (other != network && in.gcount() == 4 && head == indexer::network_magic(other)) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format("{}: offset 0: magic {} is {}'s, not {}'s (use --network {})", file,
                                to_hex(head), indexer::network_name(other),
                                indexer::network_name(network), indexer::network_name(other)));
            }
        }
        bool framed = in.gcount() == 4 && (head == magic || head == std::array<std::uint8_t, 4>{});
        // A file of Bitcoin Core's blocks/ given by itself: obfuscated by the xor.dat
        // beside it (Core 28 on).
        std::optional<indexer::XorKey> key;
        bool xor_beside = false;
        if (!framed && in.gcount() == 4) {
            std::filesystem::path dir = std::filesystem::path(file).parent_path();
            if (dir.empty()) dir = ".";
            auto found_key = indexer::read_xor_key(dir.string());
            if (!found_key) return std::unexpected(found_key.error());
            std::error_code ec;
            xor_beside = std::filesystem::exists(dir / "xor.dat", ec);
            if (*found_key) {
                std::array<std::uint8_t, 4> plain{};
                for (std::size_t i = 0; i < 4; ++i) plain[i] = head[i] ^ (**found_key)[i];
                framed = plain == magic || plain == std::array<std::uint8_t, 4>{};
                if (framed) key = *found_key;
            }
        }
        if (framed) {
            auto found = indexer::scan_blk_file(file, network, key);
            if (!found) return std::unexpected(found.error());
            all.insert(all.end(), found->begin(), found->end());
        } else {
            auto found = indexer::scan_raw_file(file);
            if (!found) return std::unexpected(found.error());
            // Most often a blk file whose first magic is damaged, or one of an obfuscated
            // directory without its xor.dat: say so rather than call it a block without work.
            if (Status work = indexer::check_work(found->header, network); !work) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format(
                        "{}: offset 0: not a blk file of {} (it does not start with the "
                        "magic {}{}), and read as one raw block it has no valid proof of work "
                        "({})",
                        file, indexer::network_name(network), to_hex(magic),
                        xor_beside ? ", not even through the xor.dat beside it"
                                   : "; an obfuscated one needs the xor.dat of its "
                                     "directory beside it",
                        work.error().message));
            }
            all.push_back(*found);
        }
    }
    return all;
}

}  // namespace

int cmd_index(const Config& c, const IndexOptions& o) {
    // Before anything else, so that a signal at any moment takes the clean path.
    install_stop_handlers();
    if (Status s = require_db(c); !s) return fail(s.error());
    const auto network = indexer::parse_network(c.network);  // checked when read (config.cpp)
    if (!network) return fail(fmt::format("unknown network \"{}\"", c.network));
    if (o.block_files.empty() == o.blocks_dir.empty())
        return fail("give either --blocks FILE... or --blocks-dir DIR");
    if (o.prune_keep && *o.prune_keep == 0) return fail("--prune-keep must be at least 1");
    auto indexer = indexer::make_indexer(o.indexer, o.allow_missing_prevouts);
    if (!indexer) return fail(indexer.error());
    // The input first: a bad path or file creates no database.
    auto input = scan_inputs(o, *network);
    if (!input) return fail(input.error());
    const bool existed = path_exists(c.db);
    auto engine = engine::Engine::open(c.db, engine_options(c));
    if (!engine) return fail(engine.error());
    NewDatabase created(c.db, !existed, *engine);
    // A database started mid-chain lacks every output made below its first height: a
    // spend of one is no sign of a bad block, on every run, flag given or not.
    if (!o.allow_missing_prevouts && (*engine)->first().value_or(0) > 0) {
        indexer = indexer::make_indexer(o.indexer, true);
        if (!indexer) return fail(indexer.error());
    }

    // The query API, while indexing, when an address was configured.
    std::atomic<std::uint64_t> at_height{0}, target{0};
    std::atomic<bool> indexing{true};
    Metrics metrics;
    EngineSource source(**engine);
    Rpc rpc(source, metrics, [&] {
        return IndexerStatus{indexing ? "indexing" : "done", at_height.load(), target.load()};
    });
    std::unique_ptr<HttpServer> server;
    if (!c.rpc_addr.empty()) {
        server = std::make_unique<HttpServer>(rpc, server_options(c));
        auto port = server->start();
        if (!port) return fail(port.error());
        spdlog::info("serving on http://{}", format_addr(parse_addr(c.rpc_addr)->first, *port));
    }
    std::uint64_t keys_before = 0;
    double commit_before = 0;

    const bool tty = isatty(STDERR_FILENO) == 1;
    const std::uint64_t first_height = (*engine)->tip() ? *(*engine)->tip() + 1 : 0;
    // A terminal gets its progress line at once; a log, every 10 seconds.
    auto last_print = tty ? Clock::now() - std::chrono::hours(1) : Clock::now();
    indexer::LoopOptions lo;
    lo.exit_at = o.exit_at;
    lo.max_reorg_depth = c.max_reorg_depth;
    lo.allow_missing_prevouts = o.allow_missing_prevouts;
    lo.start_height = o.start_height;
    lo.network = *network;
    lo.stop_requested = stop_requested;
    lo.prune_keep = o.prune_keep;
    if (o.prune_keep) {
        const std::uint64_t kept = indexer::heights_kept(*o.prune_keep, c.max_reorg_depth);
        if (kept == std::numeric_limits<std::uint64_t>::max()) {
            spdlog::info("--prune-keep {}: nothing is pruned, since --max-reorg-depth is unlimited",
                         *o.prune_keep);
        } else if (kept != *o.prune_keep) {
            spdlog::info(
                "--prune-keep {}: keeping {} heights instead, --max-reorg-depth + 1, so that a "
                "reorg can always be rolled back",
                *o.prune_keep, kept);
        }
    }
    lo.on_passed_over = [](const std::string& what) { spdlog::warn("passed over: {}", what); };
    lo.on_progress = [&](const indexer::LoopProgress& p) {
        metrics.observe_commit(p.changed_keys - keys_before, p.commit_seconds - commit_before);
        keys_before = p.changed_keys;
        commit_before = p.commit_seconds;
        at_height = p.height;
        target = p.target;
        const auto now = Clock::now();
        if (tty && now - last_print > std::chrono::milliseconds(200)) {
            fmt::print(stderr, "\r{}\x1b[K", progress_line(p, std::min(first_height, p.height)));
            last_print = now;
        } else if (!tty && now - last_print > std::chrono::seconds(10)) {
            spdlog::info("{}", progress_line(p, std::min(first_height, p.height)));
            last_print = now;
        }
    };
    auto result = indexer::run_index(**engine, **indexer, *input, lo);
    indexing = false;
    if (server) server->stop();
    if (tty) fmt::print(stderr, "\r\x1b[K");
    if (!result) return fail(result.error());
    created.keep();

    const indexer::LoopProgress& t = result->totals;
    const double secs = std::max(t.seconds, 1e-9);
    if (result->rolled_back > 0) spdlog::info("reorg: rolled back {} heights", result->rolled_back);
    if (t.blocks == 0 && result->rolled_back == 0 && !result->stopped) {
        spdlog::info("nothing new to index");
    } else {
        spdlog::info(
            "{} {} blocks, {} transactions, {} changed keys in {:.2f} s ({:.0f} blocks/s, {:.0f} "
            "tx/s, {:.0f} keys/s)",
            result->stopped ? "stopped after" : "indexed", t.blocks, t.txs, t.changed_keys,
            t.seconds, static_cast<double>(t.blocks) / secs, static_cast<double>(t.txs) / secs,
            static_cast<double>(t.changed_keys) / secs);
    }
    if (t.blocks > 0) {
        auto rate = [](std::uint64_t n, double s) {
            return s > 0 ? static_cast<double>(n) / s : 0.0;
        };
        spdlog::info(
            "  parse {:.3f} s ({:.0f} blocks/s, {:.0f} tx/s); indexer {:.3f} s; commit {:.3f} s "
            "({:.0f} keys/s)",
            t.parse_seconds, rate(t.blocks, t.parse_seconds), rate(t.txs, t.parse_seconds),
            t.index_seconds, t.commit_seconds, rate(t.changed_keys, t.commit_seconds));
    }
    if (result->stopped) spdlog::info("stopped by a signal; run again to continue");
    if (!result->tip) {
        fmt::print("empty\n");
        return kExitOk;
    }
    fmt::print("{} {} {}\n", *result->tip, indexer::display_hex(result->block_hash),
               result->root.hex());
    return kExitOk;
}

}  // namespace stateroot::tools
