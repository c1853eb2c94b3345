#include "stateroot/storage/bytes.hpp"

#include <catch2/catch.hpp>

using namespace stateroot;

TEST_CASE("hex: decoding accepts either case and an optional 0x", "[storage][hex]") {
    const Bytes expected{0xab, 0xcd, 0x01};
    CHECK(from_hex("abcd01") == expected);
    CHECK(from_hex("ABCD01") == expected);
    CHECK(from_hex("0xAbCd01") == expected);
    CHECK(from_hex("0XABCD01") == expected);
    CHECK(from_hex("") == Bytes{});
    CHECK(from_hex("0x") == Bytes{});
}

TEST_CASE("hex: odd lengths and non-hex characters are rejected", "[storage][hex]") {
    CHECK_FALSE(from_hex("abc").has_value());
    CHECK_FALSE(from_hex("zz").has_value());
    CHECK_FALSE(from_hex("0x0g").has_value());
    CHECK_FALSE(from_hex(" 00").has_value());
}

TEST_CASE("hex: encoding is lowercase without a prefix", "[storage][hex]") {
    CHECK(to_hex(Bytes{0xde, 0xad, 0xBE, 0x0f}) == "deadbe0f");
    CHECK(to_hex(Bytes{}) == "");
}

TEST_CASE("varints and big-endian integers round-trip", "[storage][encoding]") {
    for (std::uint64_t v : {0ull, 1ull, 127ull, 128ull, 300ull, (1ull << 32) + 5, ~0ull}) {
        Bytes b;
        put_varint(b, v);
        std::size_t pos = 0;
        CHECK(get_varint(b, pos) == v);
        CHECK(pos == b.size());
        Bytes be;
        put_be64(be, v);
        CHECK(get_be64(be.data()) == v);
    }
    Bytes truncated{0x80, 0x80};
    std::size_t pos = 0;
    CHECK_FALSE(get_varint(truncated, pos).has_value());
}

TEST_CASE("big-endian heights sort in numeric order", "[storage][encoding]") {
    Bytes a, b;
    put_be64(a, 255);
    put_be64(b, 256);
    CHECK(a < b);
}
