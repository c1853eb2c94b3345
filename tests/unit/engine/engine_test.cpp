#include "stateroot/engine/engine.hpp"
#include "stateroot/engine/node_store.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <set>

#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

Bytes b(std::string_view s) { return Bytes(s.begin(), s.end()); }

std::unique_ptr<Engine> open_engine(const test::TempDir& dir) {
    auto e = Engine::open(dir.str());
    REQUIRE(e);
    return std::move(*e);
}

Changes changes(std::uint64_t height, std::vector<std::pair<std::string, std::string>> puts,
                std::vector<std::string> deletes = {}) {
    Changes c;
    c.height = height;
    for (auto& [k, v] : puts) c.puts.emplace_back(b(k), b(v));
    for (auto& k : deletes) c.deletes.push_back(b(k));
    return c;
}

std::optional<Bytes> get(Engine& e, std::string_view key, std::uint64_t h) {
    auto v = e.view();
    REQUIRE(v);
    auto r = v->get(b(key), h);
    REQUIRE(r);
    return *r;
}

}  // namespace

TEST_CASE("engine: the first height may be any number and heights follow it", "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    CHECK_FALSE(e->tip());
    REQUIRE(e->apply(changes(1000, {{"a", "1"}})));
    CHECK(e->first() == 1000u);
    CHECK(e->tip() == 1000u);
    auto gap = e->apply(changes(1002, {{"b", "2"}}));
    REQUIRE_FALSE(gap);
    CHECK(gap.error().code == ErrorCode::kInvalidArgument);
    CHECK(gap.error().message == "height gap: the next height is 1001, got 1002");
    auto below = e->apply(changes(999, {{"b", "2"}}));
    REQUIRE_FALSE(below);
    CHECK(below.error().message == "height 999 is below the first committed height 1000");
    CHECK(e->tip() == 1000u);
}

TEST_CASE("engine: a key can be absent at some heights and present at others", "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(0, {{"k", "v0"}})));
    REQUIRE(e->apply(changes(1, {}, {"k"})));
    REQUIRE(e->apply(changes(2, {{"other", "x"}})));
    REQUIRE(e->apply(changes(3, {{"k", "v3"}})));
    REQUIRE(e->apply(changes(4, {{"k", ""}})));  // an empty put deletes
    CHECK(get(*e, "k", 0) == b("v0"));
    CHECK(get(*e, "k", 1) == std::nullopt);
    CHECK(get(*e, "k", 2) == std::nullopt);
    CHECK(get(*e, "k", 3) == b("v3"));
    CHECK(get(*e, "k", 4) == std::nullopt);
    CHECK(get(*e, "never", 4) == std::nullopt);
    CHECK(e->live_keys() == 1);
}

TEST_CASE("engine: re-applying a committed height is a no-op and different changes a conflict",
          "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    Changes c0 = changes(5, {{"a", "1"}, {"b", "2"}}, {"z"});
    c0.block_hash = sha256(b("block 5"));
    auto first = e->apply(c0);
    REQUIRE(first);
    REQUIRE(e->apply(changes(6, {{"c", "3"}})));

    // Same changes in another order, without the block hash: identical.
    Changes again = changes(5, {{"b", "2"}, {"a", "1"}}, {"z"});
    auto r = e->apply(again);
    REQUIRE(r);
    CHECK(r->already_committed);
    CHECK(r->root == first->root);
    CHECK(e->tip() == 6u);

    auto other = e->apply(changes(5, {{"a", "1"}, {"b", "3"}}, {"z"}));
    REQUIRE_FALSE(other);
    CHECK(other.error().code == ErrorCode::kConflict);
    CHECK(other.error().message ==
          "height 5 is already committed with different changes; to replace it, roll back first "
          "(stateroot rollback --height 4)");

    Changes other_hash = c0;
    other_hash.block_hash = sha256(b("another block"));
    auto h = e->apply(other_hash);
    REQUIRE_FALSE(h);
    CHECK(h.error().message ==
          "height 5 is already committed with different block hash; to replace it, roll back "
          "first (stateroot rollback --height 4)");

    // Heights of 2^63 and above are heights like any (not negative numbers).
    test::TempDir high_dir;
    auto high = open_engine(high_dir);
    const std::uint64_t big = std::uint64_t{1} << 63;
    REQUIRE(high->apply(changes(big, {{"a", "1"}})));
    REQUIRE(high->apply(changes(big + 1, {{"a", "2"}})));
    CHECK(high->apply(changes(big + 1, {{"a", "3"}})).error().message ==
          "height 9223372036854775809 is already committed with different changes; to replace it, "
          "roll back first (stateroot rollback --height 9223372036854775808)");
    CHECK(e->tip() == 6u);
}

TEST_CASE("engine: limits and repeated keys are rejected and nothing is committed", "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(0, {{"a", "1"}})));
    const Hash root = e->root();

    auto rejects = [&](Changes c, const std::string& message) {
        auto r = e->apply(c);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == ErrorCode::kInvalidArgument);
        CHECK(r.error().message == message);
        CHECK(e->tip() == 0u);
        CHECK(e->root() == root);
        CHECK(get(*e, "a", 0) == b("1"));
    };
    Changes big_key = changes(1, {});
    big_key.puts.emplace_back(Bytes(kMaxKeySize + 1, 0xab), b("v"));
    std::string ab;
    for (int i = 0; i < 32; ++i) ab += "ab";
    rejects(big_key, "put: key " + ab + "... (4097 bytes) is longer than the 4096-byte limit");
    Changes big_value = changes(1, {});
    big_value.puts.emplace_back(b("k"), Bytes(kMaxValueSize + 1, 1));
    rejects(big_value, "value of key 6b is 1048577 bytes, over the 1048576-byte limit");
    Changes empty_key = changes(1, {});
    empty_key.deletes.push_back(Bytes{});
    rejects(empty_key, "delete: empty key");
    rejects(changes(1, {{"k", "1"}}, {"k"}), "key 6b appears more than once");
    rejects(changes(1, {{"k", "1"}, {"k", "2"}}), "key 6b appears more than once");

    Changes at_limits = changes(1, {});
    at_limits.puts.emplace_back(Bytes(kMaxKeySize, 1), Bytes(kMaxValueSize, 2));
    REQUIRE(e->apply(at_limits));
    CHECK(get(*e, std::string(kMaxKeySize, '\x01'), 1) == Bytes(kMaxValueSize, 2));
}

TEST_CASE("engine: rollback restores every root and value and re-applying gives the same roots",
          "[engine][rollback]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    std::vector<Changes> all;
    std::vector<Hash> roots;
    for (std::uint64_t h = 10; h < 20; ++h) {
        all.push_back(changes(
            h, {{"k" + std::to_string(h % 4), "v" + std::to_string(h)}, {"x", std::to_string(h)}},
            h % 3 == 0 ? std::vector<std::string>{"k1"} : std::vector<std::string>{}));
        auto r = e->apply(all.back());
        REQUIRE(r);
        roots.push_back(r->root);
    }
    REQUIRE(e->rollback(14));
    CHECK(e->tip() == 14u);
    CHECK(e->root() == roots[4]);
    auto view = e->view();
    REQUIRE(view);
    for (std::uint64_t h = 10; h <= 14; ++h) CHECK(view->root(h).value() == roots[h - 10]);
    CHECK(view->root(15).error().message == "height 15 not found (heights 10..14 exist)");
    CHECK(get(*e, "x", 14) == b("14"));
    CHECK(view->recompute_root(14).value() == roots[4]);

    for (std::uint64_t h = 15; h < 20; ++h) {
        auto r = e->apply(all[h - 10]);
        REQUIRE(r);
        CHECK_FALSE(r->already_committed);
        CHECK(r->root == roots[h - 10]);
    }
    // Other changes after a rollback are a new history, in node chunks never used before.
    const std::uint64_t old_end = e->view()->record(19)->end_chunk;
    REQUIRE(e->rollback(17));
    auto r = e->apply(changes(18, {{"new", "value"}}));
    CHECK(e->view()->record(18)->first_chunk == old_end);
    REQUIRE(r);
    CHECK(r->root != roots[8]);
    CHECK(get(*e, "new", 18) == b("value"));
    CHECK(get(*e, "x", 18) == b("17"));
}

TEST_CASE("engine: rolling back below the first height empties the database",
          "[engine][rollback]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(3, {{"a", "1"}})));
    REQUIRE(e->apply(changes(4, {{"b", "1"}})));
    REQUIRE(e->rollback(std::nullopt));
    CHECK_FALSE(e->tip());
    CHECK(e->root() == kZeroHash);
    CHECK(e->live_keys() == 0);
    // Nothing but the format row and the chunk counter (which never goes back) is left.
    auto it = e->store().iterator();
    std::vector<std::string> rows;
    for (it->seek({}); it->valid(); it->next()) rows.emplace_back(as_chars(it->key()));
    CHECK(rows == std::vector<std::string>{"mformat", "mnext_chunk"});
    REQUIRE(e->apply(changes(0, {{"a", "1"}})));
    CHECK(e->first() == 0u);
}

TEST_CASE("engine: rollback costs what was written above the target and not the database",
          "[engine][rollback]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    for (std::uint64_t h = 0; h < 200; ++h) {
        Changes c = changes(h, {});
        for (int i = 0; i < 20; ++i)
            c.puts.emplace_back(b("key" + std::to_string(h * 20 + i)), b("v"));
        REQUIRE(e->apply(c));
    }
    std::size_t rows = 0;
    e->store().set_write_fault([&](const storage::WriteBatch& batch, std::uint64_t) -> Status {
        rows = batch.rows();
        return {};
    });
    REQUIRE(e->rollback(197));  // two heights
    // 20 values, the change index, stale list, record and a few node chunks per height.
    CHECK(rows > 2 * 20);
    CHECK(rows < 2 * (20 + 3 + 4) + 1);
}

TEST_CASE("engine: a failed height write leaves the database at the previous height",
          "[engine][fault]") {
    test::TempDir dir, reference_dir;
    auto e = open_engine(dir);
    auto reference = open_engine(reference_dir);
    for (std::uint64_t h = 0; h < 3; ++h) {
        const Changes c = changes(h, {{"k" + std::to_string(h), "v"}});
        REQUIRE(e->apply(c));
        REQUIRE(reference->apply(c));
    }
    const Hash root = e->root();
    const Changes next = changes(3, {{"k0", "changed"}, {"k9", "new"}}, {"k1"});
    e->store().set_write_fault([](const storage::WriteBatch&, std::uint64_t) -> Status {
        return make_error(ErrorCode::kIoError, "disk on fire");
    });
    auto r = e->apply(next);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kIoError);
    CHECK(r.error().message == "height 3: disk on fire");
    CHECK(e->tip() == 2u);
    CHECK(e->root() == root);
    CHECK(get(*e, "k0", 2) == b("v"));
    CHECK(e->view()->root(3).error().code == ErrorCode::kNotFound);

    auto failed_rollback = e->rollback(0);
    REQUIRE_FALSE(failed_rollback);
    CHECK(e->tip() == 2u);

    e->store().set_write_fault({});
    auto ok = e->apply(next);
    REQUIRE(ok);
    auto expected = reference->apply(next);
    REQUIRE(expected);
    CHECK(ok->root == expected->root);
}

TEST_CASE("engine: a failed write of any kind of row leaves the database at the previous height",
          "[engine][fault]") {
    // Each kind of row the engine writes, by key prefix; each case fails the first
    // batch that holds one, at a height commit or at a rollback.
    const std::vector<std::pair<char, std::string>> kinds = {
        {'v', "value versions"}, {'c', "change index"}, {'n', "tree nodes"}, {'s', "superseded nodes"},
        {'h', "height record (root, block hash)"}, {'m', "tip"}};
    for (const bool rollback : {false, true}) {
        for (const auto& [prefix, what] : kinds) {
            INFO((rollback ? "rollback: " : "commit: ") << what);
            test::TempDir dir, ref_dir;
            auto e = open_engine(dir);
            auto ref = open_engine(ref_dir);
            for (std::uint64_t h = 0; h < 4; ++h) {
                std::vector<std::string> deletes;
                if (h > 0) deletes.push_back("a" + std::to_string(h - 1));
                const Changes c = changes(h, {{"a" + std::to_string(h), "v"}, {"k0", std::to_string(h)}}, deletes);
                REQUIRE(e->apply(c));
                REQUIRE(ref->apply(c));
            }
            const Hash root = e->root();
            const char p = prefix;
            e->store().set_write_fault([p](const storage::WriteBatch& batch, std::uint64_t) -> Status {
                for (const Bytes& k : batch.keys()) {
                    if (!k.empty() && k[0] == static_cast<std::uint8_t>(p)) return make_error(ErrorCode::kIoError, "injected");
                }
                return {};
            });
            if (rollback) {
                REQUIRE_FALSE(e->rollback(1));
            } else {
                REQUIRE_FALSE(e->apply(changes(4, {{"k0", "new"}, {"k9", "x"}}, {"a3"})));
            }
            CHECK(e->tip() == 3u);
            CHECK(e->root() == root);
            auto v = e->view();
            CHECK(v->tip() == 3u);
            CHECK(v->get(b("k0"), 3).value() == b("3"));
            CHECK(v->recompute_root(3).value() == root);
            // Nothing half-written: the same commit succeeds afterwards, with the reference's root.
            e->store().set_write_fault({});
            const Changes next = changes(4, {{"k0", "new"}, {"k9", "x"}}, {"a3"});
            auto ok = e->apply(next);
            REQUIRE(ok);
            CHECK(ok->root == ref->apply(next)->root);
        }
    }
}

TEST_CASE("engine: with pipelined writes a failed write is reported next and the engine goes back",
          "[engine][fault]") {
    // Heights of 300 changes (the tree's two-thread path), each against a twin that
    // writes every height before apply() returns.
    auto height = [](std::uint64_t h) {
        std::vector<std::pair<std::string, std::string>> puts;
        for (int i = 0; i < 300; ++i) puts.emplace_back(fmt::format("k{}", (h * 37 + i * 11) % 1000), fmt::format("{}", h));
        std::vector<std::string> deletes{fmt::format("k{}", (h * 53) % 1000)};
        std::erase_if(puts, [&](const auto& p) { return p.first == deletes[0]; });
        return changes(h, puts, deletes);
    };
    for (const bool last : {false, true}) {
        INFO((last ? "the failed height is the last: settle() reports it" : "the next apply() reports it"));
        test::TempDir dir, ref_dir;
        EngineOptions options;
        options.pipelined_writes = true;
        auto opened = Engine::open(dir.str(), options);
        REQUIRE(opened);
        auto& e = *opened;
        auto ref = open_engine(ref_dir);
        std::vector<Hash> roots;
        for (std::uint64_t h = 0; h < 5; ++h) {
            auto r = e->apply(height(h));
            REQUIRE(r);
            roots.push_back(ref->apply(height(h))->root);
            CHECK(r->root == roots.back());
        }
        REQUIRE(e->settle());
        e->store().set_write_fault([](const storage::WriteBatch&, std::uint64_t) -> Status {
            return make_error(ErrorCode::kIoError, "injected");
        });
        REQUIRE(e->apply(height(5)));  // its write is in flight, and fails
        CHECK(e->tip() == 5u);
        std::optional<Error> reported;
        if (last) {
            if (auto s = e->settle(); !s) reported = s.error();
        } else {
            if (auto r = e->apply(height(6)); !r) reported = r.error();
        }
        REQUIRE(reported);
        CHECK(reported->message == "height 5: injected");
        // Back at the last height written, in memory and on disk.
        CHECK(e->tip() == 4u);
        CHECK(e->root() == roots[4]);
        auto v = e->view();
        CHECK(v->tip() == 4u);
        CHECK(v->recompute_root(4).value() == roots[4]);
        CHECK(e->settle());  // reported once
        // Nothing half-written: the same heights go through afterwards.
        e->store().set_write_fault({});
        for (std::uint64_t h = 5; h < 8; ++h) {
            auto r = e->apply(height(h));
            REQUIRE(r);
            CHECK(r->root == ref->apply(height(h))->root);
        }
        REQUIRE(e->settle());
        CHECK(e->view()->recompute_root(7).value() == e->root());
    }
}

TEST_CASE("engine: a height's tree on one thread or two gives the same roots and proofs",
          "[engine]") {
    // Heights of 400 changes, above Tree::kParallelMin: with parallel_tree the two
    // subtrees under the root are updated on two threads.
    auto height = [](std::uint64_t h) {
        std::vector<std::pair<std::string, std::string>> puts;
        for (int i = 0; i < 400; ++i) puts.emplace_back(fmt::format("k{}", (h * 41 + i * 7) % 1500), fmt::format("{}", h));
        std::vector<std::string> deletes;
        for (int i = 0; i < 30; ++i) deletes.push_back(fmt::format("k{}", (h * 29 + i * 47 + 3) % 1500));
        std::erase_if(puts, [&](const auto& p) {
            return std::find(deletes.begin(), deletes.end(), p.first) != deletes.end();
        });
        return changes(h, puts, deletes);
    };
    test::TempDir one_dir, two_dir;
    EngineOptions one_options;
    one_options.parallel_tree = false;
    auto one = Engine::open(one_dir.str(), one_options);
    REQUIRE(one);
    auto two = open_engine(two_dir);
    for (std::uint64_t h = 0; h < 6; ++h) {
        auto a = (*one)->apply(height(h));
        auto b2 = two->apply(height(h));
        REQUIRE(a);
        REQUIRE(b2);
        CHECK(a->root == b2->root);
        CHECK(a->live_keys == b2->live_keys);
    }
    for (auto* e : {one->get(), two.get()}) {
        auto v = e->view();
        REQUIRE(v);
        CHECK(v->recompute_root(5).value() == e->root());
        for (const char* key : {"k3", "k700", "k1499", "absent"}) {
            auto p = v->prove(b(key), 5);
            REQUIRE(p);
            CHECK(verify(*p, e->root()));
        }
    }
}

TEST_CASE("engine: a reopened tree is read in one sweep once its node reads pay for it, with the same roots",
          "[engine]") {
    // 20,000 keys, then heights of 300 changes at random paths: each height read node
    // by node would read more nodes of the reopened tree; after the sweep none.
    auto preload = [](std::uint64_t h) {
        std::vector<std::pair<std::string, std::string>> puts;
        for (int i = 0; i < 2000; ++i) puts.emplace_back(fmt::format("k{}", h * 2000 + i), "v");
        return changes(h, puts);
    };
    auto height = [](std::uint64_t h) {
        std::vector<std::pair<std::string, std::string>> puts;
        for (std::uint64_t i = 0; i < 300; ++i) puts.emplace_back(fmt::format("k{}", (h * 7919 + i * 61) % 24000), fmt::format("{}", h));
        std::vector<std::string> deletes;
        for (std::uint64_t i = 0; i < 20; ++i) deletes.push_back(fmt::format("k{}", (h * 104729 + i * 997 + 5) % 20000));
        std::erase_if(puts, [&](const auto& p) { return std::find(deletes.begin(), deletes.end(), p.first) != deletes.end(); });
        return changes(h, puts, deletes);
    };
    for (bool parallel : {true, false}) {
        INFO("parallel_tree " << parallel);
        EngineOptions options;
        options.parallel_tree = parallel;
        test::TempDir never_dir, reopened_dir;
        auto never = Engine::open(never_dir.str(), options);
        REQUIRE(never);
        {
            auto first = Engine::open(reopened_dir.str(), options);
            REQUIRE(first);
            for (std::uint64_t h = 0; h < 10; ++h) {
                REQUIRE((*never)->apply(preload(h)));
                REQUIRE((*first)->apply(preload(h)));
            }
        }
        auto reopened = Engine::open(reopened_dir.str(), options);
        REQUIRE(reopened);
        CHECK((*reopened)->resident_nodes() == 0);
        std::vector<std::uint64_t> reads;
        for (std::uint64_t h = 10; h < 30; ++h) {
            auto a = (*never)->apply(height(h));
            auto r = (*reopened)->apply(height(h));
            REQUIRE(a);
            REQUIRE(r);
            CHECK(r->root == a->root);
            CHECK(r->live_keys == a->live_keys);
            reads.push_back(r->tree.node_reads);
        }
        INFO("node reads per height after reopening: " << fmt::format("{}", reads));
        // Read node by node first (the sweep comes once they add up to 1/32 of the
        // tree's ~40,000 nodes), then nothing: every node is in memory.
        CHECK(reads[0] > 0);
        CHECK(std::all_of(reads.end() - 10, reads.end(), [](std::uint64_t n) { return n == 0; }));
        CHECK((*reopened)->resident_nodes() == (*never)->resident_nodes());
        auto v = (*reopened)->view();
        REQUIRE(v);
        CHECK(v->recompute_root(29).value() == (*reopened)->root());
        for (const char* key : {"k3", "k19999", "k23999", "absent"}) {
            auto p = v->prove(b(key), 29);
            REQUIRE(p);
            CHECK(verify(*p, (*reopened)->root()));
        }
    }
}

TEST_CASE("engine: a chunk missing from the sweep is an error naming it, and nothing is written", "[engine]") {
    test::TempDir dir;
    {
        auto e = open_engine(dir);
        for (std::uint64_t h = 0; h < 4; ++h) {
            std::vector<std::pair<std::string, std::string>> puts;
            for (int i = 0; i < 1000; ++i) puts.emplace_back(fmt::format("k{}", h * 1000 + i), "v");
            REQUIRE(e->apply(changes(h, puts)));
        }
    }
    auto e = open_engine(dir);
    // Chunk 0 holds deep nodes of the first height's leftmost paths (records go in
    // path order, children first), all left of the root. Heights that change only
    // paths right of the root read of the left subtree only its top, so only the
    // sweep that follows them reads chunk 0.
    {
        auto batch = e->store().batch();
        batch.del(schema::node_chunk_key(0));
        REQUIRE(e->store().write(batch));
    }
    std::vector<std::string> right;
    for (int i = 0; right.size() < 1000; ++i) {
        const std::string key = fmt::format("k{}", i);
        if (bit(sha256(b(key)), 0) == 1) right.push_back(key);
    }
    std::optional<Error> error;
    std::uint64_t failed = 0;
    for (std::uint64_t h = 4; h < 20 && !error; ++h) {
        std::vector<std::pair<std::string, std::string>> puts;
        for (std::size_t i = 0; i < 300; ++i) puts.emplace_back(right[(h * 300 + i) % right.size()], fmt::format("{}", h));
        auto r = e->apply(changes(h, puts));
        if (!r) {
            error = r.error();
            failed = h;
        }
    }
    REQUIRE(error);
    CHECK(error->code == ErrorCode::kCorruption);
    CHECK(error->message == "node chunk 0 is missing");
    CHECK(failed > 4);  // the heights before the sweep read only what they needed
    CHECK(e->tip() == failed - 1);
    auto v = e->view();
    REQUIRE(v);
    CHECK(v->tip() == failed - 1);
    CHECK_FALSE(v->root(failed));
}

namespace {

// Rewrites the record of height 0's root (the last record written at that height) in
// place with `edit`, as a writer gone wrong would, checksums and all.
void corrupt_root_record(Engine& e, const std::function<void(std::uint8_t* record)>& edit) {
    auto rec_row = e.store().get(schema::height_key(0));
    REQUIRE(rec_row);
    REQUIRE(*rec_row);
    auto rec = schema::decode_height_record(**rec_row, 0);
    REQUIRE(rec);
    const Bytes key = schema::node_chunk_key(rec->end_chunk - 1);
    auto chunk = e.store().get(key);
    REQUIRE(chunk);
    REQUIRE(*chunk);
    Bytes c = **chunk;
    const std::size_t count = std::size_t{c[0]} << 8 | c[1];
    const std::size_t off = 2 + 2 * count + (std::size_t{c[2 * count]} << 8 | c[2 * count + 1]);
    REQUIRE(c[off] == 0x01);  // a branch
    edit(&c[off]);
    auto batch = e.store().batch();
    batch.put(key, c);
    REQUIRE(e.store().write(batch));
}

// Sixteen keys committed at height 0, then the root's record rewritten with `edit`; the
// database is closed on return.
std::vector<std::pair<std::string, std::string>> sixteen_keys_root_edited(
    const test::TempDir& dir, const std::function<void(std::uint8_t* record)>& edit) {
    std::vector<std::pair<std::string, std::string>> puts;
    for (int i = 0; i < 16; ++i) puts.emplace_back(fmt::format("k{}", i), "v");
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(0, puts)));
    corrupt_root_record(*e, edit);
    return puts;
}

}  // namespace

TEST_CASE("engine: a branch record that splits above its parent is an error, not a walk past "
          "the path's bits",
          "[engine]") {
    test::TempDir dir;
    sixteen_keys_root_edited(dir, [](std::uint8_t* r) { r[1] = 255; });
    auto e = open_engine(dir);
    auto r = e->apply(changes(1, {{"k3", "w"}}));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kCorruption);
    CHECK(r.error().message.starts_with("corrupt tree: node "));
    CHECK(r.error().message.find(", not below its parent at depth 255") != std::string::npos);
    CHECK(e->tip() == 0u);
}

TEST_CASE("engine: a proof or an update through a misplaced branch is an error, not a crash or a "
          "wrong root",
          "[engine]") {
    test::TempDir dir;
    // The root's children swapped: paths starting with 0 walk into the subtree of 1s.
    const auto puts = sixteen_keys_root_edited(dir, [](std::uint8_t* r) {
        REQUIRE(r[34] < 0x80);  // two one-byte deltas
        REQUIRE(r[35] < 0x80);
        std::swap(r[34], r[35]);
    });
    auto reopened = open_engine(dir);
    std::size_t refused = 0;
    for (const auto& [key, value] : puts) {
        auto p = reopened->view()->prove(b(key), 0);
        if (p) continue;
        CHECK(p.error().code == ErrorCode::kCorruption);
        ++refused;
    }
    CHECK(refused > 0);
    // An update through it is refused too, rather than spreading it into new roots.
    for (const auto& [key, value] : puts) {
        auto r = reopened->apply(changes(1, {{key, "w"}}));
        REQUIRE_FALSE(r);
        CHECK(r.error().code == ErrorCode::kCorruption);
        CHECK(r.error().message.find("does not belong at depth") != std::string::npos);
    }
    CHECK(reopened->tip() == 0u);
}

TEST_CASE("engine: when the last height cannot be read back after a rollback, writes are refused "
          "until reopened",
          "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    for (std::uint64_t h = 0; h < 4; ++h) REQUIRE(e->apply(changes(h, {{fmt::format("k{}", h), "v"}})));
    {
        auto batch = e->store().batch();
        batch.put(schema::height_key(1), Bytes{1, 2, 3});  // height 1's record, unreadable
        REQUIRE(e->store().write(batch));
    }
    auto r = e->rollback(1);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kCorruption);
    // The engine still holds height 3's tree: building on it would write a height 2
    // whose nodes name chunks the rollback deleted.
    auto a = e->apply(changes(2, {{"k9", "v"}}));
    REQUIRE_FALSE(a);
    CHECK(a.error().code == ErrorCode::kCorruption);
    CHECK(a.error().message.ends_with("(while bringing the engine back to the database's last "
                                      "height); reopen the database to go on"));
    CHECK_FALSE(e->prune(1));
    e.reset();
    auto reopened = Engine::open(dir.str());
    REQUIRE_FALSE(reopened);  // the record is still unreadable: an error, not a wrong tree
    CHECK(reopened.error().code == ErrorCode::kCorruption);
}

TEST_CASE("node cache: records come back until cleared, and none after", "[engine]") {
    NodeCache cache(1 << 20);
    NodeRecord r;
    r.leaf = true;
    r.path = sha256(b("k"));
    for (NodeId id = 0; id < 100; ++id) cache.put(id, r);
    REQUIRE(cache.get(7));
    CHECK(cache.get(7)->path == r.path);
    cache.clear();
    for (NodeId id = 0; id < 100; ++id) CHECK_FALSE(cache.get(id));
    cache.put(7, r);  // usable again
    CHECK(cache.get(7));
}

TEST_CASE("engine: reopening gives the same roots and values and proofs", "[engine]") {
    test::TempDir dir;
    std::vector<Hash> roots;
    {
        auto e = open_engine(dir);
        for (std::uint64_t h = 0; h < 30; ++h) {
            auto r = e->apply(changes(h, {{"k" + std::to_string(h % 7), std::to_string(h)}},
                                      {"k" + std::to_string((h + 3) % 7)}));
            REQUIRE(r);
            roots.push_back(r->root);
        }
    }
    auto e = open_engine(dir);
    CHECK(e->tip() == 29u);
    CHECK(e->root() == roots.back());
    auto view = e->view();
    REQUIRE(view);
    for (std::uint64_t h = 0; h < 30; ++h) CHECK(view->root(h).value() == roots[h]);
    // The reopened tree continues exactly where it was.
    auto r = e->apply(changes(30, {{"k1", "x"}}));
    REQUIRE(r);
    auto p = e->view()->prove(b("k1"), 30);
    REQUIRE(p);
    CHECK(verify(*p, r->root));
}

TEST_CASE("engine: a view does not see heights committed after it was taken", "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(0, {{"a", "1"}})));
    auto before = e->view();
    REQUIRE(before);
    REQUIRE(e->apply(changes(1, {{"a", "2"}})));
    CHECK(before->tip() == 0u);
    CHECK(before->get(b("a"), 0).value() == b("1"));
    CHECK(before->root(1).error().code == ErrorCode::kNotFound);
}

TEST_CASE("engine: a height's changes can be listed", "[engine]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    REQUIRE(e->apply(changes(0, {{"a", "1"}, {"b", "2"}})));
    REQUIRE(e->apply(changes(1, {{"a", "3"}}, {"b", "c"})));
    auto list = e->view()->changes(1);
    REQUIRE(list);
    std::map<Bytes, std::optional<Bytes>> got;
    for (auto& c : *list) got[c.key] = c.value;
    CHECK(got == std::map<Bytes, std::optional<Bytes>>{
                     {b("a"), b("3")}, {b("b"), std::nullopt}, {b("c"), std::nullopt}});
}

TEST_CASE("engine: a database whose creation a crash cut short opens as a new one",
          "[engine][identity]") {
    // What `stateroot index` killed 9 ms into its first run left: RocksDB had written
    // these files of the new database, but not yet CURRENT.
    test::TempDir dir;
    std::ofstream(dir.sub("LOCK"));
    std::ofstream(dir.sub("IDENTITY")) << "51b7bba1-63a6-4b1a-8a28-b7a1cfea5b03";
    std::ofstream(dir.sub("LOG")) << "2026/11/22-05:15:11.469674 25639 RocksDB version: 7.8.3\n";
    const Bytes manifest = *from_hex("c4c19f5b060001020003020400");
    std::ofstream(dir.sub("MANIFEST-000001"), std::ios::binary)
        .write(reinterpret_cast<const char*>(manifest.data()),
               static_cast<std::streamsize>(manifest.size()));

    EngineOptions read_only;
    read_only.read_only = true;
    auto r = Engine::open(dir.str(), read_only);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kNotFound);

    auto e = open_engine(dir);
    CHECK_FALSE(e->tip());
    REQUIRE(e->apply(changes(0, {{"a", "1"}})));
    e.reset();
    auto again = open_engine(dir);
    CHECK(again->tip() == 0u);
    CHECK(get(*again, "a", 0) == b("1"));

    // Those names beside any other file are still another program's directory.
    test::TempDir mixed;
    std::ofstream(mixed.sub("LOG")) << "log";
    std::ofstream(mixed.sub("data.sst")) << "table";
    auto m = Engine::open(mixed.str());
    REQUIRE_FALSE(m);
    CHECK(m.error().message == mixed.str() + " is not a stateroot database (it holds other files)");
}

TEST_CASE("engine: a kill at any moment of creating a database leaves a directory that opens",
          "[engine][identity]") {
    // Watches which names appear in the directory while a database is created, up to
    // CURRENT: a kill between any two of them leaves the names before it. Each such
    // set of names, as empty files, must open as a new database, not be refused as
    // another program's directory.
    test::TempDir dir;
    const int fd = inotify_init1(IN_NONBLOCK);
    REQUIRE(fd >= 0);
    REQUIRE(inotify_add_watch(fd, dir.str().c_str(), IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM) >= 0);
    open_engine(dir).reset();
    std::vector<std::set<std::string>> moments{{}};
    alignas(inotify_event) char buffer[64 * 1024];
    bool current = false;
    for (ssize_t n; !current && (n = read(fd, buffer, sizeof buffer)) > 0;) {
        for (char* p = buffer; p < buffer + n && !current;) {
            const auto* event = reinterpret_cast<const inotify_event*>(p);
            p += sizeof(inotify_event) + event->len;
            const std::string name = event->name;
            current = name == "CURRENT";
            std::set<std::string> names = moments.back();
            if (event->mask & (IN_CREATE | IN_MOVED_TO)) names.insert(name);
            if (event->mask & (IN_DELETE | IN_MOVED_FROM)) names.erase(name);
            if (!current) moments.push_back(names);
        }
    }
    close(fd);
    REQUIRE(current);
    CHECK(moments.size() > 3);
    for (const std::set<std::string>& names : moments) {
        INFO("files: " << fmt::format("{}", fmt::join(names, " ")));
        test::TempDir cut;
        for (const std::string& name : names) std::ofstream(cut.sub(name));
        auto e = Engine::open(cut.str());
        REQUIRE(e);
        CHECK_FALSE((*e)->tip());
    }
}

TEST_CASE("engine: a kill after CURRENT, while the column families are created, leaves a database "
          "that completes them and rolls back",
          "[engine][identity]") {
    // After CURRENT, RocksDB creates the rising prefixes' column families one at a time,
    // in the order of schema::kRisingPrefixes: a kill in between leaves the first few,
    // as a store opened with only those makes them. A family missing at the first write
    // would send its rows to the default family, where rollback's range deletes are
    // refused.
    const std::string prefixes = schema::kRisingPrefixes;
    const std::size_t made = GENERATE(range(std::size_t{0}, std::string(schema::kRisingPrefixes).size()));
    CAPTURE(made);
    test::TempDir dir, fresh_dir;
    {
        storage::StoreOptions so = Engine::store_options({});
        so.rising_prefixes = prefixes.substr(0, made);
        REQUIRE(storage::Store::open(dir.str(), so));
    }
    auto e = open_engine(dir);
    auto fresh = open_engine(fresh_dir);
    std::vector<Hash> roots;
    for (std::uint64_t h = 0; h < 3; ++h) {
        const Changes c = changes(h, {{"k" + std::to_string(h), "v"}, {"a", std::to_string(h)}});
        auto a = e->apply(c);
        auto f = fresh->apply(c);
        REQUIRE(a);
        REQUIRE(f);
        CHECK(a->root == f->root);
        roots.push_back(a->root);
    }
    auto r = e->rollback(0);
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r);
    CHECK(e->tip() == 0u);
    CHECK(e->root() == roots[0]);
    CHECK(get(*e, "a", 0) == b("0"));
    e.reset();
    auto again = open_engine(dir);
    REQUIRE(again->apply(changes(1, {{"k1", "v"}, {"a", "1"}})));
    CHECK(again->root() == roots[1]);
}

TEST_CASE("engine: a database written while a column family was missing is refused as corrupt",
          "[engine][identity]") {
    // What a build before the families were completed at open left: a creation cut
    // short, then heights whose node rows went to the default family.
    test::TempDir dir;
    {
        storage::StoreOptions so = Engine::store_options({});
        so.rising_prefixes = std::string(schema::kRisingPrefixes).substr(0, 2);
        auto s = storage::Store::open(dir.str(), so);
        REQUIRE(s);
        storage::WriteBatch batch = (*s)->batch();
        batch.put(schema::meta_key(schema::kMetaFormat), schema::format_value());
        batch.put(Bytes{static_cast<std::uint8_t>(schema::kRisingPrefixes[2]), 0}, b("row"));
        REQUIRE((*s)->write(batch));
    }
    auto e = Engine::open(dir.str());
    REQUIRE_FALSE(e);
    CHECK(e.error().code == ErrorCode::kCorruption);
    CHECK(e.error().message ==
          fmt::format("cannot open {}: it holds rows but has no column family rising-{:02x} (its creation was "
                      "cut short and it was written to since)",
                      dir.str(), static_cast<int>(schema::kRisingPrefixes[2])));
}

TEST_CASE("engine: a replica reads values, proves present keys and scans indexer rows", "[engine][replica]") {
    // RocksDB 7.8 refuses an iterator with a snapshot on a secondary instance, and a
    // value read is a seek through the view's snapshot.
    test::TempDir dir;
    auto primary = Engine::open(dir.sub("db"));
    REQUIRE(primary);
    REQUIRE((*primary)->apply(changes(0, {{"a", "1"}, {"c", "2"}})));
    REQUIRE((*primary)->apply(changes(1, {{"e", "3"}})));
    REQUIRE((*primary)->apply(changes(2, {{"g", "4"}}, {"a"})));
    REQUIRE((*primary)->put_aux({{b("x1"), b("aux")}}));
    EngineOptions eo;
    eo.secondary_dir = dir.sub("scratch");
    auto replica = Engine::open(dir.sub("db"), eo);
    REQUIRE(replica);
    auto check = [&](std::string_view key, std::uint64_t h, std::optional<Bytes> want) {
        INFO("key " << key << " at " << h);
        auto v = (*replica)->view();
        REQUIRE(v);
        auto got = v->get(b(key), h);
        INFO((got ? std::string() : got.error().message));
        REQUIRE(got);
        CHECK(*got == want);
        auto p = v->prove(b(key), h);
        INFO((p ? std::string() : p.error().message));
        REQUIRE(p);
        CHECK(p->value == want);
        CHECK(verify(*p, v->root(h).value()));
    };
    check("a", 0, b("1"));
    check("c", 2, b("2"));
    check("a", 2, std::nullopt);
    {
        auto v = (*replica)->view();
        REQUIRE(v);
        std::vector<Bytes> seen;
        REQUIRE(v->scan_aux(b("x"), [&](ByteView, ByteView value) { seen.emplace_back(value.begin(), value.end()); }));
        CHECK(seen == std::vector<Bytes>{b("aux")});
    }

    REQUIRE((*primary)->apply(changes(3, {{"a", "5"}})));
    REQUIRE((*replica)->catch_up());
    check("a", 3, b("5"));
    check("g", 3, b("4"));
}

TEST_CASE("engine: a replica follows a rollback the primary flushed before it looked", "[engine][replica]") {
    // The rolled-back rows the replica had replayed from the primary's log must not
    // outlive the flush that wrote the rollback (Store::catch_up).
    test::TempDir dir;
    auto primary = Engine::open(dir.sub("db"));
    REQUIRE(primary);
    REQUIRE((*primary)->apply(changes(0, {{"a", "1"}})));
    REQUIRE((*primary)->apply(changes(1, {{"a", "2"}, {"b", "3"}})));
    EngineOptions eo;
    eo.secondary_dir = dir.sub("scratch");
    auto replica = Engine::open(dir.sub("db"), eo);
    REQUIRE(replica);
    REQUIRE((*primary)->apply(changes(2, {{"a", "4"}}, {"b"})));
    REQUIRE((*replica)->catch_up());
    CHECK((*replica)->tip() == 2u);

    REQUIRE((*primary)->rollback(0));
    REQUIRE((*primary)->store().compact());  // as `stateroot prune` does
    for (int round = 0; round < 2; ++round) {
        REQUIRE((*replica)->catch_up());
        CHECK((*replica)->tip() == 0u);
        auto v = (*replica)->view();
        REQUIRE(v);
        CHECK(v->tip() == 0u);
        CHECK(v->get(b("a"), 0).value() == b("1"));
        CHECK_FALSE(v->root(2));
    }
    REQUIRE((*primary)->apply(changes(1, {{"c", "5"}})));
    REQUIRE((*primary)->store().flush());
    REQUIRE((*replica)->catch_up());
    auto v = (*replica)->view();
    REQUIRE(v);
    CHECK(v->tip() == 1u);
    CHECK(v->get(b("b"), 1).value() == std::nullopt);
    CHECK(v->get(b("c"), 1).value() == b("5"));
    CHECK(v->root(1).value() == (*primary)->root());
}

TEST_CASE("engine: directories that are not stateroot databases are refused untouched",
          "[engine][identity]") {
    test::TempDir dir;
    std::ofstream(dir.sub("notes.txt")) << "hello";
    auto e = Engine::open(dir.str());
    REQUIRE_FALSE(e);
    CHECK(e.error().message == dir.str() + " is not a stateroot database (it holds other files)");
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 1);

    // A RocksDB database of something else, with the engine's key spaces.
    test::TempDir other;
    {
        auto s = storage::Store::open(other.str(), Engine::store_options({}));
        REQUIRE(s);
        storage::WriteBatch batch;
        batch.put(b("foreign"), b("row"));
        REQUIRE((*s)->write(batch));
    }
    auto f = Engine::open(other.str());
    REQUIRE_FALSE(f);
    CHECK(f.error().message == other.str() + " is not a stateroot database (no format row)");
    // One without them is refused the same way, and gets none of them.
    test::TempDir plain;
    {
        auto s = storage::Store::open(plain.str(), {});
        REQUIRE(s);
        storage::WriteBatch batch;
        batch.put(b("foreign"), b("row"));
        REQUIRE((*s)->write(batch));
    }
    auto p = Engine::open(plain.str());
    REQUIRE_FALSE(p);
    CHECK(p.error().message == plain.str() + " is not a stateroot database (no format row)");
    CHECK(storage::Store::open(plain.str(), Engine::store_options({})).value()->missing_families().size() ==
          std::string(schema::kRisingPrefixes).size());

    // An older format, which kept every row in one key space.
    test::TempDir older;
    {
        auto s = storage::Store::open(older.str(), {});
        REQUIRE(s);
        storage::WriteBatch batch;
        Bytes v(schema::kMagic.begin(), schema::kMagic.end());
        put_be32(v, 2);
        batch.put(schema::meta_key(schema::kMetaFormat), v);
        REQUIRE((*s)->write(batch));
    }
    auto o = Engine::open(older.str());
    REQUIRE_FALSE(o);
    CHECK(o.error().message ==
          fmt::format(
              "{}: database format version 2 is not supported (this build reads versions {} to {})",
              older.str(), schema::kOldestFormatVersion, schema::kFormatVersion));

    // Another format version.
    test::TempDir future;
    {
        auto s = storage::Store::open(future.str(), Engine::store_options({}));
        REQUIRE(s);
        storage::WriteBatch batch;
        Bytes v(schema::kMagic.begin(), schema::kMagic.end());
        put_be32(v, schema::kFormatVersion + 1);
        batch.put(schema::meta_key(schema::kMetaFormat), v);
        REQUIRE((*s)->write(batch));
    }
    auto g = Engine::open(future.str());
    REQUIRE_FALSE(g);
    CHECK(
        g.error().message ==
        fmt::format(
            "{}: database format version {} is not supported (this build reads versions {} to {})",
            future.str(), schema::kFormatVersion + 1, schema::kOldestFormatVersion,
            schema::kFormatVersion));
}

TEST_CASE(
    "engine: a database of the oldest readable format is read, and a writer moves it to the "
    "current one",
    "[engine][identity]") {
    test::TempDir dir;
    Hash root;
    {
        auto e = open_engine(dir);
        root = e->apply({0, std::nullopt, {{{1}, {2}}}, {}})->root;
    }
    const auto format_version = [&] {
        auto s = storage::Store::open(dir.str(), Engine::store_options({}));
        REQUIRE(s);
        auto v = (*s)->get(schema::meta_key(schema::kMetaFormat));
        REQUIRE(v);
        REQUIRE(*v);
        return get_be32((*v)->data() + schema::kMagic.size());
    };
    {
        auto s = storage::Store::open(dir.str(), Engine::store_options({}));
        REQUIRE(s);
        storage::WriteBatch batch;
        Bytes v(schema::kMagic.begin(), schema::kMagic.end());
        put_be32(v, schema::kOldestFormatVersion);
        batch.put(schema::meta_key(schema::kMetaFormat), v);
        REQUIRE((*s)->write(batch));
    }
    EngineOptions read_only;
    read_only.read_only = true;
    {
        auto r = Engine::open(dir.str(), read_only);
        REQUIRE(r);
        CHECK((*r)->root() == root);
        CHECK((*r)->format_version() == schema::kOldestFormatVersion);
    }
    test::TempDir scratch;
    EngineOptions secondary;
    secondary.secondary_dir = scratch.str();
    {
        auto r = Engine::open(dir.str(), secondary);
        REQUIRE(r);
        CHECK((*r)->root() == root);
        CHECK((*r)->format_version() == schema::kOldestFormatVersion);
    }
    CHECK(format_version() == schema::kOldestFormatVersion);
    {
        auto w = Engine::open(dir.str());
        REQUIRE(w);
        CHECK((*w)->root() == root);
        CHECK((*w)->format_version() == schema::kFormatVersion);
    }
    CHECK(format_version() == schema::kFormatVersion);
}

TEST_CASE("engine: a second writer is refused while the first has the database open",
          "[engine][identity]") {
    test::TempDir dir;
    auto e = open_engine(dir);
    auto second = Engine::open(dir.str());
    REQUIRE_FALSE(second);
    CHECK(second.error().code == ErrorCode::kBusy);
}

TEST_CASE("engine: a memory budget is split among RocksDB, the node cache and the tree, "
          "and the roots stay the same",
          "[engine]") {
    EngineOptions split;
    split.set_memory_budget_mb(256);
    CHECK(split.store.block_cache_mb == 64);
    CHECK(split.store.write_buffer_mb == 8);
    CHECK(split.node_cache_mb == 16);
    CHECK(split.tree_memory_bytes == std::size_t{96} << 20);

    test::TempDir bounded_dir, whole_dir;
    EngineOptions bounded_options;
    bounded_options.set_memory_budget_mb(1);  // a 1 MiB tree: about 7,000 keys
    auto bounded = Engine::open(bounded_dir.str(), bounded_options);
    REQUIRE(bounded);
    auto whole = open_engine(whole_dir);
    std::uint64_t reads = 0;
    for (std::uint64_t h = 0; h < 12; ++h) {
        Changes c;
        c.height = h;
        for (int i = 0; i < 3000; ++i) {
            c.puts.emplace_back(b(fmt::format("key {}", (h * 2089 + static_cast<std::uint64_t>(i) * 7) % 30000)),
                                b(fmt::format("value {} {}", h, i)));
        }
        auto r1 = (*bounded)->apply(c);
        auto r2 = whole->apply(c);
        REQUIRE(r1);
        REQUIRE(r2);
        REQUIRE(r1->root == r2->root);
        reads += r1->tree.node_reads;
    }
    CHECK(reads > 0);
    CHECK((*bounded)->resident_nodes() < whole->resident_nodes() / 2);
}
