// The query server on loopback, over real HTTP.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "config.hpp"
#include "rpc.hpp"
#include "server.hpp"
#include "stateroot/indexer/loop.hpp"
#include "files.hpp"
#include "process.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::tools;
using nlohmann::json;

namespace {

const std::string kMainnet = test::block_fixture("mainnet_0-589.blk");

std::unique_ptr<engine::Engine> indexed_db(const std::string& dir) {
    auto e = engine::Engine::open(dir);
    REQUIRE(e);
    auto found = indexer::scan_blk_file(kMainnet, indexer::Network::kMainnet);
    REQUIRE(found);
    indexer::UtxoIndexer utxo(false);
    REQUIRE(indexer::run_index(**e, utxo, *found, {}));
    return std::move(*e);
}

// A server on an ephemeral loopback port over `engine`.
struct Served {
    EngineSource source;
    Metrics metrics;
    Rpc rpc;
    HttpServer server;
    int port = 0;
    explicit Served(engine::Engine& e, ServerOptions o = {})
        : source(e), rpc(source, metrics), server(rpc, (o.addr = "127.0.0.1:0", o)) {
        auto p = server.start();
        REQUIRE(p);
        port = *p;
    }
    httplib::Client client() const { return httplib::Client("127.0.0.1", port); }
};

std::string post(const Served& s, const std::string& body, int expected_status = 200) {
    auto c = s.client();
    auto r = c.Post("/", body, "application/json");
    REQUIRE(r);
    CHECK(r->status == expected_status);
    return r->body;
}

json call(const Served& s, const std::string& method, json params) {
    return json::parse(post(s, json{{"jsonrpc", "2.0"}, {"method", method}, {"params", params}, {"id", 1}}.dump()));
}

json result(const Served& s, const std::string& method, json params = json::array()) {
    const json r = call(s, method, std::move(params));
    INFO(r.dump());
    REQUIRE(r.contains("result"));
    return r["result"];
}

std::string err(int code, const std::string& message, const std::string& id = "1") {
    return fmt::format(R"({{"error":{{"code":{},"message":{}}},"id":{},"jsonrpc":"2.0"}})", code, json(message).dump(), id);
}

std::pair<int, std::string> get(const Served& s, const std::string& path) {
    auto c = s.client();
    auto r = c.Get(path.c_str());
    REQUIRE(r);
    return {r->status, r->body};
}

std::string run_cli(const std::string& args) {
    test::TempDir d;
    const std::string out = d.sub("out");
    const int rc = std::system(fmt::format("{} {} > {} 2>/dev/null", test::shell_quoted(STATEROOT_BIN), args,
                                           test::shell_quoted(out)).c_str());
    (void)rc;
    std::ifstream in(out);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
}

}  // namespace

TEST_CASE("server: every JSON-RPC method answers", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    Served s(*e);
    const std::string root589 = e->root().hex();
    CHECK(result(s, "stateroot_height") == 589);
    CHECK(result(s, "stateroot_getroot", {"latest"}) == root589);
    CHECK(result(s, "stateroot_getroot", json::array()) == root589);
    CHECK(result(s, "stateroot_getroot", {589}) == root589);
    CHECK(result(s, "stateroot_getroot", {"589"}) == root589);
    CHECK(result(s, "stateroot_getblockhash", {170}) == "00000000d1145790a8694403d4063f323d499e655c83426834d4ce2f8dd4a2ee");
    CHECK(result(s, "metashrew_height") == "589");
    CHECK(result(s, "metashrew_stateroot", {"latest"}) == "0x" + root589);
    CHECK(result(s, "metashrew_getblockhash", {"0"}) ==
          "0x000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f");

    // The coinbase output of block 1 (txid 0e3e...9098 in display order).
    const json changes = result(s, "stateroot_getchanges", {1});
    REQUIRE(changes["puts"].size() == 1);
    CHECK(changes["height"] == 1);
    CHECK(changes["deletes"] == json::array());
    const std::string key = changes["puts"][0][0], value = changes["puts"][0][1];
    CHECK(key.rfind("7574786f2f", 0) == 0);
    CHECK(result(s, "stateroot_get", {key, 1}) == value);
    CHECK(result(s, "stateroot_get", {"0x" + key, "latest"}) == value);
    CHECK(result(s, "stateroot_get", {key, 0}).is_null());
    const json proof = result(s, "stateroot_prove", {key, 300});
    CHECK(proof["value"] == value);
    CHECK(proof["root"] == result(s, "stateroot_getroot", {300}));
    auto parsed = engine::proof_from_json(proof);
    REQUIRE(parsed);
    CHECK(engine::verify(*parsed, parsed->root));
}

TEST_CASE("server: answers equal the CLI's", "[server]") {
    test::TempDir dir;
    std::string key;
    {
        auto e = indexed_db(dir.str());
        Served s(*e);
        key = result(s, "stateroot_getchanges", {170})["puts"][0][0];
    }
    // The CLI opens the database read-only beside the server's engine.
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    Served s(**e);
    for (int h : {0, 170, 589}) {
        CHECK(result(s, "stateroot_getroot", {h}) == run_cli(fmt::format("root --db {} --height {}", dir.str(), h)));
        CHECK(result(s, "stateroot_getblockhash", {h}) == run_cli(fmt::format("blockhash --db {} --height {}", dir.str(), h)));
    }
    CHECK(result(s, "stateroot_get", {key, 170}) == run_cli(fmt::format("get --db {} --key {} --height 170", dir.str(), key)));
    CHECK(result(s, "stateroot_prove", {key, 400}) ==
          json::parse(run_cli(fmt::format("prove --db {} --key {} --height 400", dir.str(), key))));
    CHECK(result(s, "stateroot_prove", {"00ff", 400}) ==
          json::parse(run_cli(fmt::format("prove --db {} --key 00ff --height 400", dir.str()))));
}

TEST_CASE("server: every error has its exact JSON", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    Served s(*e);
    CHECK(post(s, "{\"jsonrpc\": \"2.0\", ") ==
          err(-32700, "parse error at line 1, column 20: syntax error while parsing object key - unexpected end of "
                      "input; expected string literal", "null"));
    CHECK(post(s, std::string(100, '[') + std::string(100, ']')) ==
          err(-32700, "parse error: nested deeper than 64 levels", "null"));
    // A number too large for a double: nlohmann throws out_of_range, not parse_error.
    CHECK(post(s, "1e400") == err(-32700, "number overflow parsing '1e400'", "null"));
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "stateroot_getroot", "params": [1e999], "id": 1})") ==
          err(-32700, "number overflow parsing '1e999'", "null"));
    CHECK(post(s, "[]") == err(-32600, "invalid request: empty batch", "null"));
    CHECK(post(s, "42") == err(-32600, "invalid request: not a JSON object", "null"));
    CHECK(post(s, R"({"method": "stateroot_height", "id": 1})") == err(-32600, "invalid request: \"jsonrpc\" must be \"2.0\""));
    CHECK(post(s, R"({"jsonrpc": "2.0", "id": 7})") == err(-32600, "invalid request: \"method\" must be a string", "7"));
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "x", "id": {}})") ==
          err(-32600, "invalid request: \"id\" must be a string, a 64-bit integer or null", "null"));
    for (const char* id : {"1.5", "18446744073709551616", "-9223372036854775809"}) {
        CHECK(post(s, fmt::format(R"({{"jsonrpc": "2.0", "method": "stateroot_height", "id": {}}})", id)) ==
              err(-32600, "invalid request: \"id\" must be a string, a 64-bit integer or null", "null"));
    }
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "stateroot_height", "id": 18446744073709551615})")
              .ends_with(R"("id":18446744073709551615,"jsonrpc":"2.0","result":589})"));
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "eth_call", "id": "a"})") == err(-32601, "method not found: eth_call", "\"a\""));
    CHECK(call(s, "stateroot_getroot", {999}).dump() ==
          err(-32001, "height 999 not found (heights 0..589 exist)"));
    CHECK(call(s, "metashrew_stateroot", {"600"}).dump() ==
          err(-32001, "height 600 not found (heights 0..589 exist)"));
    CHECK(call(s, "stateroot_getroot", {-1}).dump() ==
          err(-32602, "invalid params: params[0] (height) must be a non-negative integer, a decimal string or \"latest\""));
    CHECK(call(s, "stateroot_getroot", {"tip"}).dump() ==
          err(-32602, "invalid params: params[0] (height) must be a non-negative integer, a decimal string or \"latest\""));
    CHECK(call(s, "stateroot_get", json::array()).dump() == err(-32602, "invalid params: params[0] (key) is required"));
    CHECK(call(s, "stateroot_get", {"xyz"}).dump() == err(-32602, "invalid params: params[0] (key) must be a hex string"));
    CHECK(call(s, "stateroot_get", {""}).dump() == err(-32602, "invalid params: params[0] (key): empty key"));
    CHECK(call(s, "stateroot_get", {std::string(2 * 4097, 'a')}).dump() ==
          err(-32602, fmt::format("invalid params: params[0] (key): key {}... (4097 bytes) is longer than the 4096-byte limit",
                                  std::string(64, 'a'))));
    CHECK(call(s, "stateroot_height", {1}).dump() == err(-32602, "invalid params: stateroot_height takes at most 0 params, got 1"));
    CHECK(
        post(s,
             R"({"jsonrpc": "2.0", "method": "stateroot_height", "params": {"a": 1}, "id": 1})") ==
        err(-32602, "invalid params: params by name are not supported, give an array"));
    // A NUL byte would end nlohmann's reading, the rest of the body unread.
    using namespace std::string_literals;
    CHECK(
        post(s, "{\"jsonrpc\": \"2.0\", \"method\": \"stateroot_height\", \"id\": 1}\0garbage"s) ==
        err(-32700,
            "parse error at byte 58: a NUL byte (JSON allows one only escaped, in a string)",
            "null"));
    // Params neither by position nor by name make the request invalid, a notification's too.
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "stateroot_height", "params": "x", "id": 1})") ==
          err(-32600, "invalid request: \"params\" must be an array or an object"));
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "stateroot_height", "params": null})") ==
          err(-32600, "invalid request: \"params\" must be an array or an object", "null"));
    json batch = json::array();
    for (int i = 0; i < 1001; ++i) batch.push_back({{"jsonrpc", "2.0"}, {"method", "stateroot_height"}, {"id", i}});
    CHECK(post(s, batch.dump()) == err(-32600, "invalid request: a batch of 1001 calls exceeds 1000", "null"));
    batch.erase(batch.begin());
    CHECK(json::parse(post(s, batch.dump())).size() == 1000);
}

TEST_CASE("server: notifications get no answer and batches answer the rest", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    Served s(*e);
    CHECK(post(s, R"({"jsonrpc": "2.0", "method": "stateroot_height"})", 204).empty());
    CHECK(post(s, R"([{"jsonrpc": "2.0", "method": "stateroot_height"}, {"jsonrpc": "2.0", "method": "nope"}])", 204).empty());
    const json r = json::parse(post(
        s, R"([{"jsonrpc": "2.0", "method": "stateroot_height", "id": 1}, {"jsonrpc": "2.0", "method": "stateroot_height"},)"
           R"( {"jsonrpc": "2.0", "method": "metashrew_height", "id": null}])"));
    REQUIRE(r.size() == 2);
    CHECK(r[0]["result"] == 589);
    CHECK(r[1]["id"].is_null());
    CHECK(r[1]["result"] == "589");
}

TEST_CASE("server: an empty database answers null heights and height errors", "[server]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    Served s(**e);
    CHECK(result(s, "stateroot_height").is_null());
    CHECK(result(s, "metashrew_height").is_null());
    CHECK(call(s, "stateroot_getroot", {"latest"}).dump() == err(-32001, "height latest not found (the database is empty)"));
    CHECK(call(s, "stateroot_getroot", {0}).dump() == err(-32001, "height 0 not found (the database is empty)"));
    CHECK(get(s, "/height") == std::pair{200, std::string(R"({"height":null})")});
}

TEST_CASE("server: a height without a block hash answers null", "[server]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    engine::Changes c;
    c.height = 3;
    c.puts.emplace_back(Bytes{1}, Bytes{2});
    REQUIRE((*e)->apply(c));
    Served s(**e);
    CHECK(result(s, "stateroot_getblockhash", {3}).is_null());
    CHECK(result(s, "metashrew_getblockhash", {3}).is_null());
    CHECK(call(s, "stateroot_getroot", {2}).dump() ==
          err(-32001, "height 2 not found (only height 3 exists)"));
}

TEST_CASE("server: a pruned height answers -32001 naming the kept heights", "[server][prune]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    for (std::uint64_t h = 1; h <= 4; ++h) {
        engine::Changes c;
        c.height = h;
        c.puts.emplace_back(Bytes{0x01}, Bytes{static_cast<std::uint8_t>(h)});
        REQUIRE((*e)->apply(c));
    }
    REQUIRE((*e)->prune(3));
    Served s(**e);
    const std::string pruned = "height 1 is pruned (values and proofs are kept for heights 3..4)";
    CHECK(call(s, "stateroot_get", {"01", 1}).dump() == err(-32001, pruned));
    CHECK(call(s, "stateroot_prove", {"01", 1}).dump() == err(-32001, pruned));
    CHECK(call(s, "stateroot_getchanges", {1}).dump() == err(-32001, pruned));
    CHECK(call(s, "stateroot_get", {"01", 2}).dump() ==
          err(-32001, "height 2 is pruned (values and proofs are kept for heights 3..4)"));
    // Roots and block hashes of pruned heights stay, and the kept heights answer.
    auto v = (*e)->view();
    CHECK(result(s, "stateroot_getroot", {1}) == v->root(1)->hex());
    CHECK(result(s, "stateroot_getblockhash", {1}).is_null());
    CHECK(result(s, "stateroot_get", {"01", 3}) == "03");
    CHECK(result(s, "stateroot_getchanges", {4})["puts"] == json::array({json::array({"01", "04"})}));
    CHECK(result(s, "stateroot_prove", {"01", "latest"})["value"] == "04");
    CHECK(call(s, "stateroot_get", {"01", 0}).dump() == err(-32001, "height 0 not found (heights 1..4 exist)"));

    const std::string rest_error = json{{"error", {{"code", -32001}, {"message", pruned}}}}.dump();
    CHECK(get(s, "/value/01?height=1") == std::pair{404, rest_error});
    CHECK(get(s, "/proof/01?height=1") == std::pair{404, rest_error});
    CHECK(get(s, "/root/1").first == 200);
    CHECK(get(s, "/value/01?height=3").first == 200);
}

TEST_CASE("server: the REST routes mirror the methods", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    Served s(*e);
    const std::string root = e->root().hex();
    CHECK(get(s, "/height") == std::pair{200, std::string(R"({"height":589})")});
    CHECK(get(s, "/root/latest") == std::pair{200, json{{"height", 589}, {"root", root}}.dump()});
    CHECK(json::parse(get(s, "/root/170").second)["root"] == result(s, "stateroot_getroot", {170}));
    CHECK(get(s, "/blockhash/1").second ==
          json{{"block_hash", "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"}, {"height", 1}}.dump());
    const std::string key = result(s, "stateroot_getchanges", {1})["puts"][0][0];
    const json value = json::parse(get(s, "/value/" + key + "?height=5").second);
    CHECK(value == json{{"height", 5}, {"key", key}, {"value", result(s, "stateroot_get", {key, 5})}});
    CHECK(json::parse(get(s, "/value/" + key + "?height=0").second)["value"].is_null());
    CHECK(json::parse(get(s, "/proof/" + key + "?height=7").second) == result(s, "stateroot_prove", {key, 7}));
    CHECK(json::parse(get(s, "/proof/" + key).second) == result(s, "stateroot_prove", {key, 589}));

    const json status = json::parse(get(s, "/status").second);
    CHECK(status["tip"] == 589);
    CHECK(status["root"] == root);
    CHECK(status["block_hash"] == "00000000b96305605f1eb5ab800024ff3fa260deedf6005e1e3987daa11d3935");
    CHECK(status["bytes_on_disk"].get<std::uint64_t>() > 0);
    CHECK(status["uptime_s"].get<double>() >= 0);
    CHECK(status["indexer"] == json{{"state", "none"}});

    CHECK(
        get(s, "/root/600") ==
        std::pair{
            404,
            std::string(
                R"x({"error":{"code":-32001,"message":"height 600 not found (heights 0..589 exist)"}})x")});
    CHECK(get(s, "/value/zz").first == 400);
    // A REST error names where the route took the parameter from, not a method's params.
    const auto message = [&](const std::string& path) {
        return json::parse(get(s, path).second)["error"]["message"].get<std::string>();
    };
    CHECK(message("/value/zz") == "invalid params: the key in the path must be a hex string");
    CHECK(message("/proof/zz?height=1") == "invalid params: the key in the path must be a hex string");
    for (const char* path : {"/value/00?height=abc", "/proof/00?height="}) {
        INFO(path);
        CHECK(message(path) ==
              "invalid params: query parameter height must be a non-negative integer, a decimal string or \"latest\"");
    }
    CHECK(message("/root/x1") ==
          "invalid params: the height in the path must be a non-negative integer, a decimal string or \"latest\"");
    CHECK(get(s, "/nothing/here") == std::pair{404, std::string(R"({"error":{"code":404,"message":"no such route: /nothing/here"}})")});

    const std::string metrics = get(s, "/metrics").second;
    for (const char* line : {"stateroot_tip_height 589", "stateroot_heights_committed_total 0",
                             "stateroot_rpc_requests_total{method=\"stateroot_getroot\",outcome=\"ok\"}",
                             "stateroot_rpc_requests_total{method=\"rest_root\",outcome=\"error\"} 2",
                             "stateroot_rpc_seconds_bucket{le=\"+Inf\"}", "stateroot_commit_seconds_count 0",
                             "stateroot_disk_bytes "}) {
        INFO(line);
        CHECK(metrics.find(line) != std::string::npos);
    }

    // A misspelt or repeated query parameter is refused, not answered for the tip or for
    // one of its values.
    CHECK(get(s, "/value/00?hieght=5").first == 400);
    CHECK(message("/value/00?hieght=5") ==
          "invalid params: unknown query parameter \"hieght\" (this route takes height)");
    CHECK(message("/proof/00?height=5&height=6") ==
          "invalid params: query parameter height given twice");
    CHECK(message("/root/5?height=6") ==
          "invalid params: unknown query parameter \"height\" (this route takes none)");
    for (const char* path : {"/height?x", "/status?verbose=1", "/blockhash/5?height=5"}) {
        INFO(path);
        CHECK(get(s, path).first == 400);
    }
    CHECK(json::parse(get(s, "/value/00?height=5").second)["height"] == 5);
}

TEST_CASE("server: bodies over 1 MiB get HTTP 413", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    Served s(*e);
    auto c = s.client();
    auto r = c.Post("/", std::string((1 << 20) + 1, ' '), "application/json");
    REQUIRE(r);
    CHECK(r->status == 413);
    auto ok = c.Post("/", std::string((1 << 20) - 64, ' ') + R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})",
                     "application/json");
    REQUIRE(ok);
    CHECK(ok->status == 200);
}

TEST_CASE("server: addresses are split and written back, an IPv6 host in brackets", "[server]") {
    for (const std::string addr : {"127.0.0.1:8080", "[::1]:0", "localhost:65535"}) {
        auto parsed = parse_addr(addr);
        REQUIRE(parsed);
        CHECK(format_addr(parsed->first, parsed->second) == addr);
    }
    CHECK(parse_addr("[::1]:9")->first == "::1");
}

TEST_CASE("server: a token is required off loopback and checked when set", "[server]") {
    test::TempDir dir;
    auto e = indexed_db(dir.str());
    EngineSource source(*e);
    Metrics metrics;
    Rpc rpc(source, metrics);
    ServerOptions open;
    open.addr = "0.0.0.0:0";
    HttpServer refused(rpc, open);
    auto r = refused.start();
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "binding 0.0.0.0:0 (not a loopback address) requires --rpc-token");

    ServerOptions guarded = open;
    guarded.token = "s3cret";
    HttpServer server(rpc, guarded);
    auto port = server.start();
    REQUIRE(port);
    httplib::Client c("127.0.0.1", *port);
    const std::string body = R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})";
    auto denied = c.Post("/", body, "application/json");
    REQUIRE(denied);
    CHECK(denied->status == 401);
    CHECK(denied->body == R"({"error":{"code":401,"message":"missing or wrong bearer token"}})");
    // The scheme in any case; the token exactly.
    for (const auto& [authorization, status] : std::initializer_list<std::pair<std::string, int>>{
             {"bearer s3cret", 200}, {"BEARER  s3cret", 200}, {"Bearer s3cres", 401}, {"Bearer s3cret2", 401},
             {"Bearer s3cre", 401}, {"Bearer", 401}, {"Basic s3cret", 401}, {"s3cret", 401}}) {
        INFO(authorization);
        auto answered = c.Post("/", httplib::Headers{{"Authorization", authorization}}, body, "application/json");
        REQUIRE(answered);
        CHECK(answered->status == status);
    }
    c.set_bearer_token_auth("s3cret");
    auto allowed = c.Post("/", body, "application/json");
    REQUIRE(allowed);
    CHECK(allowed->status == 200);
    CHECK(c.Get("/height")->status == 200);
}

TEST_CASE("server: four clients read while an indexer commits and no root ever changes", "[server][concurrency]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.str());
    REQUIRE(e);
    engine::Engine& eng = **e;
    auto commit = [&](std::uint64_t h) {
        engine::Changes c;
        c.height = h;
        for (int i = 0; i < 50; ++i) {
            c.puts.emplace_back(Bytes{static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(h % 7)},
                                Bytes{static_cast<std::uint8_t>(h), static_cast<std::uint8_t>(h >> 8), 1});
        }
        REQUIRE(eng.apply(c));
    };
    commit(0);
    Served s(eng);
    std::atomic<bool> done{false};
    std::thread writer([&] {
        for (std::uint64_t h = 1; h < 400; ++h) {
            commit(h);
            std::this_thread::sleep_for(std::chrono::microseconds(500));
        }
        done = true;
    });
    std::mutex mu;
    std::map<std::uint64_t, std::string> seen;  // height -> root, as first answered
    std::atomic<int> errors{0}, changed{0}, requests{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t) {
        clients.emplace_back([&, t] {
            httplib::Client c("127.0.0.1", s.port);
            std::mt19937_64 rng(t);
            for (int i = 0; i < 1000; ++i) {
                auto r = c.Post("/", R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})", "application/json");
                if (!r || r->status != 200) {
                    ++errors;
                    continue;
                }
                const std::uint64_t tip = json::parse(r->body)["result"].get<std::uint64_t>();
                const std::uint64_t h = rng() % (tip + 1);
                const json body = json::array({{{"jsonrpc", "2.0"}, {"method", "stateroot_getroot"}, {"params", {h}}, {"id", 1}},
                                               {{"jsonrpc", "2.0"}, {"method", "stateroot_prove"}, {"params", {"0102", h}}, {"id", 2}}});
                auto rr = c.Post("/", body.dump(), "application/json");
                requests += 2;
                if (!rr || rr->status != 200) {
                    ++errors;
                    continue;
                }
                const json answers = json::parse(rr->body);
                if (!answers[0].contains("result") || !answers[1].contains("result")) {
                    ++errors;
                    continue;
                }
                const std::string root = answers[0]["result"];
                // The proof was answered from the same height's state.
                if (answers[1]["result"]["root"] != root) ++errors;
                std::lock_guard lock(mu);
                const auto [it, inserted] = seen.emplace(h, root);
                if (!inserted && it->second != root) ++changed;
            }
        });
    }
    for (auto& c : clients) c.join();
    writer.join();
    CHECK(errors == 0);
    CHECK(changed == 0);
    CHECK(requests == 8000);
    CHECK(seen.size() > 50);
    auto v = eng.view();
    for (const auto& [h, root] : seen) CHECK(v->root(h)->hex() == root);
}

namespace {

using test::Child;

}  // namespace

TEST_CASE("server: a replica in another process sees new heights within a second", "[server][replica]") {
    test::TempDir dir;
    auto e = engine::Engine::open(dir.sub("db"));
    REQUIRE(e);
    auto commit = [&](std::uint64_t h) {
        engine::Changes c;
        c.height = h;
        c.puts.emplace_back(Bytes{static_cast<std::uint8_t>(h)}, Bytes{1, static_cast<std::uint8_t>(h)});
        REQUIRE((*e)->apply(c));
    };
    commit(0);
    Child replica({"serve", "--db", dir.sub("db"), "--secondary", dir.sub("scratch"), "--rpc-addr", "127.0.0.1:0"},
                  dir.sub("out"), dir.sub("err"));
    const int port = test::announced_port(dir.sub("out"));
    httplib::Client c("127.0.0.1", port);
    auto tip_of_replica = [&]() -> json {
        auto r = c.Post("/", R"({"jsonrpc":"2.0","method":"stateroot_height","id":1})", "application/json");
        REQUIRE(r);
        return json::parse(r->body)["result"];
    };
    CHECK(tip_of_replica() == 0);
    for (std::uint64_t h = 1; h <= 3; ++h) {
        commit(h);
        const auto t = std::chrono::steady_clock::now();
        while (tip_of_replica() != h && std::chrono::steady_clock::now() - t < std::chrono::seconds(2)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t).count();
        INFO("height " << h << " seen after " << ms << " ms");
        CHECK(ms < 1000);
        auto r = c.Post("/", json{{"jsonrpc", "2.0"}, {"method", "stateroot_getroot"}, {"params", {h}}, {"id", 1}}.dump(),
                        "application/json");
        CHECK(json::parse(r->body)["result"] == (*e)->root().hex());
        // Values and proofs of present keys: reads through iterators, which a secondary
        // instance refuses with a snapshot.
        const std::string key = fmt::format("{:02x}", h), value = fmt::format("01{:02x}", h);
        auto g = c.Post("/", json{{"jsonrpc", "2.0"}, {"method", "stateroot_get"}, {"params", {key, h}}, {"id", 1}}.dump(),
                        "application/json");
        REQUIRE(g);
        INFO(g->body);
        CHECK(json::parse(g->body)["result"] == value);
        auto p = c.Post("/", json{{"jsonrpc", "2.0"}, {"method", "stateroot_prove"}, {"params", {key, h}}, {"id", 1}}.dump(),
                        "application/json");
        REQUIRE(p);
        INFO(p->body);
        auto proof = engine::proof_from_json(json::parse(p->body)["result"]);
        REQUIRE(proof);
        CHECK(proof->value == std::optional<Bytes>(Bytes{1, static_cast<std::uint8_t>(h)}));
        CHECK(proof->root == (*e)->root());
        CHECK(engine::verify(*proof, proof->root));
    }
    replica.signal(SIGTERM);
    CHECK(replica.wait() == 0);
}

TEST_CASE("server: SIGTERM stops serve cleanly with exit 0", "[server]") {
    test::TempDir dir;
    indexed_db(dir.sub("db"));
    Child server({"serve", "--db", dir.sub("db"), "--rpc-addr", "127.0.0.1:0"}, dir.sub("out"), dir.sub("err"));
    const int port = test::announced_port(dir.sub("out"));
    httplib::Client c("127.0.0.1", port);
    CHECK(c.Get("/height")->status == 200);
    server.signal(SIGTERM);
    CHECK(server.wait() == 0);
}

TEST_CASE("server: a snapshot is refused beside a writer and whole without one", "[server][snapshot]") {
    test::TempDir dir;
    auto e = indexed_db(dir.sub("db"));  // the writer keeps the database open
    // Beside a writer in another process a copy could lack what it flushed meanwhile.
    CHECK(run_cli(fmt::format("snapshot --db {} --out {}", dir.sub("db"), dir.sub("copy"))).empty());
    CHECK_FALSE(std::filesystem::exists(dir.sub("copy")));
    std::vector<engine::Hash> roots;
    {
        auto a = e->view();
        for (std::uint64_t h = 0; h <= 589; ++h) roots.push_back(a->root(h).value());
    }
    e.reset();
    const std::string line = run_cli(fmt::format("snapshot --db {} --out {}", dir.sub("db"), dir.sub("copy")));
    CHECK(line == fmt::format("589 {}", roots.back().hex()));
    engine::EngineOptions ro;
    ro.read_only = true;
    auto copy = engine::Engine::open(dir.sub("copy"), ro);
    REQUIRE(copy);
    auto b = (*copy)->view();
    for (std::uint64_t h = 0; h <= 589; ++h) CHECK(b->root(h).value() == roots[h]);
    CHECK(b->recompute_root(589).value() == roots.back());
}

TEST_CASE("config: flags over environment over file over defaults", "[config]") {
    test::TempDir dir;
    const std::string file = dir.sub("c.json");
    std::ofstream(file) << R"({"// note": "comments are allowed", "db": "from-file", "rpc_addr": "127.0.0.1:1",
                              "cache_mb": 7, "sync": true})";
    std::map<std::string, std::string> env{{"STATEROOT_RPC_ADDR", "127.0.0.1:2"}, {"STATEROOT_CACHE_MB", "9"}};
    auto lookup = [&](const char* name) -> const char* {
        const auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
    };
    auto c = load_config(file, {{"cache_mb", "11"}}, lookup);
    REQUIRE(c);
    CHECK(c->db == "from-file");
    CHECK(c->rpc_addr == "127.0.0.1:2");
    CHECK(c->cache_mb == 11);
    CHECK(c->sync);
    CHECK(c->catch_up_ms == 500);
    auto none = load_config("", {}, [](const char*) -> const char* { return nullptr; });
    REQUIRE(none);
    CHECK(none->rpc_addr.empty());  // serve's default address; index does not serve
}

TEST_CASE("config: bad files, variables and flags name the option", "[config]") {
    test::TempDir dir;
    auto no_env = [](const char*) -> const char* { return nullptr; };
    const std::string file = dir.sub("c.json");
    std::ofstream(file) << R"({"rpc_adr": "x"})";
    CHECK(load_config(file, {}, no_env).error().message == fmt::format("config file {}: unknown option \"rpc_adr\"", file));
    std::ofstream(file) << R"({"cache_mb": "big"})";
    CHECK(load_config(file, {}, no_env).error().message ==
          fmt::format("config file {}: option \"cache_mb\" must be a non-negative integer", file));
    auto env = [](const char* name) -> const char* { return std::string(name) == "STATEROOT_SYNC" ? "maybe" : nullptr; };
    CHECK(load_config("", {}, env).error().message ==
          "environment variable STATEROOT_SYNC: option \"sync\" must be true or false, got \"maybe\"");
    // An empty directory from a variable or flag is one never set, not "none"; the file's
    // "" is the documented default.
    auto empty_db = [](const char* name) -> const char* { return std::string(name) == "STATEROOT_DB" ? "" : nullptr; };
    CHECK(load_config("", {}, empty_db).error().message ==
          "environment variable STATEROOT_DB: option \"db\" must be a directory, got \"\"");
    CHECK(load_config("", {{"secondary", ""}}, no_env).error().message ==
          "flag --secondary: option \"secondary\" must be a directory, got \"\"");
    // A duration past a day would overflow the clock and time out at once.
    CHECK(load_config("", {{"rpc_idle_ms", "86400001"}}, no_env).error().message ==
          "flag --rpc-idle-ms: option \"rpc_idle_ms\" must be at most 86400000, got \"86400001\"");
    CHECK(load_config("", {{"rpc_timeout_ms", "86400000"}}, no_env)->rpc_timeout_ms == 86400000u);
    CHECK(load_config("", {{"catch_up_ms", "-5"}}, no_env).error().message ==
          "flag --catch-up-ms: option \"catch_up_ms\" must be a non-negative integer, got \"-5\"");
}

TEST_CASE("config: the shipped default file holds every option with its default", "[config]") {
    const std::string path = std::string(STATEROOT_REPO) + "/configs/default.json";
    auto c = load_config(path, {}, [](const char*) -> const char* { return nullptr; });
    REQUIRE(c);
    json expected = to_json(Config{});
    CHECK(to_json(*c) == expected);
    std::ifstream in(path);
    const json file = json::parse(in);
    for (const std::string& name : config_option_names()) {
        INFO(name);
        CHECK(file.contains(name));
        CHECK(file.contains("// " + name));
    }
    const std::string printed = run_cli(fmt::format("config --print --config {} --rpc-addr 127.0.0.1:9", test::shell_quoted(path)));
    json want = expected;
    want["rpc_addr"] = "127.0.0.1:9";
    CHECK(json::parse(printed) == want);
}

TEST_CASE("server: a replica catches up while requests overlap without a break", "[server][replica]") {
    test::TempDir dir;
    auto primary = engine::Engine::open(dir.sub("db"));
    REQUIRE(primary);
    REQUIRE((*primary)->apply({0, std::nullopt, {{{1}, {1}}}, {}}));
    engine::EngineOptions eo;
    eo.secondary_dir = dir.sub("scratch");
    auto secondary = engine::Engine::open(dir.sub("db"), eo);
    REQUIRE(secondary);
    ReplicaSource replica(**secondary, std::chrono::milliseconds(10));

    // Two readers hand the lease on to each other: each takes one while the other
    // still holds its own, so some lease is always out.
    std::atomic<int> turn{0};
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> seen{0};
    auto reader = [&](int me) {
        while (!done) {
            if (turn != me) {
                std::this_thread::yield();
                continue;
            }
            auto lease = replica.lease();
            if (!lease) continue;
            if (lease->view.tip()) seen = std::max<std::uint64_t>(seen, *lease->view.tip());
            turn = 1 - me;  // the other takes its lease now
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    };
    std::thread a(reader, 0), b(reader, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the hand-over under way
    REQUIRE(seen == 0u);
    REQUIRE((*primary)->apply({1, std::nullopt, {{{2}, {2}}}, {}}));
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (seen < 1 && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    done = true;
    a.join();
    b.join();
    CHECK(seen == 1u);
}
