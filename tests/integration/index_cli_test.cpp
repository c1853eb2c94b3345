// `stateroot index` as a process: killed, interrupted, restarted.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "chain_gen.hpp"
#include "stateroot/engine/engine.hpp"
#include "files.hpp"
#include "process.hpp"
#include "temp_dir.hpp"

using namespace stateroot;

namespace {

using test::Child;
using test::slurp;

struct Setup {
    test::TempDir dir;
    std::string chain = dir.sub("chain.blk");
    Setup(std::uint64_t blocks, std::uint64_t txs) {
        const Bytes bytes = test::make_chain({blocks, txs, 7});
        std::ofstream(chain, std::ios::binary)
            .write(reinterpret_cast<const char*>(bytes.data()),
                   static_cast<std::streamsize>(bytes.size()));
    }
    std::vector<std::string> args(const std::string& db) const {
        return {"index", "--db", db, "--blocks", chain, "--network", "regtest"};
    }
    int run(const std::string& db) {
        Child c(args(db), dir.sub("out"), dir.sub("err"));
        return c.wait();
    }
};

std::vector<engine::Hash> roots(const std::string& db) {
    engine::EngineOptions o;
    o.read_only = true;
    auto e = engine::Engine::open(db, o);
    REQUIRE(e);
    auto v = (*e)->view();
    REQUIRE(v);
    std::vector<engine::Hash> out;
    if (!v->tip()) return out;
    for (std::uint64_t h = *v->first(); h <= *v->tip(); ++h) out.push_back(v->root(h).value());
    for (std::uint64_t h = *v->first(); h <= *v->tip(); h += 97)
        REQUIRE(v->recompute_root(h).value() == out[h]);
    return out;
}

// Returns once the indexer started on `db` has created its database and worked a
// while, so that a signal lands mid-run: under the sanitizers, on a busy machine,
// starting alone can take longer than a fixed wait.
void wait_until_indexing(const std::string& db) {
    for (int i = 0; i < 3000 && !std::filesystem::exists(db + "/CURRENT"); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
}

}  // namespace

TEST_CASE("index cli: killed with SIGKILL at random moments it resumes to the same roots",
          "[cli][index][crash]") {
    Setup s(600, 40);
    const std::string clean = s.dir.sub("clean"), killed = s.dir.sub("killed");
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(s.run(clean) == 0);
    const auto full_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    const auto expected = roots(clean);
    REQUIRE(expected.size() == 600);

    std::mt19937_64 rng(3);
    int killed_mid_run = 0;
    for (int i = 0; i < 8; ++i) {
        Child c(s.args(killed), s.dir.sub("out"), s.dir.sub("err"));
        std::this_thread::sleep_for(
            std::chrono::milliseconds(rng() % static_cast<std::uint64_t>(full_ms / 2 + 1)));
        c.signal(SIGKILL);
        if (c.wait() == 128 + SIGKILL) ++killed_mid_run;
    }
    CHECK(killed_mid_run > 0);
    REQUIRE(s.run(killed) == 0);
    CHECK(roots(killed) == expected);
}

TEST_CASE("index cli: SIGINT finishes the height in progress and exits cleanly", "[cli][index]") {
    Setup s(600, 40);
    const std::string clean = s.dir.sub("clean"), db = s.dir.sub("db");
    REQUIRE(s.run(clean) == 0);
    Child c(s.args(db), s.dir.sub("out"), s.dir.sub("err"));
    wait_until_indexing(db);
    c.signal(SIGINT);
    CHECK(c.wait() == 0);
    const std::string err = slurp(s.dir.sub("err"));
    CHECK(err.find("stopping (signal again to exit now)") != std::string::npos);
    CHECK(err.find("stopped by a signal; run again to continue") != std::string::npos);
    CHECK(roots(db).size() < 600);
    REQUIRE(s.run(db) == 0);
    CHECK(roots(db) == roots(clean));
}

TEST_CASE("index cli: a second signal exits at once and the database stays consistent",
          "[cli][index]") {
    Setup s(600, 40);
    const std::string clean = s.dir.sub("clean"), db = s.dir.sub("db");
    REQUIRE(s.run(clean) == 0);
    Child c(s.args(db), s.dir.sub("out"), s.dir.sub("err"));
    wait_until_indexing(db);
    c.signal(SIGTERM);
    c.signal(SIGTERM);
    const int code = c.wait();
    CHECK((code == 130 || code == 0));
    const auto partial = roots(db);
    const auto full = roots(clean);
    REQUIRE(partial.size() <= full.size());
    CHECK(std::equal(partial.begin(), partial.end(), full.begin()));
    REQUIRE(s.run(db) == 0);
    CHECK(roots(db) == full);
}

TEST_CASE("index cli: serves the query API while it indexes", "[cli][index][server]") {
    Setup s(600, 40);
    const std::string db = s.dir.sub("db");
    auto args = s.args(db);
    args.insert(args.end(), {"--rpc-addr", "127.0.0.1:0"});
    Child c(args, s.dir.sub("out"), s.dir.sub("err"));
    int port = 0;
    for (int i = 0; i < 200 && port == 0; ++i) {
        const std::string err = slurp(s.dir.sub("err"));
        const auto at = err.find("serving on http://127.0.0.1:");
        if (at != std::string::npos) port = std::stoi(err.substr(at + 28));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(port > 0);
    httplib::Client client("127.0.0.1", port);
    bool saw_indexing = false;
    for (int i = 0; i < 100 && !saw_indexing; ++i) {
        auto r = client.Get("/status");
        if (r && r->status == 200) {
            const auto status = nlohmann::json::parse(r->body);
            if (status["indexer"]["state"] == "indexing" && status["indexer"]["height"] > 0) {
                saw_indexing = true;
                CHECK(status["indexer"]["target"] == 599);
                CHECK(status["indexer"]["progress"].get<double>() > 0);
                auto m = client.Get("/metrics");
                REQUIRE(m);
                CHECK(m->body.find("stateroot_heights_committed_total 0\n") == std::string::npos);
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(saw_indexing);
    CHECK(c.wait() == 0);
}

TEST_CASE("index cli: output and errors", "[cli][index]") {
    Setup s(20, 3);
    const std::string db = s.dir.sub("db");
    Child c(s.args(db), s.dir.sub("out"), s.dir.sub("err"));
    REQUIRE(c.wait() == 0);
    const std::string out = slurp(s.dir.sub("out"));
    CHECK(out.rfind("19 ", 0) == 0);
    CHECK(slurp(s.dir.sub("err")).find("indexed 20 blocks") != std::string::npos);

    // Another network's magic is an error naming file and offset.
    Child wrong({"index", "--db", s.dir.sub("db2"), "--blocks", s.chain}, s.dir.sub("out"),
                s.dir.sub("err"));
    CHECK(wrong.wait() == 2);
    CHECK(slurp(s.dir.sub("err")) ==
          fmt::format("stateroot: {}: offset 0: magic fabfb5da is regtest's, not mainnet's (use "
                      "--network regtest)\n",
                      s.chain));
    Child both({"index", "--db", db}, s.dir.sub("out"), s.dir.sub("err"));
    CHECK(both.wait() == 2);
    CHECK(slurp(s.dir.sub("err")) ==
          "stateroot: give either --blocks FILE... or --blocks-dir DIR\n");
}

namespace {

// Records [from, to) of a blk-framed file of the shipped blocks.
Bytes blk_records(const std::string& file, std::size_t from, std::size_t to) {
    const Bytes all = test::read_file(file);
    Bytes out;
    std::size_t pos = 0;
    for (std::size_t i = 0; pos + 8 <= all.size() && i < to; ++i) {
        const std::size_t size = all[pos + 4] | all[pos + 5] << 8 | all[pos + 6] << 16 | std::size_t{all[pos + 7]} << 24;
        if (i >= from) out.insert(out.end(), all.begin() + static_cast<std::ptrdiff_t>(pos),
                                  all.begin() + static_cast<std::ptrdiff_t>(pos + 8 + size));
        pos += 8 + size;
    }
    return out;
}

std::string tip_line(const test::TempDir& dir, const std::vector<std::string>& args) {
    Child c(args, dir.sub("out"), dir.sub("err"));
    INFO(slurp(dir.sub("err")));
    REQUIRE(c.wait() == 0);
    return slurp(dir.sub("out"));
}

}  // namespace

TEST_CASE("index cli: a database started mid-chain takes missing prevouts on every run", "[cli][index]") {
    // Block 170 spends block 9's coinbase, which a database started at 100 never saw:
    // a later run without --allow-missing-prevouts must not call block 170 bad.
    const std::string mainnet = test::block_fixture("mainnet_0-589.blk");
    test::TempDir dir;
    test::write_file(dir.sub("100-160.blk"), blk_records(mainnet, 100, 161));
    test::write_file(dir.sub("161-589.blk"), blk_records(mainnet, 161, 590));
    test::write_file(dir.sub("100-589.blk"), blk_records(mainnet, 100, 590));
    const std::string two = dir.sub("two"), one = dir.sub("one");
    tip_line(dir, {"index", "--db", two, "--blocks", dir.sub("100-160.blk"), "--allow-missing-prevouts",
                   "--start-height", "100"});
    const std::string later = tip_line(dir, {"index", "--db", two, "--blocks", dir.sub("161-589.blk")});
    const std::string at_once = tip_line(dir, {"index", "--db", one, "--blocks", dir.sub("100-589.blk"),
                                               "--allow-missing-prevouts", "--start-height", "100"});
    CHECK(later.starts_with("589 "));
    CHECK(later == at_once);
}

TEST_CASE("index cli: a file of an obfuscated blocks directory given alone is read with its xor.dat",
          "[cli][index]") {
    const std::string mainnet = test::block_fixture("mainnet_0-589.blk");
    test::TempDir dir;
    const std::array<std::uint8_t, 8> key = {0x3c, 0x5a, 0x9b, 0x0e, 0x71, 0xd2, 0xf4, 0x68};
    Bytes data = test::read_file(mainnet);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] ^= key[i % 8];
    std::filesystem::create_directories(dir.sub("blocks"));
    test::write_file(dir.sub("blocks/blk00000.dat"), data);
    test::write_file(dir.sub("blocks/xor.dat"), Bytes(key.begin(), key.end()));
    const std::string alone = tip_line(dir, {"index", "--db", dir.sub("a"), "--blocks", dir.sub("blocks/blk00000.dat")});
    const std::string plain = tip_line(dir, {"index", "--db", dir.sub("b"), "--blocks", mainnet});
    CHECK(alone.starts_with("589 "));
    CHECK(alone == plain);

    // Without its xor.dat, or with its first magic damaged, a blk file is no raw block:
    // said so, rather than "no valid proof of work".
    Bytes damaged = test::read_file(mainnet);
    damaged[3] ^= 1;
    test::write_file(dir.sub("blocks/damaged.blk"), damaged);
    Child beside({"index", "--db", dir.sub("c"), "--blocks", dir.sub("blocks/damaged.blk")},
                 dir.sub("out"), dir.sub("err"));
    CHECK(beside.wait() == 2);
    // Its first bytes read as a header: their "bits" encode no target.
    CHECK(slurp(dir.sub("err")) == fmt::format("stateroot: {}: offset 0: not a blk file of mainnet "
                                               "(it does not start with the magic f9beb4d9, "
                                               "not even through the xor.dat beside it), and read "
                                               "as one raw block it has no valid proof of "
                                               "work (its bits 4a5e1e4b encode no valid target)\n",
                                               dir.sub("blocks/damaged.blk")));
    std::filesystem::remove(dir.sub("blocks/xor.dat"));
    test::write_file(dir.sub("damaged.blk"), damaged);
    for (const std::string& file : {dir.sub("blocks/blk00000.dat"), dir.sub("damaged.blk")}) {
        Child c({"index", "--db", dir.sub("c"), "--blocks", file}, dir.sub("out"), dir.sub("err"));
        CHECK(c.wait() == 2);
        CHECK(slurp(dir.sub("err"))
                  .starts_with(fmt::format("stateroot: {}: offset 0: not a blk file of mainnet (it "
                                           "does not start with the magic "
                                           "f9beb4d9; an obfuscated one needs the xor.dat of its "
                                           "directory beside it), and read as "
                                           "one raw block it has no valid proof of work (its ",
                                           file)));
    }
    // An empty file holds no blocks, as a file of zeros.
    test::write_file(dir.sub("empty.blk"), Bytes{});
    CHECK(tip_line(dir, {"index", "--db", dir.sub("b"), "--blocks", mainnet,
                         dir.sub("empty.blk")}) == plain);
}

