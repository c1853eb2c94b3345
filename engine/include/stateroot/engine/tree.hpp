// Tree: the writer's incremental sparse Merkle tree (SPEC.md section 5).
//
// The tree is a path-compressed binary trie: a branch sits at the depth of the bit on
// which its subtree splits, a leaf at the shallowest depth where it is alone, and the
// one-sided levels between a branch and its parent exist only as the hash the parent
// sees (the branch's "top" hash). Nodes live in memory and are loaded on demand from
// their persisted records, so a tree opened on a large database reads only what a
// height touches.
//
// Updates are copy-on-write: apply() builds the new nodes for a height's changes,
// writing their records to a ChunkWriter, and leaves the current tree untouched until
// commit(); abort() discards them. Work per height is O(k log N) node reads and hashes
// for k changed paths among N.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/engine/node_store.hpp"

namespace stateroot::engine {

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
    // Reads nodes through `reader`, which must outlive the tree.
    explicit Tree(NodeReader& reader);
    ~Tree();

    // Drops every node in memory and points the tree at a persisted root
    // (kNoNode for the empty tree) whose hash is `root_hash`.
    void reset(NodeId root_id, const Hash& root_hash);

    const Hash& root_hash() const { return root_hash_; }
    NodeId root_id() const { return root_id_; }

    // The result of apply(), to be passed to exactly one of commit() or abort().
    struct Update {
        Hash root_hash;
        NodeId root_id = kNoNode;
        std::vector<NodeId> stale_ids;    // ids of the records this update supersedes, ascending
        std::int64_t live_key_delta = 0;  // keys inserted minus keys deleted
        TreeStats stats;

      private:
        friend class Tree;
        std::uint64_t root_slot = 0;
        std::vector<std::uint64_t> fresh;  // nodes created, freed by abort()
        std::vector<std::uint64_t> stale;  // nodes superseded, freed by commit()
    };

    // Computes the tree after `changes` (sorted by path, at most one per path), appending
    // the new node records to `writer`. The current tree is unchanged. Fails only if a
    // node cannot be read (kCorruption / kIoError), in which case nothing has changed
    // and `writer` must be discarded.
    Result<Update> apply(std::span<const TreeChange> changes, ChunkWriter& writer);
    // Makes `update` the current tree.
    void commit(Update&& update);
    // Discards `update`.
    void abort(Update&& update);

    // Nodes held in memory (branches, leaves).
    std::size_t resident_nodes() const;

  private:
    struct Sub;
    struct Branch;
    struct Leaf;
    template <class T>
    class Arena;
    struct Entry;

    Result<std::uint64_t> load(std::uint64_t slot);
    Result<std::optional<Sub>> apply_at(std::uint64_t* loc, int at, std::span<const TreeChange> cs);
    Result<Sub> existing(std::uint64_t* loc, int at);
    Result<Hash> prefix_path(std::uint64_t slot);
    Result<Sub> retop(std::uint64_t slot, int at, const Hash& prefix);
    Sub build(int at, std::span<const Entry> entries);
    Sub join(int at, Sub left, Sub right);
    Sub lift(Sub sub, int at, int side);
    Sub combine(int at, Sub left, Sub right);
    std::uint64_t finalize(const Sub& sub);
    std::uint64_t new_leaf(const Hash& path, const Hash& value_hash, const Hash& hash);
    // A new leaf for a put to an absent path.
    Entry inserted(const TreeChange& c);
    Hash hash_of(const Sub& sub) const;
    NodeId id_of(std::uint64_t slot) const;
    void release(std::uint64_t slot);
    Hash node(const Hash& left, const Hash& right);

    NodeReader& reader_;
    std::unique_ptr<Arena<Branch>> branches_;
    std::unique_ptr<Arena<Leaf>> leaves_;
    std::uint64_t root_ = 0;
    Hash root_hash_;
    NodeId root_id_ = kNoNode;

    // State of the apply() in progress.
    ChunkWriter* writer_ = nullptr;
    Update* update_ = nullptr;
};

}  // namespace stateroot::engine
