// Fuzz target: indexer::parse_block on arbitrary bytes.
//
// The input is checked against a second, independent parser written here from the wire
// format (BIP144 for segwit), which also keeps what parse_block drops (versions,
// sequences, lock times):
// - parse_block accepts exactly the inputs the reference parses whose transactions hash
//   to the header's merkle root without the CVE-2012-2459 duplication, and whose
//   witnesses, if any, hash to the coinbase's commitment (BIP141);
// - on success, the header, every txid, wtxid, input (witness included) and output
//   equal the reference's, and a
//   transaction re-serialized from its fields (without witnesses) hashes to its txid;
// - when the structure parses but the merkle root does not match, the input is parsed
//   again with the reference's root written into the header, so that the success path is
//   reached by inputs the fuzzer could never give a matching root by chance.
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "fuzz_support.hpp"
#include "stateroot/indexer/bitcoin.hpp"

using namespace stateroot;
using indexer::Hash;

namespace {

Hash sha256d(ByteView data) { return engine::sha256(engine::sha256(data).view()); }

struct RefIn {
    Hash prev_txid;
    std::uint32_t prev_vout = 0;
    Bytes script_sig;
    std::uint32_t sequence = 0;
    std::vector<Bytes> witness;
};

struct RefOut {
    std::uint64_t value = 0;
    Bytes script_pubkey;
};

struct RefTx {
    std::uint32_t version = 0;
    std::vector<RefIn> inputs;
    std::vector<RefOut> outputs;
    std::uint32_t locktime = 0;
    bool segwit = false;
    Bytes stripped;         // the bytes the txid covers, cut from the input
    Bytes whole;            // the bytes the wtxid covers
};

struct RefBlock {
    std::vector<RefTx> txs;
    Hash merkle_root;  // of the txids
    bool mutated = false;
    bool witness_committed = true;  // BIP141: no witness data, or the coinbase commits to it
};

// Reads the wire format; any shortfall makes the whole parse fail.
class Cursor {
  public:
    explicit Cursor(ByteView data) : data_(data) {}
    bool ok() const { return ok_; }
    std::size_t pos() const { return pos_; }
    std::size_t left() const { return data_.size() - pos_; }
    ByteView span(std::size_t from, std::size_t to) const { return data_.subspan(from, to - from); }

    std::optional<ByteView> take(std::uint64_t n) {
        if (!ok_ || n > left()) {
            ok_ = false;
            return std::nullopt;
        }
        const ByteView v = data_.subspan(pos_, static_cast<std::size_t>(n));
        pos_ += static_cast<std::size_t>(n);
        return v;
    }
    std::uint64_t uint(int n) {
        auto b = take(static_cast<std::uint64_t>(n));
        if (!b) return 0;
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < b->size(); ++i) v |= static_cast<std::uint64_t>((*b)[i]) << (8 * i);
        return v;
    }
    // Bitcoin's CompactSize, in its shortest form only (as Bitcoin Core and parse_block
    // read it).
    std::uint64_t compact() {
        const std::uint64_t first = uint(1);
        std::uint64_t v = first;
        std::uint64_t min = 0;
        if (first == 0xfd) {
            v = uint(2);
            min = 0xfd;
        } else if (first == 0xfe) {
            v = uint(4);
            min = 0x10000;
        } else if (first == 0xff) {
            v = uint(8);
            min = 0x100000000;
        }
        if (v < min) ok_ = false;
        return v;
    }
    // A count of items each at least `min_item` bytes long. parse_block refuses a count
    // the bytes left cannot hold before reading the items; for transactions it assumes
    // 60 bytes each (an input and an output), so the reference does the same.
    std::uint64_t count(std::uint64_t min_item) {
        const std::uint64_t n = compact();
        if (ok_ && n > left() / min_item) ok_ = false;
        return ok_ ? n : 0;
    }

  private:
    ByteView data_;
    std::size_t pos_ = 0;
    bool ok_ = true;
};

void append(Bytes& out, ByteView b) { out.insert(out.end(), b.begin(), b.end()); }

std::optional<RefTx> ref_tx(Cursor& c) {
    RefTx tx;
    const std::size_t start = c.pos();
    tx.version = static_cast<std::uint32_t>(c.uint(4));
    const std::size_t after_version = c.pos();
    std::uint64_t n_in = c.count(41);
    if (c.ok() && n_in == 0) {
        // Marker 0x00 then flag 0x01, then the real input count, which must not be 0.
        if (c.uint(1) != 1) return std::nullopt;
        tx.segwit = true;
        n_in = c.count(41);
        if (n_in == 0) return std::nullopt;
    }
    if (!c.ok()) return std::nullopt;
    const std::size_t body_start = tx.segwit ? after_version + 2 : after_version;
    tx.inputs.resize(static_cast<std::size_t>(n_in));
    for (RefIn& in : tx.inputs) {
        auto prev = c.take(32);
        if (!prev) return std::nullopt;
        std::memcpy(in.prev_txid.bytes.data(), prev->data(), 32);
        in.prev_vout = static_cast<std::uint32_t>(c.uint(4));
        auto script = c.take(c.count(1));
        if (!script) return std::nullopt;
        in.script_sig.assign(script->begin(), script->end());
        in.sequence = static_cast<std::uint32_t>(c.uint(4));
    }
    const std::uint64_t n_out = c.count(9);
    if (!c.ok()) return std::nullopt;
    tx.outputs.resize(static_cast<std::size_t>(n_out));
    for (RefOut& out : tx.outputs) {
        out.value = c.uint(8);
        auto script = c.take(c.count(1));
        if (!script) return std::nullopt;
        out.script_pubkey.assign(script->begin(), script->end());
    }
    const std::size_t body_end = c.pos();
    if (tx.segwit) {
        bool any = false;  // the segwit form with no witness at all is refused (BIP144)
        for (RefIn& in : tx.inputs) {
            const std::uint64_t items = c.count(1);
            any |= items > 0;
            for (std::uint64_t k = 0; k < items; ++k) {
                auto item = c.take(c.count(1));
                if (!item) return std::nullopt;
                in.witness.emplace_back(item->begin(), item->end());
            }
        }
        if (c.ok() && !any) return std::nullopt;
    }
    const std::size_t locktime_at = c.pos();
    tx.locktime = static_cast<std::uint32_t>(c.uint(4));
    if (!c.ok()) return std::nullopt;
    append(tx.stripped, c.span(start, after_version));
    append(tx.stripped, c.span(body_start, body_end));
    append(tx.stripped, c.span(locktime_at, c.pos()));
    append(tx.whole, c.span(start, c.pos()));
    return tx;
}

// Bitcoin's merkle tree: pairs hashed with double SHA-256, an odd last hash paired with
// itself; mutated if a pair (before that padding) holds two equal hashes.
Hash ref_merkle(std::vector<Hash> level, bool& mutated) {
    mutated = false;
    while (level.size() > 1) {
        for (std::size_t i = 0; i + 1 < level.size(); i += 2) mutated |= level[i] == level[i + 1];
        if (level.size() % 2 == 1) level.push_back(level.back());
        std::vector<Hash> up;
        for (std::size_t i = 0; i < level.size(); i += 2) {
            Bytes pair;
            append(pair, level[i].view());
            append(pair, level[i + 1].view());
            up.push_back(sha256d(pair));
        }
        level = std::move(up);
    }
    return level.empty() ? Hash{} : level[0];
}

std::optional<RefBlock> ref_block(ByteView data) {
    if (data.size() < indexer::kHeaderSize) return std::nullopt;
    Cursor c(data);
    c.take(indexer::kHeaderSize);
    const std::uint64_t n_tx = c.count(60);
    if (!c.ok() || n_tx == 0) return std::nullopt;
    RefBlock b;
    for (std::uint64_t i = 0; i < n_tx; ++i) {
        auto tx = ref_tx(c);
        if (!tx) return std::nullopt;
        b.txs.push_back(std::move(*tx));
    }
    if (c.left() != 0) return std::nullopt;
    std::vector<Hash> txids;
    for (const RefTx& tx : b.txs) txids.push_back(sha256d(tx.stripped));
    b.merkle_root = ref_merkle(std::move(txids), b.mutated);

    // BIP141, checked when a transaction has witness data and the first is a coinbase
    // (a block without one is the indexer's to refuse): the coinbase's last output
    // starting 6a 24 aa 21 a9 ed holds SHA256d(root of the wtxids with the coinbase's
    // as zero ‖ the coinbase's only witness item, of 32 bytes).
    bool witness = false;
    for (const RefTx& tx : b.txs) {
        for (const RefIn& in : tx.inputs) witness |= !in.witness.empty();
    }
    const RefTx& first = b.txs[0];
    const bool coinbase = first.inputs.size() == 1 && first.inputs[0].prev_txid == Hash{} &&
                          first.inputs[0].prev_vout == 0xffffffff;
    if (witness && coinbase) {
        const Bytes* commitment = nullptr;
        for (const RefOut& out : first.outputs) {
            const Bytes& sp = out.script_pubkey;
            if (sp.size() >= 38 && sp[0] == 0x6a && sp[1] == 0x24 && sp[2] == 0xaa && sp[3] == 0x21 &&
                sp[4] == 0xa9 && sp[5] == 0xed) {
                commitment = &sp;
            }
        }
        const std::vector<Bytes>& item = first.inputs[0].witness;
        b.witness_committed = false;
        if (commitment && item.size() == 1 && item[0].size() == 32) {
            std::vector<Hash> wtxids{Hash{}};
            for (std::size_t i = 1; i < b.txs.size(); ++i) wtxids.push_back(sha256d(b.txs[i].whole));
            bool ignored = false;
            Bytes preimage;
            append(preimage, ref_merkle(std::move(wtxids), ignored).view());
            append(preimage, item[0]);
            b.witness_committed = sha256d(preimage) == Hash::from(ByteView(*commitment).subspan(6, 32));
        }
    }
    return b;
}

void put_le(Bytes& out, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

void put_compact(Bytes& out, std::uint64_t v) {
    if (v < 0xfd) {
        put_le(out, v, 1);
    } else if (v <= 0xffff) {
        out.push_back(0xfd);
        put_le(out, v, 2);
    } else if (v <= 0xffffffff) {
        out.push_back(0xfe);
        put_le(out, v, 4);
    } else {
        out.push_back(0xff);
        put_le(out, v, 8);
    }
}

// The serialization without witness data, from the fields alone.
Bytes serialize_stripped(const RefTx& tx) {
    Bytes out;
    put_le(out, tx.version, 4);
    put_compact(out, tx.inputs.size());
    for (const RefIn& in : tx.inputs) {
        append(out, in.prev_txid.view());
        put_le(out, in.prev_vout, 4);
        put_compact(out, in.script_sig.size());
        append(out, in.script_sig);
        put_le(out, in.sequence, 4);
    }
    put_compact(out, tx.outputs.size());
    for (const RefOut& o : tx.outputs) {
        put_le(out, o.value, 8);
        put_compact(out, o.script_pubkey.size());
        append(out, o.script_pubkey);
    }
    put_le(out, tx.locktime, 4);
    return out;
}

// Everything parse_block returned for `data` agrees with the reference.
void check_block(ByteView data, const indexer::Block& block, const RefBlock& ref) {
    auto header = indexer::parse_header(data);
    FUZZ_CHECK(header.has_value(), "parse_header failed where parse_block succeeded");
    FUZZ_CHECK(block.header.hash == header->hash && block.header.prev == header->prev &&
                   block.header.merkle_root == header->merkle_root &&
                   block.header.version == header->version && block.header.time == header->time &&
                   block.header.bits == header->bits && block.header.nonce == header->nonce,
               "the block's header differs from parse_header's");
    FUZZ_CHECK(block.header.hash == sha256d(data.first(indexer::kHeaderSize)), "header hash");
    FUZZ_CHECK(block.header.merkle_root == ref.merkle_root && !ref.mutated,
               "parse_block accepted a merkle root of {} (the transactions give {}{})",
               block.header.merkle_root.hex(), ref.merkle_root.hex(), ref.mutated ? ", mutated" : "");
    FUZZ_CHECK(block.txs.size() == ref.txs.size(), "{} transactions, the reference has {}",
               block.txs.size(), ref.txs.size());
    std::vector<Hash> txids;
    for (std::size_t i = 0; i < block.txs.size(); ++i) {
        const indexer::Transaction& tx = block.txs[i];
        const RefTx& r = ref.txs[i];
        txids.push_back(tx.txid);
        FUZZ_CHECK(tx.txid == sha256d(r.stripped), "tx {}: txid {} is not the hash of its bytes", i,
                   tx.txid.hex());
        FUZZ_CHECK(serialize_stripped(r) == r.stripped, "tx {}: re-serialized bytes differ", i);
        FUZZ_CHECK(tx.inputs.size() == r.inputs.size() && tx.outputs.size() == r.outputs.size(),
                   "tx {}: {} inputs and {} outputs, the reference has {} and {}", i, tx.inputs.size(),
                   tx.outputs.size(), r.inputs.size(), r.outputs.size());
        for (std::size_t k = 0; k < tx.inputs.size(); ++k) {
            FUZZ_CHECK(tx.inputs[k].prev_txid == r.inputs[k].prev_txid &&
                           tx.inputs[k].prev_vout == r.inputs[k].prev_vout &&
                           tx.inputs[k].script_sig == r.inputs[k].script_sig &&
                           tx.inputs[k].witness == r.inputs[k].witness,
                       "tx {} input {} differs", i, k);
        }
        for (std::size_t k = 0; k < tx.outputs.size(); ++k) {
            FUZZ_CHECK(tx.outputs[k].value == r.outputs[k].value &&
                           tx.outputs[k].script_pubkey == r.outputs[k].script_pubkey,
                       "tx {} output {} differs", i, k);
        }
        const bool coinbase = r.inputs.size() == 1 && r.inputs[0].prev_txid == Hash{} &&
                              r.inputs[0].prev_vout == 0xffffffff;
        FUZZ_CHECK(tx.is_coinbase() == coinbase, "tx {}: is_coinbase() is {}", i, tx.is_coinbase());
        bool has_witness = false;
        for (const RefIn& in : r.inputs) has_witness |= !in.witness.empty();
        FUZZ_CHECK(tx.has_witness == has_witness && tx.wtxid == sha256d(r.whole),
                   "tx {}: has_witness {} or wtxid {} is not the reference's", i, tx.has_witness, tx.wtxid.hex());
    }
    bool mutated = true;
    FUZZ_CHECK(indexer::merkle_root(txids, &mutated) == block.header.merkle_root && !mutated,
               "merkle_root() of the txids is not the header's");
    // BIP34: the coinbase's scriptSig starts with a push of the height (OP_1..OP_16, or
    // a script number of 1 to 4 little-endian bytes whose last byte's top bit, the
    // sign, is clear).
    std::optional<std::uint64_t> bip34;
    const Bytes& s = block.txs[0].inputs[0].script_sig;
    if (!s.empty() && s[0] >= 0x51 && s[0] <= 0x60) {
        bip34 = s[0] - 0x50u;
    } else if (!s.empty() && s[0] >= 1 && s[0] <= 4 && s.size() > s[0] && s[s[0]] < 0x80) {
        std::uint64_t h = 0;
        for (std::size_t i = s[0]; i >= 1; --i) h = h << 8 | s[i];
        bip34 = h;
    }
    FUZZ_CHECK(indexer::bip34_height(block.txs[0]) == bip34, "bip34_height");
}

void check_failure(const Result<indexer::Block>& block) {
    FUZZ_CHECK(block.error().code == ErrorCode::kInvalidArgument && !block.error().message.empty(),
               "an error of code {}: {}", static_cast<int>(block.error().code), block.error().message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const ByteView in(data, size);
    const auto block = indexer::parse_block(in);
    const auto ref = ref_block(in);
    const bool ref_accepts =
        ref && ref->merkle_root == Hash::from(in.subspan(36, 32)) && !ref->mutated && ref->witness_committed;
    FUZZ_CHECK(block.has_value() == ref_accepts, "parse_block {} ({}), the reference {}",
               block ? "accepts" : "refuses", block ? "" : block.error().message,
               ref_accepts ? "accepts" : ref ? "finds another merkle root or no witness commitment" : "refuses");
    if (block) {
        check_block(in, *block, *ref);
        return 0;
    }
    check_failure(block);
    if (!ref) return 0;

    // The structure is fine but the root is not: write the right root and parse again.
    Bytes patched(in.begin(), in.end());
    std::memcpy(patched.data() + 36, ref->merkle_root.data(), 32);
    const auto again = indexer::parse_block(patched);
    FUZZ_CHECK(again.has_value() == (!ref->mutated && ref->witness_committed),
               "with the merkle root fixed parse_block {} ({})", again ? "accepts" : "refuses",
               again ? "" : again.error().message);
    if (again) {
        check_block(patched, *again, *ref);
    } else {
        check_failure(again);
    }
    return 0;
}
