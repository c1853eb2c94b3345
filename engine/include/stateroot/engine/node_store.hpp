// Persistent tree nodes: records packed into chunks of kChunkNodes, written once per
// height and never modified (docs/schema.md, "node chunks").
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/engine/schema.hpp"
#include "stateroot/storage/store.hpp"

namespace stateroot::engine {

using schema::kNoNode;
using schema::NodeId;

// A decoded node record.
struct NodeRecord {
    bool leaf = false;
    // The node's hash as its parent sees it: for a leaf, its leaf hash (which does not
    // depend on where it sits); for a branch, the hash of the subtree at its slot (its
    // parent's depth + 1, or 0 for the root), i.e. including any one-sided levels above
    // its split depth.
    Hash hash;
    // Leaves.
    Hash path;
    Hash value_hash;
    // Branches: the depth of the bit on which the subtree splits, and its two subtrees.
    int depth = 0;
    NodeId child[2] = {kNoNode, kNoNode};
};

// Accumulates the records written at one height into chunk rows. Ids are assigned in
// order, children before parents. Not thread-safe.
class ChunkWriter {
  public:
    // Ids start at the first id of `first_chunk`.
    explicit ChunkWriter(std::uint64_t first_chunk);

    NodeId add_leaf(const Hash& path, const Hash& value_hash);
    NodeId add_branch(int depth, const Hash& top, NodeId left, NodeId right);
    // Replaces the top hash of the branch record `id` added before (written first with
    // whatever top it had, when its hash was put off).
    void set_branch_hash(NodeId id, const Hash& top);

    std::size_t nodes() const { return count_; }
    std::uint64_t first_chunk() const { return first_chunk_; }
    // One past the last chunk holding a record (== first_chunk() if none).
    std::uint64_t end_chunk() const;
    // Adds one put per chunk to `batch`.
    void write_to(storage::WriteBatch& batch) const;
    // Bytes of keys and values write_to() adds.
    std::size_t row_bytes() const;
    // Drops all records, keeping the first chunk.
    void clear();

  private:
    NodeId next_id() const { return first_chunk_ * schema::kChunkNodes + count_; }
    void begin_record();

    std::uint64_t first_chunk_;
    std::size_t count_ = 0;
    // Per chunk: record offsets (relative to the record area) and the records.
    struct Chunk {
        std::vector<std::uint16_t> offsets;
        Bytes records;
    };
    std::vector<Chunk> chunks_;
    // A chunk row's bytes before its records: the count and the offsets.
    static std::size_t header_bytes(const Chunk& c) { return 2 + 2 * c.offsets.size(); }
};

// `chunk` without the records at `indices` (which become holes: the other records keep
// their ids), or nullopt if no record would be left. kCorruption if it does not decode.
Result<std::optional<Bytes>> remove_records(ByteView chunk, const std::vector<std::size_t>& indices);

// Decoded node records shared by every reader of a database, bounded in bytes, least
// recently used first out. A proof needs one or two records of each chunk it touches,
// so records, not chunks, are what stays hot. A record is immutable and its id never
// reused, so an entry never goes stale. Thread-safe.
class NodeCache {
public:
    explicit NodeCache(std::size_t capacity_bytes);
    ~NodeCache();
    std::optional<NodeRecord> get(NodeId id);
    void put(NodeId id, const NodeRecord& record);
    // Forgets every record, giving their memory back.
    void clear();

private:
    struct Shard;
    static constexpr std::size_t kShards = 16;
    std::unique_ptr<Shard[]> shards_;
    std::size_t shard_capacity_;  // records per shard
};

// Reads node records by id, through a snapshot or the latest state, keeping the last
// few chunks it read. Not thread-safe: use one per thread. A chunk number is never
// reused (a rollback deletes chunks, later heights take new numbers), so a chunk read
// once stays valid for as long as anything refers to it.
class NodeReader {
  public:
    // `cache`, if given, is shared with other readers and must outlive this one.
    explicit NodeReader(const storage::Store& store,
                        std::shared_ptr<const storage::Snapshot> snapshot = {},
                        NodeCache* cache = nullptr);

    // The record of `id`; kCorruption if it is missing or does not decode.
    Result<NodeRecord> read(NodeId id);
    // Number of records read so far (each a storage read or a cached chunk lookup).
    std::uint64_t reads() const { return reads_; }
    // Chunk rows fetched from the store so far.
    std::uint64_t chunk_fetches() const { return fetches_; }
    void reset();

  private:
    Result<const Bytes*> chunk(std::uint64_t number);
    Result<NodeRecord> decode(NodeId id);

    const storage::Store& store_;
    std::shared_ptr<const storage::Snapshot> snapshot_;
    NodeCache* shared_;
    static constexpr std::size_t kCachedChunks = 32;
    struct Cached {
        std::uint64_t number = ~std::uint64_t{0};
        std::shared_ptr<const Bytes> data;
        std::uint64_t used = 0;
    };
    std::vector<Cached> cache_;
    std::uint64_t clock_ = 0;
    std::uint64_t reads_ = 0;
    std::uint64_t fetches_ = 0;
};

// Reads chunk rows on threads of its own, highest chunk first, ahead of a reader
// that will want them: on a database just opened each read is a wait for the disk,
// and these overlap; the reader then finds the rows in memory (RocksDB's block cache
// or the system's page cache). Rows read are not kept here: a reader that gets ahead
// reads a row itself, and no one waits for anyone. For Tree::load_all(), which reads
// the chunks of the tree from the highest down. Thread-safe.
class ChunkPrefetcher {
  public:
    ChunkPrefetcher(const storage::Store& store, std::size_t threads);
    // Stops: the chunks not read yet are not.
    ~ChunkPrefetcher();
    ChunkPrefetcher(const ChunkPrefetcher&) = delete;
    ChunkPrefetcher& operator=(const ChunkPrefetcher&) = delete;
    void add(std::uint64_t chunk);

  private:
    void loop();
    // Stops and joins the threads started.
    void stop();
    const storage::Store& store_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::priority_queue<std::uint64_t> queue_;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace stateroot::engine
