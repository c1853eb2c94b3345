#include "stateroot/storage/store.hpp"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

namespace stateroot::storage {
namespace {

rocksdb::Slice slice(ByteView b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }
ByteView view(const rocksdb::Slice& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Whether files in `dir` can be written with O_DIRECT: a 4 KiB aligned write to a
// scratch file. Not every file system takes it (tmpfs before Linux 6.6, some network
// file systems), and RocksDB would then fail its first flush. The file has no name
// (O_TMPFILE), so a crash cannot leave it behind: a named one, killed before its
// unlink, made the directory of a new database look like someone else's. A file
// system without unnamed files gets buffered I/O.
bool direct_writes_work(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_DIRECT, 0600);
    if (fd < 0) return false;
    alignas(4096) static const std::array<char, 4096> kBlock{};
    const bool ok = ::write(fd, kBlock.data(), kBlock.size()) == static_cast<ssize_t>(kBlock.size());
    ::close(fd);
    return ok;
}

std::atomic<StoreLog> g_store_log{StoreLog::kWarnings};  // set_store_log

// RocksDB's own messages: warnings and errors go to stderr, the rest is dropped. Not
// RocksDB's default LOG file in the database directory: on a full disk a write to that
// file fails too, and Debian's librocksdb (built with assertions) then aborts the
// process on its next message, before the failed write's error can be reported.
class StderrLogger final : public rocksdb::Logger {
public:
  // `reader`: a read-only or secondary store, which writes nothing.
  explicit StderrLogger(bool reader)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), reader_(reader) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
      Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }
    void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
        if (level < GetInfoLogLevel() || level == rocksdb::InfoLogLevel::HEADER_LEVEL) return;
        const StoreLog log = g_store_log.load(std::memory_order_relaxed);
        const auto least = log == StoreLog::kWarnings ? rocksdb::InfoLogLevel::WARN_LEVEL
                           : log == StoreLog::kErrors ? rocksdb::InfoLogLevel::ERROR_LEVEL
                                                      : rocksdb::InfoLogLevel::FATAL_LEVEL;
        if (log == StoreLog::kNone || level < least) return;
        char line[2048];
        std::vsnprintf(line, sizeof line, format, ap);
        const std::string_view text(line);
        // A secondary or read-only store replays the writer's log into memtables it never
        // flushes, and RocksDB then warns of a write stall that cannot happen: it writes
        // nothing.
        if (reader_ && (text.find("Stopping writes") != std::string_view::npos ||
                        text.find("Stalling writes") != std::string_view::npos)) {
            return;
        }
        // Harmless, and printed by every checkpoint a writer takes (stateroot snapshot):
        // RocksDB 7.8 counts the holds on file deletions it takes itself.
        if (text.find("File Deletions Disabled, but already disabled") != std::string_view::npos ||
            text.find("File Deletions Enable, but not really enabled") != std::string_view::npos) {
            return;
        }
        // The failed open's status is returned, and Store::open's caller reports it (a
        // held lock as "open in another process"): the same words twice otherwise.
        if (text.find("DB::Open() failed: ") != std::string_view::npos) return;
        // A log whose last write a kill cut short: recovery drops that write, as it
        // should, but calls it "Corruption", which after a crash the design survives only
        // alarms. Said plainly for the reasons that mean the log ended inside a write;
        // any other (a checksum mismatch: damage within the log, with every write after
        // it lost) stays as RocksDB says it.
        const auto dropping = text.find(": dropping ");
        const auto reason = text.find("; Corruption: ");
        const bool cut_short = reason != std::string_view::npos &&
                               (text.ends_with("truncated header") || text.ends_with("truncated record body") ||
                                text.ends_with("error reading trailing data"));
        if (dropping != std::string_view::npos && cut_short && dropping < reason) {
            auto start = text.find("] ");
            start = start == std::string_view::npos || start > dropping ? 0 : start + 2;
            const std::string_view file = text.substr(start, dropping - start);
            const std::string_view bytes = text.substr(dropping + 11, text.find(' ', dropping + 11) - (dropping + 11));
            const std::string_view why = text.substr(reason + 14);
            std::fprintf(stderr,
                         "rocksdb: %.*s: recovery dropped %.*s bytes at the log's end (%.*s): a write a crash "
                         "cut short; the database is at the last whole write before it\n",
                         static_cast<int>(file.size()), file.data(), static_cast<int>(bytes.size()), bytes.data(),
                         static_cast<int>(why.size()), why.data());
            return;
        }
        std::fprintf(stderr, "rocksdb: %s\n", line);
    }

  private:
    bool reader_;
};

Error to_error(const rocksdb::Status& s, const std::string& what) {
    const std::string text = s.ToString();
    if (s.IsCorruption()) return {ErrorCode::kCorruption, what + ": " + text};
    return {ErrorCode::kIoError, what + ": " + text};
}

// An open's error: kBusy only if the writer's LOCK file is held, which RocksDB reports
// as "While lock file: <dir>/LOCK: ..." (another process) or "lock hold by current
// process, ...: <dir>/LOCK: ..." (this one). Not any text with "lock" in it: that is in
// every path under a directory named "blocks".
Error open_error(const rocksdb::Status& s, const std::string& dir) {
    const std::string what = "cannot open " + dir;
    const std::string text = s.ToString();
    const bool held = text.find("While lock file: ") != std::string::npos ||
                      text.find("lock hold by current process") != std::string::npos;
    if (s.IsIOError() && held && text.find("/LOCK: ") != std::string::npos) {
        return {ErrorCode::kBusy,
                what + ": the database is open in another process (" + text + ")"};
    }
    return to_error(s, what);
}

class RocksSnapshot final : public Snapshot {
  public:
    RocksSnapshot(rocksdb::DB* db, const rocksdb::Snapshot* snap) : db_(db), snap_(snap) {}
    ~RocksSnapshot() override {
        if (snap_) db_->ReleaseSnapshot(snap_);
    }
    const rocksdb::Snapshot* get() const { return snap_; }

  private:
    rocksdb::DB* db_;
    const rocksdb::Snapshot* snap_;
};

const rocksdb::Snapshot* raw(const std::shared_ptr<const Snapshot>& s) {
    return s ? static_cast<const RocksSnapshot&>(*s).get() : nullptr;
}

// The key spaces of a store: the default column family, and one family per rising
// prefix. Each rising prefix needs its own: a flushed file of two prefixes would span
// every older key of the prefixes between, and could never just move down a level.
struct KeySpaces {
    rocksdb::DB* db = nullptr;
    std::vector<rocksdb::ColumnFamilyHandle*> rising;  // owned; destroyed by the store
    std::array<rocksdb::ColumnFamilyHandle*, 256> family_of{};  // by first byte; null: default

    std::vector<rocksdb::ColumnFamilyHandle*> all() const {
        std::vector<rocksdb::ColumnFamilyHandle*> families = {db->DefaultColumnFamily()};
        families.insert(families.end(), rising.begin(), rising.end());
        return families;
    }
    rocksdb::ColumnFamilyHandle* of(const rocksdb::Slice& key) const {
        rocksdb::ColumnFamilyHandle* family = key.empty() ? nullptr : family_of[static_cast<std::uint8_t>(key[0])];
        return family ? family : db->DefaultColumnFamily();
    }
    // The family of a range delete from `begin`, or null if that is the default family,
    // which takes none: its memtables take insert hints (see Store::open).
    rocksdb::ColumnFamilyHandle* range_family(const rocksdb::Slice& begin) const {
        rocksdb::ColumnFamilyHandle* family = of(begin);
        return family == db->DefaultColumnFamily() ? nullptr : family;
    }
};

constexpr const char* kRangeDeleteRefused = "a range delete outside the rising prefixes";

// An iterator stays within the key space of the key it was last sought to: the rising
// prefixes and the others are ordered apart.
class RocksIterator final : public Iterator {
  public:
    RocksIterator(const KeySpaces& spaces, IteratorOptions options) : spaces_(spaces), options_(std::move(options)) {
        ro_.snapshot = raw(options_.snapshot);
        ro_.fill_cache = options_.fill_cache;
        ro_.prefix_same_as_start = options_.same_prefix;
        ro_.total_order_seek = !options_.same_prefix;
        if (!options_.upper_bound.empty()) {
            upper_ = slice(options_.upper_bound);
            ro_.iterate_upper_bound = &upper_;
        }
        it_.reset(spaces_.db->NewIterator(ro_, spaces_.db->DefaultColumnFamily()));
        cf_ = spaces_.db->DefaultColumnFamily();
    }
    void seek(ByteView key) override {
        rocksdb::ColumnFamilyHandle* cf = spaces_.of(slice(key));
        if (cf != cf_) {
            it_.reset(spaces_.db->NewIterator(ro_, cf));
            cf_ = cf;
        }
        it_->Seek(slice(key));
    }
    void next() override { it_->Next(); }
    bool valid() const override { return it_->Valid(); }
    ByteView key() const override { return view(it_->key()); }
    ByteView value() const override { return view(it_->value()); }
    Status status() const override {
        if (it_->status().ok()) return {};
        return std::unexpected(to_error(it_->status(), "iterator"));
    }

  private:
    const KeySpaces& spaces_;
    IteratorOptions options_;  // owns the snapshot and the bound the iterator points into
    rocksdb::Slice upper_;
    rocksdb::ReadOptions ro_;
    rocksdb::ColumnFamilyHandle* cf_ = nullptr;
    std::unique_ptr<rocksdb::Iterator> it_;
};

}  // namespace

struct WriteBatch::Impl {
    explicit Impl(std::size_t reserve_bytes = 0) : batch(reserve_bytes) {}
    rocksdb::WriteBatch batch;
    // Set by Store::batch(): each row goes to its key space as it is added, so that
    // Store::write need not copy the batch to route it (a height's batch is megabytes).
    // Points into the store, which must outlive the batch.
    const KeySpaces* spaces = nullptr;
    bool refused = false;  // a range delete in the default key space was asked for

    // The family of a row with this key; null (RocksDB's default family) until write()
    // routes it, in a batch not made by a store.
    rocksdb::ColumnFamilyHandle* family(const rocksdb::Slice& key) const {
        return spaces ? spaces->of(key) : nullptr;
    }
};

WriteBatch::WriteBatch() : impl_(std::make_unique<Impl>()) {}
WriteBatch::WriteBatch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WriteBatch::~WriteBatch() = default;
WriteBatch::WriteBatch(WriteBatch&&) noexcept = default;
WriteBatch& WriteBatch::operator=(WriteBatch&&) noexcept = default;

void WriteBatch::put(ByteView key, ByteView value) {
    impl_->batch.Put(impl_->family(slice(key)), slice(key), slice(value));
    ++rows_;
    bytes_ += key.size() + value.size();
}

void WriteBatch::put(ByteView key, std::span<const ByteView> value_parts) {
    constexpr std::size_t kMaxParts = 4;
    assert(value_parts.size() <= kMaxParts);
    std::array<rocksdb::Slice, kMaxParts> parts;
    std::size_t n = 0;
    for (ByteView part : value_parts) {
        parts[n++] = slice(part);
        bytes_ += part.size();
    }
    const rocksdb::Slice k = slice(key);
    const rocksdb::SliceParts key_parts(&k, 1);
    const rocksdb::SliceParts value(parts.data(), static_cast<int>(n));
    impl_->batch.Put(impl_->family(k), key_parts, value);
    ++rows_;
    bytes_ += key.size();
}

void WriteBatch::del(ByteView key) {
    impl_->batch.Delete(impl_->family(slice(key)), slice(key));
    ++rows_;
    bytes_ += key.size();
}

void WriteBatch::del_range(ByteView begin, ByteView end) {
    if (impl_->spaces && !impl_->spaces->range_family(slice(begin))) {
        impl_->refused = true;  // reported by write()
    } else {
        impl_->batch.DeleteRange(impl_->family(slice(begin)), slice(begin), slice(end));
    }
    ++rows_;
    bytes_ += begin.size() + end.size();
}

std::vector<Bytes> WriteBatch::keys() const {
    struct Collect : rocksdb::WriteBatch::Handler {
        std::vector<Bytes> keys;
        void add(const rocksdb::Slice& k) { keys.emplace_back(view(k).begin(), view(k).end()); }
        rocksdb::Status PutCF(std::uint32_t, const rocksdb::Slice& k, const rocksdb::Slice&) override {
            add(k);
            return rocksdb::Status::OK();
        }
        rocksdb::Status DeleteCF(std::uint32_t, const rocksdb::Slice& k) override {
            add(k);
            return rocksdb::Status::OK();
        }
        rocksdb::Status DeleteRangeCF(std::uint32_t, const rocksdb::Slice& begin, const rocksdb::Slice&) override {
            add(begin);
            return rocksdb::Status::OK();
        }
    } collect;
    impl_->batch.Iterate(&collect);
    return std::move(collect.keys);
}

void WriteBatch::clear() {
    impl_->batch.Clear();
    impl_->refused = false;
    rows_ = 0;
    bytes_ = 0;
}

struct Store::Impl {
    std::unique_ptr<rocksdb::DB> db;
    KeySpaces spaces;
    rocksdb::WriteOptions write_options;
    bool secondary = false;  // a RocksDB secondary instance (StoreOptions::secondary_dir)
    std::vector<std::string> missing_families;  // see Store::missing_families()
    StoreOptions options;  // as opened: a secondary is opened again with them (catch_up)
    std::vector<std::uint64_t> table_files;  // a secondary's, as of its last catch-up (sorted)

    ~Impl() {
        for (rocksdb::ColumnFamilyHandle* family : spaces.rising) db->DestroyColumnFamilyHandle(family);
    }
};

namespace {
// The column family of a rising prefix: "rising-" and the prefix byte in hex.
std::string rising_family(std::uint8_t prefix) {
    char name[16];
    std::snprintf(name, sizeof name, "rising-%02x", prefix);
    return name;
}

// The names of the write-ahead logs in `dir`, sorted.
std::vector<std::string> log_files(const std::string& dir) {
    std::vector<std::string> logs;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        if (entry.path().extension() == ".log") logs.push_back(entry.path().filename().string());
    }
    std::sort(logs.begin(), logs.end());
    return logs;
}

// The numbers of `db`'s table files, sorted.
std::vector<std::uint64_t> table_files(rocksdb::DB& db) {
    std::vector<rocksdb::LiveFileMetaData> files;
    db.GetLiveFilesMetaData(&files);
    std::vector<std::uint64_t> numbers;
    numbers.reserve(files.size());
    for (const rocksdb::LiveFileMetaData& f : files) numbers.push_back(f.file_number);
    std::sort(numbers.begin(), numbers.end());
    return numbers;
}

// The rows in `db`'s memtables, in every key space.
std::uint64_t memtable_rows(rocksdb::DB* db, const KeySpaces& spaces) {
    std::uint64_t rows = 0;
    for (rocksdb::ColumnFamilyHandle* family : spaces.all()) {
        for (const char* property : {"rocksdb.num-entries-active-mem-table", "rocksdb.num-entries-imm-mem-tables"}) {
            std::uint64_t n = 0;
            if (db->GetIntProperty(family, property, &n)) rows += n;
        }
    }
    return rows;
}

// A batch not made by the store that writes it (all in the default column family, or
// in another store's), with each row moved to the key space its key belongs to.
class Router final : public rocksdb::WriteBatch::Handler {
public:
    Router(const KeySpaces& spaces, rocksdb::WriteBatch& out) : spaces_(spaces), out_(out) {}
    rocksdb::Status PutCF(std::uint32_t, const rocksdb::Slice& key, const rocksdb::Slice& value) override {
        return out_.Put(spaces_.of(key), key, value);
    }
    rocksdb::Status DeleteCF(std::uint32_t, const rocksdb::Slice& key) override {
        return out_.Delete(spaces_.of(key), key);
    }
    rocksdb::Status DeleteRangeCF(std::uint32_t, const rocksdb::Slice& begin, const rocksdb::Slice& end) override {
        rocksdb::ColumnFamilyHandle* family = spaces_.range_family(begin);
        if (!family) return rocksdb::Status::InvalidArgument(kRangeDeleteRefused);
        return out_.DeleteRange(family, begin, end);
    }

private:
    const KeySpaces& spaces_;
    rocksdb::WriteBatch& out_;
};
}  // namespace

void set_store_log(StoreLog log) { g_store_log.store(log, std::memory_order_relaxed); }

Store::Store(std::string dir, std::unique_ptr<Impl> impl)
    : dir_(std::move(dir)), impl_(std::move(impl)) {}

Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::open(const std::string& dir, const StoreOptions& options) {
    rocksdb::Options o;
    o.create_if_missing = options.create_if_missing;
    o.max_background_jobs = 2;
    o.bytes_per_sync = 1 << 20;
    o.write_buffer_size = options.write_buffer_mb << 20;
    o.max_write_buffer_number = 3;
    // The same memtable memory in all, however many key spaces share it.
    o.db_write_buffer_size = 3 * (options.write_buffer_mb << 20);
    o.level_compaction_dynamic_level_bytes = true;
    // Rows written at random keys: each compaction into the base level rewrites the
    // files of it that the level-0 files overlap, nearly all of them. Waiting for
    // eight files instead of four halves how often; at ten million keys the background
    // threads took a quarter to two fifths less CPU over 200 heights (reads check a few
    // more files, each behind a bloom filter). With rising families, the default
    // family waits for four times as many files, each a quarter the size (below).
    o.level0_file_num_compaction_trigger = 8;
    // Recent levels churn: not worth compressing.
    o.compression_per_level = {rocksdb::kNoCompression, rocksdb::kNoCompression, rocksdb::kLZ4Compression,
                               rocksdb::kLZ4Compression, rocksdb::kLZ4Compression, rocksdb::kLZ4Compression,
                               rocksdb::kLZ4Compression};

    o.max_total_wal_size = 4 * (options.write_buffer_mb << 20);
    o.info_log =
        std::make_shared<StderrLogger>(options.read_only || !options.secondary_dir.empty());
    if (options.seek_prefix_length > 0) {
        o.prefix_extractor.reset(rocksdb::NewCappedPrefixTransform(options.seek_prefix_length));
        o.memtable_prefix_bloom_size_ratio = 0.02;
    }
    rocksdb::BlockBasedTableOptions t;
    t.block_cache = rocksdb::NewLRUCache(options.block_cache_mb << 20);
    t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    // With a seek prefix, the filters hold the keys' prefixes only: a point read is
    // checked by its key's prefix, which names one row as surely for the short keys
    // (shorter than the prefix: the whole key) and for the value rows (one path), and
    // each row costs the filter one entry instead of two, in every file a compaction
    // writes and in the block cache.
    t.whole_key_filtering = options.seek_prefix_length == 0;
    // Index and filters in small partitions behind a pinned top level: a lookup in a
    // large database then loads a 4 KiB partition, not a whole table's index, and they
    // all live within the block cache budget.
    t.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
    t.partition_filters = true;
    t.metadata_block_size = 4096;
    t.cache_index_and_filter_blocks = true;
    t.cache_index_and_filter_blocks_with_high_priority = true;
    t.pin_top_level_index_and_filter = true;
    t.pin_l0_filter_and_index_blocks_in_cache = true;
    t.format_version = 5;
    o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));

    const bool secondary = !options.secondary_dir.empty();
    // Required of secondary instances; a read-only one keeps every file it opened even
    // after the writer deletes it.
    if (secondary || options.read_only) o.max_open_files = -1;
    const bool exists = std::filesystem::exists(std::filesystem::path(dir) / "CURRENT");
    if ((!options.create_if_missing || options.read_only || secondary) &&
        !exists) {
        return make_error(ErrorCode::kNotFound, "no database at " + dir);
    }
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::kIoError, "cannot create " + dir + ": " + ec.message());
    // Flushes and compactions write and read their files around the page cache: the
    // kernel's copy of each flushed byte into the page cache was half of the flush
    // thread's CPU. At ten million keys the process took a sixth less CPU per changed
    // key (docs/performance.md). Compactions then read ahead 2 MiB at a time, or each
    // block would be a read of its own, which cost more than the copy saved. Reads of
    // values and nodes stay buffered.
    if (!options.read_only && !secondary && direct_writes_work(dir)) {
        o.use_direct_io_for_flush_and_compaction = true;
        o.compaction_readahead_size = 2 << 20;
    }

    rocksdb::Status s;
    // The rising prefixes' column families: created with a new database; an existing
    // database is opened with the families it has (and the missing ones are seen to
    // below).
    std::vector<std::string> families;
    if (exists) {
        s = rocksdb::DB::ListColumnFamilies(o, dir, &families);
        if (!s.ok()) return std::unexpected(open_error(s, dir));
    } else {
        families = {rocksdb::kDefaultColumnFamilyName};
        for (char c : options.rising_prefixes) families.push_back(rising_family(static_cast<std::uint8_t>(c)));
        o.create_missing_column_families = true;
    }
    auto family_options = [&](const std::string& name) {
        rocksdb::ColumnFamilyOptions family(o);
        // A rising family's files only ever move down a level; compressing them on the
        // way would rewrite them instead (and the tree's hashes do not compress).
        if (name != rocksdb::kDefaultColumnFamilyName) {
            family.compression_per_level.clear();
            family.compression = rocksdb::kNoCompression;
        } else if (families.size() > 1 || !options.rising_prefixes.empty()) {
            // A batch's rows of one leading byte come in key order (a height's values
            // sorted by path): each memtable insert then starts where the last one of
            // that byte ended, instead of a search from the top of a skip list of random
            // keys, where every step is a cache miss. Not on the rising families:
            // RocksDB 7.8 keeps one hint for a memtable's rows and its range deletes,
            // and mixing them trips its assertions. With rising families, no range
            // delete reaches the default family (KeySpaces::range_family).
            family.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(1));
            // Even so, each insert passes the rows already in the memtable that sort
            // between it and the last one, a cache miss per step of the search: with the
            // memtable a quarter the size there are a quarter as many. Four times as many
            // level-0 files before a merge keep each merge the same in bytes. At ten
            // million keys the write thread took a quarter less CPU and the process 6 %
            // less per changed key; a read at the tip checks more level-0 files
            // (docs/performance.md). Writes slow and stop 16 and 32 files after that.
            constexpr int kSmaller = 4;  // memtables this many times smaller, as many more files
            family.write_buffer_size = std::max<std::size_t>(o.write_buffer_size / kSmaller, 64 << 10);
            family.level0_file_num_compaction_trigger = kSmaller * o.level0_file_num_compaction_trigger;
            family.level0_slowdown_writes_trigger = family.level0_file_num_compaction_trigger + 16;
            family.level0_stop_writes_trigger = family.level0_file_num_compaction_trigger + 32;
        }
        return family;
    };
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : families) descriptors.emplace_back(name, family_options(name));
    std::vector<rocksdb::ColumnFamilyHandle*> handles;

    rocksdb::DB* db = nullptr;
    if (secondary) {
        std::filesystem::create_directories(options.secondary_dir, ec);
        s = rocksdb::DB::OpenAsSecondary(o, dir, options.secondary_dir, descriptors, &handles, &db);
    } else if (options.read_only) {
        // A writer in another process may delete a file (after a flush or compaction)
        // between our reading the MANIFEST that lists it and opening it; the next
        // attempt reads the newer MANIFEST. Once open, every file is held open.
        //
        // It may also flush a log and delete it between our reading the MANIFEST and our
        // listing the logs: that log's rows would be missing and a later log's present,
        // a hole (a query beside `apply` found a height record missing, 1 in 2,500). Any
        // log that vanished while we opened may have made one: that attempt is closed
        // and made again.
        for (int attempt = 0;; ++attempt) {
            const std::vector<std::string> logs_before = log_files(dir);
            s = rocksdb::DB::OpenForReadOnly(o, dir, descriptors, &handles, &db);
            bool vanished = s.ToString().find("No such file or directory") != std::string::npos;
            if (s.ok() && !std::ranges::includes(log_files(dir), logs_before)) {
                for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
                handles.clear();
                delete db;
                db = nullptr;
                s = rocksdb::Status::IOError("a log of " + dir + " vanished while it was opened, over and over");
                vanished = true;
            }
            if (s.ok() || !vanished || attempt == 20) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(5 << std::min(attempt, 5)));
        }
    } else {
        s = rocksdb::DB::Open(o, dir, descriptors, &handles, &db);
    }
    if (!s.ok()) return std::unexpected(open_error(s, dir));
    auto impl = std::make_unique<Impl>();
    impl->db.reset(db);
    impl->spaces.db = db;
    auto file = [&](rocksdb::ColumnFamilyHandle* handle) {
        // The default family is reached through the database's own handle.
        if (handle->GetName() == rocksdb::kDefaultColumnFamilyName) {
            db->DestroyColumnFamilyHandle(handle);
            return;
        }
        impl->spaces.rising.push_back(handle);
        for (char c : options.rising_prefixes) {
            const auto prefix = static_cast<std::uint8_t>(c);
            if (handle->GetName() == rising_family(prefix)) impl->spaces.family_of[prefix] = handle;
        }
    };
    for (rocksdb::ColumnFamilyHandle* handle : handles) file(handle);

    // RocksDB writes a new database's CURRENT before it creates the families, one at a
    // time: a kill in between leaves some missing, and their rows would go to the
    // default family, where rollback's range deletes are refused. While the database
    // holds no row the writer creates them. With rows they are left missing, for the
    // caller to refuse knowing what the database is (a family created now would hide
    // the rows of its prefix already in the default family).
    std::vector<std::string> missing;
    for (char c : options.rising_prefixes) {
        const auto prefix = static_cast<std::uint8_t>(c);
        if (!impl->spaces.family_of[prefix]) missing.push_back(rising_family(prefix));
    }
    bool holds_rows = false;
    for (rocksdb::ColumnFamilyHandle* family : impl->spaces.all()) {
        if (missing.empty() || holds_rows) break;
        rocksdb::ReadOptions ro;
        ro.total_order_seek = true;
        const std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, family));
        it->SeekToFirst();
        if (!it->status().ok()) return std::unexpected(open_error(it->status(), dir));
        holds_rows = it->Valid();
    }
    if (holds_rows) {
        impl->missing_families = std::move(missing);
    } else if (!missing.empty() && !options.read_only && !secondary) {
        std::vector<rocksdb::ColumnFamilyDescriptor> more;
        for (const std::string& name : missing) more.emplace_back(name, family_options(name));
        std::vector<rocksdb::ColumnFamilyHandle*> created;
        s = db->CreateColumnFamilies(more, &created);
        for (rocksdb::ColumnFamilyHandle* handle : created) file(handle);
        if (!s.ok()) return std::unexpected(open_error(s, dir));
    }
    impl->write_options.sync = options.sync;
    impl->secondary = secondary;
    impl->options = options;
    if (secondary) impl->table_files = table_files(*db);
    return std::unique_ptr<Store>(new Store(dir, std::move(impl)));
}

const std::vector<std::string>& Store::missing_families() const { return impl_->missing_families; }

Result<std::optional<Bytes>> Store::get(ByteView key,
                                        const std::shared_ptr<const Snapshot>& snapshot) const {
    rocksdb::ReadOptions ro;
    ro.snapshot = raw(snapshot);
    rocksdb::PinnableSlice value;
    const rocksdb::Status s = impl_->db->Get(ro, impl_->spaces.of(slice(key)), slice(key), &value);
    if (s.IsNotFound()) return std::optional<Bytes>();
    if (!s.ok()) return std::unexpected(to_error(s, "read"));
    const ByteView v = view(value);
    return std::optional<Bytes>(Bytes(v.begin(), v.end()));
}

WriteBatch Store::batch(std::size_t reserve_bytes) const {
    auto batch = std::make_unique<WriteBatch::Impl>(reserve_bytes);
    batch->spaces = &impl_->spaces;
    return WriteBatch(std::move(batch));
}

Status Store::write(const WriteBatch& batch) {
    const std::uint64_t index = writes_++;
    if (write_fault_) {
        if (Status st = write_fault_(batch, index); !st) return st;
    }
    rocksdb::WriteBatch& staged = batch.impl_->batch;
    rocksdb::Status s;
    if (batch.impl_->refused) {
        s = rocksdb::Status::InvalidArgument(kRangeDeleteRefused);
    } else if (batch.impl_->spaces != &impl_->spaces && !impl_->spaces.rising.empty()) {
        rocksdb::WriteBatch routed(staged.GetDataSize());
        Router router(impl_->spaces, routed);
        s = staged.Iterate(&router);
        if (s.ok()) s = impl_->db->Write(impl_->write_options, &routed);
    } else {
        s = impl_->db->Write(impl_->write_options, &staged);
    }
    if (!s.ok()) return std::unexpected(to_error(s, "write"));
    return {};
}

std::shared_ptr<const Snapshot> Store::snapshot() const {
    // A secondary instance's snapshot would isolate nothing: its point reads ignore it,
    // it does not hold back catch_up(), and RocksDB 7.8 refuses an iterator that has one.
    // Reads through this one see the state of the last catch-up, which the caller keeps
    // out while it reads (the server's replica takes a reader lock per request;
    // docs/design.md, "Replicas").
    if (impl_->secondary) return std::make_shared<RocksSnapshot>(impl_->db.get(), nullptr);
    return std::make_shared<RocksSnapshot>(impl_->db.get(), impl_->db->GetSnapshot());
}

std::unique_ptr<Iterator> Store::iterator(IteratorOptions options) const {
    return std::make_unique<RocksIterator>(impl_->spaces, std::move(options));
}

std::uint64_t Store::disk_bytes() const {
    std::uint64_t total = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_, ec)) {
        if (entry.is_regular_file(ec)) total += entry.file_size(ec);
    }
    return total;
}

Status Store::flush() {
    const rocksdb::Status s = impl_->db->Flush(rocksdb::FlushOptions(), impl_->spaces.all());
    if (!s.ok()) return std::unexpected(to_error(s, "flush"));
    return {};
}

Status Store::compact() {
    rocksdb::CompactRangeOptions o;
    o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    for (rocksdb::ColumnFamilyHandle* family : impl_->spaces.all()) {
        const rocksdb::Status s = impl_->db->CompactRange(o, family, nullptr, nullptr);
        if (!s.ok()) return std::unexpected(to_error(s, "compact"));
    }
    return {};
}

Status Store::catch_up() {
    const bool held_rows = memtable_rows(impl_->db.get(), impl_->spaces) > 0;
    const rocksdb::Status s = impl_->db->TryCatchUpWithPrimary();
    if (!s.ok()) return std::unexpected(to_error(s, "catch up with the primary"));
    // RocksDB 7.8's secondary keeps in its memtable the rows it replayed from a log the
    // primary has since flushed, and they hide the newer rows the flush wrote to a
    // table file (facebook/rocksdb#15051): after a rollback and a flush, a replica went
    // on reading the rolled-back tip. A flush changes the set of table files, and so
    // does a compaction that merges its file away, with or without writing another.
    // When the set changed and the memtables hold rows, before or after, the secondary
    // is opened again: it then replays only the logs the primary still has, on top of
    // the table files. (A compaction alone reopens it too, which costs time, not rows.)
    std::vector<std::uint64_t> files = table_files(*impl_->db);
    const bool changed = files != impl_->table_files;
    impl_->table_files = std::move(files);
    if (!changed || (!held_rows && memtable_rows(impl_->db.get(), impl_->spaces) == 0)) return {};
    auto fresh = Store::open(dir_, impl_->options);
    if (!fresh) return with_context(fresh.error(), "open the secondary again");
    std::swap(impl_, (*fresh)->impl_);
    return {};
}

Status Store::checkpoint(const std::string& dir) {
    rocksdb::Checkpoint* raw = nullptr;
    rocksdb::Status s = rocksdb::Checkpoint::Create(impl_->db.get(), &raw);
    std::unique_ptr<rocksdb::Checkpoint> cp(raw);
    if (s.ok()) s = cp->CreateCheckpoint(dir);
    if (!s.ok()) return std::unexpected(to_error(s, "checkpoint to " + dir));
    return {};
}

}  // namespace stateroot::storage
