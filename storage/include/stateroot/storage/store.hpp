// Store: a thin, generic ordered key/value store over RocksDB.
//
// It knows bytes, batches, snapshots and iterators, and nothing of trees, hashes or
// blocks. Every write goes through one atomic WriteBatch; readers see either all of a
// batch or none of it. RocksDB headers are confined to storage/src.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::storage {

// Which of RocksDB's own messages reach stderr, for every store of the process: warnings
// and worse (the default), errors and worse, fatal ones, none. The stateroot binary
// sets it from its log level.
enum class StoreLog { kWarnings, kErrors, kFatal, kNone };
void set_store_log(StoreLog log);

struct StoreOptions {
    // Create the directory and an empty database if none exists (default true).
    bool create_if_missing = true;
    // Open for reading only (no lock, so a writer may have the database open; the
    // reader sees the state as of opening). Writes fail (default false).
    bool read_only = false;
    // Open as a secondary instance that keeps its own files in this directory and
    // follows the primary (another process, or another machine sharing the files) when
    // catch_up() is called. Implies reading only (default empty: not a secondary).
    std::string secondary_dir;
    // RocksDB block cache budget in MiB (default 128).
    std::size_t block_cache_mb = 128;
    // Size of one memtable in MiB (default 64; with rising prefixes, a quarter of it for
    // the other keys); memtables take up to 3 times this in all.
    std::size_t write_buffer_mb = 64;
    // fsync the write-ahead log on every write (default false). Without it a commit
    // survives a crash of the process but not of the machine.
    bool sync = false;
    // When non-zero, bloom filters are built over the first `seek_prefix_length` bytes
    // of each key instead of the whole key (shorter keys: the whole key), so that an
    // iterator opened with IteratorOptions::same_prefix skips files that hold no key
    // with the seek key's prefix; a point read is checked by its key's prefix (default
    // 0: whole-key filters).
    std::size_t seek_prefix_length = 0;
    // First bytes of the keys that are only ever written in rising order (keyed by a
    // counter or a height). Each is kept apart from the other keys (in a RocksDB column
    // family of its own, created with the database), so its files never overlap one
    // another or the files of keys written at random, and compaction moves them down
    // the levels instead of merging them again and again. An iterator sees the key
    // space of the key it was last sought to. Must be the same at every open of a
    // database (default empty: one key space).
    std::string rising_prefixes;
};

// A set of puts and deletes applied atomically by Store::write. Not thread-safe.
class WriteBatch {
  public:
    WriteBatch();
    ~WriteBatch();
    WriteBatch(WriteBatch&&) noexcept;
    WriteBatch& operator=(WriteBatch&&) noexcept;

    void put(ByteView key, ByteView value);
    // Puts the concatenation of `value_parts` (at most 4), copied once, into the batch.
    void put(ByteView key, std::span<const ByteView> value_parts);
    void del(ByteView key);
    // Deletes every key in [begin, end): one row, whatever the number of keys. With
    // rising prefixes (StoreOptions::rising_prefixes), only within one of them.
    void del_range(ByteView begin, ByteView end);
    // The keys the batch writes or deletes (range deletes: their first key), in order.
    // For tests that fail chosen writes.
    std::vector<Bytes> keys() const;
    // Number of puts and deletes in the batch.
    std::size_t rows() const { return rows_; }
    // Bytes of keys and values in the batch.
    std::size_t bytes() const { return bytes_; }
    void clear();

  private:
    friend class Store;
    struct Impl;
    explicit WriteBatch(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
    std::size_t rows_ = 0;
    std::size_t bytes_ = 0;
};

// A consistent read-only view of the store as of the moment it was taken (not on a
// secondary instance: see Store::snapshot). Holding one pins the data it sees. Thread-safe; release it by dropping the last shared_ptr, which
// must happen before the Store is destroyed.
class Snapshot {
  public:
    virtual ~Snapshot() = default;
};

struct IteratorOptions {
    // Read through this snapshot; null reads the latest committed state.
    std::shared_ptr<const Snapshot> snapshot;
    // Stop before the first key >= this bound (empty: no bound).
    Bytes upper_bound;
    // Only keys sharing the seek key's first StoreOptions::seek_prefix_length bytes are
    // visited; lets bloom filters skip files. Requires seek_prefix_length > 0.
    bool same_prefix = false;
    // Cache the blocks read (default true); false for one-off scans.
    bool fill_cache = true;
};

// A forward iterator. key() and value() stay valid until the next move. Not thread-safe.
class Iterator {
  public:
    virtual ~Iterator() = default;
    virtual void seek(ByteView key) = 0;
    virtual void next() = 0;
    virtual bool valid() const = 0;
    virtual ByteView key() const = 0;
    virtual ByteView value() const = 0;
    // The error that made the iterator invalid, if any (invalid without error = at the end).
    virtual Status status() const = 0;
};

class Store {
  public:
    // Opens (or creates) the database in `dir`. Fails with kBusy if another process has
    // it open for writing, kCorruption if it holds rows but lacks the column family of a
    // rising prefix (an empty one gets them at a writer's open), kIoError for other
    // storage failures.
    static Result<std::unique_ptr<Store>> open(const std::string& dir, const StoreOptions& options);
    virtual ~Store();

    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // The value of `key`, or nullopt if absent. Thread-safe.
    Result<std::optional<Bytes>> get(ByteView key,
                                     const std::shared_ptr<const Snapshot>& snapshot = {}) const;

    // An empty batch for this store, with room for `reserve_bytes` of rows; it must not
    // outlive the store. Rows are filed under their key spaces as they are added, which
    // a batch made by the WriteBatch constructor leaves to write(): a copy of the whole
    // batch.
    WriteBatch batch(std::size_t reserve_bytes = 0) const;

    // Applies `batch` atomically (durably per StoreOptions::sync). On error nothing of the
    // batch is applied. Thread-safe, but the engine keeps a single writer.
    Status write(const WriteBatch& batch);

    // A snapshot of the current state. Thread-safe. On a secondary instance it isolates
    // nothing: reads through it see the state of the latest catch_up(), so the caller
    // keeps catch_up() out while it reads.
    std::shared_ptr<const Snapshot> snapshot() const;

    // A new iterator, positioned nowhere until seek(). Thread-safe.
    std::unique_ptr<Iterator> iterator(IteratorOptions options = {}) const;

    // Total size of the files in the database directory.
    std::uint64_t disk_bytes() const;

    // Writes the memtables to disk (used by benchmarks to measure settled sizes).
    Status flush();

    // Compacts the whole key range, so that deleted rows give their space back.
    Status compact();

    // Secondary instances: reads what the primary has written since. Not thread-safe with
    // respect to reads: the caller keeps reads out while it runs.
    Status catch_up();

    // Writes a consistent copy of the database into `dir` (which must not exist), as
    // hard links where possible; it opens as a complete database.
    Status checkpoint(const std::string& dir);

    const std::string& dir() const { return dir_; }

    // The column families of rising prefixes (StoreOptions::rising_prefixes) that a
    // database holding rows lacks: its creation was cut short after RocksDB's CURRENT
    // and it was written to since, or it was made with other options. Their keys go to
    // the default key space, where range deletes are refused. (An empty database gets
    // them at a writer's open.)
    const std::vector<std::string>& missing_families() const;

    // Tests only: called before every write with the batch and the number of write()
    // calls before this one; an error it returns is returned by write() and nothing is
    // written.
    using WriteFault = std::function<Status(const WriteBatch& batch, std::uint64_t write_index)>;
    void set_write_fault(WriteFault fault) { write_fault_ = std::move(fault); }

  private:
    struct Impl;
    Store(std::string dir, std::unique_ptr<Impl> impl);

    std::string dir_;
    std::unique_ptr<Impl> impl_;
    WriteFault write_fault_;
    std::uint64_t writes_ = 0;
};

}  // namespace stateroot::storage
