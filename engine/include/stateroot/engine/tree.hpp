// Tree: the writer's incremental sparse Merkle tree (docs/smt-spec.md section 5).
//
// The tree is a path-compressed binary trie: a branch sits at the depth of the bit on
// which its subtree splits, a leaf at the shallowest depth where it is alone, and the
// one-sided levels between a branch and its parent exist only as the hash the parent
// sees (the branch's "top" hash). Nodes live in memory and are loaded on demand from
// their persisted records, so a tree opened on a large database reads only what a
// height touches.
//
// A branch holds, for each child, the child's top hash and node id beside the link, so
// rehashing a level reads only the nodes on the changed paths, never their siblings:
// at ten million keys the walk is bound by memory latency, not by hashing.
//
// Updates are copy-on-write: apply() builds the new nodes for a height's changes and
// their records, and leaves the current tree untouched until commit(); abort()
// discards them. Work per height is O(k log N) node reads and hashes for k changed
// paths among N. With a helper reader and enough changes, the two subtrees under the
// root are updated on two threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/engine/node_store.hpp"
#include "stateroot/storage/store.hpp"

namespace stateroot::engine {

class Worker;

// One change to the tree. Changes passed to apply() are sorted by path, one per path.
struct TreeChange {
    Hash path;
    bool del = false;
    Hash value_hash;  // puts only
};

struct TreeStats {
    std::uint64_t node_reads = 0;  // node records loaded from storage (or its cache)
    std::uint64_t hashes = 0;      // leaf and node hashes computed
    std::uint64_t new_nodes = 0;   // records written
};

class Tree {
public:
    // Reads nodes through `reader`; with `helper` (a second reader of the same store),
    // large updates use a second thread. Both must outlive the tree.
    explicit Tree(NodeReader& reader, NodeReader* helper = nullptr);
    ~Tree();

    // Drops every node in memory and points the tree at a persisted root
    // (kNoNode for the empty tree) whose hash is `root_hash`.
    void reset(NodeId root_id, const Hash& root_hash);

    const Hash& root_hash() const;
    NodeId root_id() const;

    struct Ref;
    struct Context;

    // The result of apply(), to be passed to exactly one of commit() or abort().
    class Update {
    public:
        Update();
        ~Update();
        Update(Update&&) noexcept;
        Update& operator=(Update&&) noexcept;

        Hash root_hash;
        NodeId root_id = kNoNode;
        std::vector<NodeId> stale_ids;    // ids of the records this update supersedes, ascending
        std::int64_t live_key_delta = 0;  // keys inserted minus keys deleted
        TreeStats stats;
        // The node chunks this update's records may occupy (some may stay unused).
        std::uint64_t first_chunk = 0;
        std::uint64_t end_chunk = 0;

        // Adds the new node records to `batch` (one row per chunk used).
        void write_records(storage::WriteBatch& batch) const;
        // Bytes of keys and values write_records() adds.
        std::size_t record_bytes() const;

    private:
        friend class Tree;
        std::unique_ptr<Ref> root;
        std::vector<std::unique_ptr<Context>> parts;  // one per thread that worked on it
    };

    // Computes the tree after `changes` (sorted by path, at most one per path). Its
    // records take node ids from chunk `first_chunk` on. The current tree is unchanged.
    // Fails only if a node cannot be read (kCorruption / kIoError), changing nothing.
    Result<Update> apply(std::span<const TreeChange> changes, std::uint64_t first_chunk);
    // Makes `update` the current tree.
    void commit(Update&& update);
    // Discards `update`.
    void abort(Update&& update);

    // Reads every node of the current tree that is not in memory, in one sweep down
    // the node ids that reads each chunk once: through `reader` and, for the subtree
    // right of the root, `helper` on the tree's second thread (readers without a
    // shared node cache, so that the sweep does not push out what it holds for
    // proofs). Tells `prefetcher` of each chunk as soon as it knows it will read it.
    // Fails only if a node cannot be read; the nodes loaded by then stay.
    Status load_all(NodeReader& reader, NodeReader* helper, ChunkPrefetcher* prefetcher);

    // Nodes held in memory, and their bytes.
    std::size_t resident_nodes() const;
    std::size_t resident_bytes() const;
    // Bytes the node arenas occupy: the resident nodes and the free slots among them.
    std::size_t memory_bytes() const;

    // Bounds the bytes of nodes held in memory (0, the default: every node loaded or
    // built stays, and a height reads nothing it read before). See trim().
    void set_memory_budget(std::size_t bytes) { budget_ = bytes; }
    std::size_t memory_budget() const { return budget_; }
    // Keeps the tree within its budget while the next height is built: the limit is
    // the budget less room for two heights' growth (as the last heights grew the
    // arenas; at most half the budget). If more than the limit is resident, drops
    // subtrees back to their records, deepest levels first: paths are hashes, so the
    // tree is balanced and its upper levels are crossed by every height while a given
    // node below is rarely touched again. Keeps the levels that fit in three quarters
    // of the limit. Only subtrees whose records are on disk can go: those whose ids are
    // below `unwritten` (the first id of a write still in flight; kNoNode if none).
    // The nodes kept are then moved together and the memory above them given back, so
    // a large height does not leave the process that much bigger. Costs a walk or two
    // over the resident nodes, once per quarter of the limit loaded.
    void trim(NodeId unwritten = kNoNode);

    // Below this many changes an update stays on one thread.
    static constexpr std::size_t kParallelMin = 256;
    // Node hashes are put off while a subtree of at most this many changes (and at
    // least kHashLanes) is worked on, then computed level by level, kHashLanes
    // independent ones at a time (node_hashes()). Bounded so that what they read and
    // patch is still in the CPU's cache.
    static constexpr std::size_t kHashGroup = 64;

private:
    struct Branch;
    struct Leaf;
    struct Sub;
    struct Entry;
    struct HashJob;
    class PendingByChunk;
    template <class T>
    class Arena;

    Result<std::optional<Sub>> apply_at(Context& cx, Ref& loc, int at, std::span<const TreeChange> cs);
    Status load(Context& cx, Ref& ref);
    // Loads every stored node under `top` (load_all()).
    Status sweep(Context& cx, Ref& top, ChunkPrefetcher* prefetcher);
    Result<Sub> existing(Context& cx, Ref& ref, int at);
    Result<Hash> prefix_path(Context& cx, Ref ref);
    Result<Sub> retop(Context& cx, const Ref& ref, int at, const Hash& prefix);
    Sub build(Context& cx, int at, std::span<const Entry> entries);
    Sub join(Context& cx, int at, const Sub& left, const Sub& right);
    Sub lift(Context& cx, Sub sub, int at, int side);
    // A new branch with the children of `existing`, at its slot; its top starts from
    // the existing top, or from its children's hashes if `rehash`.
    Sub pending_copy(Context& cx, const Ref& existing, int at, bool rehash);
    // Sets a new branch's top to the hash of its children, now or as a job.
    void hash_children(Context& cx, Sub& sub, std::uint16_t rank);
    // Hashes the top of `sub` once more for the one-sided level above it, now or in
    // its job.
    void wrap(Context& cx, Sub& sub, int side);
    // Runs the jobs put off while a group was worked on, `result` its new content; with
    // no result (the group's subtree is unchanged, or reading it failed) drops them.
    void run_jobs(Context& cx, Sub* result);
    Sub combine(Context& cx, int at, const Sub& left, const Sub& right);
    Ref finalize(Context& cx, const Sub& sub);
    // A new leaf for a put to an absent path.
    Entry inserted(Context& cx, const TreeChange& c);
    Entry new_leaf(Context& cx, const TreeChange& c, const Hash& hash);
    Hash node(Context& cx, const Hash& left, const Hash& right);
    void release(std::uint64_t slot);
    // Releases the node at `slot` and every node below it held in memory.
    void release_subtree(std::uint64_t slot);
    void measure(const Ref& ref, int at, std::vector<std::size_t>& bytes);
    void evict(Ref& ref, int at, int cut, NodeId unwritten);
    struct Holes;
    void relocate(Ref& ref, Holes& holes);
    // Bytes of the resident nodes, or of every slot the arenas hold.
    std::size_t arena_bytes(bool free_slots_too) const;
    // Starts loading the node at `slot` into the CPU cache, if it is in memory.
    void prefetch(std::uint64_t slot);
    // Brings the resident nodes on the paths of `cs` below `top` into the CPU cache,
    // walking the paths in lock step: below the levels the changes share, each path
    // is a chain of cache misses, one per level, and walked one after the other the
    // chains do not overlap. At most kWalkAheadGroup changes.
    void walk_ahead(std::uint64_t top, std::span<const TreeChange> cs);
    static constexpr std::size_t kWalkAheadGroup = 32;
    // Whether the root, in memory, is a branch with a subtree on each side: what
    // apply() and load_all() split between their two threads.
    bool root_splits() const;
    Branch& branch(std::uint64_t slot);
    Leaf& leaf(std::uint64_t slot);

    NodeReader& reader_;
    NodeReader* helper_;
    std::unique_ptr<Arena<Branch>> branches_[2];  // one per thread that allocates
    std::unique_ptr<Arena<Leaf>> leaves_[2];
    std::unique_ptr<Ref> root_;
    std::unique_ptr<Worker> worker_;
    std::size_t budget_ = 0;
    std::size_t trimmed_to_ = 0;  // memory_bytes() after the last trim()
    std::size_t growth_ = 0;      // what the arenas grew by per height of late
};

}  // namespace stateroot::engine
