#include "stateroot/engine/node_store.hpp"

#include <pthread.h>

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <exception>
#include <list>
#include <mutex>
#include <unordered_map>

namespace stateroot::engine {

namespace {
constexpr std::uint8_t kLeafRecord = 0;
constexpr std::uint8_t kBranchRecord = 1;
}  // namespace

ChunkWriter::ChunkWriter(std::uint64_t first_chunk) : first_chunk_(first_chunk) {}

std::uint64_t ChunkWriter::end_chunk() const { return first_chunk_ + chunks_.size(); }

void ChunkWriter::begin_record() {
    if (count_ % schema::kChunkNodes == 0) {
        // Room for a chunk of branches, most of what a chunk holds, from the start.
        constexpr std::size_t kBranchBytes = 40;
        chunks_.emplace_back();
        chunks_.back().offsets.reserve(schema::kChunkNodes);
        chunks_.back().records.reserve(schema::kChunkNodes * kBranchBytes);
    }
    Chunk& c = chunks_.back();
    c.offsets.push_back(static_cast<std::uint16_t>(c.records.size()));
}

namespace {
constexpr std::uint16_t kHole = 0xffff;  // offset of a record removed by pruning
}  // namespace

NodeId ChunkWriter::add_leaf(const Hash& path, const Hash& value_hash) {
    const NodeId id = next_id();
    begin_record();
    Bytes& r = chunks_.back().records;
    r.push_back(kLeafRecord);
    r.insert(r.end(), path.bytes.begin(), path.bytes.end());
    r.insert(r.end(), value_hash.bytes.begin(), value_hash.bytes.end());
    ++count_;
    return id;
}

// A branch record: tag, split depth, top hash, then the children.
constexpr std::size_t kBranchHashOffset = 2;

NodeId ChunkWriter::add_branch(int depth, const Hash& top, NodeId left, NodeId right) {
    const NodeId id = next_id();
    begin_record();
    Bytes& r = chunks_.back().records;
    r.push_back(kBranchRecord);
    r.push_back(static_cast<std::uint8_t>(depth));
    assert(r.size() - chunks_.back().offsets.back() == kBranchHashOffset);
    r.insert(r.end(), top.bytes.begin(), top.bytes.end());
    // Children are always written before their parents, so the deltas are positive.
    put_varint(r, id - left);
    put_varint(r, id - right);
    ++count_;
    return id;
}

void ChunkWriter::set_branch_hash(NodeId id, const Hash& top) {
    const std::size_t i = id - first_chunk_ * schema::kChunkNodes;
    assert(i < count_);
    Chunk& c = chunks_[i / schema::kChunkNodes];
    std::uint8_t* record = c.records.data() + c.offsets[i % schema::kChunkNodes];
    assert(*record == kBranchRecord);
    std::memcpy(record + kBranchHashOffset, top.data(), 32);
}

void ChunkWriter::write_to(storage::WriteBatch& batch) const {
    // The row is the header and the records, which the batch copies in one go.
    Bytes header;
    for (std::size_t i = 0; i < chunks_.size(); ++i) {
        const Chunk& c = chunks_[i];
        header.clear();
        header.reserve(header_bytes(c));
        header.push_back(static_cast<std::uint8_t>(c.offsets.size() >> 8));
        header.push_back(static_cast<std::uint8_t>(c.offsets.size()));
        for (std::uint16_t off : c.offsets) {
            header.push_back(static_cast<std::uint8_t>(off >> 8));
            header.push_back(static_cast<std::uint8_t>(off));
        }
        const ByteView row[2] = {header, c.records};
        batch.put(schema::node_chunk_key(first_chunk_ + i), row);
    }
}

std::size_t ChunkWriter::row_bytes() const {
    std::size_t n = 0;
    for (const Chunk& c : chunks_) {
        n += schema::kNodeChunkKeySize + header_bytes(c) + c.records.size();
    }
    return n;
}

void ChunkWriter::clear() {
    chunks_.clear();
    count_ = 0;
}

struct NodeCache::Shard {
    std::mutex mu;
    std::list<NodeId> order;  // most recently used first
    struct Entry {
        NodeRecord record;
        std::list<NodeId>::iterator pos;
    };
    std::unordered_map<NodeId, Entry> entries;
};

NodeCache::NodeCache(std::size_t capacity_bytes)
    : shards_(std::make_unique<Shard[]>(kShards)),
      // A record with its map and list entries takes about 200 bytes.
      shard_capacity_(std::max<std::size_t>(1, capacity_bytes / 200 / kShards)) {}

NodeCache::~NodeCache() = default;

std::optional<NodeRecord> NodeCache::get(NodeId id) {
    Shard& s = shards_[id % kShards];
    std::lock_guard lock(s.mu);
    const auto it = s.entries.find(id);
    if (it == s.entries.end()) return std::nullopt;
    s.order.splice(s.order.begin(), s.order, it->second.pos);
    return it->second.record;
}

void NodeCache::put(NodeId id, const NodeRecord& record) {
    Shard& s = shards_[id % kShards];
    std::lock_guard lock(s.mu);
    if (s.entries.count(id) > 0) return;
    s.order.push_front(id);
    s.entries.emplace(id, Shard::Entry{record, s.order.begin()});
    if (s.entries.size() > shard_capacity_) {
        s.entries.erase(s.order.back());
        s.order.pop_back();
    }
}

void NodeCache::clear() {
    for (std::size_t i = 0; i < kShards; ++i) {
        Shard& s = shards_[i];
        std::lock_guard lock(s.mu);
        std::unordered_map<NodeId, Shard::Entry>().swap(s.entries);
        s.order.clear();
    }
}

Result<std::optional<Bytes>> remove_records(ByteView c, const std::vector<std::size_t>& indices) {
    if (c.size() < 2) return make_error(ErrorCode::kCorruption, "corrupt node chunk");
    const std::size_t count = std::size_t{c[0]} << 8 | c[1];
    const std::size_t area = 2 + 2 * count;
    if (c.size() < area) return make_error(ErrorCode::kCorruption, "corrupt node chunk");
    std::vector<std::uint16_t> offsets(count);
    for (std::size_t i = 0; i < count; ++i) offsets[i] = static_cast<std::uint16_t>(c[2 + 2 * i] << 8 | c[3 + 2 * i]);
    for (std::size_t i : indices) {
        if (i < count) offsets[i] = kHole;
    }
    // Each record runs to the next record's offset (records are stored in id order).
    std::vector<std::pair<std::size_t, std::size_t>> spans(count, {0, 0});
    std::size_t end = c.size() - area;
    for (std::size_t i = count; i-- > 0;) {
        const std::size_t off = std::size_t{c[2 + 2 * i]} << 8 | c[3 + 2 * i];
        if (off == kHole) continue;
        if (off > end) return make_error(ErrorCode::kCorruption, "corrupt node chunk");
        spans[i] = {off, end};
        end = off;
    }
    Bytes out;
    out.reserve(c.size());
    out.push_back(c[0]);
    out.push_back(c[1]);
    out.resize(area);
    bool any = false;
    for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t off = kHole;
        if (offsets[i] != kHole) {
            off = static_cast<std::uint16_t>(out.size() - area);
            out.insert(out.end(), c.begin() + static_cast<std::ptrdiff_t>(area + spans[i].first),
                       c.begin() + static_cast<std::ptrdiff_t>(area + spans[i].second));
            any = true;
        }
        out[2 + 2 * i] = static_cast<std::uint8_t>(off >> 8);
        out[3 + 2 * i] = static_cast<std::uint8_t>(off);
    }
    if (!any) return std::optional<Bytes>();
    return std::optional<Bytes>(std::move(out));
}

NodeReader::NodeReader(const storage::Store& store, std::shared_ptr<const storage::Snapshot> snapshot,
                       NodeCache* cache)
    : store_(store), snapshot_(std::move(snapshot)), shared_(cache), cache_(kCachedChunks) {}

void NodeReader::reset() {
    for (Cached& c : cache_) c = Cached{};
}

Result<const Bytes*> NodeReader::chunk(std::uint64_t number) {
    ++clock_;
    Cached* victim = &cache_[0];
    for (Cached& c : cache_) {
        if (c.number == number) {
            c.used = clock_;
            return c.data.get();
        }
        if (c.used < victim->used) victim = &c;
    }
    auto row = store_.get(schema::node_chunk_key(number), snapshot_);
    if (!row) return std::unexpected(row.error());
    if (!*row) {
        return make_error(ErrorCode::kCorruption, fmt::format("node chunk {} is missing", number));
    }
    ++fetches_;
    auto data = std::make_shared<const Bytes>(std::move(**row));
    victim->number = number;
    victim->data = std::move(data);
    victim->used = clock_;
    return victim->data.get();
}

Result<NodeRecord> NodeReader::read(NodeId id) {
    ++reads_;
    if (shared_) {
        if (auto hit = shared_->get(id)) return *hit;
    }
    auto record = decode(id);
    if (record && shared_) shared_->put(id, *record);
    return record;
}

Result<NodeRecord> NodeReader::decode(NodeId id) {
    const std::uint64_t number = id / schema::kChunkNodes;
    const std::size_t index = id % schema::kChunkNodes;
    auto data = chunk(number);
    if (!data) return std::unexpected(data.error());
    const Bytes& c = **data;
    auto bad = [&] {
        return make_error(ErrorCode::kCorruption,
                          fmt::format("corrupt node {} in chunk {}", id, number));
    };
    if (c.size() < 2) return bad();
    const std::size_t count = std::size_t{c[0]} << 8 | c[1];
    const std::size_t area = 2 + 2 * count;
    if (index >= count || c.size() < area) return bad();
    const std::size_t raw_off = std::size_t{c[2 + 2 * index]} << 8 | c[3 + 2 * index];
    if (raw_off == kHole) {
        return make_error(ErrorCode::kNotFound, fmt::format("node {} was pruned", id));
    }
    const std::size_t off = area + raw_off;
    if (off >= c.size()) return bad();
    const ByteView rec{c.data() + off, c.size() - off};

    NodeRecord n;
    if (rec[0] == kLeafRecord) {
        if (rec.size() < 65) return bad();
        n.leaf = true;
        n.path = Hash::from(rec.subspan(1, 32));
        n.value_hash = Hash::from(rec.subspan(33, 32));
        n.hash = leaf_hash(n.path, n.value_hash);
        return n;
    }
    if (rec[0] != kBranchRecord || rec.size() < 34) return bad();
    n.depth = rec[1];
    n.hash = Hash::from(rec.subspan(2, 32));
    std::size_t pos = 34;
    for (NodeId& child : n.child) {
        const auto delta = get_varint(rec, pos);
        if (!delta || *delta == 0 || *delta > id) return bad();
        child = id - *delta;
    }
    return n;
}

ChunkPrefetcher::ChunkPrefetcher(const storage::Store& store, std::size_t threads) : store_(store) {
    try {
        for (std::size_t i = 0; i < threads; ++i) {
            threads_.emplace_back([this] {
                pthread_setname_np(pthread_self(), "stateroot:read");
                loop();
            });
        }
    } catch (...) {
        // A thread that cannot be created: the ones started are stopped, as the
        // destructor would (which does not run), and the caller gets the exception.
        stop();
        throw;
    }
}

ChunkPrefetcher::~ChunkPrefetcher() { stop(); }

void ChunkPrefetcher::stop() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
}

void ChunkPrefetcher::add(std::uint64_t chunk) {
    {
        std::lock_guard lock(mu_);
        queue_.push(chunk);
    }
    cv_.notify_one();
}

void ChunkPrefetcher::loop() {
    std::unique_lock lock(mu_);
    for (;;) {
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        const std::uint64_t chunk = queue_.top();
        queue_.pop();
        lock.unlock();
        // Only to bring the row into memory: an error, even out of memory, is the
        // reader's to report.
        try {
            (void)store_.get(schema::node_chunk_key(chunk));
        } catch (const std::exception&) {
        }
        lock.lock();
    }
}

}  // namespace stateroot::engine
