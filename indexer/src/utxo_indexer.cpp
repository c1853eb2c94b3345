#include <fmt/format.h>

#include <map>

#include "stateroot/indexer/block_indexer.hpp"

namespace stateroot::indexer {

Bytes UtxoIndexer::key(const Hash& txid, std::uint32_t vout) {
    Bytes k;
    k.reserve(kPrefix.size() + 32 + 4);
    k.insert(k.end(), kPrefix.begin(), kPrefix.end());
    k.insert(k.end(), txid.bytes.begin(), txid.bytes.end());
    for (int i = 0; i < 4; ++i) k.push_back(static_cast<std::uint8_t>(vout >> (8 * i)));
    return k;
}

Bytes UtxoIndexer::value(std::uint64_t amount, std::uint32_t height, bool coinbase,
                         ByteView script) {
    Bytes v;
    v.reserve(13 + script.size());
    for (int i = 0; i < 8; ++i) v.push_back(static_cast<std::uint8_t>(amount >> (8 * i)));
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<std::uint8_t>(height >> (8 * i)));
    v.push_back(coinbase ? 1 : 0);
    v.insert(v.end(), script.begin(), script.end());
    return v;
}

Result<engine::Changes> UtxoIndexer::changes(const Block& block, std::uint64_t height,
                                             StateReader& state) {
    if (height > 0xffffffffu) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("height {} does not fit the 4-byte field", height));
    }
    // What the block does to each key, in order: a value for an output it creates, nullopt
    // for one it spends that existed before it; keys created and spent inside it drop out.
    std::map<Bytes, std::optional<Bytes>> effect;
    const bool genesis = block.header.prev == Hash{};
    for (std::size_t t = 0; t < block.txs.size(); ++t) {
        const Transaction& tx = block.txs[t];
        const bool coinbase = t == 0;
        // Only the first transaction may create coins from nothing, and it must: a
        // first transaction's inputs are not spent, so an ordinary one there would
        // leave its coins unspent.
        if (tx.is_coinbase() != coinbase) {
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("transaction {} ({}) is {}a coinbase at height {}: a block's "
                                          "first transaction, and only it, is",
                                          t, display_hex(tx.txid), coinbase ? "not " : "", height));
        }
        if (!coinbase) {
            for (std::size_t i = 0; i < tx.inputs.size(); ++i) {
                const TxIn& in = tx.inputs[i];
                Bytes k = key(in.prev_txid, in.prev_vout);
                const auto it = effect.find(k);
                if (it != effect.end() && it->second) {
                    // Created earlier in this block: it leaves no entry, unless it
                    // overwrote one that existed before the block.
                    auto before = state.get(k);
                    if (!before) return std::unexpected(before.error());
                    if (*before) {
                        it->second.reset();
                    } else {
                        effect.erase(it);
                    }
                    continue;
                }
                bool exists = false;
                if (it == effect.end()) {
                    auto before = state.get(k);
                    if (!before) return std::unexpected(before.error());
                    exists = before->has_value();
                }
                if (!exists) {
                    if (allow_missing_prevouts_) continue;
                    return make_error(ErrorCode::kInvalidArgument,
                                      fmt::format("transaction {} input {} spends {}:{}, which "
                                                  "does not exist at height {}",
                                                  display_hex(tx.txid), i,
                                                  display_hex(in.prev_txid), in.prev_vout, height));
                }
                effect[std::move(k)] = std::nullopt;
            }
        }
        if (genesis) continue;  // the genesis outputs are unspendable
        for (std::size_t o = 0; o < tx.outputs.size(); ++o) {
            const TxOut& out = tx.outputs[o];
            const Bytes& s = out.script_pubkey;
            if ((!s.empty() && s[0] == 0x6a) || s.size() > kMaxScriptSize) continue;  // unspendable
            effect[key(tx.txid, static_cast<std::uint32_t>(o))] =
                value(out.value, static_cast<std::uint32_t>(height), coinbase, s);
        }
    }
    engine::Changes c;
    c.height = height;
    for (auto& [k, v] : effect) {
        if (v) {
            c.puts.emplace_back(k, std::move(*v));
        } else {
            c.deletes.push_back(k);
        }
    }
    return c;
}

Result<std::unique_ptr<BlockIndexer>> make_indexer(std::string_view name,
                                                   bool allow_missing_prevouts) {
    if (name == "utxo")
        return std::unique_ptr<BlockIndexer>(new UtxoIndexer(allow_missing_prevouts));
    return make_error(ErrorCode::kInvalidArgument,
                      fmt::format("unknown indexer \"{}\" (built in: utxo)", name));
}

}  // namespace stateroot::indexer
