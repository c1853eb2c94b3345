// Random histories with fixed seeds: the engine against a model of the state and an
// independent naive tree, at every height.
#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

#include "naive_smt.hpp"
#include "stateroot/engine/engine.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

// Every version of every key: value_at(key, h) is the latest version at or below h.
class Model {
  public:
    void set(const Bytes& key, std::uint64_t h, std::optional<Bytes> value) {
        versions_[key].emplace_back(h, std::move(value));
    }
    std::optional<Bytes> value_at(const Bytes& key, std::uint64_t h) const {
        const auto it = versions_.find(key);
        if (it == versions_.end()) return std::nullopt;
        std::optional<Bytes> v;
        for (const auto& [vh, value] : it->second) {
            if (vh > h) break;
            v = value;
        }
        return v;
    }
    void rollback(std::uint64_t h) {
        for (auto& [key, list] : versions_) {
            while (!list.empty() && list.back().first > h) list.pop_back();
        }
    }
    test::naive::State state_at(std::uint64_t h) const {
        test::naive::State s;
        for (const auto& [key, list] : versions_) {
            if (auto v = value_at(key, h)) s[test::naive::sha256(key)] = test::naive::sha256(*v);
        }
        return s;
    }
    const std::map<Bytes, std::vector<std::pair<std::uint64_t, std::optional<Bytes>>>>& versions()
        const {
        return versions_;
    }

  private:
    std::map<Bytes, std::vector<std::pair<std::uint64_t, std::optional<Bytes>>>> versions_;
};

Bytes random_bytes(std::mt19937_64& rng, std::size_t min, std::size_t max) {
    Bytes b(min + rng() % (max - min + 1));
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    return b;
}

// The random histories of seeds [first, last], each checked against the model, the
// naive tree and a recomputation. Odd seeds with each height written before apply()
// returns, even seeds with the write of each height overlapping the next one; every
// third seed with a tree memory budget so small that most of the tree is read back at
// each height.
void check_histories(std::uint64_t first_seed, std::uint64_t last_seed) {
    for (std::uint64_t seed = first_seed; seed <= last_seed; ++seed) {
        INFO("seed " << seed);
        std::mt19937_64 rng(seed);
        test::TempDir dir;
        EngineOptions options;
        options.pipelined_writes = seed % 2 == 0;
        options.pipeline_min_changes = 1;
        options.tree_memory_bytes = seed % 3 == 0 ? 4096 : 0;
        auto opened = Engine::open(dir.str(), options);
        REQUIRE(opened);
        std::unique_ptr<Engine> e = std::move(*opened);

        std::vector<Bytes> pool;
        for (int i = 0; i < 400; ++i) pool.push_back(random_bytes(rng, 1, 40));
        Model model;
        std::set<Bytes> present;
        const std::uint64_t first = rng() % 1000;
        std::uint64_t height = first;
        std::uint64_t ops = 0;
        bool emptied = false;

        while (ops < 5000) {
            Changes c;
            c.height = height;
            std::set<Bytes> used;
            // Phases: grow, churn, then empty the tree and grow again.
            const std::uint64_t phase = (ops / 1000) % 5;
            const int n = 1 + static_cast<int>(rng() % 25);
            const bool emptying = phase == 3 && !present.empty();
            if (emptying) {
                for (const Bytes& k : present) {
                    if (used.size() >= 40) break;
                    used.insert(k);
                    c.deletes.push_back(k);
                }
            }
            for (int i = 0; i < n && !emptying; ++i) {
                const Bytes& k = pool[rng() % pool.size()];
                if (!used.insert(k).second) continue;
                const bool is_present = present.count(k) > 0;
                const auto roll = rng() % 100;
                if (phase != 0 && roll < 25) {
                    c.deletes.push_back(k);  // present or absent
                } else if (is_present && roll < 35) {
                    c.puts.emplace_back(k, *model.value_at(k, height - 1));  // same value again
                } else if (roll < 40) {
                    c.puts.emplace_back(k, Bytes{});  // an empty put is a delete
                } else {
                    c.puts.emplace_back(k, random_bytes(rng, 1, 64));
                }
            }
            auto r = e->apply(c);
            REQUIRE(r);
            REQUIRE_FALSE(r->already_committed);
            for (const auto& [k, v] : c.puts) {
                model.set(k, height, v.empty() ? std::nullopt : std::optional<Bytes>(v));
                v.empty() ? (void)present.erase(k) : (void)present.insert(k);
            }
            for (const Bytes& k : c.deletes) {
                model.set(k, height, std::nullopt);
                present.erase(k);
            }
            if (present.empty() && height > first) emptied = true;
            REQUIRE(e->live_keys() == present.size());
            ops += c.puts.size() + c.deletes.size();

            const auto roll = rng() % 100;
            if (roll < 4 && height > first + 5) {
                // Roll back a few heights and go on with a different history.
                const std::uint64_t back = 1 + rng() % 5;
                REQUIRE(e->rollback(height - back));
                model.rollback(height - back);
                present.clear();
                for (const auto& [k, list] : model.versions()) {
                    if (model.value_at(k, height - back)) present.insert(k);
                }
                height -= back;
            } else if (roll < 8) {
                e.reset();  // reopen: the tree is read back from disk on demand
                auto again = Engine::open(dir.str(), options);
                REQUIRE(again);
                e = std::move(*again);
            }
            ++height;
        }
        CHECK(emptied);

        REQUIRE(e->settle());
        auto view = e->view();
        REQUIRE(view);
        const std::uint64_t tip = *e->tip();
        for (std::uint64_t h = first; h <= tip; ++h) {
            const Hash expected = Hash{test::naive::root(model.state_at(h))};
            REQUIRE(view->root(h).value() == expected);
            REQUIRE(view->recompute_root(h).value() == expected);
        }
        // Values at random heights against the model, present and absent keys alike.
        for (int i = 0; i < 2000; ++i) {
            const Bytes& k = pool[rng() % pool.size()];
            const std::uint64_t h = first + rng() % (tip - first + 1);
            REQUIRE(view->get(k, h).value() == model.value_at(k, h));
        }
    }
}

}  // namespace

// Twenty histories in four cases, which a parallel test run spreads over the cores.
TEST_CASE("history: random histories of seeds 1-5 match the model and the naive tree and a recomputation",
          "[engine][history]") {
    check_histories(1, 5);
}

TEST_CASE("history: random histories of seeds 6-10 match the model and the naive tree and a recomputation",
          "[engine][history]") {
    check_histories(6, 10);
}

TEST_CASE("history: random histories of seeds 11-15 match the model and the naive tree and a recomputation",
          "[engine][history]") {
    check_histories(11, 15);
}

TEST_CASE("history: random histories of seeds 16-20 match the model and the naive tree and a recomputation",
          "[engine][history]") {
    check_histories(16, 20);
}
