#include "stateroot/indexer/loop.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>

#include "stateroot/indexer/chain.hpp"

namespace stateroot::indexer {

namespace {

// Indexer rows of the block index (docs/schema.md).
constexpr std::string_view kHeaderPrefix = "blk/";  // ‖ hash -> seq (8 BE) ‖ header (80)
constexpr std::string_view kBodyPrefix = "body/";   // ‖ hash -> serialized block
constexpr std::string_view kBadPrefix = "bad/";     // ‖ hash -> why the block is invalid
constexpr std::size_t kHeadersPerWrite = 10'000;

Bytes row_key(std::string_view prefix, const Hash& hash) {
    Bytes k;
    k.reserve(prefix.size() + 32);
    k.insert(k.end(), prefix.begin(), prefix.end());
    k.insert(k.end(), hash.bytes.begin(), hash.bytes.end());
    return k;
}

// "file: offset N: block HASH", the way errors about a block start.
std::string where(const ChainEntry& e) {
    if (!e.location) return fmt::format("block {}", display_hex(e.header.hash));
    return fmt::format("{}: offset {}: block {}", e.location->file, e.location->offset,
                       display_hex(e.header.hash));
}

// The state as of `height` (none: the empty state) with the changes of the heights
// staged above it: the tip's, for the next block; the fork point's, for a branch's
// blocks indexed before the heights they replace are rolled back.
class StagedState final : public StateReader {
  public:
    StagedState(const engine::View& view, std::optional<std::uint64_t> height)
        : view_(view), height_(height) {}
    Result<std::optional<Bytes>> get(ByteView key) override {
        if (!staged_.empty()) {
            const auto it = staged_.find(Bytes(key.begin(), key.end()));
            if (it != staged_.end()) return it->second;
        }
        if (!height_) return std::optional<Bytes>();
        return view_.get(key, *height_);
    }
    void add(const engine::Changes& changes) {
        for (const auto& [key, value] : changes.puts) {
            staged_[key] = value.empty() ? std::nullopt : std::optional<Bytes>(value);
        }
        for (const Bytes& key : changes.deletes) staged_[key] = std::nullopt;
    }

  private:
    const engine::View& view_;
    std::optional<std::uint64_t> height_;
    std::map<Bytes, std::optional<Bytes>> staged_;
};

// The serialized block, from this run's input or the bodies kept in the database. Its
// callers name the block.
Result<Bytes> block_bytes(const ChainEntry& e, const engine::View& view) {
    if (e.location) return read_block(*e.location);
    if (e.body_stored) {
        auto b = view.aux(row_key(kBodyPrefix, e.header.hash));
        if (!b) return std::unexpected(b.error());
        if (*b) return std::move(**b);
    }
    return make_error(ErrorCode::kInvalidArgument,
                      "its body is needed but is neither in the input nor kept in the database");
}

// A block parsed, with the bytes it was parsed from.
struct ParsedBlock {
    Bytes bytes;
    Block block;
};

// The block from its first copy that parses: block_bytes(), then the input's other
// copies (a record torn by a crash may have a good copy elsewhere). With none, the
// first copy's error; an unreadable other copy is passed over.
Result<ParsedBlock> parse_good_copy(const ChainEntry& e, const engine::View& view) {
    auto bytes = block_bytes(e, view);
    if (!bytes) return std::unexpected(bytes.error());
    auto block = parse_block(*bytes);
    if (block) return ParsedBlock{std::move(*bytes), std::move(*block)};
    for (const BlockLocation& copy : e.other_copies) {
        auto again = read_block(copy);
        if (!again) continue;
        if (auto parsed = parse_block(*again)) return ParsedBlock{std::move(*again), std::move(*parsed)};
    }
    return std::unexpected(block.error());
}

// Loads the stored block index, then adds this run's input.
Result<ChainIndex> build_index(const engine::View& view, const std::vector<FoundBlock>& input,
                               std::vector<const FoundBlock*>& new_blocks) {
    ChainIndex index;
    Status bad;
    Status scanned = view.scan_aux(as_bytes(kHeaderPrefix), [&](ByteView key, ByteView value) {
        if (!bad) return;
        if (key.size() != kHeaderPrefix.size() + 32 || value.size() != 8 + kHeaderSize) {
            bad = make_error(ErrorCode::kCorruption, "corrupt block index row");
            return;
        }
        auto header = parse_header(value.subspan(8));
        if (!header) {
            bad = std::unexpected(header.error());
            return;
        }
        index.add(*header, std::nullopt, get_be64(value.data()));
    });
    if (!scanned) return std::unexpected(scanned.error());
    if (!bad) return std::unexpected(bad.error());
    scanned = view.scan_aux(as_bytes(kBodyPrefix), [&](ByteView key, ByteView) {
        if (key.size() != kBodyPrefix.size() + 32) return;
        if (ChainEntry* e = index.find(Hash::from(key.subspan(kBodyPrefix.size()))))
            e->body_stored = true;
    });
    if (!scanned) return std::unexpected(scanned.error());
    scanned = view.scan_aux(as_bytes(kBadPrefix), [&](ByteView key, ByteView) {
        if (key.size() != kBadPrefix.size() + 32) return;
        if (ChainEntry* e = index.find(Hash::from(key.subspan(kBadPrefix.size()))))
            e->invalid = true;
    });
    if (!scanned) return std::unexpected(scanned.error());
    for (const FoundBlock& fb : input) {
        bool added = false;
        index.add(fb.header, fb.location, index.next_seq(), &added);
        if (added) new_blocks.push_back(&fb);
    }
    return index;
}

// Prunes to the last heights_kept() heights.
Status prune_to(engine::Engine& engine, std::uint64_t prune_keep, std::uint64_t max_reorg_depth) {
    const std::uint64_t keep = heights_kept(prune_keep, max_reorg_depth);
    if (!engine.tip() || keep == 0) return {};
    const std::uint64_t tip = *engine.tip();
    auto r = engine.prune(tip + 1 > keep ? tip + 1 - keep : 0);
    if (!r) return std::unexpected(r.error());
    return {};
}

// A record passed over for want of proof of work, and why.
struct NoWork {
    const FoundBlock* record;
    std::string why;
    std::string describe() const {
        return fmt::format("{}: offset {}: block {}: {} (no valid proof of work)",
                           record->location.file, record->location.offset,
                           display_hex(record->header.hash), why);
    }
};

}  // namespace

std::uint64_t heights_kept(std::uint64_t prune_keep, std::uint64_t max_reorg_depth) {
    if (max_reorg_depth == std::numeric_limits<std::uint64_t>::max()) return max_reorg_depth;
    return std::max(prune_keep, max_reorg_depth + 1);
}

Result<LoopResult> run_index(engine::Engine& engine, BlockIndexer& indexer,
                             const std::vector<FoundBlock>& all_input, const LoopOptions& options) {
    using Clock = std::chrono::steady_clock;
    const auto started = Clock::now();
    // A record without valid proof of work is no block of any chain: a header torn by a
    // crash (Bitcoin Core's preallocated zeros over its end), or not a block at all. It
    // is passed over, so a good copy later in the input, or the blocks before it, still
    // count; an input of nothing else is refused.
    std::vector<NoWork> passed_over;
    for (const FoundBlock& fb : all_input) {
        if (Status s = check_work(fb.header, options.network); !s)
            passed_over.push_back({&fb, s.error().message});
    }
    if (!passed_over.empty() && passed_over.size() == all_input.size()) {
        return make_error(ErrorCode::kInvalidArgument, passed_over[0].describe());
    }
    std::vector<FoundBlock> with_work;  // a copy only when some are passed over
    if (!passed_over.empty()) {
        auto next = passed_over.begin();
        for (const FoundBlock& fb : all_input) {
            if (next != passed_over.end() && next->record == &fb) {
                ++next;
            } else {
                with_work.push_back(fb);
            }
        }
    }
    const std::vector<FoundBlock>& input = passed_over.empty() ? all_input : with_work;
    // For an error about a block whose parent the input lacks.
    const auto torn_parent_hint = [&]() -> std::string {
        if (passed_over.empty()) return {};
        return fmt::format(
            " ({} record(s) without valid proof of work passed over, the first at {}: offset {}; "
            "one may be the parent, torn)",
            passed_over.size(), passed_over[0].record->location.file,
            passed_over[0].record->location.offset);
    };
    auto view = engine.view();
    if (!view) return std::unexpected(view.error());

    std::vector<const FoundBlock*> new_blocks;
    auto built = build_index(*view, input, new_blocks);
    if (!built) return std::unexpected(built.error());
    ChainIndex& index = *built;

    // The root of the chain: the block at the first stored height, or on an empty
    // database a genesis block (or, mid-chain, the first block of the input).
    Hash root;
    std::uint64_t root_height = 0;
    if (engine.first()) {
        auto rec = view->record(*engine.first());
        if (!rec) return std::unexpected(rec.error());
        if (!rec->block_hash || rec->from_change_file) {
            return make_error(
                ErrorCode::kInvalidArgument,
                fmt::format(
                    "height {} {}: this database was not built from blocks", *engine.first(),
                    rec->block_hash ? "was written from a change file" : "has no block hash"));
        }
        root = reversed(*rec->block_hash);
        root_height = *engine.first();
        // Given again on a later run it must agree; another height would be ignored.
        if (options.start_height && *options.start_height != root_height) {
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("--start-height {} does not match the database, which starts "
                                          "at height {}",
                                          *options.start_height, root_height));
        }
        if (!index.find(root)) {
            return make_error(
                ErrorCode::kCorruption,
                fmt::format("the block index lacks the first block {}", display_hex(root)));
        }
    } else {
        const auto genesis = std::find_if(input.begin(), input.end(), [](const FoundBlock& fb) {
            return fb.header.prev == Hash{};
        });
        const FoundBlock* first = nullptr;
        if (genesis == input.end()) {
            // Mid-chain, the first block is the one whose parent the input lacks, whatever
            // the order of the input.
            for (const FoundBlock& fb : input) {
                if (index.find(fb.header.prev)) continue;
                if (first && first->header.hash != fb.header.hash) {
                    return make_error(
                        ErrorCode::kInvalidArgument,
                        fmt::format(
                            "the input starts in more than one place: blocks {} ({}: offset "
                            "{}) and {} ({}: offset {}) both have parents it lacks{}",
                            display_hex(first->header.hash), first->location.file,
                            first->location.offset, display_hex(fb.header.hash), fb.location.file,
                            fb.location.offset, torn_parent_hint()));
                }
                first = &fb;
            }
        }
        if (genesis != input.end()) {
            if (options.start_height && *options.start_height != 0) {
                return make_error(ErrorCode::kInvalidArgument,
                                  fmt::format("the input holds the genesis block, height 0: "
                                              "--start-height {} does not apply",
                                              *options.start_height));
            }
            root = genesis->header.hash;
        } else if (!first) {
            return LoopResult{};
        } else {
            if (!options.allow_missing_prevouts) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format(
                        "{}: offset {}: block {} has an unknown parent {} and the input has no "
                        "genesis block (use --allow-missing-prevouts to start mid-chain)",
                        first->location.file, first->location.offset,
                        display_hex(first->header.hash), display_hex(first->header.prev)));
            }
            root = first->header.hash;
            // Coinbases carry their height from version 2 on (BIP34); before, the first
            // push is anything (often the bits).
            std::optional<std::uint64_t> bip34;
            if (first->header.version >= 2) {
                auto bytes = read_block(first->location);
                if (!bytes) return std::unexpected(bytes.error());
                auto block = parse_block(*bytes);
                if (!block) {
                    return with_context(block.error(), fmt::format("{}: offset {}: block {}",
                                                                   first->location.file,
                                                                   first->location.offset,
                                                                   display_hex(first->header.hash)));
                }
                bip34 = bip34_height(block->txs[0]);
            }
            const std::uint64_t in_force = bip34_activation(options.network);
            if (options.start_height) {
                // Where BIP34 is in force the coinbase's height is the block's: another
                // would store every height, and the UTXO values' heights, shifted. In force
                // by the height given or by the coinbase's (a digit dropped from the
                // height would otherwise pass); below it, the first push may be anything.
                if (bip34 && *bip34 != *options.start_height &&
                    (*options.start_height >= in_force || *bip34 >= in_force)) {
                    return make_error(
                        ErrorCode::kInvalidArgument,
                        fmt::format("--start-height {} contradicts block {}, whose coinbase gives "
                                    "height {} (BIP34)",
                                    *options.start_height, display_hex(first->header.hash), *bip34));
                }
                root_height = *options.start_height;
            } else if (bip34) {
                root_height = *bip34;
            } else {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format("block {} has no BIP34 height in its coinbase: give --start-height",
                                display_hex(first->header.hash)));
            }
            // Heights are 64-bit: the input's blocks must fit above the first.
            if (root_height > std::numeric_limits<std::uint64_t>::max() - input.size()) {
                return make_error(ErrorCode::kInvalidArgument,
                                  fmt::format("start height {} leaves no room for the input's {} "
                                              "blocks above it",
                                              root_height, input.size()));
            }
            // The first block is the one whose parent the input lacks: with a record passed
            // over, that may be its child. Unless BIP34 vouches for its height, every
            // height would then be stored one too high.
            if (!passed_over.empty() &&
                !(bip34 && *bip34 == root_height && root_height >= in_force)) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format(
                        "{}: the input starts mid-chain and this record may be its first "
                        "block, torn, which would leave the height of block {} unsure; nothing "
                        "was stored",
                        passed_over[0].describe(), display_hex(first->header.hash)));
            }
        }
    }
    if (options.on_passed_over) {
        for (const NoWork& n : passed_over) options.on_passed_over(n.describe());
    }
    index.connect(root, root_height);
    for (const ChainEntry* e : index.unconnected()) {
        if (e->location && e->header.prev == Hash{}) {
            return make_error(
                ErrorCode::kInvalidArgument,
                fmt::format(
                    "{}: offset {}: block {} is a genesis block, but this chain starts from "
                    "block {}: blocks of another network or chain?",
                    e->location->file, e->location->offset, display_hex(e->header.hash),
                    display_hex(root)));
        }
        if (e->location) {
            return make_error(
                ErrorCode::kInvalidArgument,
                fmt::format("{}: offset {}: block {} has an unknown parent {}{}", e->location->file,
                            e->location->offset, display_hex(e->header.hash),
                            display_hex(e->header.prev), torn_parent_hint()));
        }
    }

    // Remember every new header before changing any state, so a branch seen now can
    // win in a later run.
    std::vector<std::pair<Bytes, std::optional<Bytes>>> rows;
    for (std::size_t i = 0; i < new_blocks.size(); ++i) {
        const FoundBlock& fb = *new_blocks[i];
        Bytes value;
        put_be64(value, index.find(fb.header.hash)->seq);
        auto raw =
            read_block({fb.location.file, fb.location.offset, kHeaderSize, fb.location.xor_key});
        if (!raw) return std::unexpected(raw.error());
        value.insert(value.end(), raw->begin(), raw->end());
        rows.emplace_back(row_key(kHeaderPrefix, fb.header.hash), std::move(value));
        if (rows.size() == kHeadersPerWrite || i + 1 == new_blocks.size()) {
            if (Status s = engine.put_aux(rows); !s) return std::unexpected(s.error());
            rows.clear();
        }
    }

    LoopResult result;
    const ChainEntry* best = index.best();
    if (!best) return result;
    const std::vector<const ChainEntry*> path = ChainIndex::path_to(*best);
    const std::uint64_t best_height = *best->height;
    auto on_path = [&](std::uint64_t h) { return path[h - root_height]; };
    result.target = options.exit_at ? std::min(best_height, *options.exit_at) : best_height;

    // Keep the bodies a reorg could need: blocks of this input within max_reorg_depth of
    // the best tip, of every branch, before any height changes. A reorg refused or killed
    // part way then needs no file of this run again.
    auto near_tip = [&](std::uint64_t h) {
        return h >= best_height || best_height - h <= options.max_reorg_depth;
    };
    // Of several copies, one that parses is kept: a corrupt one kept would stand in for
    // the good copy a later run may not have. A single copy is kept as it is, unparsed
    // (it is parsed when applied): kept corrupt, it fails later as it would now.
    for (const FoundBlock& fb : input) {
        ChainEntry* e = index.find(fb.header.hash);
        if (!e->height || !near_tip(*e->height) || e->body_stored) continue;
        e->body_stored = true;  // this copy or another of this input (or none that parses)
        Bytes body;
        if (e->other_copies.empty()) {
            auto bytes = read_block(fb.location);
            if (!bytes) return std::unexpected(bytes.error());
            body = std::move(*bytes);
        } else if (auto parsed = parse_good_copy(*e, *view)) {
            body = std::move(parsed->bytes);
        } else {
            continue;
        }
        if (Status s = engine.put_aux({{row_key(kBodyPrefix, fb.header.hash), std::move(body)}}); !s) {
            return std::unexpected(s.error());
        }
    }

    // A block of the best chain read and turned into its height's changes. A failure is
    // the block's own fault (`*bad`: the indexer refuses a body that matches its header)
    // or not: its body is missing, cannot be read, or does not match its header (a
    // corrupt copy, which another copy of the block may mend).
    struct Prepared {
        std::size_t txs = 0;
        engine::Changes changes;
        double parse_seconds = 0, index_seconds = 0;
    };
    auto prepare = [&](const ChainEntry& e, std::uint64_t h, const engine::View& at,
                       StateReader& state, bool* bad) -> Result<Prepared> {
        *bad = false;
        const auto t0 = Clock::now();
        Prepared p;
        auto parsed = parse_good_copy(e, at);
        if (!parsed) return with_context(parsed.error(), fmt::format("{} (height {})", where(e), h));
        const auto t1 = Clock::now();
        auto changes = indexer.changes(parsed->block, h, state);
        *bad = !changes && changes.error().code == ErrorCode::kInvalidArgument;
        if (!changes)
            return with_context(changes.error(), fmt::format("{} (height {})", where(e), h));
        p.changes = std::move(*changes);
        p.changes.block_hash = reversed(e.header.hash);
        p.txs = parsed->block.txs.size();
        p.parse_seconds = std::chrono::duration<double>(t1 - t0).count();
        p.index_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
        return p;
    };
    LoopProgress& progress = result.totals;
    progress.target = result.target;
    auto commit = [&](const ChainEntry& e, std::uint64_t h, Prepared& p) -> Status {
        const auto t0 = Clock::now();
        auto committed = engine.apply(p.changes);
        if (!committed)
            return with_context(committed.error(), fmt::format("{} (height {})", where(e), h));
        progress.parse_seconds += p.parse_seconds;
        progress.index_seconds += p.index_seconds;
        progress.commit_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
        ++progress.blocks;
        progress.txs += p.txs;
        progress.changed_keys += p.changes.puts.size() + p.changes.deletes.size();
        progress.height = h;
        progress.seconds = std::chrono::duration<double>(Clock::now() - started).count();
        if (options.on_progress) options.on_progress(progress);
        if (options.prune_keep && (h % 64 == 0 || h == result.target)) {
            if (Status s = prune_to(engine, *options.prune_keep, options.max_reorg_depth); !s)
                return s;
        }
        return {};
    };

    // A block the indexer refuses is marked, so that the next run's fork choice passes
    // it by instead of failing on it again.
    auto mark_bad = [&](const ChainEntry& e, const std::string& why) -> Status {
        return engine.put_aux({{row_key(kBadPrefix, e.header.hash), Bytes(why.begin(), why.end())}});
    };

    // Where the best chain leaves the stored one.
    std::optional<std::uint64_t> fork;
    if (engine.tip()) {
        const ChainEntry* stored_tip = nullptr;
        for (std::uint64_t h = *engine.tip();; --h) {
            auto rec = view->record(h);
            if (!rec) return std::unexpected(rec.error());
            // A height written by `stateroot apply` is no block of any branch, even with a
            // block hash: building on it would take its changes for the block's, and
            // rolling it back as a losing one would delete what someone else wrote.
            if (!rec->block_hash || rec->from_change_file) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format("height {} {}; roll it back first to index blocks after it "
                                "(stateroot rollback --height {})",
                                h,
                                rec->block_hash
                                    ? "was written from a change file, not from blocks"
                                    : "has no block hash: it was not written from blocks",
                                h - 1));
            }
            if (h == *engine.tip()) stored_tip = index.find(reversed(*rec->block_hash));
            if (h <= best_height && reversed(*rec->block_hash) == on_path(h)->header.hash) {
                fork = h;
                break;
            }
            if (h == root_height) break;
        }
        if (!fork) {
            return make_error(ErrorCode::kCorruption,
                              "the stored chain does not start at the block index's root");
        }
        if (*fork < *engine.tip()) {
            const std::uint64_t depth = *engine.tip() - *fork;
            if (depth > options.max_reorg_depth) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format(
                        "the best chain ({} at height {}) leaves the stored chain at height {}: a "
                        "reorg of depth {} exceeds --max-reorg-depth {}; nothing was changed",
                        display_hex(best->header.hash), best_height, *fork + 1, depth,
                        options.max_reorg_depth));
            }
            // The first height where the best chain wins over the stored one by the fork
            // choice's order (more work, or as much and seen first). A reorg that ends
            // below it would leave a chain that loses to the one the database had.
            const auto wins = [&](const ChainEntry& e) {
                if (!stored_tip || !stored_tip->height) return true;
                const auto order = e.chain_work <=> stored_tip->chain_work;
                return order > 0 || (order == 0 && e.seq < stored_tip->seq);
            };
            std::uint64_t overtake = *fork + 1;
            while (overtake < best_height && !wins(*on_path(overtake))) ++overtake;
            if (overtake > result.target) {
                return make_error(
                    ErrorCode::kInvalidArgument,
                    fmt::format("the best chain ({} at height {}) leaves the stored chain at height "
                                "{} and wins over it from height {}, above --exit-at {}: a reorg "
                                "ending there would leave a losing chain; nothing was changed",
                                display_hex(best->header.hash), best_height, *fork + 1, overtake,
                                result.target));
            }
            // Before rolling anything back, the blocks that take the place of the heights
            // undone, and those up to where the new chain wins, are read and indexed
            // against the state at the fork, so that a bad or missing block leaves the
            // stored chain as it was. A bad one is marked, so that the next run's fork
            // choice passes it by.
            const std::uint64_t staged_to = std::max(overtake, std::min(result.target, *engine.tip()));
            std::vector<Prepared> staged;
            StagedState state(*view, *fork);
            for (std::uint64_t h = *fork + 1; h <= staged_to; ++h) {
                bool bad = false;
                auto p = prepare(*on_path(h), h, *view, state, &bad);
                if (p) {
                    auto normal = engine::normalize(p->changes);
                    bad = !normal;
                    if (!normal) {
                        p = with_context(normal.error(),
                                         fmt::format("{} (height {})", where(*on_path(h)), h));
                    }
                }
                if (!p) {
                    const std::string& why = p.error().message;
                    if (bad) {
                        if (Status s = mark_bad(*on_path(h), why); !s) return std::unexpected(s.error());
                    }
                    return make_error(
                        p.error().code,
                        fmt::format("{}; the reorg to {} was not made{}", why,
                                    display_hex(best->header.hash),
                                    bad ? " and the block is marked invalid" : ""));
                }
                state.add(p->changes);
                staged.push_back(std::move(*p));
            }
            if (Status s = engine.rollback(*fork); !s) return std::unexpected(s.error());
            result.rolled_back = depth;
            for (Prepared& p : staged) {
                const std::uint64_t h = *engine.tip() + 1;
                if (Status s = commit(*on_path(h), h, p); !s) return std::unexpected(s.error());
            }
        }
    }

    for (std::uint64_t h = engine.tip() ? *engine.tip() + 1 : root_height; h <= result.target;
         ++h) {
        if (options.stop_requested && options.stop_requested()) {
            result.stopped = true;
            break;
        }
        auto fresh = engine.view();
        if (!fresh) return std::unexpected(fresh.error());
        StagedState state(*fresh, fresh->tip());
        bool bad = false;
        auto p = prepare(*on_path(h), h, *fresh, state, &bad);
        if (!p) {
            if (!bad) return std::unexpected(p.error());
            if (Status s = mark_bad(*on_path(h), p.error().message); !s) return std::unexpected(s.error());
            return make_error(p.error().code, p.error().message + "; the block is marked invalid");
        }
        if (Status s = commit(*on_path(h), h, *p); !s) return std::unexpected(s.error());
    }

    // Bodies deeper than max_reorg_depth below the tip can no longer be needed.
    if (engine.tip()) {
        auto after = engine.view();
        if (!after) return std::unexpected(after.error());
        std::vector<std::pair<Bytes, std::optional<Bytes>>> stale;
        Status scanned = after->scan_aux(as_bytes(kBodyPrefix), [&](ByteView key, ByteView) {
            const ChainEntry* e = key.size() == kBodyPrefix.size() + 32
                                      ? index.find(Hash::from(key.subspan(kBodyPrefix.size())))
                                      : nullptr;
            if (!e || !e->height ||
                (*e->height < *engine.tip() && *engine.tip() - *e->height > options.max_reorg_depth)) {
                stale.emplace_back(Bytes(key.begin(), key.end()), std::nullopt);
            }
        });
        if (!scanned) return std::unexpected(scanned.error());
        if (!stale.empty()) {
            if (Status s = engine.put_aux(stale); !s) return std::unexpected(s.error());
        }
        auto rec = after->record(*engine.tip());
        if (!rec) return std::unexpected(rec.error());
        result.tip = engine.tip();
        result.root = engine.root();
        result.block_hash = reversed(rec->block_hash.value_or(Hash{}));
    }
    progress.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    return result;
}

}  // namespace stateroot::indexer
