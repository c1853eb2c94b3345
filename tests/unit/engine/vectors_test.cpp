// The 19 vectors of the Fuel SMT test suite (tests/fixtures/vectors.json).
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "stateroot/engine/engine.hpp"
#include "temp_dir.hpp"
#include "tree_harness.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

nlohmann::json load_vectors() {
    std::ifstream in(std::string(STATEROOT_FIXTURES) + "/vectors.json");
    REQUIRE(in);
    return nlohmann::json::parse(in)["vectors"];
}

Bytes hex(const nlohmann::json& j) { return *from_hex(j.get<std::string>()); }

TreeChange tree_change(const nlohmann::json& op) {
    const Hash path = Hash::from(hex(op["key"]));
    const Bytes value = op.contains("value") ? hex(op["value"]) : Bytes{};
    if (op["op"] == "del" || value.empty()) return test::del(path);
    return test::put(path, sha256(value));
}

}  // namespace

TEST_CASE("vectors: every Fuel vector's root with one operation per update", "[engine][vectors]") {
    const auto vectors = load_vectors();
    REQUIRE(vectors.size() == 19);
    for (const auto& v : vectors) {
        INFO(v["name"].get<std::string>());
        test::TreeHarness t;
        for (const auto& op : v["ops"]) t.apply({tree_change(op)});
        CHECK(t.tree().root_hash().hex() == v["expected_root"].get<std::string>());
        t.reopen();
        CHECK(t.tree().root_hash().hex() == v["expected_root"].get<std::string>());
    }
}

TEST_CASE("vectors: every Fuel vector's root with operations batched", "[engine][vectors]") {
    for (const auto& v : load_vectors()) {
        INFO(v["name"].get<std::string>());
        test::TreeHarness t;
        // A batch holds each path once, so a repeated path starts a new batch.
        std::vector<TreeChange> batch;
        std::set<Hash> paths;
        for (const auto& op : v["ops"]) {
            const TreeChange c = tree_change(op);
            if (!paths.insert(c.path).second) {
                t.apply(batch);
                batch.clear();
                paths = {c.path};
            }
            batch.push_back(c);
        }
        if (!batch.empty()) t.apply(batch);
        CHECK(t.tree().root_hash().hex() == v["expected_root"].get<std::string>());
    }
}

TEST_CASE("vectors: every Fuel vector's root through the engine with raw keys",
          "[engine][vectors]") {
    for (const auto& v : load_vectors()) {
        INFO(v["name"].get<std::string>());
        test::TempDir dir;
        auto e = Engine::open(dir.str());
        REQUIRE(e);
        std::uint64_t height = 100;
        for (const auto& op : v["ops_raw_keys"]) {
            Changes c;
            c.height = height++;
            if (op["op"] == "del") {
                c.deletes.push_back(hex(op["key"]));
            } else {
                c.puts.emplace_back(hex(op["key"]), hex(op["value"]));
            }
            REQUIRE((*e)->apply(c));
        }
        if (height == 100) continue;  // the empty vector commits nothing
        CHECK((*e)->root().hex() == v["expected_root"].get<std::string>());
        auto view = (*e)->view();
        REQUIRE(view);
        CHECK(view->recompute_root(height - 1).value().hex() ==
              v["expected_root"].get<std::string>());
    }
}
