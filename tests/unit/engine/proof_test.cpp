#include "stateroot/engine/proof.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "stateroot/engine/engine.hpp"
#include "temp_dir.hpp"
#include "tree_harness.hpp"

using namespace stateroot;
using namespace stateroot::engine;

namespace {

Bytes leaf_data(const test::naive::Digest& path, const test::naive::Digest& vh) {
    Bytes d{0x00};
    d.insert(d.end(), path.begin(), path.end());
    d.insert(d.end(), vh.begin(), vh.end());
    return d;
}

}  // namespace

TEST_CASE("proofs: the walk over stored nodes equals the naive walk with chains included",
          "[engine][proof]") {
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
        std::mt19937_64 rng(seed);
        test::TreeHarness t;
        test::naive::State model;
        const Hash stem = test::random_hash(rng);
        auto chained = [&] {
            Hash p = test::random_hash(rng);
            const int shared = static_cast<int>(rng() % 256);
            for (int b = 0; b < shared; ++b) {
                const int mask = 1 << (7 - b % 8);
                p.bytes[b / 8] = static_cast<std::uint8_t>((p.bytes[b / 8] & ~mask) |
                                                           (stem.bytes[b / 8] & mask));
            }
            return p;
        };
        for (int round = 0; round < 12; ++round) {
            std::vector<TreeChange> batch;
            for (int i = 0; i < 10; ++i) {
                const Hash p = chained(), v = test::random_hash(rng);
                batch.push_back(test::put(p, v));
                model[p.bytes] = v.bytes;
            }
            t.apply(batch);
            if (round % 4 == 2) t.reopen();
            std::vector<Hash> probes;
            for (const auto& [p, v] : model) probes.push_back(test::to_hash(p));
            for (int i = 0; i < 40; ++i) probes.push_back(chained());
            for (const Hash& path : probes) {
                auto nodes = prove_path(t.reader(), t.tree().root_id(), path);
                REQUIRE(nodes);
                const auto expected = test::naive::walk(model, path.bytes);
                REQUIRE(nodes->side_nodes.size() == expected.side_nodes.size());
                for (std::size_t i = 0; i < expected.side_nodes.size(); ++i) {
                    REQUIRE(nodes->side_nodes[i] == test::to_hash(expected.side_nodes[i]));
                }
                if (expected.leaf && expected.leaf->first == path.bytes) {
                    CHECK(nodes->value_hash == test::to_hash(expected.leaf->second));
                    CHECK_FALSE(nodes->non_membership_leaf);
                } else if (expected.leaf) {
                    CHECK(nodes->non_membership_leaf ==
                          leaf_data(expected.leaf->first, expected.leaf->second));
                } else {
                    CHECK_FALSE(nodes->non_membership_leaf);
                }
                REQUIRE(nodes->sibling_data.has_value() == !nodes->side_nodes.empty());
                if (nodes->sibling_data)
                    CHECK(sha256(*nodes->sibling_data) == nodes->side_nodes[0]);
            }
        }
    }
}

namespace {

struct ProofFixture {
    test::TempDir dir;
    std::unique_ptr<Engine> engine;
    std::vector<Bytes> keys;

    ProofFixture() {
        auto e = Engine::open(dir.str());
        REQUIRE(e);
        engine = std::move(*e);
        std::mt19937_64 rng(11);
        for (std::uint64_t h = 0; h < 5; ++h) {
            Changes c;
            c.height = h;
            for (int i = 0; i < 40; ++i) {
                Bytes k(1 + rng() % 20);
                for (auto& b : k) b = static_cast<std::uint8_t>(rng());
                keys.push_back(k);
                c.puts.emplace_back(k, Bytes{static_cast<std::uint8_t>(rng() | 1), 7});
            }
            if (h > 0) c.deletes.push_back(keys[h * 3]);
            REQUIRE(engine->apply(c));
        }
    }
};

}  // namespace

TEST_CASE("proofs: present and absent keys verify at every height", "[engine][proof]") {
    ProofFixture f;
    auto view = f.engine->view();
    REQUIRE(view);
    std::mt19937_64 rng(2);
    int present = 0, absent_leaf = 0, absent_empty = 0;
    for (std::uint64_t h = 0; h < 5; ++h) {
        std::vector<Bytes> probes = f.keys;
        for (int i = 0; i < 200; ++i)
            probes.push_back(
                Bytes{static_cast<std::uint8_t>(rng()), static_cast<std::uint8_t>(rng()), 0x55});
        for (const Bytes& k : probes) {
            auto p = view->prove(k, h);
            REQUIRE(p);
            CHECK(p->root == view->root(h).value());
            REQUIRE(verify(*p, p->root));
            CHECK(p->value == view->get(k, h).value());
            if (p->value) {
                ++present;
            } else if (p->non_membership_leaf) {
                ++absent_leaf;
            } else {
                ++absent_empty;
            }
            // The JSON form round-trips.
            auto back = proof_from_json(to_json(*p));
            REQUIRE(back);
            CHECK(to_json(*back) == to_json(*p));
        }
    }
    CHECK(present > 0);
    CHECK(absent_leaf > 0);
    CHECK(absent_empty > 0);
}

TEST_CASE("proofs: tampering with any field makes verification fail", "[engine][proof]") {
    ProofFixture f;
    auto view = f.engine->view();
    REQUIRE(view);
    std::vector<Proof> samples;
    std::mt19937_64 rng(4);
    bool have_present = false, have_leaf = false, have_empty = false;
    for (int i = 0; (!have_present || !have_leaf || !have_empty) && i < 5000; ++i) {
        Bytes k =
            i < 100 ? f.keys[i]
                    : Bytes{static_cast<std::uint8_t>(rng()), static_cast<std::uint8_t>(rng()), 1};
        auto p = view->prove(k, 4);
        REQUIRE(p);
        bool& have = p->value ? have_present : p->non_membership_leaf ? have_leaf : have_empty;
        if (!have && !p->side_nodes.empty()) {
            samples.push_back(*p);
            have = true;
        }
    }
    REQUIRE(samples.size() == 3);

    for (const Proof& good : samples) {
        REQUIRE(verify(good, good.root));
        auto fails = [&](const char* what, auto&& mutate) {
            Proof p = good;
            Hash root = good.root;
            mutate(p, root);
            INFO(what);
            CHECK_FALSE(verify(p, root));
        };
        fails("root", [](Proof&, Hash& r) { r.bytes[5] ^= 1; });
        // The hashes still reach the root checked against; the proof's own claim is false.
        fails("the root field alone", [](Proof& p, Hash&) { p.root.bytes[5] ^= 1; });
        fails("key", [](Proof& p, Hash&) { p.key.push_back(0); });
        fails("path", [](Proof& p, Hash&) { p.path.bytes[31] ^= 1; });
        fails("key and path together", [](Proof& p, Hash&) {
            p.key.push_back(0);
            p.path = sha256(p.key);
        });
        fails("value changed or added", [](Proof& p, Hash&) { p.value = Bytes{0x42}; });
        fails("value emptied", [](Proof& p, Hash&) { p.value = Bytes{}; });
        if (good.value) fails("value removed", [](Proof& p, Hash&) { p.value.reset(); });
        for (std::size_t i = 0; i < good.side_nodes.size(); ++i) {
            fails("a side node", [i](Proof& p, Hash&) { p.side_nodes[i].bytes[0] ^= 0x80; });
        }
        fails("a side node dropped", [](Proof& p, Hash&) { p.side_nodes.pop_back(); });
        fails("a side node added", [](Proof& p, Hash&) { p.side_nodes.push_back(kZeroHash); });
        fails("sibling data changed", [](Proof& p, Hash&) { (*p.sibling_data)[64] ^= 1; });
        fails("sibling data removed", [](Proof& p, Hash&) { p.sibling_data.reset(); });
        if (good.non_membership_leaf) {
            fails("non-membership leaf changed",
                  [](Proof& p, Hash&) { (*p.non_membership_leaf)[40] ^= 1; });
            fails("non-membership leaf removed",
                  [](Proof& p, Hash&) { p.non_membership_leaf.reset(); });
            fails("non-membership leaf prefix",
                  [](Proof& p, Hash&) { (*p.non_membership_leaf)[0] = 1; });
        } else {
            fails("non-membership leaf added", [](Proof& p, Hash&) {
                Bytes d{0};
                for (int i = 0; i < 64; ++i) d.push_back(static_cast<std::uint8_t>(i));
                p.non_membership_leaf = d;
            });
        }
    }
}

TEST_CASE("proofs: JSON that is not a proof is rejected naming the field", "[engine][proof]") {
    using nlohmann::json;
    CHECK(proof_from_json(json::array()).error().message == "not a proof: expected a JSON object");
    json j = json::parse(R"({"height": 1, "root": "00", "key": "01", "path": "", "value": null,
                            "side_nodes": [], "non_membership_leaf": null, "sibling_data": null})");
    CHECK(proof_from_json(j).error().message == "not a proof: \"root\" must be 32 bytes");
    j["root"] = std::string(64, 'a');
    j["path"] = std::string(64, 'b');
    j["side_nodes"] = json::array({"zz"});
    CHECK(proof_from_json(j).error().message ==
          "not a proof: every side node must be 32 bytes of hex");
    j["side_nodes"] = json::array();
    j.erase("sibling_data");
    CHECK(proof_from_json(j).error().message == "not a proof: \"sibling_data\" is missing");
    j["sibling_data"] = nullptr;
    j["height"] = -1;
    CHECK(proof_from_json(j).error().message ==
          "not a proof: \"height\" must be a non-negative integer");
    j["height"] = 3;
    CHECK(proof_from_json(j));

    // What the engine refuses, or the format does not have, is not a proof either.
    j["key"] = "";
    CHECK(proof_from_json(j).error().message == "not a proof: empty key");
    j["key"] = std::string(2 * (kMaxKeySize + 1), 'a');
    CHECK(proof_from_json(j).error().message.starts_with("not a proof: key aaaa"));
    j["key"] = "01";
    j["side_nodes"] = json::array();
    for (int i = 0; i < 257; ++i) j["side_nodes"].push_back(std::string(64, 'c'));
    CHECK(proof_from_json(j).error().message == "not a proof: 257 side nodes, more than 256");
    j["side_nodes"] = json::array();
    j["extra"] = 1;
    CHECK(proof_from_json(j).error().message == "not a proof: unknown field \"extra\"");
    j.erase("extra");
    const std::string text = j.dump();
    CHECK(parse_proof(text));
    CHECK(parse_proof(R"({"value": "aa", )" + text.substr(1)).error().message ==
          "not a proof: field \"value\" given twice");
    CHECK(parse_proof("{").error().message.starts_with("not a proof: bad JSON: "));
}

TEST_CASE("proofs: heights of 2^63 and above survive the JSON form", "[engine][proof]") {
    for (const std::uint64_t height : {std::uint64_t{1} << 63, ~std::uint64_t{0} - 1}) {
        Proof p;
        p.height = height;
        p.key = {0x01};
        p.path = sha256(p.key);
        auto back = parse_proof(to_json(p).dump());
        REQUIRE(back);
        CHECK(back->height == height);
    }
}
