// The indexer loop on real blocks: replay, reorgs, resume, bad input.
#include "stateroot/indexer/loop.hpp"

#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <tuple>

#include "chain_gen.hpp"
#include "files.hpp"
#include "stateroot/indexer/change_file.hpp"
#include "temp_dir.hpp"

using namespace stateroot;
using namespace stateroot::indexer;

namespace {

using test::read_file;
using test::write_file;
std::string fixture(const std::string& name) { return test::block_fixture(name); }

std::vector<FoundBlock> scan_files(const std::vector<std::string>& files) {
    std::vector<FoundBlock> all;
    for (const std::string& f : files) {
        if (f.ends_with(".raw")) {
            auto found = scan_raw_file(f);
            REQUIRE(found);
            all.push_back(*found);
            continue;
        }
        auto found = scan_blk_file(f, Network::kMainnet);
        REQUIRE(found);
        all.insert(all.end(), found->begin(), found->end());
    }
    return all;
}

struct Db {
    test::TempDir dir;
    std::unique_ptr<engine::Engine> engine;
    Db() { reopen(); }
    void reopen() {
        engine.reset();
        auto e = engine::Engine::open(dir.str());
        REQUIRE(e);
        engine = std::move(*e);
    }
    Result<LoopResult> index(const std::vector<std::string>& files, LoopOptions options = {}) {
        UtxoIndexer utxo(options.allow_missing_prevouts);
        return run_index(*engine, utxo, scan_files(files), options);
    }
    Result<LoopResult> index(const std::vector<std::string>& files, BlockIndexer& indexer) {
        return run_index(*engine, indexer, scan_files(files), {});
    }
    std::vector<engine::Hash> roots() {
        std::vector<engine::Hash> out;
        auto v = engine->view();
        REQUIRE(v);
        if (!v->tip()) return out;
        for (std::uint64_t h = *v->first(); h <= *v->tip(); ++h) out.push_back(v->root(h).value());
        return out;
    }
};

// blk records of `file`, by index.
std::vector<Bytes> records(const std::string& file) {
    const Bytes all = read_file(file);
    std::vector<Bytes> out;
    for (const FoundBlock& fb : scan_files({file})) {
        out.emplace_back(
            all.begin() + static_cast<std::ptrdiff_t>(fb.location.offset - 8),
            all.begin() + static_cast<std::ptrdiff_t>(fb.location.offset + fb.location.size));
    }
    return out;
}

// A synthetic regtest chain of `blocks` blocks (tests/support/chain_gen.hpp), written
// to `path` and scanned.
std::vector<FoundBlock> regtest_chain(const std::string& path, std::uint64_t blocks) {
    test::ChainSpec spec;
    spec.blocks = blocks;
    write_file(path, test::make_chain(spec));
    auto found = scan_blk_file(path, Network::kRegtest);
    REQUIRE(found);
    return *found;
}

Bytes join(const std::vector<Bytes>& parts) {
    Bytes out;
    for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// The UTXO indexer, refusing one block as if it broke a rule.
class Refusing final : public BlockIndexer {
  public:
    explicit Refusing(const Hash& refused) : refused_(refused) {}
    Result<engine::Changes> changes(const Block& block, std::uint64_t height,
                                    StateReader& state) override {
        if (block.header.hash == refused_)
            return make_error(ErrorCode::kInvalidArgument, "refused by the test");
        return utxo_.changes(block, height, state);
    }

  private:
    Hash refused_;
    UtxoIndexer utxo_{false};
};

// `file` written to `path` with one byte of its last transaction flipped: the header
// (and its proof of work) intact, the merkle root no longer matching.
void write_corrupt(const std::string& file, const std::string& path) {
    Bytes b = read_file(file);
    b[b.size() - 10] ^= 1;
    write_file(path, b);
}

const std::string kMainnet = fixture("mainnet_0-589.blk");
const std::string kBtcd = fixture("btcd_reorg_blk_0_to_4.dat");
const std::string k3A = fixture("btcd_reorg_blk_3A.dat"), k4A = fixture("btcd_reorg_blk_4A.dat"),
                  k5A = fixture("btcd_reorg_blk_5A.dat");

}  // namespace

TEST_CASE("loop: mainnet 0-589 replays to a UTXO set of 29,450 BTC", "[indexer][loop]") {
    Db db;
    auto r = db.index({kMainnet});
    REQUIRE(r);
    CHECK(r->tip == 589u);
    CHECK(display_hex(r->block_hash) ==
          "00000000b96305605f1eb5ab800024ff3fa260deedf6005e1e3987daa11d3935");
    CHECK(r->totals.blocks == 590);
    CHECK(r->totals.txs == 605);

    // The UTXO set, rebuilt from the stored changes of every height.
    auto view = db.engine->view();
    REQUIRE(view);
    std::map<Bytes, Bytes> utxos;
    for (std::uint64_t h = 0; h <= 589; ++h) {
        auto changes = view->changes(h);
        REQUIRE(changes);
        for (auto& c : *changes) {
            c.value ? (void)(utxos[c.key] = *c.value) : (void)utxos.erase(c.key);
        }
    }
    std::uint64_t satoshis = 0;
    for (const auto& [key, value] : utxos) {
        std::uint64_t amount = 0;
        for (int i = 7; i >= 0; --i) amount = amount << 8 | value[static_cast<std::size_t>(i)];
        satoshis += amount;
        CHECK(view->get(key, 589).value() == value);
    }
    CHECK(satoshis == 29'450ull * 100'000'000ull);
    CHECK(db.engine->live_keys() == utxos.size());
    CHECK(view->recompute_root(589).value() == r->root);
    // The block hash of every height is stored, in display order.
    CHECK(view->record(170)->block_hash->hex() ==
          "00000000d1145790a8694403d4063f323d499e655c83426834d4ce2f8dd4a2ee");

    // Re-running with the same input changes nothing.
    auto again = db.index({kMainnet});
    REQUIRE(again);
    CHECK(again->totals.blocks == 0);
    CHECK(again->root == r->root);
}

TEST_CASE("loop: pruning as it goes keeps every root", "[indexer][loop][prune]") {
    Db full, pruned;
    REQUIRE(full.index({kMainnet}));
    LoopOptions o;
    o.prune_keep = 100;
    o.max_reorg_depth = 99;  // a reorg may roll back to 99 heights below the tip: keep 100
    auto r = pruned.index({kMainnet}, o);
    REQUIRE(r);
    CHECK(pruned.roots() == full.roots());
    auto v = pruned.engine->view();
    CHECK(v->pruned() == 490u);
    CHECK(v->recompute_root(490).value() == full.roots()[490]);
    CHECK_FALSE(v->changes(489));
    CHECK(v->changes(490).value().size() == full.engine->view()->changes(490).value().size());
}

TEST_CASE("loop: pruning as it goes keeps the heights a reorg may roll back to",
          "[indexer][loop][prune][reorg]") {
    Db db;
    LoopOptions o;
    o.prune_keep = 1;
    REQUIRE(db.index({kMainnet}, o));
    CHECK(db.engine->view()->pruned() == 589u - 100u);  // the default depth, 100

    Db btcd;
    REQUIRE(btcd.index({kBtcd}, o));
    auto r = btcd.index({k3A, k4A, k5A}, o);
    REQUIRE(r);
    CHECK(r->tip == 5u);
    CHECK(r->rolled_back == 2);
}

TEST_CASE("loop: stopping and resuming gives the same roots as one run", "[indexer][loop]") {
    Db whole;
    REQUIRE(whole.index({kMainnet}));
    const auto expected = whole.roots();

    Db parts;
    LoopOptions at;
    at.exit_at = 100;
    auto first = parts.index({kMainnet}, at);
    REQUIRE(first);
    CHECK(first->tip == 100u);
    int calls = 0;
    LoopOptions stop;
    stop.stop_requested = [&] { return ++calls > 200; };
    auto second = parts.index({kMainnet}, stop);
    REQUIRE(second);
    CHECK(second->stopped);
    CHECK(second->tip == 300u);
    parts.reopen();
    auto third = parts.index({kMainnet});
    REQUIRE(third);
    CHECK_FALSE(third->stopped);
    CHECK(parts.roots() == expected);
}

TEST_CASE("loop: the btcd reorg fixture gives the winning chain's state both ways",
          "[indexer][loop][reorg]") {
    // The winning chain on its own: genesis, 1, 2, 3A, 4A, 5A.
    test::TempDir tmp;
    const auto base = records(kBtcd);
    const std::string winning = tmp.sub("winning.blk");
    write_file(winning,
               join({base[0], base[1], base[2], read_file(k3A), read_file(k4A), read_file(k5A)}));
    Db fresh;
    REQUIRE(fresh.index({winning}));
    const auto expected = fresh.roots();
    REQUIRE(expected.size() == 6);

    Db two_runs;
    REQUIRE(two_runs.index({kBtcd}));
    const auto before = two_runs.roots();
    REQUIRE(before.size() == 5);
    auto r = two_runs.index({k3A, k4A, k5A});
    REQUIRE(r);
    CHECK(r->rolled_back == 2);
    const auto after = two_runs.roots();
    CHECK(after == expected);
    CHECK(std::vector(after.begin(), after.begin() + 3) ==
          std::vector(before.begin(), before.begin() + 3));
    CHECK(after[3] != before[3]);
    CHECK(after[4] != before[4]);
    CHECK(display_hex(r->block_hash) ==
          "00000000195f85184e77c18914bd0febd11278d950f5e4731a38f71ed79f044e");

    Db at_once;
    REQUIRE(at_once.index({kBtcd, k3A, k4A, k5A}));
    CHECK(at_once.roots() == expected);

    Db reversed_input;
    REQUIRE(reversed_input.index({k5A, k4A, k3A, kBtcd}));
    CHECK(reversed_input.roots() == expected);
}

TEST_CASE("loop: a side branch seen in an earlier run can win later", "[indexer][loop][reorg]") {
    Db db;
    REQUIRE(db.index({kBtcd, k3A}));  // 3A loses to 3-4 for now
    CHECK(db.engine->tip() == 4u);
    db.reopen();
    auto r = db.index({k4A, k5A});  // 3A's body comes from the database
    REQUIRE(r);
    CHECK(r->tip == 5u);
    CHECK(r->rolled_back == 2);
    Db expected;
    REQUIRE(expected.index({kBtcd, k3A, k4A, k5A}));
    CHECK(db.roots() == expected.roots());
}

TEST_CASE("loop: a reorg deeper than the limit changes nothing", "[indexer][loop][reorg]") {
    Db db;
    REQUIRE(db.index({kBtcd}));
    const auto before = db.roots();
    LoopOptions o;
    o.max_reorg_depth = 1;
    auto r = db.index({k3A, k4A, k5A}, o);
    REQUIRE_FALSE(r);
    CHECK(r.error().message ==
          "the best chain (00000000195f85184e77c18914bd0febd11278d950f5e4731a38f71ed79f044e at "
          "height 5) leaves the "
          "stored chain at height 3: a reorg of depth 2 exceeds --max-reorg-depth 1; nothing was "
          "changed");
    CHECK(db.roots() == before);
}

TEST_CASE("loop: a reorg to a corrupt copy of a block changes nothing, and a good copy makes it",
          "[indexer][loop][reorg]") {
    Db expected;
    REQUIRE(expected.index({kBtcd, k3A, k4A, k5A}));
    Db db;
    REQUIRE(db.index({kBtcd}));
    const auto before = db.roots();
    test::TempDir tmp;
    const std::string bad3A = tmp.sub("3A.blk");
    write_corrupt(k3A, bad3A);
    auto r = db.index({bad3A, k4A, k5A});
    REQUIRE_FALSE(r);
    const std::string& m = r.error().message;
    INFO(m);
    CHECK(m.starts_with(fmt::format("{}: offset 8: block ", bad3A)));
    CHECK(m.find("(height 3): merkle root mismatch") != std::string::npos);
    CHECK(m.ends_with("; the reorg to "
                      "00000000195f85184e77c18914bd0febd11278d950f5e4731a38f71ed79f044e was not "
                      "made"));
    CHECK(db.roots() == before);

    auto good = db.index({k3A, k4A, k5A});
    REQUIRE(good);
    CHECK(good->rolled_back == 2);
    CHECK(db.roots() == expected.roots());
}

TEST_CASE("loop: a reorg to a branch whose body is missing changes nothing",
          "[indexer][loop][reorg]") {
    Db db;
    LoopOptions keep_none;
    keep_none.max_reorg_depth = 0;  // 3A's header is kept, its body is not
    REQUIRE(db.index({kBtcd, k3A}, keep_none));
    const auto before = db.roots();
    auto r = db.index({k4A, k5A});
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find(
              "(height 3): its body is needed but is neither in the input nor kept in the "
              "database; the reorg to") != std::string::npos);
    CHECK(db.roots() == before);
    auto r2 = db.index({k3A, k4A, k5A});  // the body given: the reorg is made
    INFO((r2 ? "" : r2.error().message));
    REQUIRE(r2);
    CHECK(r2->rolled_back == 2);
    CHECK(db.engine->tip() == 5u);
}

TEST_CASE("loop: a reorg to a block the indexer refuses changes nothing, and the branch is passed "
          "by from then on",
          "[indexer][loop][reorg]") {
    // 3A replaces a stored height. 5A lies above the old tip: 3A and 4A only tie with 3
    // and 4 (seen later, they lose the tie) and the branch wins at 5A, so the reorg is
    // checked up to there, and a refused 5A must not leave the database on 3A-4A.
    const auto [refused_file, height] = GENERATE(std::pair{k3A, 3}, std::pair{k5A, 5});
    CAPTURE(height);
    Db db;
    REQUIRE(db.index({kBtcd}));
    const auto before = db.roots();
    Refusing refusing(scan_files({refused_file})[0].header.hash);
    auto r = db.index({k3A, k4A, k5A}, refusing);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find(fmt::format("(height {}): refused by the test; the reorg to ", height)) !=
          std::string::npos);
    CHECK(r.error().message.ends_with(" was not made and the block is marked invalid"));
    CHECK(db.roots() == before);

    // The next run, with an indexer that would take the block, keeps the chain it has.
    db.reopen();
    auto again = db.index({kBtcd, k3A, k4A, k5A});
    REQUIRE(again);
    CHECK(again->tip == 4u);
    CHECK(again->rolled_back == 0);
    CHECK(db.roots() == before);
}

TEST_CASE("loop: --exit-at below where a reorg's chain wins changes nothing", "[indexer][loop][reorg]") {
    Db expected;
    REQUIRE(expected.index({kBtcd, k3A, k4A, k5A}));
    for (const std::uint64_t exit_at : {1, 3, 4}) {
        CAPTURE(exit_at);
        Db db;
        REQUIRE(db.index({kBtcd}));
        const auto before = db.roots();
        LoopOptions o;
        o.exit_at = exit_at;
        auto r = db.index({k3A, k4A, k5A}, o);
        REQUIRE_FALSE(r);
        CHECK(r.error().message ==
              fmt::format("the best chain (00000000195f85184e77c18914bd0febd11278d950f5e4731a38f71ed79f044e "
                          "at height 5) leaves the stored chain at height 3 and wins over it from height 5, "
                          "above --exit-at {}: a reorg ending there would leave a losing chain; nothing was "
                          "changed",
                          exit_at));
        CHECK(db.roots() == before);
        o.exit_at = 5;
        REQUIRE(db.index({k3A, k4A, k5A}, o));
        CHECK(db.roots() == expected.roots());
    }
}

TEST_CASE("loop: the winning chain's bodies are kept before a reorg, for a run without its files",
          "[indexer][loop][reorg]") {
    // A reorg not made this run (here --exit-at stops it; a kill or a refusal would do
    // the same) is made by a later one from the bodies kept, without the files.
    Db db;
    REQUIRE(db.index({kBtcd}));
    LoopOptions stop;
    stop.exit_at = 4;
    REQUIRE_FALSE(db.index({k3A, k4A, k5A}, stop));
    db.reopen();
    auto r = db.index({kBtcd});  // 3A, 4A and 5A are not in this input
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
    CHECK(r->rolled_back == 2);
    Db expected;
    REQUIRE(expected.index({kBtcd, k3A, k4A, k5A}));
    CHECK(db.roots() == expected.roots());

    // Of two copies the one kept is one that parses, whichever comes first.
    test::TempDir tmp;
    const std::string bad3A = tmp.sub("3A.blk");
    write_corrupt(k3A, bad3A);
    Db copies;
    REQUIRE(copies.index({kBtcd}));
    REQUIRE_FALSE(copies.index({k3A, bad3A, k4A, k5A}, stop));
    copies.reopen();
    auto made = copies.index({kBtcd});
    INFO((made ? "" : made.error().message));
    REQUIRE(made);
    CHECK(copies.roots() == expected.roots());
}

TEST_CASE("loop: a block refused at the tip is marked, and the next run passes it by",
          "[indexer][loop]") {
    const Hash h4 = scan_files({kBtcd})[4].header.hash;
    Refusing refuse_4(h4);
    Db db;
    auto r = db.index({kBtcd}, refuse_4);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.ends_with("(height 4): refused by the test; the block is marked invalid"));
    CHECK(db.engine->tip() == 3u);
    db.reopen();
    auto again = db.index({kBtcd}, refuse_4);
    REQUIRE(again);
    CHECK(again->tip == 3u);
    // A branch that does not pass through it wins as usual.
    auto branch = db.index({k3A, k4A, k5A});
    REQUIRE(branch);
    CHECK(branch->tip == 5u);
}

TEST_CASE("loop: an unlimited reorg depth keeps the bodies a reorg needs", "[indexer][loop][reorg]") {
    Db db;
    LoopOptions o;
    o.max_reorg_depth = std::numeric_limits<std::uint64_t>::max();
    REQUIRE(db.index({kBtcd, k3A}, o));
    auto r = db.index({k4A, k5A}, o);  // 3A's body comes from the database
    REQUIRE(r);
    CHECK(r->tip == 5u);
}

TEST_CASE(
    "loop: a record without proof of work is passed over, and a block that needs it as parent is "
    "an error",
    "[indexer][loop]") {
    test::TempDir tmp;
    auto recs = records(kMainnet);
    recs[5][8 + 76] ^= 1;  // the nonce: the hash no longer meets the target
    const std::string path = tmp.sub("nopow.blk");
    write_file(path, join(recs));
    const auto found = scan_files({path});
    Db db;
    LoopOptions o;
    std::vector<std::string> passed;
    o.on_passed_over = [&](const std::string& what) { passed.push_back(what); };
    auto r = db.index({path}, o);
    REQUIRE_FALSE(r);
    REQUIRE(passed.size() == 1);
    CHECK(passed[0] ==
          fmt::format("{}: offset {}: block {}: its hash is above the target its bits 1d00ffff "
                      "encode (no valid proof of work)",
                      path, found[5].location.offset, display_hex(found[5].header.hash)));
    CHECK(r.error().message ==
          fmt::format("{}: offset {}: block {} has an unknown parent {} (1 record(s) without valid "
                      "proof of work "
                      "passed over, the first at {}: offset {}; one may be the parent, torn)",
                      path, found[6].location.offset, display_hex(found[6].header.hash),
                      display_hex(found[6].header.prev), path, found[5].location.offset));
    CHECK_FALSE(db.engine->tip());
    REQUIRE(db.index({kMainnet}));
    CHECK(db.engine->tip() == 589u);
}

TEST_CASE("loop: a header torn by a crash is passed over, for a good copy later or at the end",
          "[indexer][loop]") {
    test::TempDir tmp;
    const auto recs = records(kMainnet);
    // A record cut short inside its header, the rest Bitcoin Core's preallocated zeros.
    auto torn = [](Bytes rec, std::size_t keep) {
        std::fill(rec.begin() + static_cast<std::ptrdiff_t>(8 + keep), rec.end(), 0);
        return rec;
    };
    std::vector<Bytes> copy_later(recs.begin(), recs.end());
    copy_later[300] = torn(recs[300], 72);
    copy_later.push_back(recs[300]);
    std::vector<Bytes> at_end(recs.begin(), recs.end());
    at_end.back() = torn(recs.back(), 50);
    Db full;
    REQUIRE(full.index({kMainnet}));
    for (const auto& [name, parts, tip] : {std::tuple{"copy-later.blk", copy_later, 589u},
                                           std::tuple{"torn-end.blk", at_end, 588u}}) {
        INFO(name);
        const std::string path = tmp.sub(name);
        write_file(path, join(parts));
        Db db;
        auto r = db.index({path});
        REQUIRE(r);
        CHECK(r->tip == tip);
        const auto roots = db.roots();
        CHECK(std::equal(roots.begin(), roots.end(), full.roots().begin()));
    }
}

TEST_CASE(
    "loop: a mid-chain input with a record without proof of work is refused unless BIP34 vouches "
    "for its start",
    "[indexer][loop]") {
    // Its first block torn, the input's first whole block would take --start-height:
    // every height one too high, with nothing below BIP34 to tell.
    test::TempDir tmp;
    auto recs = records(kMainnet);
    std::vector<Bytes> part(recs.begin() + 100, recs.begin() + 120);
    std::fill(part[0].begin() + 8 + 72, part[0].end(), 0);
    const std::string path = tmp.sub("100-119.blk");
    write_file(path, join(part));
    Db db;
    LoopOptions o;
    o.allow_missing_prevouts = true;
    o.start_height = 100;
    auto r = db.index({path}, o);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.starts_with(fmt::format("{}: offset 8: block ", path)));
    CHECK(r.error().message.ends_with(
        fmt::format(": the input starts mid-chain and this record may be its first "
                    "block, torn, which would leave the height of block {} unsure; "
                    "nothing was stored",
                    display_hex(scan_files({kMainnet})[101].header.hash))));
    CHECK_FALSE(db.engine->tip());

    // Where BIP34 is in force the coinbase gives the first block's height: the torn
    // record is passed over (a pruned node's newest file after a crash, say).
    const std::string torn = tmp.sub("torn.blk");
    write_file(torn, join({part[0]}));
    Db modern;
    LoopOptions m;
    m.allow_missing_prevouts = true;
    std::vector<std::string> passed;
    m.on_passed_over = [&](const std::string& what) { passed.push_back(what); };
    auto ok = modern.index({fixture("mainnet_702861.raw"), torn}, m);
    REQUIRE(ok);
    CHECK(ok->tip == 702861u);
    CHECK(passed.size() == 1);
}

TEST_CASE("loop: a target easier than the network's limit is no proof of work", "[indexer][loop]") {
    test::TempDir tmp;
    const auto found = regtest_chain(tmp.sub("regtest.blk"), 3);
    for (const auto& [network, ok] :
         {std::pair{Network::kRegtest, true}, std::pair{Network::kMainnet, false},
          std::pair{Network::kSignet, false}}) {
        INFO(network_name(network));
        Db db;
        UtxoIndexer utxo(false);
        LoopOptions o;
        o.network = network;
        auto r = run_index(*db.engine, utxo, found, o);
        CHECK(r.has_value() == ok);
        if (!ok) {
            CHECK(r.error().message.find(fmt::format(
                      "its target (bits 207fffff) is easier than {}'s limit (bits {:08x})",
                      network_name(network), pow_limit_bits(network))) != std::string::npos);
            CHECK_FALSE(db.engine->tip());
        }
    }
}

TEST_CASE("loop: an XOR-obfuscated block directory replays to the same roots", "[indexer][loop]") {
    Db plain;
    REQUIRE(plain.index({kMainnet}));
    test::TempDir dir;
    XorKey key;
    std::random_device rd;
    for (auto& b : key) b = static_cast<std::uint8_t>(rd());
    INFO("xor key " << to_hex(key));
    Bytes data = read_file(kMainnet);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] ^= key[i % 8];
    write_file(dir.sub("blk00000.dat"), data);
    write_file(dir.sub("xor.dat"), key);
    auto found = scan_blocks_dir(dir.str(), Network::kMainnet);
    REQUIRE(found);
    Db db;
    UtxoIndexer utxo(false);
    REQUIRE(run_index(*db.engine, utxo, *found, {}));
    CHECK(db.roots() == plain.roots());
}

TEST_CASE("loop: a bad block stops the run at the last good height naming file and offset and hash",
          "[indexer][loop]") {
    test::TempDir tmp;
    auto recs = records(kMainnet);
    const std::string path = tmp.sub("bad.blk");
    Bytes& b300 = recs[300];
    b300[b300.size() - 10] ^= 1;  // a transaction no longer matches the merkle root
    write_file(path, join(recs));
    const auto found = scan_files({path});
    Db db;
    auto r = db.index({path});
    REQUIRE_FALSE(r);
    CHECK(r.error().message.rfind(
              fmt::format("{}: offset {}: block {} (height 300): merkle root mismatch", path,
                          found[300].location.offset, display_hex(found[300].header.hash)),
              0) == 0);
    CHECK(db.engine->tip() == 299u);
}

TEST_CASE("loop: a corrupt copy of a block is passed over for a good copy later in the input",
          "[indexer][loop]") {
    test::TempDir tmp;
    auto recs = records(kMainnet);
    const Bytes good = recs[300];
    recs[300][recs[300].size() - 10] ^= 1;  // torn: the transactions no longer match
    recs.push_back(good);                   // stored again, whole, further on
    const std::string path = tmp.sub("twice.blk");
    write_file(path, join(recs));
    Db db, full;
    auto r = db.index({path});
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
    REQUIRE(full.index({kMainnet}));
    CHECK(db.roots() == full.roots());
}

TEST_CASE("loop: a block whose parent is unknown is an error and nothing is applied",
          "[indexer][loop]") {
    test::TempDir tmp;
    auto recs = records(kMainnet);
    recs.erase(recs.begin() + 11);
    const std::string path = tmp.sub("gap.blk");
    write_file(path, join(recs));
    const auto found = scan_files({path});
    Db db;
    auto r = db.index({path});
    REQUIRE_FALSE(r);
    CHECK(r.error().message == fmt::format("{}: offset {}: block {} has an unknown parent {}", path,
                                           found[11].location.offset,
                                           display_hex(found[11].header.hash),
                                           display_hex(found[11].header.prev)));
    CHECK_FALSE(db.engine->tip());

    // Another chain's genesis block is named as such.
    REQUIRE(db.index({kBtcd}));
    const std::string other = tmp.sub("regtest.blk");
    const auto regtest = regtest_chain(other, 2);
    UtxoIndexer utxo(false);
    LoopOptions o;
    o.network = Network::kRegtest;
    auto g = run_index(*db.engine, utxo, regtest, o);
    REQUIRE_FALSE(g);
    CHECK(g.error().message == fmt::format("{}: offset 8: block {} is a genesis block, but this "
                                           "chain starts from block {}: blocks of "
                                           "another network or chain?",
                                           other, display_hex(regtest[0].header.hash),
                                           display_hex(found[0].header.hash)));
    CHECK(db.engine->tip() == 4u);
}

TEST_CASE("loop: a modern block starts a mid-chain index only when allowed", "[indexer][loop]") {
    const std::string raw = fixture("mainnet_702861.raw");
    Db strict;
    auto r = strict.index({raw});
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("has an unknown parent") != std::string::npos);
    CHECK_FALSE(strict.engine->tip());

    Db lenient;
    LoopOptions o;
    o.allow_missing_prevouts = true;
    auto ok = lenient.index({raw}, o);
    REQUIRE(ok);
    CHECK(ok->tip == 702861u);
    CHECK(ok->totals.txs == 2500);
    CHECK(lenient.engine->live_keys() == ok->totals.changed_keys);

    // Where BIP34 is in force (by the height given or the coinbase's), a start height
    // the coinbase contradicts would shift every height.
    for (const std::uint64_t given : {702000, 70286, 5}) {
        CAPTURE(given);
        Db shifted;
        o.start_height = given;
        auto wrong = shifted.index({raw}, o);
        REQUIRE_FALSE(wrong);
        CHECK(wrong.error().message ==
              fmt::format("--start-height {} contradicts block "
                          "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae, whose coinbase "
                          "gives height 702861 (BIP34)",
                          given));
        CHECK_FALSE(shifted.engine->tip());
    }
    Db given;
    o.start_height = 702861;
    REQUIRE(given.index({raw}, o));
}

TEST_CASE("loop: a mid-chain start is found whatever the input's order, and the blocks below it "
          "are passed over later",
          "[indexer][loop]") {
    test::TempDir tmp;
    const auto recs = records(kMainnet);
    std::vector<std::string> files;
    for (int i = 1; i <= 3; ++i) {
        files.push_back(tmp.sub(fmt::format("r{}.blk", i)));
        write_file(files.back(), recs[static_cast<std::size_t>(i)]);
    }
    LoopOptions o;
    o.allow_missing_prevouts = true;
    Db no_height;  // a version-1 block's coinbase holds no height
    auto r = no_height.index({files[0]}, o);
    REQUIRE_FALSE(r);
    CHECK(r.error().message ==
          "block 00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048 has no BIP34 "
          "height in its coinbase: give --start-height");

    // The heights of the input's blocks must fit in 64 bits.
    o.start_height = std::numeric_limits<std::uint64_t>::max() - 2;
    Db too_high;
    auto wraps = too_high.index({files[0], files[1], files[2]}, o);
    REQUIRE_FALSE(wraps);
    CHECK(wraps.error().message ==
          "start height 18446744073709551613 leaves no room for the input's 3 blocks above it");
    CHECK_FALSE(too_high.engine->tip());

    o.start_height = 1;
    Db db;
    auto mid = db.index({files[1], files[0], files[2]}, o);
    INFO((mid ? "" : mid.error().message));
    REQUIRE(mid);
    CHECK(mid->tip == 3u);
    // A start height is checked, not ignored, where it does not apply.
    o.start_height = 2;
    CHECK(db.index({files[2]}, o).error().message ==
          "--start-height 2 does not match the database, which starts at height 1");
    Db from_genesis;
    CHECK(from_genesis.index({kMainnet}, o).error().message ==
          "the input holds the genesis block, height 0: --start-height 2 does not apply");
    o.start_height = 1;

    // Given the whole chain from genesis, it goes on from its tip; genesis adds no
    // outputs, so from height 1 on its roots are those of an index started at genesis.
    auto all = db.index({kMainnet});
    INFO((all ? "" : all.error().message));
    REQUIRE(all);
    CHECK(all->tip == 589u);
    Db full;
    REQUIRE(full.index({kMainnet}));
    const auto roots = full.roots();
    CHECK(db.roots() == std::vector(roots.begin() + 1, roots.end()));
}

TEST_CASE("loop: a database written from change files is refused", "[indexer][loop]") {
    Db db;
    auto c = indexer::parse_change_line(R"({"height": 0, "puts": [["01", "02"]]})");
    REQUIRE(db.engine->apply(*c));
    auto r = db.index({kBtcd});
    REQUIRE_FALSE(r);
    CHECK(r.error().message ==
          "height 0 has no block hash: this database was not built from blocks");
    // With the genesis block's hash too: its changes are the file's, not the block's.
    Db hashed;
    auto g = indexer::parse_change_line(
        fmt::format(R"({{"height": 0, "block_hash": "{}", "puts": [["01", "02"]]}})",
                    display_hex(scan_files({kBtcd})[0].header.hash)));
    REQUIRE(hashed.engine->apply(*g));
    auto h = hashed.index({kBtcd});
    REQUIRE_FALSE(h);
    CHECK(h.error().message ==
          "height 0 was written from a change file: this database was not built from blocks");
}

TEST_CASE("loop: heights written from change files after the blocks are refused, not rolled back",
          "[indexer][loop]") {
    Db db;
    REQUIRE(db.index({kBtcd}));
    const std::uint64_t tip = *db.engine->tip();
    const auto roots = db.roots();
    auto c = indexer::parse_change_line(fmt::format(R"({{"height": {}, "puts": [["aa", "01"]]}})", tip + 1));
    REQUIRE(db.engine->apply(*c));
    // The same blocks (nothing new), and a longer branch: both would have rolled it back.
    for (const std::vector<std::string>& files :
         {std::vector<std::string>{kBtcd}, {kBtcd, fixture("btcd_reorg_blk_3A.dat"),
                                             fixture("btcd_reorg_blk_4A.dat"),
                                             fixture("btcd_reorg_blk_5A.dat")}}) {
        auto r = db.index(files);
        REQUIRE_FALSE(r);
        CHECK(r.error().message ==
              fmt::format("height {} has no block hash: it was not written from blocks; roll it "
                          "back first to index blocks after it (stateroot rollback --height {})",
                          tip + 1, tip));
        CHECK(db.engine->tip() == tip + 1);
    }
    auto roots_after = db.roots();
    roots_after.pop_back();
    CHECK(roots_after == roots);
}

TEST_CASE("loop: a change-file height with a block hash is refused too, even the next block's",
          "[indexer][loop]") {
    const auto found = scan_files({kMainnet});
    for (const std::string& hash : {display_hex(found[500].header.hash), std::string(64, 'a')}) {
        INFO(hash);
        Db db;
        LoopOptions o;
        o.exit_at = 499;
        REQUIRE(db.index({kMainnet}, o));
        auto c = indexer::parse_change_line(
            fmt::format(R"({{"height": 500, "block_hash": "{}", "puts": [["01", "02"]]}})", hash));
        REQUIRE(c);
        const Hash root = db.engine->apply(*c)->root;
        auto r = db.index({kMainnet});
        REQUIRE_FALSE(r);
        CHECK(r.error().message ==
              "height 500 was written from a change file, not from blocks; roll it back first to "
              "index blocks "
              "after it (stateroot rollback --height 499)");
        CHECK(db.engine->tip() == 500u);
        CHECK(db.engine->root() == root);
    }
}
