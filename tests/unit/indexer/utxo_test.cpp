// The UTXO indexer's schema rules, on blocks built in the test.
#include <catch2/catch.hpp>
#include <map>

#include "stateroot/indexer/block_indexer.hpp"

using namespace stateroot;
using namespace stateroot::indexer;

namespace {

class MapState final : public StateReader {
  public:
    std::map<Bytes, Bytes> rows;
    Result<std::optional<Bytes>> get(ByteView key) override {
        const auto it = rows.find(Bytes(key.begin(), key.end()));
        if (it == rows.end()) return std::optional<Bytes>();
        return std::optional<Bytes>(it->second);
    }
};

Hash h(std::uint8_t b) {
    Hash x;
    x.bytes.fill(b);
    return x;
}

Transaction tx(Hash txid, std::vector<std::pair<Hash, std::uint32_t>> spends,
               std::vector<TxOut> outs) {
    Transaction t;
    t.txid = txid;
    for (auto& [prev, vout] : spends) t.inputs.push_back({prev, vout, {}, {}});
    t.outputs = std::move(outs);
    return t;
}

Transaction coinbase(Hash txid, std::uint64_t value) {
    return tx(txid, {{Hash{}, 0xffffffff}}, {{value, Bytes{0x51}}});
}

Block block(std::vector<Transaction> txs) {
    Block b;
    b.header.prev = h(0x99);  // not genesis
    b.txs = std::move(txs);
    return b;
}

std::map<Bytes, std::optional<Bytes>> as_map(const engine::Changes& c) {
    std::map<Bytes, std::optional<Bytes>> m;
    for (auto& [k, v] : c.puts) m[k] = v;
    for (auto& k : c.deletes) m[k] = std::nullopt;
    return m;
}

}  // namespace

TEST_CASE("utxo: keys and values follow the documented layout", "[indexer][utxo]") {
    const Bytes k = UtxoIndexer::key(h(0xab), 0x01020304);
    CHECK(to_hex(k) == "7574786f2f" + h(0xab).hex() + "04030201");
    const Bytes v = UtxoIndexer::value(5000000000ull, 170, true, Bytes{0x76, 0xa9});
    CHECK(to_hex(v) ==
          "00f2052a01000000"
          "aa000000"
          "01"
          "76a9");
}

TEST_CASE("utxo: a block's outputs are added and its inputs delete their prevouts",
          "[indexer][utxo]") {
    MapState state;
    state.rows[UtxoIndexer::key(h(1), 0)] = UtxoIndexer::value(10, 5, false, Bytes{0x51});
    UtxoIndexer idx(false);
    const auto c = idx.changes(
        block({coinbase(h(2), 50), tx(h(3), {{h(1), 0}}, {{7, Bytes{0x52}}, {3, Bytes{0x6a, 1}}})}),
        9, state);
    REQUIRE(c);
    const auto m = as_map(*c);
    CHECK(m.size() == 3);
    CHECK(m.at(UtxoIndexer::key(h(1), 0)) == std::nullopt);
    CHECK(m.at(UtxoIndexer::key(h(2), 0)) == UtxoIndexer::value(50, 9, true, Bytes{0x51}));
    CHECK(m.at(UtxoIndexer::key(h(3), 0)) == UtxoIndexer::value(7, 9, false, Bytes{0x52}));
    CHECK_FALSE(m.count(UtxoIndexer::key(h(3), 1)));  // OP_RETURN
}

TEST_CASE("utxo: an output created and spent in the same block leaves no entry",
          "[indexer][utxo]") {
    MapState state;
    UtxoIndexer idx(false);
    const auto c =
        idx.changes(block({coinbase(h(2), 50), tx(h(3), {{h(2), 0}}, {{50, Bytes{0x51}}}),
                           tx(h(4), {{h(3), 0}}, {{49, Bytes{0x51}}})}),
                    100, state);
    REQUIRE(c);
    const auto m = as_map(*c);
    CHECK(m.size() == 1);
    CHECK(m.count(UtxoIndexer::key(h(4), 0)));
}

TEST_CASE("utxo: oversized scripts and the genesis block's outputs are not added",
          "[indexer][utxo]") {
    MapState state;
    UtxoIndexer idx(false);
    const auto big = idx.changes(block({tx(h(2), {{Hash{}, 0xffffffff}},
                                           {{1, Bytes(10'001, 0x51)}, {1, Bytes(10'000, 0x51)}})}),
                                 1, state);
    REQUIRE(big);
    CHECK(big->puts.size() == 1);
    Block genesis = block({coinbase(h(2), 50)});
    genesis.header.prev = Hash{};
    const auto g = idx.changes(genesis, 0, state);
    REQUIRE(g);
    CHECK(g->puts.empty());
}

TEST_CASE("utxo: a repeated txid overwrites the earlier outputs", "[indexer][utxo]") {
    MapState state;
    state.rows[UtxoIndexer::key(h(2), 0)] = UtxoIndexer::value(50, 91812, true, Bytes{0x51});
    UtxoIndexer idx(false);
    const auto c = idx.changes(block({coinbase(h(2), 50)}), 91842, state);
    REQUIRE(c);
    CHECK(as_map(*c).at(UtxoIndexer::key(h(2), 0)) ==
          UtxoIndexer::value(50, 91842, true, Bytes{0x51}));
}

TEST_CASE("utxo: spending an unknown outpoint is an error unless missing prevouts are allowed",
          "[indexer][utxo]") {
    MapState state;
    const Block b = block({coinbase(h(2), 50), tx(h(3), {{h(7), 4}}, {{1, Bytes{0x51}}})});
    UtxoIndexer strict(false);
    const auto c = strict.changes(b, 12, state);
    REQUIRE_FALSE(c);
    CHECK(c.error().message == "transaction " + h(3).hex() + " input 0 spends " + h(7).hex() +
                                   ":4, which does not exist at height 12");
    UtxoIndexer lenient(true);
    const auto ok = lenient.changes(b, 12, state);
    REQUIRE(ok);
    CHECK(ok->deletes.empty());
    CHECK(ok->puts.size() == 2);
    // A double spend inside one block is a spend of something that no longer exists.
    state.rows[UtxoIndexer::key(h(7), 4)] = UtxoIndexer::value(1, 1, false, Bytes{0x51});
    const auto twice = strict.changes(
        block({coinbase(h(2), 50), tx(h(3), {{h(7), 4}}, {}), tx(h(4), {{h(7), 4}}, {})}), 12,
        state);
    REQUIRE_FALSE(twice);
}

TEST_CASE("utxo: the first transaction, and only it, is a coinbase", "[indexer][utxo]") {
    MapState state;
    state.rows[UtxoIndexer::key(h(1), 0)] = UtxoIndexer::value(10, 5, false, Bytes{0x51});
    for (const bool lenient : {false, true}) {
        UtxoIndexer idx(lenient);
        // An ordinary spend first: its prevout would stay unspent.
        const auto first = idx.changes(block({tx(h(3), {{h(1), 0}}, {{7, Bytes{0x52}}})}), 9, state);
        REQUIRE_FALSE(first);
        CHECK(first.error().code == ErrorCode::kInvalidArgument);
        CHECK(first.error().message == "transaction 0 (" + h(3).hex() +
                                           ") is not a coinbase at height 9: a block's first "
                                           "transaction, and only it, is");
        const auto second = idx.changes(block({coinbase(h(2), 50), coinbase(h(4), 50)}), 9, state);
        REQUIRE_FALSE(second);
        CHECK(second.error().message == "transaction 1 (" + h(4).hex() +
                                            ") is a coinbase at height 9: a block's first "
                                            "transaction, and only it, is");
    }
}
