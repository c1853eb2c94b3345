#include "stateroot/engine/engine.hpp"

#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>

#include "stateroot/engine/root_builder.hpp"
#include "worker.hpp"

namespace stateroot::engine {

namespace fs = std::filesystem;

std::string describe_heights(std::optional<std::uint64_t> first, std::optional<std::uint64_t> tip) {
    if (!tip) return "the database is empty";
    if (*first == *tip) return fmt::format("only height {} exists", *tip);
    return fmt::format("heights {}..{} exist", *first, *tip);
}

namespace {

Bytes be64(std::uint64_t v) {
    Bytes b;
    put_be64(b, v);
    return b;
}

Result<std::optional<std::uint64_t>> read_meta_height(
    const storage::Store& store, std::string_view name,
    const std::shared_ptr<const storage::Snapshot>& snap) {
    auto v = store.get(schema::meta_key(name), snap);
    if (!v) return std::unexpected(v.error());
    if (!*v) return std::optional<std::uint64_t>();
    if ((*v)->size() != 8) {
        return make_error(ErrorCode::kCorruption, fmt::format("corrupt meta row \"{}\"", name));
    }
    return std::optional<std::uint64_t>(get_be64((*v)->data()));
}

Result<schema::HeightRecord> read_record(const storage::Store& store, std::uint64_t height,
                                         const std::shared_ptr<const storage::Snapshot>& snap) {
    auto v = store.get(schema::height_key(height), snap);
    if (!v) return std::unexpected(v.error());
    if (!*v) {
        return make_error(ErrorCode::kCorruption,
                          fmt::format("height record {} is missing", height));
    }
    return schema::decode_height_record(**v, height);
}

Result<std::vector<schema::ChangeEntry>> read_change_index(
    const storage::Store& store, std::uint64_t height,
    const std::shared_ptr<const storage::Snapshot>& snap) {
    auto row = store.get(schema::changes_key(height), snap);
    if (!row) return std::unexpected(row.error());
    if (!*row) {
        return make_error(ErrorCode::kCorruption,
                          fmt::format("change index of height {} is missing", height));
    }
    return schema::decode_change_index(**row, height);
}

// Whether `dir` holds only files RocksDB writes while it creates a database, before
// CURRENT: a creation a crash cut short, which opening again completes.
bool creation_cut_short(const std::string& dir) {
    std::error_code ec;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        const bool rocksdb = name == "LOCK" || name == "LOG" || name == "IDENTITY" ||
                             name.starts_with("LOG.old.") || name.starts_with("MANIFEST-") ||
                             name.ends_with(".dbtmp");
        if (!rocksdb || !entry.is_regular_file(ec)) return false;
    }
    return !ec;
}

std::unexpected<Error> read_only_error() {
    return make_error(ErrorCode::kInvalidArgument, "the database is open for reading only");
}
}  // namespace

// ---------------------------------------------------------------------------- Engine

storage::StoreOptions Engine::store_options(const EngineOptions& options) {
    storage::StoreOptions so = options.store;
    so.seek_prefix_length = schema::kValueSeekPrefix;
    so.rising_prefixes = schema::kRisingPrefixes;
    return so;
}

Result<std::unique_ptr<Engine>> Engine::open(const std::string& dir, const EngineOptions& options) {
    std::error_code ec;
    if (fs::is_directory(dir, ec) && !fs::is_empty(dir, ec) &&
        !fs::exists(fs::path(dir) / "CURRENT", ec) && !creation_cut_short(dir)) {
        return make_error(
            ErrorCode::kInvalidArgument,
            fmt::format("{} is not a stateroot database (it holds other files)", dir));
    }
    const bool read_only = options.read_only || !options.secondary_dir.empty();
    storage::StoreOptions so = store_options(options);
    so.create_if_missing = !options.must_exist && !read_only;
    so.read_only = options.read_only;
    so.secondary_dir = options.secondary_dir;
    auto store = storage::Store::open(dir, so);
    if (!store) return std::unexpected(store.error());

    std::unique_ptr<Engine> e(new Engine());
    e->store_ = std::move(*store);
    e->read_only_ = read_only;
    auto format = e->store_->get(schema::meta_key(schema::kMetaFormat));
    if (!format) return std::unexpected(format.error());
    if (*format) {
        auto version = schema::check_format(**format);
        if (!version) return with_context(version.error(), dir);
        if (!e->store_->missing_families().empty()) {
            return make_error(ErrorCode::kCorruption,
                              fmt::format("cannot open {}: it holds rows but has no column family {} "
                                          "(its creation was cut short and it was written to since)",
                                          dir, e->store_->missing_families().front()));
        }
        e->format_version_ = *version;
        if (*version < schema::kFormatVersion && !read_only) {
            storage::WriteBatch batch = e->store_->batch();
            batch.put(schema::meta_key(schema::kMetaFormat), schema::format_value());
            if (Status s = e->store_->write(batch); !s) return std::unexpected(s.error());
            e->format_version_ = schema::kFormatVersion;
        }
    } else {
        auto it = e->store_->iterator();
        it->seek({});
        if (it->valid() || read_only) {
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("{} is not a stateroot database (no format row)", dir));
        }
        storage::WriteBatch batch = e->store_->batch();
        batch.put(schema::meta_key(schema::kMetaFormat), schema::format_value());
        if (Status s = e->store_->write(batch); !s) return std::unexpected(s.error());
        e->format_version_ = schema::kFormatVersion;
    }
    e->node_cache_ = std::make_unique<NodeCache>(options.node_cache_mb << 20);
    e->nodes_ = std::make_unique<NodeReader>(*e->store_, nullptr, e->node_cache_.get());
    if (options.parallel_tree) {
        e->helper_nodes_ = std::make_unique<NodeReader>(*e->store_, nullptr, e->node_cache_.get());
    }
    e->tree_ = std::make_unique<Tree>(*e->nodes_, e->helper_nodes_.get());
    e->tree_->set_memory_budget(options.tree_memory_bytes);
    if (options.pipelined_writes && !read_only) e->writer_ = std::make_unique<Worker>("stateroot:write");
    e->pipeline_min_changes_ = options.pipeline_min_changes;
    if (Status s = e->load(); !s) return std::unexpected(s.error());
    return e;
}

void EngineOptions::set_memory_budget_mb(std::size_t mb) {
    // About four fifths of the budget (25/32) to what RocksDB and the tree hold; the
    // rest is room for what no cache bounds: a height's rows and batches in flight, the
    // allocator's slack, RocksDB's table readers and compactions.
    store.block_cache_mb = std::max<std::size_t>(1, mb / 4);
    store.write_buffer_mb = std::max<std::size_t>(1, mb / 32);
    node_cache_mb = std::max<std::size_t>(1, mb / 16);
    tree_memory_bytes = std::max<std::size_t>(1, mb * 3 / 8) << 20;
}

Engine::~Engine() = default;

Status Engine::settle() {
    return guarded([&] { return settle(nullptr); });
}

Status Engine::settle(Tree::Update* pending) {
    if (!writing_) return {};
    writer_->wait();
    writing_ = false;
    // Freed, not cleared: after a large height its capacity would stay with the process.
    in_flight_ = storage::WriteBatch();
    if (written_) {
        // The nodes of the height just written can go now; not while `pending`, built
        // on them, still refers to their slots.
        if (!pending) trim(kNoNode);
        return {};
    }
    const Error error = written_.error();
    written_ = {};
    // The tree, tip and counters had moved on to the height whose write failed: back
    // to the last height written.
    if (pending) tree_->abort(std::move(*pending));
    if (Status s = load(); !s) {
        return make_error(error.code, fmt::format("{}; then reading the last height back failed: {}",
                                                  error.message, s.error().message));
    }
    return std::unexpected(error);
}

Status Engine::load() {
    // Everything is read before anything is set: if a read fails, the engine refuses
    // writes from then on (writable()), since what it holds may be a height the
    // database does not have.
    auto fail = [this](const Error& e) {
        broken_ = Error{e.code, e.message + " (while bringing the engine back to the database's last height)"};
        return std::unexpected(e);
    };
    auto tip = read_meta_height(*store_, schema::kMetaTip, nullptr);
    if (!tip) return fail(tip.error());
    auto first = read_meta_height(*store_, schema::kMetaFirst, nullptr);
    if (!first) return fail(first.error());
    if (tip->has_value() != first->has_value()) {
        return fail({ErrorCode::kCorruption, "meta rows \"tip\" and \"first\" disagree"});
    }
    auto next_chunk = read_meta_height(*store_, schema::kMetaNextChunk, nullptr);
    if (!next_chunk) return fail(next_chunk.error());
    auto pruned = read_meta_height(*store_, schema::kMetaPruned, nullptr);
    if (!pruned) return fail(pruned.error());
    std::optional<schema::HeightRecord> rec;
    if (*tip) {
        auto r = read_record(*store_, **tip, nullptr);
        if (!r) return fail(r.error());
        rec = std::move(*r);
        // New heights write from next_chunk on: below the tip's chunks, they would
        // overwrite nodes of kept heights.
        if (next_chunk->value_or(0) < rec->end_chunk) {
            return fail({ErrorCode::kCorruption,
                         fmt::format("meta row \"next_chunk\" ({}) is below the chunks height {} "
                                     "wrote (up to {})",
                                     next_chunk->value_or(0), **tip, rec->end_chunk)});
        }
    }
    pruned_ = *pruned;
    tip_ = *tip;
    first_ = *first;
    next_chunk_ = next_chunk->value_or(0);
    tree_loaded_ = false;
    nodes_read_since_load_ = 0;
    live_keys_ = rec ? rec->live_keys : 0;
    tree_->reset(rec ? rec->root_id : kNoNode, rec ? rec->root : kZeroHash);
    return {};
}

Status Engine::writable() const {
    if (read_only_) return read_only_error();
    return intact();
}

Status Engine::intact() const {
    if (broken_) {
        return make_error(broken_->code, fmt::format("{}; reopen the database to go on", broken_->message));
    }
    return {};
}

Result<CommitResult> Engine::check_committed(const Changes& changes, const Hash& digest) {
    auto rec = read_record(*store_, changes.height, nullptr);
    if (!rec) return std::unexpected(rec.error());
    const bool hash_differs =
        changes.block_hash && rec->block_hash && *changes.block_hash != *rec->block_hash;
    if (rec->digest != digest || hash_differs) {
        const std::string what = hash_differs ? "block hash" : "changes";
        if (pruned_ && changes.height <= *pruned_) {
            return make_error(ErrorCode::kConflict,
                              fmt::format("height {} is already committed with different {}, and "
                                          "cannot be replaced: heights below {} are pruned",
                                          changes.height, what, *pruned_));
        }
        const std::string below = changes.height == 0 ? "-1" : std::to_string(changes.height - 1);
        return make_error(ErrorCode::kConflict,
                          fmt::format("height {} is already committed with different {}; to replace "
                                      "it, roll back first (stateroot rollback --height {})",
                                      changes.height, what, below));
    }
    CommitResult r;
    r.height = changes.height;
    r.root = rec->root;
    r.already_committed = true;
    r.live_keys = rec->live_keys;
    return r;
}

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
}
}  // namespace

void Engine::trim(NodeId unwritten) {
    tree_->trim(unwritten);
    // glibc keeps freed memory in its heaps, one per thread that allocated, for reuse:
    // at ten million keys under --cache-mb 256, about 120 MiB of them were free but
    // still resident after the measured heights. Asked, it gives back their free
    // pages; with large blocks mapped on their own (tools' set_memory_budget), the RSS
    // while measuring fell by a quarter. Asking takes a millisecond or more, so only
    // once the heights since have written kTrimAfterBytes: after every height of ten
    // thousand keys, where it did not show in the heights' times, but not after every
    // height of one key, which it made ten times slower (docs/performance.md).
    if (tree_->memory_budget() > 0 && written_since_trim_ >= kTrimAfterBytes) {
        malloc_trim(0);
        written_since_trim_ = 0;
    }
}

Status Engine::load_tree_if_due() {
    if (tree_loaded_ || tree_->memory_budget() > 0) return {};
    if (nodes_read_since_load_ * kLoadTreeAfter < 2 * live_keys_) return {};
    NodeReader reader(*store_), helper(*store_);
    ChunkPrefetcher prefetcher(*store_, kPrefetchThreads);
    if (Status s = tree_->load_all(reader, helper_nodes_ ? &helper : nullptr, &prefetcher); !s) return s;
    tree_loaded_ = true;
    node_cache_->clear();
    malloc_trim(0);
    return {};
}

template <typename F>
auto Engine::guarded(F&& f) -> decltype(f()) {
    std::string what;
    try {
        return f();
    } catch (const std::bad_alloc&) {
        what = "out of memory";
    } catch (const std::exception& e) {
        what = e.what();
    }
    // Thrown part-way, the call may have left the tree half-updated, so writes stop
    // here. What the call wrote is all there or not at all (one atomic write), and
    // reopening reads it back.
    broken_ = Error{ErrorCode::kIoError, what};
    return std::unexpected(*broken_);
}

Result<CommitResult> Engine::apply(const Changes& changes) {
    return guarded([&] { return apply_unguarded(changes); });
}

Status Engine::rollback(std::optional<std::uint64_t> height) {
    return guarded([&] { return rollback_unguarded(height); });
}

Result<PruneResult> Engine::prune(std::uint64_t first_kept) {
    return guarded([&] { return prune_unguarded(first_kept); });
}

Result<CommitResult> Engine::apply_unguarded(const Changes& changes) {
    if (Status s = writable(); !s) return std::unexpected(s.error());
    const auto t0 = Clock::now();
    auto normal = normalize(changes);
    if (!normal) return std::unexpected(normal.error());
    const std::uint64_t h = changes.height;
    if (tip_ && h <= *tip_) {
        if (Status s = settle(nullptr); !s) return std::unexpected(s.error());
        if (h < *first_) {
            return make_error(
                ErrorCode::kInvalidArgument,
                fmt::format("height {} is below the first committed height {}", h, *first_));
        }
        return check_committed(changes, changes_digest(*normal));
    }
    if (tip_ && h != *tip_ + 1) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("height gap: the next height is {}, got {}", *tip_ + 1, h));
    }
    if (h == ~std::uint64_t{0}) {
        return make_error(ErrorCode::kInvalidArgument,
                          "height 18446744073709551615 is out of range");
    }

    std::vector<TreeChange> tree_changes(normal->size());
    for (std::size_t i = 0; i < normal->size(); ++i) {
        const NormalChange& c = (*normal)[i];
        tree_changes[i] = {c.path, c.value == nullptr, c.value_hash};
    }
    const auto t1 = Clock::now();

    if (Status s = load_tree_if_due(); !s) return std::unexpected(s.error());
    auto update = tree_->apply(tree_changes, next_chunk_);
    if (!update) return std::unexpected(update.error());
    nodes_read_since_load_ += update->stats.node_reads;
    const auto t2 = Clock::now();

    // Room for the whole height up front: grown as rows arrive, the megabytes of a
    // large height's batch would be copied again at every doubling.
    constexpr std::size_t kRowFraming = 8;  // tag, column family, two lengths
    std::size_t reserve = update->record_bytes() + 10 * update->stale_ids.size() + 1024;
    for (const NormalChange& c : *normal) {
        reserve += schema::kValueKeySize + 1 + (c.value ? c.value->size() : 0) + kRowFraming +
                   c.key->size() + 4;  // and its entry in the change index
    }
    storage::WriteBatch batch = store_->batch(reserve);
    std::vector<schema::ChangeEntry> index(normal->size());
    for (std::size_t i = 0; i < normal->size(); ++i) {
        const NormalChange& c = (*normal)[i];
        index[i] = {c.value != nullptr, *c.key};
        schema::put_value_row(batch, c.path, h,
                              c.value ? std::optional<ByteView>(*c.value) : std::nullopt);
    }

    schema::HeightRecord rec;
    rec.root = update->root_hash;
    rec.root_id = update->root_id;
    rec.first_chunk = update->first_chunk;
    rec.end_chunk = update->end_chunk;
    rec.live_keys =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(live_keys_) + update->live_key_delta);
    rec.digest = changes_digest(*normal);
    rec.block_hash = changes.block_hash;
    rec.from_change_file = changes.from_change_file;

    batch.put(schema::changes_key(h), schema::encode_change_index(index));
    update->write_records(batch);
    if (!update->stale_ids.empty())
        batch.put(schema::stale_key(h), schema::encode_stale(update->stale_ids));
    batch.put(schema::height_key(h), schema::encode(rec));
    batch.put(schema::meta_key(schema::kMetaTip), be64(h));
    if (!first_) batch.put(schema::meta_key(schema::kMetaFirst), be64(h));
    if (rec.end_chunk != next_chunk_) {
        batch.put(schema::meta_key(schema::kMetaNextChunk), be64(rec.end_chunk));
    }
    const auto t3 = Clock::now();

    written_since_trim_ += batch.bytes();
    CommitResult r;
    r.height = h;
    r.root = rec.root;
    r.live_keys = rec.live_keys;
    r.tree = update->stats;
    r.rows = batch.rows();
    r.bytes = batch.bytes();
    r.prepare_s = seconds(t0, t1);
    r.tree_s = seconds(t1, t2);
    r.encode_s = seconds(t2, t3);
    // This height was built on the one in flight: it may go once that one is written.
    if (Status s = settle(&*update); !s) return std::unexpected(s.error());
    if (writer_ && normal->size() >= pipeline_min_changes_) {
        in_flight_ = std::move(batch);
        writing_ = true;
        // What the write throws (out of memory), settle() rethrows: RocksDB may be left
        // part-way through it, so it is not a failed write to go on from (guarded()).
        writer_->run([this, h] {
            written_ = store_->write(in_flight_);
            if (!written_) written_ = with_context(written_.error(), fmt::format("height {}", h));
        });
    } else if (Status s = store_->write(batch); !s) {
        tree_->abort(std::move(*update));
        return with_context(s.error(), fmt::format("height {}", h));
    }
    const auto t4 = Clock::now();
    r.write_s = seconds(t3, t4);
    tree_->commit(std::move(*update));
    // The records of a height still being written cannot be read back yet.
    trim(writing_ ? rec.first_chunk * schema::kChunkNodes : kNoNode);
    r.tree_s += seconds(t4, Clock::now());
    tip_ = h;
    if (!first_) first_ = h;
    next_chunk_ = rec.end_chunk;
    live_keys_ = rec.live_keys;
    return r;
}

Status Engine::rollback_unguarded(std::optional<std::uint64_t> height) {
    if (Status s = writable(); !s) return s;
    if (Status s = settle(nullptr); !s) return s;
    if (pruned_ && (!height || *height < *pruned_)) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("cannot roll back below height {}: older heights are pruned", *pruned_));
    }
    if (!tip_ || (height && *height >= *tip_)) return {};
    const bool to_empty = !height || *height < *first_;
    const std::uint64_t lowest = to_empty ? *first_ : *height + 1;
    storage::WriteBatch batch = store_->batch();
    for (std::uint64_t t = *tip_;; --t) {
        auto rec = read_record(*store_, t, nullptr);
        if (!rec) return std::unexpected(rec.error());
        auto index = read_change_index(*store_, t, nullptr);
        if (!index) return std::unexpected(index.error());
        for (const schema::ChangeEntry& e : *index) batch.del(schema::value_key(sha256(e.key), t));
        if (rec->end_chunk > rec->first_chunk) {
            batch.del_range(schema::node_chunk_key(rec->first_chunk), schema::node_chunk_key(rec->end_chunk));
        }
        batch.del(schema::changes_key(t));
        batch.del(schema::stale_key(t));
        batch.del(schema::height_key(t));
        if (t == lowest) break;
    }
    if (to_empty) {
        batch.del(schema::meta_key(schema::kMetaTip));
        batch.del(schema::meta_key(schema::kMetaFirst));
    } else {
        batch.put(schema::meta_key(schema::kMetaTip), be64(*height));
    }
    if (Status s = store_->write(batch); !s) return with_context(s.error(), "rollback");
    return load();
}

Result<PruneResult> Engine::prune_unguarded(std::uint64_t first_kept) {
    if (Status s = writable(); !s) return std::unexpected(s.error());
    if (Status s = settle(nullptr); !s) return std::unexpected(s.error());
    PruneResult result;
    if (!tip_) return result;
    const std::uint64_t kept = std::max(std::min(first_kept, *tip_), pruned_.value_or(*first_));
    result.first_kept = kept;
    if (kept != pruned_.value_or(*first_)) {
        // Readers stop at `kept` before anything they could read is deleted.
        storage::WriteBatch mark = store_->batch();
        mark.put(schema::meta_key(schema::kMetaPruned), be64(kept));
        if (Status s = store_->write(mark); !s) return with_context(s.error(), "prune");
        pruned_ = kept;
    }
    auto done = read_meta_height(*store_, schema::kMetaPrunedDone, nullptr);
    if (!done) return std::unexpected(done.error());

    // Each version is looked at once, through the change index of its height, so that a
    // key changed in every window costs what it wrote, not all its versions per window.
    // Below `start` a path has at most one version left: the one an earlier prune kept.
    const std::uint64_t start = done->value_or(*first_);
    storage::IteratorOptions io;
    io.same_prefix = true;
    constexpr std::uint64_t kWindow = 64;  // heights cleaned per write
    for (std::uint64_t h = start; h < kept;) {
        const std::uint64_t end = kept - h > kWindow ? h + kWindow : kept;  // h + kWindow may wrap
        storage::WriteBatch batch = store_->batch();
        std::map<std::uint64_t, std::vector<std::size_t>> dead;  // chunk -> record indices
        auto drop_stale = [&](std::uint64_t height) -> Status {
            auto row = store_->get(schema::stale_key(height));
            if (!row) return std::unexpected(row.error());
            if (!*row) return {};
            auto ids = schema::decode_stale(**row, height);
            if (!ids) return std::unexpected(ids.error());
            for (NodeId id : *ids) dead[id / schema::kChunkNodes].push_back(id % schema::kChunkNodes);
            batch.del(schema::stale_key(height));
            return {};
        };
        auto remove = [&](ByteView key) {
            batch.del(Bytes(key.begin(), key.end()));
            ++result.values_removed;
        };
        std::vector<std::pair<Hash, std::uint64_t>> versions;  // (path, height) changed here
        for (; h < end; ++h) {
            auto index = read_change_index(*store_, h, nullptr);
            if (!index) return std::unexpected(index.error());
            for (const schema::ChangeEntry& e : *index) versions.emplace_back(sha256(e.key), h);
            batch.del(schema::changes_key(h));
            if (Status s = drop_stale(h); !s) return std::unexpected(s.error());
        }
        std::sort(versions.begin(), versions.end());
        // Made after the previous window's write, so what that deleted below `start` is
        // not seen, deleted and counted again.
        auto it = store_->iterator(io);
        for (auto group = versions.begin(); group != versions.end();) {
            const Hash& path = group->first;
            const auto group_end =
                std::find_if(group, versions.end(), [&](const auto& v) { return v.first != path; });
            const Bytes seek = schema::value_key(path, kept);
            // The key keeps one version at or below `kept`: the latest, and not even that
            // if it is a tombstone, but for one at `kept` itself: later windows need it to
            // see that their versions are superseded (the next prune removes it).
            std::optional<std::uint64_t> live_latest;
            it->seek(seek);
            if (it->valid() && schema::same_path(it->key(), seek)) {
                auto row = schema::decode_value_row(it->value());
                if (!row) return with_context(row.error(), "prune");
                if (*row) live_latest = schema::value_key_height(it->key());
            }
            if (Status s = it->status(); !s) return std::unexpected(s.error());
            for (; group != group_end; ++group) {
                if (group->second == live_latest) continue;
                // Counted only if there: a prune by an older build removed versions past its
                // last window.
                const Bytes key = schema::value_key(path, group->second);
                auto row = store_->get(key);
                if (!row) return with_context(row.error(), "prune");
                if (*row) remove(key);
            }
            // What is below `start` is superseded by the versions changed here.
            if (start > *first_) {
                it->seek(schema::value_key(path, start - 1));
                for (; it->valid() && schema::same_path(it->key(), seek); it->next()) remove(it->key());
                if (Status s = it->status(); !s) return std::unexpected(s.error());
            }
        }
        if (h == kept) {
            if (Status s = drop_stale(kept); !s) return std::unexpected(s.error());
        }
        for (const auto& [chunk, indices] : dead) {
            auto row = store_->get(schema::node_chunk_key(chunk));
            if (!row) return std::unexpected(row.error());
            if (!*row) continue;
            auto left = remove_records(**row, indices);
            if (!left) return with_context(left.error(), fmt::format("chunk {}", chunk));
            *left ? batch.put(schema::node_chunk_key(chunk), **left) : batch.del(schema::node_chunk_key(chunk));
            result.nodes_removed += indices.size();
        }
        batch.put(schema::meta_key(schema::kMetaPrunedDone), be64(h));
        if (Status s = store_->write(batch); !s) return with_context(s.error(), "prune");
    }
    return result;
}

Status Engine::catch_up() {
    if (Status s = store_->catch_up(); !s) return s;
    return load();
}

Status Engine::checkpoint(const std::string& dir) {
    if (Status s = intact(); !s) return s;
    return guarded([&]() -> Status {
        if (Status s = settle(nullptr); !s) return s;
        return store_->checkpoint(dir);
    });
}

Status Engine::put_aux(const std::vector<std::pair<Bytes, std::optional<Bytes>>>& rows) {
    if (Status s = writable(); !s) return s;
    return guarded([&]() -> Status {
        if (Status s = settle(nullptr); !s) return s;
        storage::WriteBatch batch = store_->batch();
        for (const auto& [key, value] : rows) {
            value ? batch.put(schema::aux_key(key), *value) : batch.del(schema::aux_key(key));
        }
        if (Status s = store_->write(batch); !s) return with_context(s.error(), "indexer rows");
        return {};
    });
}

Result<View> Engine::view() const {
    View v(*store_, store_->snapshot(), node_cache_.get());
    auto tip = read_meta_height(*store_, schema::kMetaTip, v.snapshot_);
    if (!tip) return std::unexpected(tip.error());
    auto first = read_meta_height(*store_, schema::kMetaFirst, v.snapshot_);
    if (!first) return std::unexpected(first.error());
    auto pruned = read_meta_height(*store_, schema::kMetaPruned, v.snapshot_);
    if (!pruned) return std::unexpected(pruned.error());
    v.tip_ = *tip;
    v.first_ = *first;
    v.pruned_ = *pruned;
    return v;
}

// ------------------------------------------------------------------------------ View

View::View(const storage::Store& store, std::shared_ptr<const storage::Snapshot> snapshot, NodeCache* cache)
    : store_(store), snapshot_(std::move(snapshot)), nodes_(std::make_unique<NodeReader>(store, snapshot_, cache)) {}

Status View::check_height(std::uint64_t height) const {
    if (!tip_ || height < *first_ || height > *tip_) {
        return make_error(ErrorCode::kNotFound, fmt::format("height {} not found ({})", height,
                                                            describe_heights(first_, tip_)));
    }
    return {};
}

Status View::check_state(std::uint64_t height) const {
    if (Status s = check_height(height); !s) return s;
    if (pruned_ && height < *pruned_) {
        return make_error(ErrorCode::kNotFound,
                          fmt::format("height {} is pruned (values and proofs are kept for heights {}..{})",
                                      height, *pruned_, *tip_));
    }
    return {};
}

Result<schema::HeightRecord> View::record(std::uint64_t height) const {
    if (Status s = check_height(height); !s) return std::unexpected(s.error());
    return read_record(store_, height, snapshot_);
}

Result<Hash> View::root(std::uint64_t height) const {
    auto rec = record(height);
    if (!rec) return std::unexpected(rec.error());
    return rec->root;
}

Result<std::optional<Bytes>> View::get(ByteView key, std::uint64_t height) const {
    if (Status s = check_key_size(key); !s) return std::unexpected(s.error());
    if (Status s = check_state(height); !s) return std::unexpected(s.error());
    const Bytes seek = schema::value_key(sha256(key), height);
    storage::IteratorOptions io;
    io.snapshot = snapshot_;
    io.same_prefix = true;
    auto it = store_.iterator(io);
    it->seek(seek);
    if (!it->valid()) {
        if (Status s = it->status(); !s) return std::unexpected(s.error());
        return std::optional<Bytes>();
    }
    if (!schema::same_path(it->key(), seek)) return std::optional<Bytes>();
    auto row = schema::decode_value_row(it->value());
    if (!row) return with_context(row.error(), fmt::format("key {}", key_for_message(key)));
    if (!*row) return std::optional<Bytes>();
    return std::optional<Bytes>(Bytes((*row)->begin(), (*row)->end()));
}

Result<Proof> View::prove(ByteView key, std::uint64_t height) {
    if (Status s = check_key_size(key); !s) return std::unexpected(s.error());
    if (Status s = check_state(height); !s) return std::unexpected(s.error());
    auto rec = record(height);
    if (!rec) return std::unexpected(rec.error());
    Proof p;
    p.height = height;
    p.root = rec->root;
    p.key.assign(key.begin(), key.end());
    p.path = sha256(key);
    auto nodes = prove_path(*nodes_, rec->root_id, p.path);
    if (!nodes) return std::unexpected(nodes.error());
    if (nodes->value_hash) {
        auto value = get(key, height);
        if (!value) return std::unexpected(value.error());
        if (!*value || sha256(**value) != *nodes->value_hash) {
            return make_error(ErrorCode::kCorruption,
                              fmt::format("the tree and the values disagree on key {} at height {}",
                                          key_for_message(key), height));
        }
        p.value = std::move(**value);
    }
    p.side_nodes = std::move(nodes->side_nodes);
    p.non_membership_leaf = std::move(nodes->non_membership_leaf);
    p.sibling_data = std::move(nodes->sibling_data);
    return p;
}

Result<std::vector<StoredChange>> View::changes(std::uint64_t height) const {
    if (Status s = check_state(height); !s) return std::unexpected(s.error());
    auto index = read_change_index(store_, height, snapshot_);
    if (!index) return std::unexpected(index.error());
    std::vector<StoredChange> out;
    out.reserve(index->size());
    for (schema::ChangeEntry& e : *index) {
        StoredChange c{std::move(e.key), std::nullopt};
        if (e.put) {
            auto v = store_.get(schema::value_key(sha256(c.key), height), snapshot_);
            if (!v) return std::unexpected(v.error());
            const auto decoded =
                *v ? schema::decode_value_row(**v) : Result<std::optional<ByteView>>();
            if (!*v || !decoded || !*decoded) {
                return make_error(ErrorCode::kCorruption,
                                  fmt::format("value of key {} at height {} is missing",
                                              key_for_message(c.key), height));
            }
            c.value = Bytes((*decoded)->begin(), (*decoded)->end());
        }
        out.push_back(std::move(c));
    }
    return out;
}

Result<std::optional<Bytes>> View::aux(ByteView key) const {
    return store_.get(schema::aux_key(key), snapshot_);
}

Status View::scan_aux(ByteView prefix,
                      const std::function<void(ByteView key, ByteView value)>& fn) const {
    const Bytes start = schema::aux_key(prefix);
    storage::IteratorOptions io;
    io.snapshot = snapshot_;
    auto it = store_.iterator(io);
    for (it->seek(start); it->valid(); it->next()) {
        const ByteView k = it->key();
        if (k.size() < start.size() || !std::equal(start.begin(), start.end(), k.begin())) break;
        fn(k.subspan(1), it->value());
    }
    return it->status();
}

Result<Hash> View::recompute_root(std::uint64_t height) const {
    if (Status s = check_state(height); !s) return std::unexpected(s.error());
    storage::IteratorOptions io;
    io.snapshot = snapshot_;
    io.fill_cache = false;
    io.upper_bound = Bytes{static_cast<std::uint8_t>(schema::kValue + 1)};
    auto it = store_.iterator(io);
    RootBuilder builder;
    // Versions of a path come newest first; the first at or below `height` decides.
    bool have_path = false;
    bool decided = false;
    Hash path;
    for (it->seek(Bytes{schema::kValue}); it->valid(); it->next()) {
        const ByteView k = it->key();
        if (k.size() != schema::kValueKeySize) {
            return make_error(ErrorCode::kCorruption, "value key of the wrong size");
        }
        const Hash p = Hash::from(k.subspan(1, 32));
        if (!have_path || p != path) {
            path = p;
            have_path = true;
            decided = false;
        }
        if (decided || schema::value_key_height(k) > height) continue;
        decided = true;
        auto row = schema::decode_value_row(it->value());
        if (!row) return std::unexpected(row.error());
        if (*row) builder.add(path, sha256(**row));
    }
    if (Status s = it->status(); !s) return std::unexpected(s.error());
    return builder.finish();
}

}  // namespace stateroot::engine
