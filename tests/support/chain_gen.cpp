#include "chain_gen.hpp"

#include <random>
#include <vector>

#include "stateroot/indexer/bitcoin.hpp"
#include "stateroot/indexer/chain.hpp"

namespace stateroot::test {

namespace {

using indexer::Hash;

void le(Bytes& out, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void compact(Bytes& out, std::uint64_t n) {
    if (n < 0xfd) {
        out.push_back(static_cast<std::uint8_t>(n));
    } else {
        out.push_back(0xfd);
        le(out, n, 2);
    }
}

struct Coin {
    Hash txid;
    std::uint32_t vout;
    std::uint64_t value;
};

// A legacy (non-witness) transaction; returns its bytes and sets its txid.
Bytes tx_bytes(const std::vector<Coin>& spends, const std::vector<std::uint64_t>& values,
               ByteView coinbase_script, std::uint64_t salt, Hash& txid) {
    Bytes t;
    le(t, 2, 4);
    if (spends.empty()) {
        compact(t, 1);
        t.insert(t.end(), 32, 0);
        le(t, 0xffffffff, 4);
        compact(t, coinbase_script.size());
        t.insert(t.end(), coinbase_script.begin(), coinbase_script.end());
        le(t, 0xffffffff, 4);
    } else {
        compact(t, spends.size());
        for (const Coin& c : spends) {
            t.insert(t.end(), c.txid.bytes.begin(), c.txid.bytes.end());
            le(t, c.vout, 4);
            compact(t, 0);
            le(t, 0xffffffff, 4);
        }
    }
    compact(t, values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        le(t, values[i], 8);
        // OP_TRUE and a unique tail, 23 bytes: about the size of a P2SH script.
        Bytes script{0x51, 0x75, 0x14};
        le(script, salt, 8);
        le(script, i, 4);
        script.resize(23, 0xab);
        compact(t, script.size());
        t.insert(t.end(), script.begin(), script.end());
    }
    le(t, 0, 4);
    txid = indexer::double_sha256(t);
    return t;
}

}  // namespace

Bytes make_chain(const ChainSpec& spec) {
    std::mt19937_64 rng(spec.seed);
    std::vector<Coin> coins;  // spendable outputs (created in earlier blocks)
    Bytes out;
    Hash prev{};
    std::uint64_t salt = spec.seed << 32;
    for (std::uint64_t height = 0; height < spec.blocks; ++height) {
        std::vector<Bytes> txs;
        std::vector<Hash> txids;
        std::vector<Coin> created;
        Hash txid;
        Bytes script{0x03};
        le(script, height, 3);
        le(script, spec.seed, 4);
        txs.push_back(tx_bytes({}, {50'0000'0000ull}, script, salt++, txid));
        txids.push_back(txid);
        created.push_back({txid, 0, 50'0000'0000ull});
        for (std::uint64_t i = 0; i < spec.txs_per_block && coins.size() >= 2; ++i) {
            std::vector<Coin> spends;
            const std::size_t n_in = 1 + rng() % 2;
            std::uint64_t total = 0;
            for (std::size_t k = 0; k < n_in; ++k) {
                const std::size_t pick = rng() % coins.size();
                spends.push_back(coins[pick]);
                total += coins[pick].value;
                coins[pick] = coins.back();
                coins.pop_back();
            }
            const std::uint64_t fee = std::min<std::uint64_t>(total, 1000);
            const std::uint64_t a = (total - fee) / 2, b = total - fee - a;
            txs.push_back(tx_bytes(spends, {a, b}, {}, salt++, txid));
            txids.push_back(txid);
            created.push_back({txid, 0, a});
            created.push_back({txid, 1, b});
        }
        if (height > 0)
            coins.insert(coins.end(), created.begin(),
                         created.end());  // genesis outputs are unspendable

        Bytes block;
        le(block, 0x20000000, 4);
        block.insert(block.end(), prev.bytes.begin(), prev.bytes.end());
        const Hash root = indexer::merkle_root(txids);
        block.insert(block.end(), root.bytes.begin(), root.bytes.end());
        le(block, 1'700'000'000 + height * 600, 4);
        le(block, 0x207fffff, 4);
        le(block, 0, 4);
        // Mined: at the regtest target about every other nonce will do.
        for (std::uint32_t nonce = 0;; ++nonce) {
            for (int i = 0; i < 4; ++i) block[76 + i] = static_cast<std::uint8_t>(nonce >> (8 * i));
            if (indexer::meets_target(indexer::parse_header(ByteView(block).first(80)).value(),
                                      indexer::Network::kRegtest))
                break;
        }
        prev = indexer::double_sha256(ByteView(block).first(80));
        compact(block, txs.size());
        for (const Bytes& t : txs) block.insert(block.end(), t.begin(), t.end());

        out.insert(out.end(), {0xfa, 0xbf, 0xb5, 0xda});
        le(out, block.size(), 4);
        out.insert(out.end(), block.begin(), block.end());
    }
    return out;
}

}  // namespace stateroot::test
