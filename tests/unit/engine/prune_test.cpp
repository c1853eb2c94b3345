// Pruning, checked against a twin database that was never pruned.
#include <catch2/catch.hpp>

#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include <fmt/format.h>

#include "stateroot/engine/engine.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

struct Twins {
    test::TempDir dir_a, dir_b;
    std::unique_ptr<Engine> pruned, full;
    std::vector<Bytes> pool;
    std::mt19937_64 rng{5};
    std::uint64_t height = 10;

    Twins() {
        pruned = std::move(*Engine::open(dir_a.str()));
        full = std::move(*Engine::open(dir_b.str()));
        for (int i = 0; i < 300; ++i) pool.push_back(Bytes{static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8), 7});
    }
    Changes next() {
        Changes c;
        c.height = height++;
        std::set<std::size_t> used;
        const int n = 1 + static_cast<int>(rng() % 30);
        for (int i = 0; i < n; ++i) {
            const std::size_t k = rng() % pool.size();
            if (!used.insert(k).second) continue;
            if (rng() % 4 == 0) {
                c.deletes.push_back(pool[k]);
            } else {
                c.puts.emplace_back(pool[k], Bytes{static_cast<std::uint8_t>(rng()), 1});
            }
        }
        return c;
    }
    void advance(int heights) {
        for (int i = 0; i < heights; ++i) {
            const Changes c = next();
            REQUIRE(pruned->apply(c));
            REQUIRE(full->apply(c));
        }
    }
    // Every root equal; values, proofs and changes equal where kept; refused below.
    void compare() {
        auto a = pruned->view();
        auto b = full->view();
        REQUIRE(a);
        REQUIRE(b);
        const std::uint64_t kept = a->pruned().value_or(*a->first());
        for (std::uint64_t h = *b->first(); h <= *b->tip(); ++h) {
            REQUIRE(a->root(h).value() == b->root(h).value());
            const Bytes& key = pool[rng() % pool.size()];
            if (h < kept) {
                auto v = a->get(key, h);
                REQUIRE_FALSE(v);
                CHECK(v.error().code == ErrorCode::kNotFound);
                CHECK_FALSE(a->prove(key, h));
                continue;
            }
            REQUIRE(a->get(key, h).value() == b->get(key, h).value());
            REQUIRE(to_json(a->prove(key, h).value()) == to_json(b->prove(key, h).value()));
            REQUIRE(a->changes(h).value().size() == b->changes(h).value().size());
        }
        CHECK(a->recompute_root(kept).value() == b->root(kept).value());
        CHECK(a->recompute_root(*a->tip()).value() == b->root(*b->tip()).value());
    }
};

}  // namespace

TEST_CASE("prune: roots stay and kept heights answer exactly like an unpruned twin", "[engine][prune]") {
    Twins t;
    t.advance(120);
    auto r = t.pruned->prune(*t.pruned->tip() - 49);
    REQUIRE(r);
    CHECK(r->first_kept == *t.pruned->tip() - 49);
    CHECK(r->values_removed > 0);
    CHECK(r->nodes_removed > 0);
    t.compare();

    auto v = t.pruned->view();
    auto below = v->get(t.pool[0], r->first_kept - 1);
    CHECK(below.error().message == fmt::format("height {} is pruned (values and proofs are kept for heights {}..{})",
                                               r->first_kept - 1, r->first_kept, *t.pruned->tip()));

    // Pruning again to the same height finds nothing left to remove.
    auto again = t.pruned->prune(r->first_kept);
    REQUIRE(again);
    CHECK(again->values_removed == 0);
    CHECK(again->nodes_removed == 0);

    // The database goes on; later prunes cost what was written since the last one.
    t.advance(80);
    REQUIRE(t.pruned->prune(*t.pruned->tip() - 19));
    t.compare();
}

TEST_CASE("prune: rollback stops at the pruned height and re-applying gives the same roots", "[engine][prune]") {
    Twins t;
    t.advance(60);
    REQUIRE(t.pruned->prune(50));
    auto refused = t.pruned->rollback(40);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message == "cannot roll back below height 50: older heights are pruned");
    CHECK_FALSE(t.pruned->rollback(std::nullopt));
    // Nor can other changes replace a height that would need such a rollback.
    Changes other;
    other.height = 50;
    other.puts.push_back({Bytes{1, 2, 3}, Bytes{4}});
    CHECK(t.pruned->apply(other).error().message ==
          "height 50 is already committed with different changes, and cannot be replaced: heights "
          "below 50 are pruned");
    REQUIRE(t.pruned->rollback(55));
    REQUIRE(t.full->rollback(55));
    t.height = 56;
    t.advance(10);
    t.compare();
}

TEST_CASE("prune: an interrupted prune is finished by the next one", "[engine][prune]") {
    Twins t;
    t.advance(300);
    int writes = 0;
    t.pruned->store().set_write_fault([&](const storage::WriteBatch&, std::uint64_t) -> Status {
        if (++writes == 3) return make_error(ErrorCode::kIoError, "power cut");
        return {};
    });
    auto cut = t.pruned->prune(250);
    REQUIRE_FALSE(cut);
    CHECK(cut.error().message == "prune: power cut");
    // What readers see is already consistent: nothing below 250 is served.
    CHECK_FALSE(t.pruned->view()->get(t.pool[0], 249));
    t.pruned->store().set_write_fault({});
    REQUIRE(t.pruned->prune(250));
    t.compare();
}

TEST_CASE("prune: a pruned database reopens with its pruned height", "[engine][prune]") {
    Twins t;
    t.advance(40);
    REQUIRE(t.pruned->prune(30));
    t.pruned.reset();
    t.pruned = std::move(*Engine::open(t.dir_a.str()));
    CHECK(t.pruned->view()->pruned() == 30u);
    t.advance(5);
    t.compare();
}

TEST_CASE("prune: heights near the top of the 64-bit range are cleaned without wrapping",
          "[engine][prune]") {
    Twins t;
    t.height = std::numeric_limits<std::uint64_t>::max() - 100;
    t.advance(90);
    // Its windows of 64 heights end past 2^64 - 1: the last must end at the height kept.
    auto r = t.pruned->prune(*t.pruned->tip());
    REQUIRE(r);
    CHECK(r->first_kept == *t.pruned->tip());
    t.compare();
}

namespace {

std::size_t value_rows(Engine& e) {
    std::size_t rows = 0;
    auto it = e.store().iterator();
    for (it->seek(Bytes{'v'}); it->valid() && it->key()[0] == 'v'; it->next()) ++rows;
    return rows;
}

}  // namespace

TEST_CASE("prune: a key changed at every height is cleaned once, and values_removed is the rows removed",
          "[engine][prune]") {
    test::TempDir dir;
    auto e = std::move(*Engine::open(dir.str()));
    const Bytes hot{'h', 'o', 't'};
    auto apply = [&](std::uint64_t h, bool put_hot) {
        Changes c;
        c.height = h;
        if (put_hot) {
            c.puts.emplace_back(hot, Bytes{static_cast<std::uint8_t>(h), 1});
        } else {
            c.deletes.push_back(hot);
        }
        Bytes fresh(8);
        set_be64(fresh.data(), h);
        c.puts.emplace_back(fresh, Bytes{1});
        REQUIRE(e->apply(c));
    };
    // Value rows deleted by each prune's writes: once each (re-reading the hot key's
    // versions in every 64-height window made 4 times as many deletes here).
    std::size_t deletes = 0;
    e->store().set_write_fault([&](const storage::WriteBatch& batch, std::uint64_t) -> Status {
        for (const Bytes& k : batch.keys()) deletes += k[0] == 'v';
        return {};
    });
    auto prune = [&](std::uint64_t first_kept) {
        const std::size_t before = value_rows(*e);
        deletes = 0;
        auto r = e->prune(first_kept);
        REQUIRE(r);
        CHECK(r->values_removed == before - value_rows(*e));
        CHECK(deletes == r->values_removed);
        return r->values_removed;
    };

    for (std::uint64_t h = 0; h < 200; ++h) apply(h, true);
    CHECK(prune(199) == 199);  // the hot key's versions below 199; the fresh keys all stay

    // Then the hot key deleted at even heights: the tombstone at the kept height stays
    // until the next prune, what it supersedes goes.
    for (std::uint64_t h = 200; h < 300; ++h) apply(h, h % 2 == 1);
    CHECK(prune(290) == 91);  // its versions 199..289
    auto v = e->view();
    CHECK_FALSE(v->get(hot, 290).value().has_value());
    CHECK(v->get(hot, 291).value() == Bytes{291 % 256, 1});
    CHECK(v->get(Bytes{0, 0, 0, 0, 0, 0, 0, 5}, 290).value() == Bytes{1});
    CHECK(prune(290) == 0);

    for (std::uint64_t h = 300; h < 310; ++h) apply(h, true);
    CHECK(prune(305) == 15);  // the tombstone at 290 and the versions 291..304
    CHECK(e->view()->get(hot, 305).value() == Bytes{305 % 256, 1});
}
