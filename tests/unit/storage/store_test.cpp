#include "stateroot/storage/store.hpp"

#include <catch2/catch.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::storage;

namespace {
Bytes b(std::string_view s) { return Bytes(s.begin(), s.end()); }
std::unique_ptr<Store> open_store(const test::TempDir& dir, StoreOptions o = {}) {
    auto s = Store::open(dir.str(), o);
    REQUIRE(s);
    return std::move(*s);
}
StoreOptions with_rising(const char* prefixes) {
    StoreOptions o;
    o.rising_prefixes = prefixes;
    return o;
}
// A secondary instance following the store in `dir` (opened with rising prefix "n").
std::unique_ptr<Store> open_secondary(const test::TempDir& dir) {
    StoreOptions o = with_rising("n");
    o.secondary_dir = dir.sub("scratch");
    return open_store(dir, o);
}
}  // namespace

TEST_CASE("store: a batch is applied whole and read back", "[storage]") {
    test::TempDir dir;
    auto store = open_store(dir);
    WriteBatch batch;
    batch.put(b("a"), b("1"));
    batch.put(b("b"), b("2"));
    batch.del(b("c"));
    CHECK(batch.rows() == 3);
    REQUIRE(store->write(batch));
    CHECK(store->get(b("a")).value() == b("1"));
    CHECK(store->get(b("b")).value() == b("2"));
    CHECK_FALSE(store->get(b("c")).value().has_value());
}

TEST_CASE("store: a value put in parts is their concatenation, in any key space", "[storage]") {
    const bool by_store = GENERATE(false, true);
    CAPTURE(by_store);
    test::TempDir dir;
    auto store = open_store(dir, with_rising("n"));
    WriteBatch batch = by_store ? store->batch() : WriteBatch();
    const Bytes x = b("head"), y = b(""), z = b("tail");
    const ByteView three[3] = {x, y, z};
    batch.put(b("a"), three);
    batch.put(b("n1"), std::span<const ByteView>(three, 1));
    batch.put(b("n2"), std::span<const ByteView>());
    CHECK(batch.rows() == 3);
    CHECK(batch.bytes() == 1 + 8 + 2 + 4 + 2);
    REQUIRE(store->write(batch));
    CHECK(store->get(b("a")).value() == b("headtail"));
    CHECK(store->get(b("n1")).value() == b("head"));
    CHECK(store->get(b("n2")).value() == b(""));
}

TEST_CASE("store: a snapshot does not see later writes", "[storage]") {
    test::TempDir dir;
    auto store = open_store(dir);
    WriteBatch first;
    first.put(b("k"), b("old"));
    REQUIRE(store->write(first));
    auto snap = store->snapshot();
    WriteBatch second;
    second.put(b("k"), b("new"));
    second.put(b("j"), b("x"));
    REQUIRE(store->write(second));
    CHECK(store->get(b("k"), snap).value() == b("old"));
    CHECK_FALSE(store->get(b("j"), snap).value().has_value());
    CHECK(store->get(b("k")).value() == b("new"));
}

TEST_CASE("store: iterators honour the upper bound", "[storage]") {
    test::TempDir dir;
    auto store = open_store(dir);
    WriteBatch batch;
    for (const char* k : {"a1", "a2", "b1", "c1"}) batch.put(b(k), b("v"));
    REQUIRE(store->write(batch));
    IteratorOptions io;
    io.upper_bound = b("b2");
    auto it = store->iterator(io);
    std::vector<std::string> seen;
    for (it->seek(b("a2")); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
    CHECK(it->status());
    CHECK(seen == std::vector<std::string>{"a2", "b1"});
}

TEST_CASE("store: a same-prefix iterator stops at the end of the seek key's prefix", "[storage]") {
    test::TempDir dir;
    StoreOptions o;
    o.seek_prefix_length = 2;
    auto store = open_store(dir, o);
    WriteBatch batch;
    for (const char* k : {"aa1", "aa2", "ab1"}) batch.put(b(k), b("v"));
    REQUIRE(store->write(batch));
    IteratorOptions io;
    io.same_prefix = true;
    auto it = store->iterator(io);
    std::vector<std::string> seen;
    for (it->seek(b("aa")); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
    CHECK(seen == std::vector<std::string>{"aa1", "aa2"});
}

TEST_CASE("store: data survives closing and reopening", "[storage]") {
    test::TempDir dir;
    {
        auto store = open_store(dir);
        WriteBatch batch;
        batch.put(b("k"), b("v"));
        REQUIRE(store->write(batch));
    }
    auto store = open_store(dir);
    CHECK(store->get(b("k")).value() == b("v"));
}

TEST_CASE("store: a second writer on the same directory is refused as busy", "[storage]") {
    test::TempDir dir;
    auto store = open_store(dir);
    auto second = Store::open(dir.str(), {});
    REQUIRE_FALSE(second);
    CHECK(second.error().code == ErrorCode::kBusy);
}

TEST_CASE("store: a read-only open beside the writer sees what was written", "[storage]") {
    test::TempDir dir;
    auto store = open_store(dir);
    WriteBatch batch;
    batch.put(b("k"), b("v"));
    REQUIRE(store->write(batch));
    REQUIRE(store->flush());
    StoreOptions o;
    o.read_only = true;
    auto reader = Store::open(dir.str(), o);
    REQUIRE(reader);
    CHECK((*reader)->get(b("k")).value() == b("v"));
    CHECK_FALSE((*reader)->write(batch));
}

TEST_CASE("store: opening a missing database read-only is not found", "[storage]") {
    test::TempDir dir;
    StoreOptions o;
    o.read_only = true;
    auto s = Store::open(dir.sub("nothing"), o);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == ErrorCode::kNotFound);
}

TEST_CASE("store: an injected write fault writes nothing and returns the error",
          "[storage][fault]") {
    test::TempDir dir;
    auto store = open_store(dir);
    store->set_write_fault([](const WriteBatch&, std::uint64_t index) -> Status {
        if (index == 1) return make_error(ErrorCode::kIoError, "injected");
        return {};
    });
    WriteBatch one;
    one.put(b("a"), b("1"));
    REQUIRE(store->write(one));
    WriteBatch two;
    two.put(b("b"), b("2"));
    auto s = store->write(two);
    REQUIRE_FALSE(s);
    CHECK(s.error().message == "injected");
    CHECK_FALSE(store->get(b("b")).value().has_value());
    REQUIRE(store->write(two));  // write number 2: no fault
    CHECK(store->get(b("b")).value() == b("2"));
}

TEST_CASE("store: each rising prefix lives in a key space of its own, written atomically with the rest",
          "[storage]") {
    // A batch made by the store files each row under its key space as it is added; one
    // made by the constructor (or by another store) is filed by write().
    const int made_by = GENERATE(0, 1, 2);  // the constructor, this store, another store
    CAPTURE(made_by);
    test::TempDir dir, other_dir;
    const StoreOptions o = with_rising("nc");
    auto other = open_store(other_dir, with_rising("n"));
    auto new_batch = [&](const Store& store) {
        return made_by == 0 ? WriteBatch() : made_by == 1 ? store.batch() : other->batch();
    };
    auto scan = [](Store& store, std::string_view from) {
        std::vector<std::string> seen;
        auto it = store.iterator();
        for (it->seek(b(from)); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
        CHECK(it->status());
        return seen;
    };
    {
        auto store = open_store(dir, o);
        WriteBatch batch = new_batch(*store);
        for (const char* k : {"a1", "c1", "n1", "n2", "z1"}) batch.put(b(k), b(k));
        REQUIRE(store->write(batch));
        for (const char* k : {"a1", "c1", "n1", "n2", "z1"}) CHECK(store->get(b(k)).value() == b(k));
        // An iterator sees the key space of the key it was sought to.
        CHECK(scan(*store, "a") == std::vector<std::string>{"a1", "z1"});
        CHECK(scan(*store, "c") == std::vector<std::string>{"c1"});
        CHECK(scan(*store, "n") == std::vector<std::string>{"n1", "n2"});

        WriteBatch both = new_batch(*store);
        both.put(b("a2"), b("a2"));
        both.del_range(b("n1"), b("n2"));
        both.del(b("z1"));
        both.put(b("c2"), b("c2"));
        REQUIRE(store->write(both));
        CHECK(scan(*store, "a") == std::vector<std::string>{"a1", "a2"});
        CHECK(scan(*store, "c") == std::vector<std::string>{"c1", "c2"});
        CHECK(scan(*store, "n") == std::vector<std::string>{"n2"});

        // A failed write leaves both key spaces as they were.
        store->set_write_fault([](const WriteBatch&, std::uint64_t) { return make_error(ErrorCode::kIoError, "injected"); });
        WriteBatch failed = new_batch(*store);
        failed.put(b("a3"), b("a3"));
        failed.put(b("n3"), b("n3"));
        CHECK_FALSE(store->write(failed));
        CHECK_FALSE(store->get(b("n3")).value().has_value());
        CHECK_FALSE(store->get(b("a3")).value().has_value());
        REQUIRE(store->flush());
        REQUIRE(store->compact());
    }
    auto store = open_store(dir, o);
    CHECK(scan(*store, "n") == std::vector<std::string>{"n2"});
    CHECK(scan(*store, "c") == std::vector<std::string>{"c1", "c2"});
    CHECK(store->get(b("a2")).value() == b("a2"));
    StoreOptions ro = o;
    ro.read_only = true;
    auto reader = Store::open(dir.str(), ro);
    REQUIRE(reader);
    CHECK((*reader)->get(b("n2")).value() == b("n2"));
    CHECK(scan(**reader, "a") == std::vector<std::string>{"a1", "a2"});
}

TEST_CASE("store: with rising prefixes, a range delete elsewhere is refused and writes nothing",
          "[storage]") {
    const bool by_store = GENERATE(false, true);
    CAPTURE(by_store);
    test::TempDir dir;
    auto store = open_store(dir, with_rising("n"));
    WriteBatch batch;
    for (const char* k : {"a1", "a2", "a3"}) batch.put(b(k), b(k));
    REQUIRE(store->write(batch));

    WriteBatch bad = by_store ? store->batch(1 << 10) : WriteBatch();
    bad.put(b("n1"), b("n1"));
    bad.del_range(b("a1"), b("a3"));
    auto w = store->write(bad);
    REQUIRE_FALSE(w);
    CHECK(w.error().message.find("range delete") != std::string::npos);
    for (const char* k : {"a1", "a2", "a3"}) CHECK(store->get(b(k)).value() == b(k));
    CHECK_FALSE(store->get(b("n1")).value().has_value());
}

TEST_CASE("store: rows of one leading byte may come in any order, within a batch and across",
          "[storage]") {
    // Memtable inserts start from where the last one of the same leading byte ended;
    // keys before it, equal to it (a delete of a row just written) or far from it must
    // land as well.
    test::TempDir dir;
    auto store = open_store(dir, with_rising("n"));
    std::vector<std::string> keys;
    for (int i = 0; i < 200; ++i) keys.push_back(fmt::format("v{:03}", (i * 37) % 200));
    WriteBatch up;
    for (const std::string& k : keys) up.put(b(k), b(k));
    REQUIRE(store->write(up));
    WriteBatch down;
    down.put(b("v001"), b("x"));
    for (int i = 199; i >= 0; i -= 2) down.del(b(fmt::format("v{:03}", i)));
    down.put(b("v000"), b("again"));
    REQUIRE(store->write(down));
    for (int i = 0; i < 200; ++i) {
        const std::string k = fmt::format("v{:03}", i);
        auto v = store->get(b(k));
        REQUIRE(v);
        if (i == 0) {
            CHECK(v->value() == b("again"));
        } else if (i % 2 == 1) {
            CHECK_FALSE(v->has_value());
        } else {
            CHECK(v->value() == b(k));
        }
    }
    std::size_t n = 0;
    auto it = store->iterator();
    for (it->seek(b("v")); it->valid(); it->next()) ++n;
    CHECK(n == 100);
}

TEST_CASE("store: a secondary instance iterates and reads through its snapshots", "[storage][secondary]") {
    // RocksDB 7.8 refuses an iterator with a snapshot on a secondary instance; every
    // read of a replica goes through one.
    test::TempDir dir;
    auto primary = open_store(dir, with_rising("n"));
    WriteBatch batch = primary->batch();
    for (const char* k : {"a1", "n1", "n2"}) batch.put(b(k), b(k));
    REQUIRE(primary->write(batch));
    auto secondary = open_secondary(dir);
    auto scan = [&](std::string_view from) {
        IteratorOptions io;
        io.snapshot = secondary->snapshot();
        auto it = secondary->iterator(io);
        std::vector<std::string> seen;
        for (it->seek(b(from)); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
        auto status = it->status();
        INFO((status ? std::string() : status.error().message));
        CHECK(status);
        return seen;
    };
    CHECK(scan("a") == std::vector<std::string>{"a1"});
    CHECK(scan("n") == std::vector<std::string>{"n1", "n2"});
    CHECK(secondary->get(b("n2"), secondary->snapshot()).value() == b("n2"));

    WriteBatch more = primary->batch();
    more.put(b("n3"), b("n3"));
    more.del(b("a1"));
    REQUIRE(primary->write(more));
    REQUIRE(secondary->catch_up());
    CHECK(scan("a").empty());
    CHECK(scan("n") == std::vector<std::string>{"n1", "n2", "n3"});
}

TEST_CASE("store: a secondary sees what the primary wrote and flushed between two catch-ups", "[storage][secondary]") {
    // RocksDB 7.8's secondary keeps the rows it replayed from a log the primary has since
    // flushed, and they hide the newer rows the flush wrote (facebook/rocksdb#15051):
    // a replica went on answering a rolled-back tip. Each case overwrites or deletes a
    // row the secondary has seen, in a rising family and in the default one, and flushes
    // before the secondary looks again.
    const bool flush_twice = GENERATE(false, true);
    CAPTURE(flush_twice);
    test::TempDir dir;
    auto primary = open_store(dir, with_rising("n"));
    WriteBatch batch = primary->batch();
    for (const char* k : {"a1", "a2", "n1", "n2"}) batch.put(b(k), b("old"));
    REQUIRE(primary->write(batch));
    auto secondary = open_secondary(dir);
    REQUIRE(secondary->catch_up());
    CHECK(secondary->get(b("a1"), secondary->snapshot()).value() == b("old"));

    WriteBatch more = primary->batch();
    more.put(b("a1"), b("new"));
    more.del(b("a2"));
    more.put(b("n1"), b("new"));
    more.del(b("n2"));
    REQUIRE(primary->write(more));
    REQUIRE(primary->flush());
    if (flush_twice) {
        WriteBatch third = primary->batch();
        third.put(b("a3"), b("new"));
        REQUIRE(primary->write(third));
        REQUIRE(primary->flush());
    }
    for (int round = 0; round < 2; ++round) {  // and it stays so
        REQUIRE(secondary->catch_up());
        const auto snap = secondary->snapshot();
        CHECK(secondary->get(b("a1"), snap).value() == b("new"));
        CHECK(secondary->get(b("a2"), snap).value() == std::nullopt);
        CHECK(secondary->get(b("n1"), snap).value() == b("new"));
        CHECK(secondary->get(b("n2"), snap).value() == std::nullopt);
        auto scan = [&](std::string_view from) {
            IteratorOptions io;
            io.snapshot = snap;
            auto it = secondary->iterator(io);
            std::vector<std::string> seen;
            for (it->seek(b(from)); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
            return seen;
        };
        CHECK(scan("a") == (flush_twice ? std::vector<std::string>{"a1", "a3"} : std::vector<std::string>{"a1"}));
        CHECK(scan("n") == std::vector<std::string>{"n1"});
    }
}

TEST_CASE("store: a secondary sees rows deleted, flushed and compacted away to no file at all",
          "[storage][secondary]") {
    // The flush's file is merged away with no file written in its place: the newest
    // file number does not grow, yet the rows the secondary replayed are stale.
    test::TempDir dir;
    auto primary = open_store(dir, with_rising("n"));
    WriteBatch first = primary->batch();
    first.put(b("a1"), b("x"));
    REQUIRE(primary->write(first));
    REQUIRE(primary->flush());
    auto secondary = open_secondary(dir);
    WriteBatch second = primary->batch();
    second.put(b("a2"), b("x"));
    REQUIRE(primary->write(second));
    REQUIRE(secondary->catch_up());
    CHECK(secondary->get(b("a2"), secondary->snapshot()).value() == b("x"));
    WriteBatch gone = primary->batch();
    gone.del(b("a1"));
    gone.del(b("a2"));
    REQUIRE(primary->write(gone));
    REQUIRE(primary->flush());
    REQUIRE(primary->compact());
    for (int round = 0; round < 2; ++round) {
        REQUIRE(secondary->catch_up());
        CHECK(secondary->get(b("a1"), secondary->snapshot()).value() == std::nullopt);
        CHECK(secondary->get(b("a2"), secondary->snapshot()).value() == std::nullopt);
    }
}

TEST_CASE("store: an empty database missing some of its rising key spaces gets them at the writer's open",
          "[storage]") {
    // RocksDB writes CURRENT before it creates the column families of a new database,
    // one at a time: a kill in between leaves a database that has some, or none. Opened
    // with fewer prefixes, then with all, is the same directory.
    const std::string before = GENERATE(std::string(), std::string("n"));
    CAPTURE(before);
    test::TempDir dir;
    open_store(dir, with_rising(before.c_str())).reset();
    {
        auto store = open_store(dir, with_rising("nc"));
        WriteBatch batch = store->batch();
        for (const char* k : {"a1", "c1", "c2", "n1"}) batch.put(b(k), b(k));
        REQUIRE(store->write(batch));
        // A range delete is taken in each rising key space, refused in no other.
        WriteBatch range = store->batch();
        range.del_range(b("c1"), b("c2"));
        range.del_range(b("n1"), b("n2"));
        auto w = store->write(range);
        INFO((w ? std::string() : w.error().message));
        REQUIRE(w);
    }
    auto store = open_store(dir, with_rising("nc"));
    auto it = store->iterator();
    std::vector<std::string> seen;
    for (it->seek(b("c")); it->valid(); it->next()) seen.emplace_back(as_chars(it->key()));
    CHECK(seen == std::vector<std::string>{"c2"});
    CHECK_FALSE(store->get(b("n1")).value().has_value());
    CHECK(store->get(b("a1")).value() == b("a1"));
}

TEST_CASE("store: a database that holds rows but lacks a rising key space says so and is left as it is",
          "[storage]") {
    // Creating the key space now would hide the rows of its prefix already written
    // elsewhere; the caller, which knows what the database is, refuses it.
    test::TempDir dir;
    {
        auto store = open_store(dir, with_rising("n"));
        WriteBatch batch = store->batch();
        batch.put(b("c1"), b("c1"));
        REQUIRE(store->write(batch));
    }
    const bool read_only = GENERATE(false, true);
    CAPTURE(read_only);
    StoreOptions o = with_rising("nc");
    o.read_only = read_only;
    auto s = Store::open(dir.str(), o);
    REQUIRE(s);
    CHECK((*s)->missing_families() == std::vector<std::string>{"rising-63"});
    CHECK((*s)->get(b("c1")).value() == b("c1"));
    s->reset();
    // Untouched: it still opens as it was made.
    auto store = open_store(dir, with_rising("n"));
    CHECK(store->get(b("c1")).value() == b("c1"));
}

TEST_CASE("store: a LOCK held by another process is busy", "[storage]") {
    test::TempDir dir;
    open_store(dir).reset();
    // The child takes the lock RocksDB takes (fcntl, the whole file) and holds it until
    // the parent closes the pipe.
    int ready[2], release[2];
    REQUIRE(pipe(ready) == 0);
    REQUIRE(pipe(release) == 0);
    const std::string lock = dir.sub("LOCK");
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(ready[0]);
        close(release[1]);
        const int fd = ::open(lock.c_str(), O_RDWR);
        struct flock f {};
        f.l_type = F_WRLCK;
        f.l_whence = SEEK_SET;
        const char ok = fd >= 0 && fcntl(fd, F_SETLK, &f) == 0 ? 1 : 0;
        if (write(ready[1], &ok, 1) != 1) _exit(1);
        char c;
        while (read(release[0], &c, 1) > 0) {
        }
        _exit(0);
    }
    close(ready[1]);
    close(release[0]);
    char ok = 0;
    REQUIRE(read(ready[0], &ok, 1) == 1);
    REQUIRE(ok == 1);
    auto s = Store::open(dir.str(), {});
    close(release[1]);
    close(ready[0]);
    int status = 0;
    waitpid(child, &status, 0);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == ErrorCode::kBusy);
    CHECK(s.error().message.find("the database is open in another process") != std::string::npos);
}

TEST_CASE("store: an IO error is not busy because a path says \"block\"", "[storage]") {
    // "lock" is in "blocks", a common directory name beside a chain's block files.
    test::TempDir dir;
    const std::string db = dir.sub("blocks");
    {
        auto s = Store::open(db, {});
        REQUIRE(s);
    }
    // CURRENT, which names the MANIFEST, cannot be read.
    std::filesystem::remove(db + "/CURRENT");
    std::filesystem::create_directory(db + "/CURRENT");
    auto s = Store::open(db, {});
    REQUIRE_FALSE(s);
    INFO(s.error().message);
    CHECK(s.error().message.find("blocks") != std::string::npos);
    CHECK(s.error().code == ErrorCode::kIoError);
}
