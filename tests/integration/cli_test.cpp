// The `stateroot` binary, run as a user would: exit codes, stdout, stderr.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.hpp"
#include "files.hpp"
#include "stateroot/engine/engine.hpp"
#include "stateroot/engine/proof.hpp"
#include "stateroot/engine/schema.hpp"

using namespace stateroot;

namespace {

using stateroot::test::Cli;
using stateroot::test::lines;
using stateroot::test::Run;

// Shell text for the CLI's arguments, like every path from the checkout below.
const std::string kExample =
    stateroot::test::shell_quoted(std::string(STATEROOT_REPO) + "/configs/examples/changes.jsonl");
const std::string kBtcdBlocks =
    stateroot::test::shell_quoted(stateroot::test::block_fixture("btcd_reorg_blk_0_to_4.dat"));

}  // namespace

TEST_CASE("cli: every command has --help", "[cli]") {
    Cli cli;
    for (const char* cmd :
         {"apply", "root", "get", "prove", "verify", "rollback", "info", "check", "bench"}) {
        INFO(cmd);
        const Run r = cli.run(fmt::format("{} --help", cmd));
        CHECK(r.code == 0);
        CHECK(r.out.find("Usage") != std::string::npos);
    }
    CHECK(cli.run("--help").code == 0);
}

TEST_CASE("cli: usage errors exit 2 with a message", "[cli]") {
    Cli cli;
    const Run r = cli.run("root");
    CHECK(r.code == 2);
    CHECK(r.err.find("--db is required") != std::string::npos);
    CHECK(cli.run("frobnicate").code == 2);
}

TEST_CASE("cli: apply prints a root per height and re-running it is a no-op", "[cli]") {
    Cli cli;
    const Run first = cli.run(fmt::format("apply --db {} {}", cli.db(), kExample));
    REQUIRE(first.code == 0);
    const auto roots = lines(first.out);
    REQUIRE(roots.size() == 6);
    CHECK(roots[0].rfind("0 ", 0) == 0);
    CHECK(roots[5].rfind("5 ", 0) == 0);
    CHECK(roots[0].size() == 2 + 64);
    const Run again = cli.run(fmt::format("apply --db {} {}", cli.db(), kExample));
    CHECK(again.code == 0);
    CHECK(again.out == first.out);
    // Height 5 restores the state of height 1: the root depends on the state alone.
    CHECK(roots[5].substr(2) == roots[1].substr(2));
}

TEST_CASE("cli: apply reads stdin and stops at a bad line naming file and line", "[cli]") {
    Cli cli;
    const std::string input =
        "{\"height\": 0, \"puts\": [[\"01\", \"aa\"]]}\n"
        "{\"height\": 1, \"puts\": [[\"02\", \"bb\"]]}\n"
        "{\"height\": 2, \"puts\": [[\"03\", \"zz\"]]}\n"
        "{\"height\": 3, \"puts\": [[\"04\", \"cc\"]]}\n";
    const Run r = cli.run(fmt::format("apply --db {} -", cli.db()), input);
    CHECK(r.code == 2);
    CHECK(lines(r.out).size() == 2);
    CHECK(r.err == "stateroot: <stdin>:3: puts[0] value is not valid hex\n");
    CHECK(cli.run(fmt::format("root --db {}", cli.db())).out == lines(r.out)[1].substr(2) + "\n");

    const std::string bad = cli.file("bad.jsonl", "{\"height\": 2}\n{\"height\": 9}\n");
    const Run gap = cli.run(fmt::format("apply --db {} {}", cli.db(), bad));
    CHECK(gap.code == 2);
    CHECK(gap.err ==
          fmt::format("stateroot: {}:2: height gap: the next height is 3, got 9\n", bad));
    CHECK(lines(gap.out) == std::vector<std::string>{lines(gap.out)[0]});
}

TEST_CASE("cli: root and get and check answer per height with the documented exit codes", "[cli]") {
    Cli cli;
    const Run applied = cli.run(fmt::format("apply --db {} {}", cli.db(), kExample));
    REQUIRE(applied.code == 0);
    const auto roots = lines(applied.out);

    CHECK(cli.run(fmt::format("root --db {}", cli.db())).out == roots[5].substr(2) + "\n");
    CHECK(cli.run(fmt::format("root --db {} --height 2", cli.db())).out ==
          roots[2].substr(2) + "\n");
    const Run unknown = cli.run(fmt::format("root --db {} --height 6", cli.db()));
    CHECK(unknown.code == 2);
    CHECK(unknown.err == "stateroot: height 6 not found (heights 0..5 exist)\n");

    // "alice" is 616c696365: 64 at height 0, 5a at 1, deleted at 4.
    CHECK(cli.run(fmt::format("get --db {} --key 616c696365 --height 0", cli.db())).out == "64\n");
    CHECK(cli.run(fmt::format("get --db {} --key 0x616C696365 --height 1", cli.db())).out ==
          "5a\n");
    const Run absent = cli.run(fmt::format("get --db {} --key 616c696365 --height 4", cli.db()));
    CHECK(absent.code == 1);
    CHECK(absent.out.empty());
    CHECK(cli.run(fmt::format("get --db {} --key 616c696365 --height 60", cli.db())).code == 2);
    CHECK(cli.run(fmt::format("get --db {} --key xyz", cli.db())).err ==
          "stateroot: --key is not valid hex\n");

    const Run check = cli.run(fmt::format("check --db {} --height 3", cli.db()));
    CHECK(check.code == 0);
    CHECK(check.out == "ok 3 " + roots[3].substr(2) + "\n");

    const auto info = nlohmann::json::parse(cli.run(fmt::format("info --db {}", cli.db())).out);
    CHECK(info["tip"] == 5);
    CHECK(info["first"] == 0);
    CHECK(info["pruned"].is_null());
    CHECK(info["live_keys"] == 3);
    CHECK(info["format_version"] == stateroot::engine::schema::kFormatVersion);
    CHECK(info["bytes_on_disk"].get<std::uint64_t>() > 0);

    const Run missing = cli.run(fmt::format("root --db {}", cli.db() + "-nothing"));
    CHECK(missing.code == 2);
    CHECK(missing.err == fmt::format("stateroot: no database at {}-nothing\n", cli.db()));
}

TEST_CASE("cli: proofs verify and tampered ones are invalid", "[cli][proof]") {
    Cli cli;
    REQUIRE(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).code == 0);
    for (const char* key : {"616c696365", "6e6f626f6479"}) {  // present, absent
        const Run prove = cli.run(fmt::format("prove --db {} --key {} --height 3", cli.db(), key));
        REQUIRE(prove.code == 0);
        const std::string path = cli.file("proof.json", prove.out);
        auto proof = nlohmann::json::parse(prove.out);
        CHECK(proof["height"] == 3);
        CHECK(proof["key"] == key);

        const Run ok = cli.run(fmt::format("verify --proof {}", path));
        CHECK(ok.code == 0);
        CHECK(ok.out == "valid\n");
        CHECK(cli.run(fmt::format("verify --proof {} --db {}", path, cli.db())).out == "valid\n");

        const Run wrong_root =
            cli.run(fmt::format("verify --proof {} --root {}", path, std::string(64, '1')));
        CHECK(wrong_root.code == 1);
        CHECK(wrong_root.out.rfind("invalid: the proof computes root ", 0) == 0);

        // The height is checked against the database's root at that height.
        proof["height"] = 2;
        const std::string moved = cli.file("moved.json", proof.dump());
        const Run at_other = cli.run(fmt::format("verify --proof {} --db {}", moved, cli.db()));
        CHECK(at_other.code == 1);

        // A root field naming another root is a false claim, whatever root is trusted.
        proof["height"] = 3;
        const std::string real_root = proof["root"];
        proof["root"] = std::string(64, '1');
        const std::string renamed = cli.file("renamed.json", proof.dump());
        for (const std::string& trusted :
             {fmt::format("--db {}", cli.db()), "--root " + real_root}) {
            const Run r = cli.run(fmt::format("verify --proof {} {}", renamed, trusted));
            CHECK(r.code == 1);
            CHECK(r.out.rfind("invalid: the proof's root field is 1111", 0) == 0);
        }
        proof["root"] = real_root;

        proof["value"] = "00";
        const std::string forged = cli.file("forged.json", proof.dump());
        CHECK(cli.run(fmt::format("verify --proof {}", forged)).code == 1);
    }
    const std::string junk = cli.file("junk.json", "{\"hello\": 1}");
    const Run not_proof = cli.run(fmt::format("verify --proof {}", junk));
    CHECK(not_proof.code == 2);
    CHECK(not_proof.err == fmt::format("stateroot: {}: not a proof: unknown field \"hello\"\n", junk));
    const std::string text = cli.file("text.json", "not json");
    const Run not_json = cli.run(fmt::format("verify --proof {}", text));
    CHECK(not_json.code == 2);
    CHECK(not_json.err.starts_with(fmt::format("stateroot: {}: not a proof: bad JSON: ", text)));
}

TEST_CASE("cli: verify trusts only a root it is given, and reads a proof one way", "[cli][proof]") {
    Cli cli;
    REQUIRE(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).code == 0);
    const std::string root = cli.run(fmt::format("root --db {} --height 3", cli.db())).out.substr(0, 64);
    // A forgery that agrees with itself: key 01 is "deadbeef" in a tree of that leaf alone.
    engine::Proof forged;
    forged.height = 3;
    forged.key = {0x01};
    forged.path = engine::sha256(forged.key);
    forged.value = Bytes{0xde, 0xad, 0xbe, 0xef};
    forged.root = engine::leaf_hash(forged.path, engine::sha256(*forged.value));
    const std::string path = cli.file("forged.json", engine::to_json(forged).dump());
    CHECK(cli.run(fmt::format("verify --proof {} --root {}", path, root)).code == 1);
    CHECK(cli.run(fmt::format("verify --proof {} --db {}", path, cli.db())).code == 1);
    // An empty --root or --db is a variable never set, not "no root": an error.
    const Run empty_root = cli.run(fmt::format("verify --proof {} --root ''", path));
    CHECK(empty_root.code == 2);
    CHECK(empty_root.err == "stateroot: --root must be 32 bytes\n");
    const Run empty_db = cli.run(fmt::format("verify --proof {} --db ''", path));
    CHECK(empty_db.code == 2);
    CHECK(empty_db.err == "stateroot: flag --db: option \"db\" must be a directory, got \"\"\n");
    // With neither, it is valid against its own root, and says that is all it checked.
    const Run own = cli.run(fmt::format("verify --proof {}", path));
    CHECK(own.code == 0);
    CHECK(own.out == "valid\n");
    CHECK(own.err.find("checked against the proof's own root only") != std::string::npos);

    // A field given twice or unknown is refused: a file must not show one claim and prove another.
    const Run twice = cli.run(fmt::format("verify --proof {}", cli.file("twice.json", R"({"value": null, )" +
                                                                         engine::to_json(forged).dump().substr(1))));
    CHECK(twice.code == 2);
    CHECK(twice.err.ends_with("not a proof: field \"value\" given twice\n"));
}

// The newest write-ahead log of a database.
std::string last_log(const std::string& db) {
    std::string last;
    for (const auto& entry : std::filesystem::directory_iterator(db)) {
        if (entry.path().extension() == ".log" && entry.path().string() > last) last = entry.path().string();
    }
    REQUIRE_FALSE(last.empty());
    return last;
}

TEST_CASE("cli: a log whose last write a crash cut short is reported plainly", "[cli]") {
    Cli cli;
    const auto roots = lines(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).out);
    REQUIRE(roots.size() > 2);
    // The heights are in the log only; its last one loses its tail, as a kill mid-write
    // leaves it.
    const std::string log = last_log(cli.db());
    std::filesystem::resize_file(log, std::filesystem::file_size(log) - 20);
    const Run info = cli.run(fmt::format("info --db {}", cli.db()));
    CHECK(info.code == 0);
    CHECK(info.err.find("Corruption") == std::string::npos);
    CHECK(info.err.find(" bytes at the log's end (truncated record body): a write a crash cut short") !=
          std::string::npos);
    // RocksDB's warnings follow the log level, as the command's own do.
    CHECK(cli.run(fmt::format("info --db {} --log-level error", cli.db())).err.empty());
    // It is at the last whole height, whose root is the one applied.
    const auto tip = nlohmann::json::parse(info.out)["tip"].get<std::uint64_t>();
    CHECK(tip + 1 < roots.size());
    CHECK(cli.run(fmt::format("root --db {}", cli.db())).out == roots[tip].substr(roots[tip].find(' ') + 1) + "\n");

    // Damage inside the log is no cut-short write: said as RocksDB says it.
    Cli damaged;
    REQUIRE(damaged.run(fmt::format("apply --db {} {}", damaged.db(), kExample)).code == 0);
    const std::string hurt_log = last_log(damaged.db());
    {
        std::fstream f(hurt_log, std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(100);
        const char c = static_cast<char>(f.get());
        f.seekp(100);
        f.put(static_cast<char>(c ^ 1));
    }
    const Run hurt = damaged.run(fmt::format("info --db {}", damaged.db()));
    CHECK(hurt.err.find("Corruption: checksum mismatch") != std::string::npos);
    CHECK(hurt.err.find("a crash cut short") == std::string::npos);
}

TEST_CASE("cli: rollback keeps the heights at or below the target", "[cli]") {
    Cli cli;
    const Run applied = cli.run(fmt::format("apply --db {} {}", cli.db(), kExample));
    const auto roots = lines(applied.out);
    const Run r = cli.run(fmt::format("rollback --db {} --height 2", cli.db()));
    CHECK(r.code == 0);
    CHECK(r.out == roots[2] + "\n");
    CHECK(cli.run(fmt::format("root --db {}", cli.db())).out == roots[2].substr(2) + "\n");
    // Re-applying the file commits 3..5 again with the same roots.
    CHECK(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).out == applied.out);
    const Run empty = cli.run(fmt::format("rollback --db {} --height -1", cli.db()));
    CHECK(empty.out == "empty\n");
    CHECK(cli.run(fmt::format("root --db {}", cli.db())).err ==
          "stateroot: the database is empty\n");
}

TEST_CASE("cli: output that cannot be written is an error, not a silent success", "[cli]") {
    if (!std::filesystem::exists("/dev/full")) {
        WARN("no /dev/full here");
        return;
    }
    Cli cli;
    const std::string err = cli.db() + ".err";
    auto run_to_full = [&](const std::string& args) {
        const int status =
            std::system(fmt::format("{} {} >/dev/full 2>{}", test::shell_quoted(STATEROOT_BIN),
                                    args, test::shell_quoted(err))
                            .c_str());
        return std::pair{WEXITSTATUS(status), test::slurp(err)};
    };
    // apply stops at the first line it cannot print, and says how far it committed.
    const auto [apply_code, apply_err] =
        run_to_full(fmt::format("apply --db {} {}", cli.db(), kExample));
    CHECK(apply_code == 2);
    CHECK(apply_err.starts_with(
        "stateroot: cannot write to standard output: No space left on device"));
    CHECK(cli.run(fmt::format("info --db {}", cli.db())).code == 0);
    const auto [root_code, root_err] = run_to_full(fmt::format("root --db {}", cli.db()));
    CHECK(root_code == 2);
    CHECK(root_err == "stateroot: cannot write to standard output: No space left on device\n");
}

TEST_CASE("cli: a second writer is refused in one line", "[cli]") {
    Cli cli;
    REQUIRE(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).code == 0);
    auto writer = engine::Engine::open(cli.db());  // holds the database's lock
    REQUIRE(writer);
    const Run second = cli.run(fmt::format("rollback --db {} --height 2", cli.db()));
    CHECK(second.code == 2);
    CHECK(second.err.starts_with(fmt::format(
        "stateroot: cannot open {}: the database is open in another process (", cli.db())));
    CHECK(std::count(second.err.begin(), second.err.end(), '\n') == 1);
}

TEST_CASE("cli: whole numbers on the command line are decimal, and other text is refused",
          "[cli]") {
    Cli cli;
    std::string input;
    for (int h = 0; h < 12; ++h) input += fmt::format("{{\"height\": {}, \"puts\": [[\"{:02x}\", \"aa\"]]}}\n", h, h);
    const auto roots = lines(cli.run(fmt::format("apply --db {} -", cli.db()), input).out);
    REQUIRE(roots.size() == 12);
    // A leading zero is not octal: 010 is height 10.
    CHECK(cli.run(fmt::format("root --db {} --height 010", cli.db())).out == roots[10].substr(3) + "\n");
    for (const char* bad : {"0x3", "-1", "18446744073709551616", "3.0", "+3", "\"\""}) {
        INFO(bad);
        const Run r = cli.run(fmt::format("root --db {} --height {}", cli.db(), bad));
        CHECK(r.code == 2);
        CHECK(r.err.find("is not a decimal whole number") != std::string::npos);
        CHECK(r.out.empty());
    }
    // Neither rollback nor prune acts on another height than the one typed.
    for (const char* bad : {"0x2", "-0", "1e3", "9223372036854775808x"}) {
        INFO(bad);
        CHECK(cli.run(fmt::format("rollback --db {} --height {}", cli.db(), bad)).code == 2);
        CHECK(cli.run(fmt::format("prune --db {} --keep {}", cli.db(), bad)).code == 2);
    }
    // Only -1 means every height: "-20", meant as twenty back, would empty the database.
    for (const char* bad : {"-2", "-20", "-01"}) {
        INFO(bad);
        const Run r = cli.run(fmt::format("rollback --db {} --height {}", cli.db(), bad));
        CHECK(r.code == 2);
        CHECK(r.err.find("is neither a decimal height nor -1 (all heights)") != std::string::npos);
    }
    CHECK(cli.run(fmt::format("rollback --db {} --height 010", cli.db())).out == roots[10] + "\n");
    CHECK(cli.run(fmt::format("prune --db {} --keep 010", cli.db())).out == "1 10\n");
    CHECK(cli.run(fmt::format("bench --keys 0x10 --blocks 1")).code == 2);
    const Run exit_at = cli.run(fmt::format("index --db {} --blocks {} --exit-at -1", cli.db(),
                                            kBtcdBlocks));
    CHECK(exit_at.code == 2);
    CHECK(exit_at.err.find("--exit-at: \"-1\" is not a decimal whole number") != std::string::npos);
}

TEST_CASE("cli: bad input to a write command creates no database", "[cli]") {
    Cli cli;
    const std::string blocks = cli.db() + "-blocks";  // a directory without block files
    std::filesystem::create_directories(blocks);
    cli.file("db-blocks/README", "not a block file");
    const std::vector<std::pair<std::string, std::string>> cases = {
        {fmt::format("apply --db {} {}", cli.db(), cli.db() + ".jsonl"), "cannot open"},
        {fmt::format("apply --db {} {}", cli.db(), blocks),
         fmt::format("cannot read {}: Is a directory", blocks)},
        {fmt::format("index --db {} --blocks {}", cli.db(), blocks),
         fmt::format("cannot read {}: Is a directory", blocks)},
        {fmt::format("index --db {} --blocks {}", cli.db(), cli.db() + ".blk"), "cannot read"},
        {fmt::format("index --db {} --blocks-dir {}", cli.db(), blocks),
         fmt::format("{} holds no blk?????.dat files (is it Bitcoin Core's blocks/ directory?)",
                     blocks)},
        {fmt::format("index --db {} --blocks {} --prune-keep 0", cli.db(), kBtcdBlocks),
         "--prune-keep must be at least 1"},
        // Refused once the database is open: the one this run created is removed again.
        {fmt::format("apply --db {} {}", cli.db(),
                     cli.file("bad.jsonl", R"({"height": 0, "puts": [["zz", "01"]]})")),
         "bad.jsonl:1: puts[0] key is not valid hex"},
        {fmt::format("index --db {} --blocks {}", cli.db(),
                     test::shell_quoted(test::block_fixture("btcd_reorg_blk_3A.dat"))),
         "has an unknown parent"},
    };
    for (const auto& [args, message] : cases) {
        INFO(args);
        const Run r = cli.run(args);
        CHECK(r.code == 2);
        CHECK(r.err.find(message) != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(cli.db()));
    }
}

TEST_CASE("cli: configuration errors name the file", "[cli][config]") {
    Cli cli;
    const std::string dir = cli.db() + "-conf";
    std::filesystem::create_directories(dir);
    CHECK(cli.run(fmt::format("root --db {} --config {}", cli.db(), dir)).err ==
          fmt::format("stateroot: cannot read config file {}: Is a directory\n", dir));
    CHECK(cli.run(fmt::format("verify --proof {}", dir)).err ==
          fmt::format("stateroot: cannot read {}: Is a directory\n", dir));
    const std::string verbose = cli.file("verbose.json", R"({"log_level": "verbose"})");
    CHECK(cli.run(fmt::format("root --db {} --config {}", cli.db(), verbose)).err ==
          fmt::format("stateroot: config file {}: option \"log_level\" must be one of trace, debug, info, "
                      "warn, error, critical or off, got \"verbose\"\n",
                      verbose));
    CHECK(cli.run(fmt::format("index --db {} --blocks x --network mainz", cli.db())).err ==
          "stateroot: flag --network: option \"network\" must be one of mainnet, testnet3, testnet4, "
          "signet or regtest, got \"mainz\"\n");
    // The indexer's other names for networks are taken.
    CHECK(cli.run(fmt::format("index --db {} --blocks x --network main", cli.db())).err ==
          "stateroot: cannot read x\n");
}

TEST_CASE("cli: the shipped default configuration changes nothing: index serves only when asked",
          "[cli][config]") {
    Cli cli;
    const Run r = cli.run(fmt::format("index --db {} --config {} --blocks {} --exit-at 1", cli.db(),
                                      stateroot::test::shell_quoted(std::string(STATEROOT_REPO) + "/configs/default.json"),
                                      kBtcdBlocks));
    CHECK(r.code == 0);
    CHECK(r.err.find("serving on") == std::string::npos);
}

TEST_CASE("cli: prune keeps the last heights' values and every root", "[cli][prune]") {
    Cli cli;
    const auto roots = lines(cli.run(fmt::format("apply --db {} {}", cli.db(), kExample)).out);
    const Run r = cli.run(fmt::format("prune --db {} --keep 2", cli.db()));
    CHECK(r.code == 0);
    CHECK(r.out == "4 5\n");
    const auto info = nlohmann::json::parse(cli.run(fmt::format("info --db {}", cli.db())).out);
    CHECK(info["first"] == 0);
    CHECK(info["pruned"] == 4);
    CHECK(cli.run(fmt::format("root --db {} --height 1", cli.db())).out == roots[1].substr(2) + "\n");
    CHECK(cli.run(fmt::format("get --db {} --key 626f62 --height 5", cli.db())).out == "32\n");
    const Run gone = cli.run(fmt::format("get --db {} --key 626f62 --height 3", cli.db()));
    CHECK(gone.code == 2);
    CHECK(gone.err == "stateroot: height 3 is pruned (values and proofs are kept for heights 4..5)\n");
    CHECK(cli.run(fmt::format("check --db {} --height 4", cli.db())).code == 0);
    CHECK(cli.run(fmt::format("rollback --db {} --height 3", cli.db())).err ==
          "stateroot: cannot roll back below height 4: older heights are pruned\n");
}

TEST_CASE("cli: a benchmark that would change no key is refused", "[cli][bench]") {
    Cli cli;
    const Run r = cli.run("bench --keys 1 --block-keys 4 --blocks 1");
    CHECK(r.code == 2);
    CHECK(r.err == "stateroot: with --block-keys below 5 a height only updates preloaded keys: --keys "
                   "must be at least 2\n");
}

TEST_CASE("cli: a tiny benchmark runs and prints its JSON summary last", "[cli][bench]") {
    Cli cli;
    const Run r = cli.run("bench --keys 2000 --block-keys 100 --blocks 3 --json");
    REQUIRE(r.code == 0);
    const auto out = lines(r.out);
    const auto j = nlohmann::json::parse(out.back());
    for (const char* field :
         {"keys_per_s", "p50_ms", "p99_ms", "hashes_per_key", "rows_per_key", "disk_bytes_per_key",
          "peak_rss_mb", "raw_rocksdb_keys_per_s", "raw_rocksdb_at_n_keys_per_s", "sha256_node_hashes_per_s"}) {
        INFO(field);
        CHECK(j.contains(field));
        CHECK(j[field].get<double>() > 0);
    }
    CHECK(j["preload_batch"] == 100000);
}

TEST_CASE("cli: the benchmark reports each thread's CPU, and --tree-threads 1 uses no tree thread",
          "[cli][bench]") {
    Cli cli;
    const Run r = cli.run("bench --keys 5000 --block-keys 1000 --blocks 30 --tree-threads 1 --json");
    REQUIRE(r.code == 0);
    CHECK(r.out.find("µs per changed key in all threads: main") != std::string::npos);
    const auto j = nlohmann::json::parse(lines(r.out).back());
    CHECK(j["tree_threads"] == 1);
    const auto& by_thread = j["cpu_us_per_key_by_thread"];
    REQUIRE(by_thread.contains("main"));
    CHECK(by_thread["main"].get<double>() > 0);
    CHECK_FALSE(by_thread.contains("stateroot:tree"));
    double sum = 0;
    for (const auto& [name, us] : by_thread.items()) sum += us.get<double>();
    CHECK(j["cpu_us_per_key"].get<double>() == Approx(sum));
}

TEST_CASE("cli: under a memory budget the benchmark preloads in smaller heights", "[cli][bench]") {
    // A height's own working set comes on top of the budget: one key per 16 KiB of it.
    Cli cli;
    Run r = cli.run("bench --keys 2000 --block-keys 100 --blocks 2 --cache-mb 1 --json");
    REQUIRE(r.code == 0);
    CHECK(nlohmann::json::parse(lines(r.out).back())["preload_batch"] == 64);
    r = cli.run("bench --keys 2000 --block-keys 100 --blocks 2 --cache-mb 1 --preload-batch 500 --json");
    REQUIRE(r.code == 0);
    CHECK(nlohmann::json::parse(lines(r.out).back())["preload_batch"] == 500);
}
