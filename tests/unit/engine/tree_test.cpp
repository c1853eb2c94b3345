#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <set>

#include "stateroot/engine/proof.hpp"
#include "tree_harness.hpp"

using namespace stateroot;
using namespace stateroot::engine;
using test::TreeHarness;

namespace {

// Paths that share long prefixes with one of a few stems, so that branches with long
// one-sided chains above them appear, move, grow and vanish.
class PathPool {
  public:
    PathPool(std::mt19937_64& rng, std::size_t size) {
        std::vector<Hash> stems;
        for (int i = 0; i < 6; ++i) stems.push_back(test::random_hash(rng));
        for (std::size_t i = 0; i < size; ++i) {
            const Hash& stem = stems[rng() % stems.size()];
            const int shared = static_cast<int>(rng() % 257);
            Hash p = test::random_hash(rng);
            for (int b = 0; b < shared && b < 256; ++b) {
                const int mask = 1 << (7 - b % 8);
                p.bytes[b / 8] = static_cast<std::uint8_t>((p.bytes[b / 8] & ~mask) |
                                                           (stem.bytes[b / 8] & mask));
            }
            paths_.push_back(p);
        }
        std::sort(paths_.begin(), paths_.end());
        paths_.erase(std::unique(paths_.begin(), paths_.end()), paths_.end());
    }
    const Hash& pick(std::mt19937_64& rng) const { return paths_[rng() % paths_.size()]; }

  private:
    std::vector<Hash> paths_;
};

}  // namespace

TEST_CASE("tree: chained paths match the naive tree after every batch", "[engine][tree]") {
    // Hashes put off in groups are computed in SHA-NI lanes where the CPU has them, or
    // one at a time: both must give the naive tree's roots (and records that reopen).
    const bool lanes = GENERATE(true, false);
    INFO("hash lanes " << (lanes ? "on" : "off"));
    use_hash_lanes(lanes);
    for (std::uint64_t seed = 1; seed <= 12; ++seed) {
        INFO("seed " << seed);
        std::mt19937_64 rng(seed);
        const PathPool pool(rng, 120);
        TreeHarness t;
        test::naive::State model;
        for (int round = 0; round < 150; ++round) {
            std::map<Hash, TreeChange> batch;
            const int n = 1 + static_cast<int>(rng() % 12);
            for (int i = 0; i < n; ++i) {
                const Hash& p = pool.pick(rng);
                const auto it = model.find(p.bytes);
                switch (rng() % 5) {
                    case 0:  // delete (present or absent)
                        batch[p] = test::del(p);
                        break;
                    case 1:  // rewrite the same value
                        if (it != model.end()) {
                            batch[p] = test::put(p, test::to_hash(it->second));
                            break;
                        }
                        [[fallthrough]];
                    default:
                        batch[p] = test::put(p, test::random_hash(rng));
                }
            }
            if (round % 40 == 39) {  // empty the tree now and then
                for (const auto& [path, vh] : model)
                    batch[test::to_hash(path)] = test::del(test::to_hash(path));
            }
            std::vector<TreeChange> changes;
            for (const auto& [p, c] : batch) {
                changes.push_back(c);
                if (c.del) {
                    model.erase(p.bytes);
                } else {
                    model[p.bytes] = c.value_hash.bytes;
                }
            }
            t.apply(changes);
            REQUIRE(t.tree().root_hash() == test::to_hash(test::naive::root(model)));
            if (round % 7 == 3) t.reopen();
        }
    }
    use_hash_lanes(true);
}

TEST_CASE("tree: a commit costs O(k log N) node reads and hashes", "[engine][tree][cost]") {
    // Per changed key, on a cold tree: at most ~2 reads per level (the node on the path
    // and its sibling) and ~1 hash per level, levels ~ log2 N. Nothing may scale with N.
    auto measure = [](std::uint64_t n, std::uint64_t k) {
        std::mt19937_64 rng(n);
        TreeHarness t;
        std::vector<Hash> paths;
        for (std::uint64_t done = 0; done < n;) {
            std::vector<TreeChange> batch;
            for (int i = 0; i < 4096 && done < n; ++i, ++done) {
                paths.push_back(test::random_hash(rng));
                batch.push_back(test::put(paths.back(), test::random_hash(rng)));
            }
            t.apply(batch);
        }
        t.reopen();
        std::vector<TreeChange> changes;
        std::set<Hash> used;
        for (std::uint64_t i = 0; i < k; ++i) {
            Hash p = paths[rng() % paths.size()];
            if (!used.insert(p).second) continue;
            changes.push_back(i % 10 == 0 ? test::del(p) : test::put(p, test::random_hash(rng)));
        }
        for (std::uint64_t i = 0; i < k / 5; ++i)
            changes.push_back(test::put(test::random_hash(rng), test::random_hash(rng)));
        const TreeStats s = t.apply(changes);
        return std::pair{static_cast<double>(s.node_reads) / static_cast<double>(changes.size()),
                         static_cast<double>(s.hashes) / static_cast<double>(changes.size())};
    };
    const auto [reads_small, hashes_small] = measure(1 << 10, 64);
    const auto [reads_large, hashes_large] = measure(1 << 16, 64);
    INFO(
        fmt::format("per key: N=2^10 {:.1f} reads {:.1f} hashes; N=2^16 {:.1f} reads {:.1f} hashes",
                    reads_small, hashes_small, reads_large, hashes_large));
    const double levels_small = 10 + 3, levels_large = 16 + 3;
    CHECK(reads_small <= 2 * levels_small);
    CHECK(reads_large <= 2 * levels_large);
    CHECK(hashes_small <= 1.5 * levels_small);
    CHECK(hashes_large <= 1.5 * levels_large);
    // 64 times the keys costs a few more levels, not 64 times the work.
    CHECK(reads_large <= reads_small + 2 * 8);
    CHECK(hashes_large <= hashes_small + 1.5 * 8);
}

TEST_CASE("tree: a warm tree commits without reading nodes", "[engine][tree][cost]") {
    std::mt19937_64 rng(5);
    TreeHarness t;
    std::vector<Hash> paths;
    std::vector<TreeChange> batch;
    for (int i = 0; i < 2000; ++i) {
        paths.push_back(test::random_hash(rng));
        batch.push_back(test::put(paths.back(), test::random_hash(rng)));
    }
    t.apply(batch);
    batch.clear();
    for (int i = 0; i < 100; ++i) batch.push_back(test::put(paths[i * 7], test::random_hash(rng)));
    CHECK(t.apply(batch).node_reads == 0);
}

TEST_CASE("tree: abort leaves the tree as it was", "[engine][tree]") {
    std::mt19937_64 rng(9);
    TreeHarness t;
    const Hash a = test::random_hash(rng), b = test::random_hash(rng);
    t.apply({test::put(a, test::random_hash(rng)), test::put(b, test::random_hash(rng))});
    const Hash before = t.tree().root_hash();
    const std::size_t resident = t.tree().resident_nodes();

    std::vector<TreeChange> changes{test::del(a)};
    auto update = t.tree().apply(changes, 1000);
    REQUIRE(update);
    CHECK(update->root_hash != before);
    t.tree().abort(std::move(*update));
    CHECK(t.tree().root_hash() == before);
    CHECK(t.tree().resident_nodes() == resident);
    t.apply(changes);
    CHECK(t.tree().root_hash() != before);
}

TEST_CASE("tree: a node that cannot be read fails the update and changes nothing",
          "[engine][tree]") {
    std::mt19937_64 rng(3);
    TreeHarness t;
    std::vector<TreeChange> batch;
    for (int i = 0; i < 50; ++i)
        batch.push_back(test::put(test::random_hash(rng), test::random_hash(rng)));
    t.apply(batch);
    const Hash before = t.tree().root_hash();
    // Lose the chunk holding the first records.
    storage::WriteBatch lose;
    lose.del(schema::node_chunk_key(0));
    REQUIRE(t.store().write(lose));
    t.reopen();
    std::vector<TreeChange> changes{test::put(test::random_hash(rng), test::random_hash(rng))};
    for (const auto& c : batch) changes.push_back(test::del(c.path));
    std::sort(changes.begin(), changes.end(),
              [](const auto& x, const auto& y) { return x.path < y.path; });
    auto update = t.tree().apply(changes, 1000);
    REQUIRE_FALSE(update);
    CHECK(update.error().code == ErrorCode::kCorruption);
    CHECK(t.tree().root_hash() == before);
}

TEST_CASE("tree: large updates on two threads equal one thread and the naive tree", "[engine][tree][parallel]") {
    for (std::uint64_t seed = 1; seed <= 4; ++seed) {
        INFO("seed " << seed);
        std::mt19937_64 rng(seed * 77);
        const PathPool pool(rng, 6000);
        TreeHarness two(true), one(false);
        test::naive::State model;
        for (int round = 0; round < 25; ++round) {
            std::map<Hash, TreeChange> batch;
            const std::size_t n = Tree::kParallelMin + rng() % 1500;
            for (std::size_t i = 0; i < n; ++i) {
                const Hash& p = pool.pick(rng);
                const auto it = model.find(p.bytes);
                const auto roll = rng() % 10;
                if (roll < 2) {
                    batch[p] = test::del(p);
                } else if (roll < 3 && it != model.end()) {
                    batch[p] = test::put(p, test::to_hash(it->second));
                } else {
                    batch[p] = test::put(p, test::random_hash(rng));
                }
            }
            if (round == 12) {  // empty the tree, then grow it again
                for (const auto& [path, vh] : model) batch[test::to_hash(path)] = test::del(test::to_hash(path));
            }
            std::vector<TreeChange> changes;
            for (const auto& [p, c] : batch) {
                changes.push_back(c);
                c.del ? (void)model.erase(p.bytes) : (void)(model[p.bytes] = c.value_hash.bytes);
            }
            two.apply(changes);
            one.apply(changes);
            REQUIRE(two.tree().root_hash() == one.tree().root_hash());
            REQUIRE(two.tree().root_hash() == test::to_hash(test::naive::root(model)));
            if (round % 5 == 4) two.reopen();
        }
        // Proofs over the records the two threads wrote read back like the naive walk.
        for (int i = 0; i < 50; ++i) {
            const Hash& p = pool.pick(rng);
            auto nodes = prove_path(two.reader(), two.tree().root_id(), p);
            REQUIRE(nodes);
            const auto expected = test::naive::walk(model, p.bytes);
            REQUIRE(nodes->side_nodes.size() == expected.side_nodes.size());
            for (std::size_t k = 0; k < expected.side_nodes.size(); ++k) {
                REQUIRE(nodes->side_nodes[k] == test::to_hash(expected.side_nodes[k]));
            }
        }
    }
}

TEST_CASE("tree: under a memory budget the tree trims to it and its roots do not change",
          "[engine][tree]") {
    std::mt19937_64 rng(21);
    const PathPool pool(rng, 20000);
    TreeHarness bounded, whole;
    constexpr std::size_t kBudget = 64 << 10;
    bounded.tree().set_memory_budget(kBudget);
    test::naive::State model;
    std::uint64_t reads = 0;
    for (int round = 0; round < 30; ++round) {
        std::map<Hash, TreeChange> batch;
        const std::size_t n = round < 10 ? 2000 : 1 + rng() % 600;
        for (std::size_t i = 0; i < n; ++i) {
            const Hash& p = pool.pick(rng);
            batch[p] = rng() % 5 == 0 ? test::del(p) : test::put(p, test::random_hash(rng));
        }
        std::vector<TreeChange> changes;
        for (const auto& [p, c] : batch) {
            changes.push_back(c);
            c.del ? (void)model.erase(p.bytes) : (void)(model[p.bytes] = c.value_hash.bytes);
        }
        if (round >= 10) reads += bounded.apply(changes).node_reads;
        else bounded.apply(changes);
        whole.apply(changes);
        REQUIRE(bounded.tree().root_hash() == whole.tree().root_hash());
        REQUIRE(bounded.tree().root_hash() == test::to_hash(test::naive::root(model)));
        REQUIRE(bounded.tree().memory_bytes() <= kBudget);
    }
    // Dropped nodes were read back; the unbounded tree kept all it built.
    CHECK(reads > 0);
    CHECK(whole.tree().resident_bytes() > 4 * kBudget);
}

TEST_CASE("tree: under a memory budget a height's nodes fit within it too, not only the tree between heights",
          "[engine][tree]") {
    std::mt19937_64 rng(22);
    const PathPool pool(rng, 20000);
    TreeHarness bounded;
    constexpr std::size_t kBudget = 1 << 20;
    bounded.tree().set_memory_budget(kBudget);
    for (int round = 0; round < 40; ++round) {
        std::map<Hash, TreeChange> batch;
        // Heights that each grow the arenas by nearly half the budget.
        const std::size_t n = round < 4 ? 5000 : 200;
        for (std::size_t i = 0; i < n; ++i) {
            const Hash& p = pool.pick(rng);
            batch[p] = test::put(p, test::random_hash(rng));
        }
        std::vector<TreeChange> changes;
        for (const auto& [p, c] : batch) changes.push_back(c);
        bounded.apply(changes);
        INFO("round " << round << ": " << bounded.peak_bytes() << " bytes");
        // Once the tree has seen a height of this size, the next ones fit.
        if (round >= 6) REQUIRE(bounded.peak_bytes() <= kBudget);
        REQUIRE(bounded.tree().memory_bytes() <= kBudget);
    }
}
