#include "stateroot/engine/hash.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace stateroot;
using namespace stateroot::engine;

namespace {
Hash hex_hash(std::string_view hex) { return Hash::from(*from_hex(hex)); }
}  // namespace

TEST_CASE("hash: SHA-256 matches FIPS 180-4 examples", "[engine][hash]") {
    CHECK(sha256(as_bytes("")).hex() ==
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256(as_bytes("abc")).hex() ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("hash: leaf and node hashes follow the spec's worked example", "[engine][hash]") {
    const Hash data = sha256(as_bytes("DATA"));
    CHECK(data.hex() == "c97c29c7a71b392b437ee03fd17f09bb10b75e879466fc0eb757b2c4a78ac938");
    const Hash k0 = hex_hash("df3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119");
    const Hash k1 = hex_hash("b40711a88c7039756fb8a73827eabe2c0fe5a0346ca7e0a104adc0fc764f528d");
    const Hash l0 = leaf_hash(k0, data);
    const Hash l1 = leaf_hash(k1, data);
    CHECK(l0.hex() == "39f36a7cb4dfb1b46f03d044265df6a491dffc1034121bc1071a34ddce9bb14b");
    CHECK(l1.hex() == "d7cb6616832899ac111a852ca8df2d63a1cdb36cb84651ffde72e264506a456f");
    CHECK(node_hash(l1, l0).hex() ==
          "4983b5ef655e2c8b3652832d9a842824d4e02d0fce117756e81575ed7747d7d1");
}

TEST_CASE("hash: bits are numbered from the most significant bit of byte 0", "[engine][hash]") {
    Hash p;
    p.bytes[0] = 0b1010'0000;
    p.bytes[31] = 0x01;
    CHECK(bit(p, 0) == 1);
    CHECK(bit(p, 1) == 0);
    CHECK(bit(p, 2) == 1);
    CHECK(bit(p, 255) == 1);
    CHECK(bit(p, 254) == 0);
}

TEST_CASE("hash: common prefix length counts equal leading bits", "[engine][hash]") {
    Hash a, b;
    CHECK(common_prefix_bits(a, b) == 256);
    b.bytes[31] = 1;
    CHECK(common_prefix_bits(a, b) == 255);
    b.bytes[0] = 0x80;
    CHECK(common_prefix_bits(a, b) == 0);
    a.bytes[0] = 0x80;
    a.bytes[3] = 0x10;
    CHECK(common_prefix_bits(a, b) == 27);
}

TEST_CASE("hash: node hashes computed together equal those computed one at a time", "[engine][hash]") {
    // With SHA-NI, 2-4 hashes go through the interleaved lanes; each is checked
    // against OpenSSL's. Inputs and outputs alias as the tree's wraps use them.
    INFO("SHA-NI lanes: " << (hash_lanes() ? "yes" : "no (OpenSSL only)"));
    std::mt19937_64 rng(11);
    auto random_hash = [&] {
        Hash h;
        for (auto& b : h.bytes) b = static_cast<std::uint8_t>(rng());
        return h;
    };
    for (int round = 0; round < 500; ++round) {
        const int n = 1 + round % kHashLanes;
        Hash left[kHashLanes], right[kHashLanes], out[kHashLanes], expected[kHashLanes];
        const Hash* l[kHashLanes];
        const Hash* r[kHashLanes];
        Hash* o[kHashLanes];
        const bool in_place = round % 3 == 0;
        for (int i = 0; i < n; ++i) {
            left[i] = random_hash();
            right[i] = round % 5 == 0 ? kZeroHash : random_hash();
            expected[i] = node_hash(left[i], right[i]);
            l[i] = &left[i];
            r[i] = &right[i];
            o[i] = in_place ? (i % 2 ? &right[i] : &left[i]) : &out[i];
        }
        node_hashes(n, l, r, o);
        for (int i = 0; i < n; ++i) {
            INFO("round " << round << ", lane " << i << " of " << n);
            CHECK(*o[i] == expected[i]);
        }
    }
    // Turned off, the same calls give the same hashes through OpenSSL alone.
    use_hash_lanes(false);
    CHECK_FALSE(hash_lanes());
    Hash a = sha256(as_bytes("a")), b = sha256(as_bytes("b")), x, y;
    const Hash* l[2] = {&a, &b};
    const Hash* r[2] = {&b, &a};
    Hash* o[2] = {&x, &y};
    node_hashes(2, l, r, o);
    CHECK(x == node_hash(a, b));
    CHECK(y == node_hash(b, a));
    use_hash_lanes(true);
}
