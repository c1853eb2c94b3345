#include "stateroot/engine/root_builder.hpp"

#include <catch2/catch.hpp>

#include "tree_harness.hpp"

using namespace stateroot;
using namespace stateroot::engine;

TEST_CASE("root builder: empty and single-leaf roots", "[engine][builder]") {
    RootBuilder b;
    CHECK(b.finish() == kZeroHash);
    std::mt19937_64 rng(1);
    const Hash p = test::random_hash(rng), v = test::random_hash(rng);
    b.add(p, v);
    CHECK(b.finish() == leaf_hash(p, v));
}

TEST_CASE("root builder: matches the naive tree on random and chained sets", "[engine][builder]") {
    for (std::uint64_t seed = 1; seed <= 30; ++seed) {
        std::mt19937_64 rng(seed);
        test::naive::State state;
        const Hash stem = test::random_hash(rng);
        const int n = static_cast<int>(rng() % 300);
        for (int i = 0; i < n; ++i) {
            Hash p = test::random_hash(rng);
            if (rng() % 2) {  // share a random-length prefix with the stem
                const int shared = static_cast<int>(rng() % 256);
                for (int bit = 0; bit < shared; ++bit) {
                    const int mask = 1 << (7 - bit % 8);
                    p.bytes[bit / 8] = static_cast<std::uint8_t>((p.bytes[bit / 8] & ~mask) |
                                                                 (stem.bytes[bit / 8] & mask));
                }
            }
            state[p.bytes] = test::random_hash(rng).bytes;
        }
        RootBuilder b;
        for (const auto& [p, v] : state) REQUIRE(b.add(test::to_hash(p), test::to_hash(v)));
        CHECK(b.finish() == test::to_hash(test::naive::root(state)));
    }
}

TEST_CASE("root builder: leaves out of order are refused", "[engine][builder]") {
    RootBuilder b;
    Hash lo, hi;
    hi.bytes[0] = 1;
    CHECK(b.add(hi, lo));
    CHECK_FALSE(b.add(lo, lo));
    CHECK_FALSE(b.add(hi, lo));
}
