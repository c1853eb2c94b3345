// Engine: height-versioned state with a state root per height.
//
// One writer (Engine) commits the changes of each height as one atomic write: the
// value versions, the change index, the new tree nodes, the superseded-node list, the
// height record (root, block hash) and the new tip. Any number of Views read committed
// heights through snapshots, concurrently with the writer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stateroot/engine/changes.hpp"
#include "stateroot/engine/hash.hpp"
#include "stateroot/engine/proof.hpp"
#include "stateroot/engine/schema.hpp"
#include "stateroot/engine/tree.hpp"
#include "stateroot/storage/store.hpp"

namespace stateroot::engine {

struct EngineOptions {
    // Storage settings (the defaults of StoreOptions).
    storage::StoreOptions store;
    // Open an existing database only; fail with kNotFound if there is none (default false).
    bool must_exist = false;
    // Open for reading only, beside a possible writer in another process; apply() and
    // rollback() then fail (default false).
    bool read_only = false;
    // Node records cached for proofs and the writer's loads, shared by every view, in
    // MiB (default 64).
    std::size_t node_cache_mb = 64;
    // Bytes of tree nodes the writer keeps in memory between heights; beyond, the
    // deepest levels are dropped and read back from their records when a height needs
    // them (Tree::trim). 0 (default): the whole tree stays resident once read, the
    // fastest, at about 130 bytes per live key; and once the nodes a tree just opened
    // (or rolled back) has read one by one add up to 1/32 of it, the rest is read in
    // one sweep (Tree::load_all) before the next height: at ten million keys, a few
    // seconds on a cold disk, against seconds per height for the first heights read
    // node by node (docs/performance.md, "A database just opened").
    std::size_t tree_memory_bytes = 0;

    // Sizes the memory the engine may hold from one budget of `mb` MiB (like bitcoind's
    // -dbcache): a quarter to RocksDB's block cache, three thirty-seconds to its
    // memtables (up to three of mb / 32), a sixteenth to the node cache and three
    // eighths to the writer's tree; the rest, about a fifth, is left for what no cache
    // bounds. A reader uses only the block and node caches.
    void set_memory_budget_mb(std::size_t mb);
    // Open as a read replica of a primary in another process (a RocksDB secondary
    // instance keeping its own files in this directory); see catch_up(). Implies
    // reading only (default empty).
    std::string secondary_dir;
    // Overlap the RocksDB write of each height with the work on the next one: apply()
    // returns once the height's tree is computed and its write started, and the next
    // call waits for that write before starting its own. A failed write is reported by
    // the next call to apply(), settle(), rollback(), prune(), put_aux() or checkpoint(),
    // naming its height, and the engine goes back to the last height written; views see
    // written heights only. Call settle() before relying on a height being on disk
    // (default false: apply() returns once its height is written).
    bool pipelined_writes = false;
    // Update the two subtrees under the root on two threads (the caller's and one of
    // the engine's) for heights of at least Tree::kParallelMin changes; false keeps
    // each height's tree on the calling thread (default true).
    bool parallel_tree = true;
    // With pipelined writes, heights of fewer changes than this are still written
    // before apply() returns: handing a small write to another thread and waking it
    // costs more than it hides (at one change per height, 143 µs a height instead of
    // 60 µs) (default 256).
    std::size_t pipeline_min_changes = 256;
};

struct PruneResult {
    std::uint64_t first_kept = 0;      // values, changes and proofs kept from this height on
    std::uint64_t values_removed = 0;  // value versions deleted
    std::uint64_t nodes_removed = 0;   // node records deleted
};

struct CommitResult {
    std::uint64_t height = 0;
    Hash root;
    // True if the height was already committed with the same changes: nothing written.
    bool already_committed = false;
    std::uint64_t live_keys = 0;
    TreeStats tree;
    std::size_t rows = 0;   // rows in the height's write
    std::size_t bytes = 0;  // bytes of keys and values in the height's write
    // Seconds spent per phase: hashing and sorting the changes, updating the tree,
    // encoding the rows, and the RocksDB write (with pipelined writes: waiting for the
    // previous height's write).
    double prepare_s = 0, tree_s = 0, encode_s = 0, write_s = 0;
};

// A height's changes as stored: puts carry their value, deletes none.
struct StoredChange {
    Bytes key;
    std::optional<Bytes> value;
};

// A consistent read-only view of the committed heights, as of its creation. Cheap to
// create. Not thread-safe: use one per thread (each holds its own node cache).
class View {
  public:
    std::optional<std::uint64_t> tip() const { return tip_; }
    std::optional<std::uint64_t> first() const { return first_; }
    // The first height whose values and proofs are kept, if older ones were pruned.
    std::optional<std::uint64_t> pruned() const { return pruned_; }

    // The record of `height`; kNotFound naming the heights that exist.
    Result<schema::HeightRecord> record(std::uint64_t height) const;
    Result<Hash> root(std::uint64_t height) const;
    // The value of `key` as of `height` (one seek); nullopt if absent then.
    Result<std::optional<Bytes>> get(ByteView key, std::uint64_t height) const;
    // A proof of presence or absence of `key` at `height`.
    Result<Proof> prove(ByteView key, std::uint64_t height);
    // The changes committed at `height`, in path order.
    Result<std::vector<StoredChange>> changes(std::uint64_t height) const;
    // An indexer row (see Engine::put_aux), or nullopt.
    Result<std::optional<Bytes>> aux(ByteView key) const;
    // Calls `fn` with each indexer row whose key starts with `prefix`, in key order.
    Status scan_aux(ByteView prefix,
                    const std::function<void(ByteView key, ByteView value)>& fn) const;

    // The root at `height` recomputed from scratch from the stored values (the audit
    // path: reads every value version, uses no tree node).
    Result<Hash> recompute_root(std::uint64_t height) const;

  private:
    friend class Engine;
    View(const storage::Store& store, std::shared_ptr<const storage::Snapshot> snapshot, NodeCache* cache);
    Status check_height(std::uint64_t height) const;
    // check_height, and that the height's values and nodes were not pruned.
    Status check_state(std::uint64_t height) const;

    const storage::Store& store_;
    std::shared_ptr<const storage::Snapshot> snapshot_;
    std::optional<std::uint64_t> tip_;
    std::optional<std::uint64_t> first_;
    std::optional<std::uint64_t> pruned_;
    std::unique_ptr<NodeReader> nodes_;
};

// The writer. Not thread-safe, except view(): one thread applies and rolls back while
// any thread may take views.
class Engine {
  public:
    // Opens or creates the database in `dir`. kBusy if another writer has it open;
    // kCorruption or kInvalidArgument if the directory is not a stateroot database of
    // this format version.
    static Result<std::unique_ptr<Engine>> open(const std::string& dir,
                                                const EngineOptions& options = {});
    // The storage options open() gives RocksDB: `options.store` with the engine's key
    // layout (the value rows' seek prefix, a column family per rising prefix), which
    // also sets how the value rows are kept (StoreOptions).
    static storage::StoreOptions store_options(const EngineOptions& options);
    ~Engine();

    // Commits `changes` as the next height (tip + 1, or any height on an empty
    // database). If the height is already committed, returns its root without writing
    // when the changes are identical, kConflict otherwise. A gap, a height below the
    // first, or a limit exceeded is kInvalidArgument. On any error nothing is written
    // and the engine stays at its tip. apply(), rollback(), prune(), settle(),
    // put_aux() and checkpoint() do not throw: out of memory part-way (in a pipelined
    // write too) is an error after which they are refused until the database is
    // reopened.
    Result<CommitResult> apply(const Changes& changes);

    // With pipelined writes: waits for the write of the last applied height, and
    // returns its error if it failed (the engine is then back at the height before).
    // Once it is written, the tree may drop that height's nodes to stay within its
    // memory budget, and the batch is freed. Otherwise (and with nothing in flight)
    // returns at once.
    Status settle();

    // Removes every height above `height` in one atomic write; with nullopt or a height
    // below the first, the database becomes empty. A height at or above the tip is a no-op.
    // kInvalidArgument below the pruned height (older states are gone).
    Status rollback(std::optional<std::uint64_t> height);

    // Deletes what no height at or above `first_kept` (at most the tip) needs: older value
    // versions, change lists and tree nodes. Roots and block hashes of every height stay;
    // values, changes and proofs below `first_kept` become unavailable. Costs what was
    // written below `first_kept` since the last prune, not the size of the database.
    // Idempotent: an interrupted prune is finished by the next one.
    Result<PruneResult> prune(std::uint64_t first_kept);

    // Writes rows an indexer keeps beside the state (block headers, say): puts, or
    // deletes for nullopt values, in one atomic write. They belong to no height and a
    // rollback leaves them alone.
    Status put_aux(const std::vector<std::pair<Bytes, std::optional<Bytes>>>& rows);

    // Replicas: reads what the primary has committed since. Views must not be in use
    // while it runs (a replica's snapshots do not hold back catching up).
    Status catch_up();

    // Writes a consistent copy of the database to `dir` (which must not exist) that
    // opens as a complete database with the same heights and roots.
    Status checkpoint(const std::string& dir);

    std::optional<std::uint64_t> tip() const { return tip_; }
    std::optional<std::uint64_t> first() const { return first_; }
    std::uint64_t live_keys() const { return live_keys_; }
    // The database's format version: the current one, or an older one this build reads
    // that a read-only open left as it was (schema::kOldestFormatVersion).
    std::uint32_t format_version() const { return format_version_; }
    const Hash& root() const { return tree_->root_hash(); }

    // A view of the committed state now. Thread-safe.
    Result<View> view() const;

    storage::Store& store() { return *store_; }
    // Nodes of the current tree held in memory.
    std::size_t resident_nodes() const { return tree_->resident_nodes(); }

  private:
    Engine() = default;
    // Reads the tip, its record and the meta rows, and resets the tree to the tip.
    Status load();
    // Whether writes may go on: not on a database open for reading, nor once load()
    // failed after a failed write or a rollback, nor once a write threw.
    Status writable() const;
    // Whether the engine may still write or copy: not once load() failed or a call threw.
    Status intact() const;
    // Runs a call that writes or waits for a write: an exception becomes an error, and
    // the engine refuses writes from then on (broken_).
    template <typename F>
    auto guarded(F&& f) -> decltype(f());
    Result<CommitResult> apply_unguarded(const Changes& changes);
    Status rollback_unguarded(std::optional<std::uint64_t> height);
    Result<PruneResult> prune_unguarded(std::uint64_t first_kept);
    Result<CommitResult> check_committed(const Changes& changes, const Hash& digest);
    // settle(), first discarding `pending` (an update built on the height in flight) if
    // that height's write failed.
    Status settle(Tree::Update* pending);
    // Keeps the tree within its memory budget (Tree::trim) and, under a budget, gives
    // back to the system the memory the last heights' rows and batches were freed from.
    void trim(NodeId unwritten);
    // Reads the rest of the tree in one sweep (Tree::load_all) once the nodes read one
    // by one since the tree was last reset would have paid for it. At ten million keys
    // on a cold disk a node read alone cost 11-15 µs and one in the sweep about 0.37
    // µs, some 32 times less: once 1/32 of the tree's nodes (about twice the live
    // keys) were read alone, they cost about what the sweep will, so whether few or
    // many heights follow, the reads cost at most about twice the cheaper choice.
    Status load_tree_if_due();

    std::unique_ptr<storage::Store> store_;
    std::unique_ptr<NodeCache> node_cache_;
    std::unique_ptr<NodeReader> nodes_;
    std::unique_ptr<NodeReader> helper_nodes_;  // for the tree's second thread
    std::unique_ptr<Tree> tree_;
    std::optional<std::uint64_t> tip_;
    std::optional<std::uint64_t> first_;
    std::uint64_t next_chunk_ = 0;  // never decreases: chunk numbers are not reused
    std::optional<std::uint64_t> pruned_;
    std::uint64_t live_keys_ = 0;
    bool read_only_ = false;
    std::uint32_t format_version_ = 0;
    // Why writes are refused until reopened: load() failed, or a write threw.
    std::optional<Error> broken_;
    static constexpr std::size_t kTrimAfterBytes = std::size_t{4} << 20;
    std::size_t written_since_trim_ = 0;  // bytes of the heights applied since trim() gave memory back
    static constexpr std::uint64_t kLoadTreeAfter = 32;  // sweep once 1/32 of the nodes were read alone
    // Reads in flight during the sweep: this disk served 16.7 k random 16 KiB reads/s
    // one at a time, 35 k with 4 at once and 54 k with 16; yet sweeping with 8 and with
    // 16 took the same time within the spread between runs, and each thread reading
    // has its own allocator arena, memory held beside the tree.
    static constexpr std::size_t kPrefetchThreads = 8;
    bool tree_loaded_ = false;              // the sweep ran since the tree was reset
    std::uint64_t nodes_read_since_load_ = 0;  // nodes read one by one since then
    // Pipelined writes: the batch of the height in flight, and its outcome.
    bool writing_ = false;
    storage::WriteBatch in_flight_;
    Status written_;
    std::size_t pipeline_min_changes_ = 0;
    std::unique_ptr<Worker> writer_;  // last: joined before the rest is destroyed
};

// "heights 3..10 exist" / "the database is empty": for error messages.
std::string describe_heights(std::optional<std::uint64_t> first, std::optional<std::uint64_t> tip);

}  // namespace stateroot::engine
