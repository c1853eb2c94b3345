#include "stateroot/indexer/bitcoin.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace stateroot::indexer {

Hash double_sha256(ByteView data) { return engine::sha256(engine::sha256(data).view()); }

Hash reversed(const Hash& h) {
    Hash r = h;
    std::reverse(r.bytes.begin(), r.bytes.end());
    return r;
}

std::string display_hex(const Hash& internal) { return reversed(internal).hex(); }

bool Transaction::is_coinbase() const {
    return inputs.size() == 1 && inputs[0].prev_txid == Hash{} && inputs[0].prev_vout == 0xffffffff;
}

namespace {

// Reads little-endian fields from a block, failing with the offset where data ran out.
class Reader {
  public:
    explicit Reader(ByteView data) : data_(data) {}
    std::size_t pos() const { return pos_; }
    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }

    std::uint64_t le(int bytes) {
        if (!need(static_cast<std::size_t>(bytes))) return 0;
        std::uint64_t v = 0;
        for (int i = bytes - 1; i >= 0; --i) v = v << 8 | data_[pos_ + static_cast<std::size_t>(i)];
        pos_ += static_cast<std::size_t>(bytes);
        return v;
    }
    // Only in its shortest form, as Bitcoin Core reads it: the block's transaction count
    // is covered by no hash, so a longer form is a copy altered on the way, to be
    // passed over for a good one.
    std::uint64_t compact_size() {
        const std::size_t at = pos_;
        const std::uint64_t first = le(1);
        if (first < 0xfd) return first;
        const std::uint64_t v = le(first == 0xfd ? 2 : first == 0xfe ? 4 : 8);
        const std::uint64_t min = first == 0xfd ? 0xfd : first == 0xfe ? 0x10000 : 0x100000000;
        if (ok() && v < min) fail_at(at, fmt::format("size {} is not in its shortest form", v));
        return v;
    }
    // A length prefix, checked against the bytes left (each item at least `min_item`).
    std::uint64_t count(const char* what, std::size_t min_item) {
        const std::size_t at = pos_;
        const std::uint64_t n = compact_size();
        if (ok() && n > (data_.size() - pos_) / std::max<std::size_t>(min_item, 1)) {
            fail_at(at,
                    fmt::format("{} {} exceeds the {} bytes left", what, n, data_.size() - pos_));
        }
        return ok() ? n : 0;
    }
    Hash hash() {
        Hash h;
        if (need(32)) {
            std::memcpy(h.bytes.data(), data_.data() + pos_, 32);
            pos_ += 32;
        }
        return h;
    }
    Bytes bytes(std::uint64_t n) {
        if (!need(n)) return {};
        Bytes b(data_.begin() + static_cast<std::ptrdiff_t>(pos_),
                data_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
        pos_ += n;
        return b;
    }
    void skip(std::uint64_t n) {
        if (need(n)) pos_ += n;
    }
    ByteView span(std::size_t from, std::size_t to) const { return data_.subspan(from, to - from); }
    void fail_at(std::size_t at, std::string why) {
        if (error_.empty()) error_ = fmt::format("at byte {}: {}", at, why);
    }

  private:
    bool need(std::uint64_t n) {
        if (!ok()) return false;
        if (n > data_.size() - pos_) {
            fail_at(pos_, fmt::format("needs {} more bytes, {} left", n, data_.size() - pos_));
            return false;
        }
        return true;
    }

    ByteView data_;
    std::size_t pos_ = 0;
    std::string error_;
};

// Parses one transaction; the txid covers the serialization without marker, flag and
// witnesses, which is hashed from the pieces of the buffer that hold it.
Transaction parse_tx(Reader& r) {
    Transaction tx;
    const std::size_t start = r.pos();
    r.le(4);  // version
    const std::size_t after_version = r.pos();
    bool segwit = false;
    std::uint64_t n_in = r.count("input count", 41);
    if (r.ok() && n_in == 0) {
        // BIP144: a zero input count is the segwit marker, followed by flag 1.
        const std::size_t flag_at = r.pos();
        if (r.le(1) != 1 && r.ok()) r.fail_at(flag_at, "segwit flag is not 1");
        segwit = true;
        n_in = r.count("input count", 41);
        if (r.ok() && n_in == 0) r.fail_at(flag_at + 1, "segwit transaction without inputs");
    }
    const std::size_t body_start = segwit ? after_version + 2 : after_version;
    tx.inputs.resize(r.ok() ? n_in : 0);
    for (TxIn& in : tx.inputs) {
        in.prev_txid = r.hash();
        in.prev_vout = static_cast<std::uint32_t>(r.le(4));
        in.script_sig = r.bytes(r.count("script length", 1));
        r.le(4);  // sequence
    }
    const std::uint64_t n_out = r.count("output count", 9);
    tx.outputs.resize(r.ok() ? n_out : 0);
    for (TxOut& out : tx.outputs) {
        out.value = r.le(8);
        out.script_pubkey = r.bytes(r.count("script length", 1));
    }
    const std::size_t body_end = r.pos();
    if (segwit) {
        const std::size_t witness_at = r.pos();
        for (TxIn& in : tx.inputs) {
            in.witness.resize(r.count("witness item count", 1));
            for (Bytes& item : in.witness) item = r.bytes(r.count("witness item length", 1));
            tx.has_witness |= !in.witness.empty();
            if (!r.ok()) break;
        }
        // BIP144 serializes without marker and flag when there is no witness; Core
        // refuses the other form ("superfluous witness record").
        if (r.ok() && !tx.has_witness) r.fail_at(witness_at, "segwit serialization with every witness empty");
    }
    const std::size_t locktime_at = r.pos();
    r.le(4);
    if (!r.ok()) return tx;
    if (!segwit) {
        tx.txid = double_sha256(r.span(start, r.pos()));
        tx.wtxid = tx.txid;
    } else {
        tx.wtxid = double_sha256(r.span(start, r.pos()));
        Bytes stripped;
        stripped.reserve(4 + (body_end - body_start) + 4);
        const ByteView version = r.span(start, after_version);
        const ByteView body = r.span(body_start, body_end);
        const ByteView locktime = r.span(locktime_at, locktime_at + 4);
        stripped.insert(stripped.end(), version.begin(), version.end());
        stripped.insert(stripped.end(), body.begin(), body.end());
        stripped.insert(stripped.end(), locktime.begin(), locktime.end());
        tx.txid = double_sha256(stripped);
    }
    return tx;
}

}  // namespace

Result<BlockHeader> parse_header(ByteView data) {
    if (data.size() < kHeaderSize) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("block header needs 80 bytes, {} left", data.size()));
    }
    Reader r(data.first(kHeaderSize));
    BlockHeader h;
    h.version = static_cast<std::int32_t>(r.le(4));
    h.prev = r.hash();
    h.merkle_root = r.hash();
    h.time = static_cast<std::uint32_t>(r.le(4));
    h.bits = static_cast<std::uint32_t>(r.le(4));
    h.nonce = static_cast<std::uint32_t>(r.le(4));
    h.hash = double_sha256(data.first(kHeaderSize));
    return h;
}

Hash merkle_root(std::vector<Hash> level, bool* mutated) {
    if (mutated) *mutated = false;
    if (level.empty()) return Hash{};
    std::uint8_t buf[64];
    while (level.size() > 1) {
        for (std::size_t i = 0; i + 1 < level.size(); i += 2) {
            if (mutated && level[i] == level[i + 1]) *mutated = true;
        }
        if (level.size() % 2 == 1) level.push_back(level.back());
        for (std::size_t i = 0; i < level.size(); i += 2) {
            std::memcpy(buf, level[i].data(), 32);
            std::memcpy(buf + 32, level[i + 1].data(), 32);
            level[i / 2] = double_sha256({buf, 64});
        }
        level.resize(level.size() / 2);
    }
    return level[0];
}

namespace {

// BIP141's commitment output: OP_RETURN, a 36-byte push, a 4-byte tag, 32 bytes.
constexpr std::uint8_t kCommitmentHeader[] = {0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed};

// The BIP141 witness commitment check of a block that carries witness data, as Bitcoin
// Core makes it: the coinbase's last output that starts with the commitment header
// holds SHA256d(merkle root of the wtxids, the coinbase's wtxid counted as zero ‖ the
// coinbase's one 32-byte witness item). Empty if it holds; else what is wrong.
std::string witness_commitment_problem(const Block& block) {
    const Transaction& coinbase = block.txs[0];
    const Bytes* commitment = nullptr;
    for (const TxOut& out : coinbase.outputs) {
        const Bytes& s = out.script_pubkey;
        if (s.size() >= 38 && std::equal(std::begin(kCommitmentHeader), std::end(kCommitmentHeader), s.begin())) {
            commitment = &s;
        }
    }
    if (commitment == nullptr) return "transactions carry witness data but the coinbase commits to none";
    const std::vector<Bytes>& reserved = coinbase.inputs[0].witness;
    if (reserved.size() != 1 || reserved[0].size() != 32) {
        return "the coinbase's witness is not one 32-byte item (the witness reserved value)";
    }
    std::vector<Hash> wtxids;
    wtxids.reserve(block.txs.size());
    wtxids.push_back(Hash{});
    for (std::size_t i = 1; i < block.txs.size(); ++i) wtxids.push_back(block.txs[i].wtxid);
    const Hash root = merkle_root(std::move(wtxids));
    std::uint8_t buf[64];
    std::memcpy(buf, root.data(), 32);
    std::memcpy(buf + 32, reserved[0].data(), 32);
    const Hash want = double_sha256({buf, 64});
    const Hash committed = Hash::from({commitment->data() + sizeof kCommitmentHeader, 32});
    if (committed == want) return {};
    return fmt::format("witness commitment mismatch: the coinbase commits to {}, the witnesses give {}",
                       committed.hex(), want.hex());
}

}  // namespace

Result<Block> parse_block(ByteView data) {
    auto header = parse_header(data);
    if (!header) return std::unexpected(header.error());
    Block block;
    block.header = *header;
    Reader r(data);
    r.skip(kHeaderSize);
    const std::uint64_t n_tx = r.count("transaction count", 60);
    if (r.ok() && n_tx == 0) r.fail_at(kHeaderSize, "a block needs at least one transaction");
    if (!r.ok()) return make_error(ErrorCode::kInvalidArgument, "malformed block " + r.error());
    block.txs.reserve(n_tx);
    for (std::uint64_t i = 0; i < n_tx; ++i) {
        block.txs.push_back(parse_tx(r));
        if (!r.ok()) {
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("malformed transaction {} {}", i, r.error()));
        }
    }
    if (r.pos() != data.size()) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("malformed block: {} bytes after the last transaction",
                                      data.size() - r.pos()));
    }
    std::vector<Hash> txids;
    txids.reserve(block.txs.size());
    for (const Transaction& tx : block.txs) txids.push_back(tx.txid);
    bool mutated = false;
    const Hash root = merkle_root(std::move(txids), &mutated);
    if (root != block.header.merkle_root) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("merkle root mismatch: header has {}, transactions give {}",
                                      display_hex(block.header.merkle_root), display_hex(root)));
    }
    if (mutated) {
        // CVE-2012-2459: a copy of a block with transactions repeated at the end of a
        // level has the same merkle root; the real block lies elsewhere.
        return make_error(
            ErrorCode::kInvalidArgument,
            fmt::format("mutated: the merkle root {} matches, but only with transactions repeated "
                        "(a copy of the block with duplicates appended)",
                        display_hex(root)));
    }
    // Without witness data there is nothing the merkle root leaves uncovered. (Core also
    // refuses a block past segwit's activation whose coinbase commits with no witness of
    // its own; that needs the height, and such a block's data is all covered anyway.)
    const bool witness = std::any_of(block.txs.begin(), block.txs.end(),
                                     [](const Transaction& tx) { return tx.has_witness; });
    if (witness && block.txs[0].is_coinbase()) {
        if (std::string problem = witness_commitment_problem(block); !problem.empty()) {
            return make_error(ErrorCode::kInvalidArgument, std::move(problem));
        }
    }
    return block;
}

std::optional<std::uint64_t> bip34_height(const Transaction& coinbase) {
    if (coinbase.inputs.empty()) return std::nullopt;
    const Bytes& s = coinbase.inputs[0].script_sig;
    if (s.empty()) return std::nullopt;
    if (s[0] >= 0x51 && s[0] <= 0x60) return s[0] - 0x50;  // OP_1..OP_16
    // A push of a script number: at most 4 bytes (heights below 2^31), little-endian,
    // the top bit of the last byte a sign, which a height cannot have.
    const std::size_t n = s[0];
    if (n < 1 || n > 4 || s.size() < 1 + n || (s[n] & 0x80) != 0) return std::nullopt;
    std::uint64_t h = 0;
    for (std::size_t i = n; i >= 1; --i) h = h << 8 | s[i];
    return h;
}

}  // namespace stateroot::indexer
