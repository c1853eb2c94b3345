#include "stateroot/indexer/change_file.hpp"

#include <catch2/catch.hpp>
#include <sstream>

#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::indexer;

namespace {
std::string parse_error(std::string_view line) {
    auto r = parse_change_line(line);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::kInvalidArgument);
    return r.error().message;
}
}  // namespace

TEST_CASE("change file: a full line parses with hex in either case with or without 0x",
          "[indexer][changes]") {
    auto r = parse_change_line(
        R"({"height": 7, "block_hash": "0x00000000000000000000000000000000000000000000000000000000000000AB",)"
        R"( "puts": [["0A", "Ff"], ["0x0b", ""]], "deletes": ["0C"]})");
    REQUIRE(r);
    CHECK(r->height == 7);
    REQUIRE(r->block_hash);
    CHECK(r->block_hash->bytes[31] == 0xab);
    REQUIRE(r->puts.size() == 2);
    CHECK(r->puts[0] == std::pair{Bytes{0x0a}, Bytes{0xff}});
    CHECK(r->puts[1] == std::pair{Bytes{0x0b}, Bytes{}});
    CHECK(r->deletes == std::vector<Bytes>{Bytes{0x0c}});
}

TEST_CASE("change file: puts and deletes and block hash are optional", "[indexer][changes]") {
    auto r = parse_change_line(R"({"height": 0})");
    REQUIRE(r);
    CHECK(r->puts.empty());
    CHECK(r->deletes.empty());
    CHECK_FALSE(r->block_hash);
    CHECK(parse_change_line(R"({"height": 1, "block_hash": null})"));
}

TEST_CASE("change file: a number too large for a double is bad JSON, not an exception",
          "[indexer][changes]") {
    // nlohmann::json throws out_of_range, not parse_error, for these (found by fuzzing).
    CHECK(parse_error(R"({"height": 1e400})") == "bad JSON: number overflow parsing '1e400'");
    CHECK(parse_error(R"({"height": 1, "puts": [["01", "02"]], "deletes": [-1e999]})") ==
          "bad JSON: number overflow parsing '-1e999'");
}

TEST_CASE("change file: each bad line gets its own message", "[indexer][changes]") {
    CHECK(parse_error("{\"height\": 1,") ==
          "bad JSON: parse error at line 1, column 14: syntax error while parsing object key - "
          "unexpected end of input; expected string literal");
    CHECK(parse_error("[1]") == "a line must be a JSON object");
    CHECK(parse_error(R"({"puts": []})") == "missing \"height\"");
    CHECK(parse_error(R"({"height": -1})") == "\"height\" must be a non-negative integer");
    CHECK(parse_error(R"({"height": "1"})") == "\"height\" must be a non-negative integer");
    CHECK(parse_error(R"({"height": 1.5})") == "\"height\" must be a non-negative integer");
    CHECK(parse_error(R"({"height": 1, "put": []})") == "unknown field \"put\"");
    CHECK(parse_error(R"({"height": 1, "block_hash": "abcd"})") ==
          "\"block_hash\" must be 32 bytes");
    CHECK(parse_error(R"({"height": 1, "block_hash": "xyz"})") ==
          "\"block_hash\" is not valid hex");
    CHECK(parse_error(R"({"height": 1, "puts": {}})") ==
          "\"puts\" must be an array of [key, value] pairs");
    CHECK(parse_error(R"({"height": 1, "puts": [["01"]]})") ==
          "puts[0] must be a [key, value] pair");
    CHECK(parse_error(R"({"height": 1, "puts": [["01", "02"], ["0g", "02"]]})") ==
          "puts[1] key is not valid hex");
    CHECK(parse_error(R"({"height": 1, "puts": [["01", "123"]]})") ==
          "puts[0] value is not valid hex");
    CHECK(parse_error(R"({"height": 1, "puts": [[1, "02"]]})") ==
          "puts[0] key must be a hex string");
    CHECK(parse_error(R"({"height": 1, "deletes": "01"})") ==
          "\"deletes\" must be an array of keys");
    CHECK(parse_error(R"({"height": 1, "deletes": ["01", null]})") ==
          "deletes[1] must be a hex string");
    // The last copy of a repeated field would win, dropping the first one's changes.
    CHECK(parse_error(R"({"height": 1, "puts": [["aa", "01"]], "puts": [["bb", "02"]]})") ==
          "field \"puts\" given twice");
    CHECK(parse_error(R"({"height": 1, "puts": [["aa", "01"]], "height": 2})") ==
          "field \"height\" given twice");
    // The JSON reader would stop at a NUL byte and drop the rest of the line unread.
    using namespace std::string_literals;
    CHECK(
        parse_error("{\"height\": 1}\0, \"puts\": [[\"bb\", \"02\"]]}"s) ==
        "bad JSON: parse error at byte 14: a NUL byte (JSON allows one only escaped, in a string)");
}

TEST_CASE(
    "change file: a bad line stops the run naming file and line and earlier lines stay committed",
    "[indexer][changes]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    std::istringstream in(
        "{\"height\": 0, \"puts\": [[\"01\", \"01\"]]}\n"
        "\n"
        "{\"height\": 1, \"puts\": [[\"02\", \"02\"]]}\n"
        "{\"height\": 2, \"puts\": [[\"03\", \"03\"]], \"deletes\": [\"03\"]}\n"
        "{\"height\": 3, \"puts\": [[\"04\", \"04\"]]}\n");
    std::vector<std::uint64_t> seen;
    auto s = apply_change_stream(**e, in, "feed.jsonl",
                                 [&](const engine::CommitResult& r) { seen.push_back(r.height); });
    REQUIRE_FALSE(s);
    CHECK(s.error().message == "feed.jsonl:4: key 03 appears more than once");
    CHECK(seen == std::vector<std::uint64_t>{0, 1});
    CHECK((*e)->tip() == 1u);
    CHECK_FALSE((*e)->view()->get(Bytes{0x03}, 1).value());
}

TEST_CASE("change file: heights already committed are reported again and gaps are errors",
          "[indexer][changes]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    const std::string lines =
        "{\"height\": 4, \"puts\": [[\"01\", \"01\"]]}\n"
        "{\"height\": 5, \"puts\": [[\"02\", \"02\"]]}\n";
    std::vector<engine::CommitResult> first, second;
    std::istringstream a(lines), b(lines);
    REQUIRE(apply_change_stream(**e, a, "x", [&](const auto& r) { first.push_back(r); }));
    REQUIRE(apply_change_stream(**e, b, "x", [&](const auto& r) { second.push_back(r); }));
    REQUIRE(second.size() == 2);
    CHECK(second[1].already_committed);
    CHECK(second[1].root == first[1].root);
    std::istringstream gap("{\"height\": 7}\n");
    auto s = apply_change_stream(**e, gap, "y", [](const auto&) {});
    CHECK(s.error().message == "y:1: height gap: the next height is 6, got 7");
}
