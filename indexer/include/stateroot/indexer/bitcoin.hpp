// Bitcoin blocks and transactions: parsing (segwit included), txids, block hashes and
// merkle roots. Hashes are kept in internal byte order (the double-SHA-256 digest as
// computed); display order is the reverse.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::indexer {

using engine::Hash;

// SHA-256(SHA-256(data)).
Hash double_sha256(ByteView data);
// The reversed hex form Bitcoin shows hashes in.
std::string display_hex(const Hash& internal);
Hash reversed(const Hash& h);

inline constexpr std::size_t kHeaderSize = 80;

struct BlockHeader {
    std::int32_t version = 0;
    Hash prev;         // internal order; all zero for a genesis block
    Hash merkle_root;  // internal order
    std::uint32_t time = 0;
    std::uint32_t bits = 0;
    std::uint32_t nonce = 0;
    Hash hash;  // double SHA-256 of the 80 header bytes, internal order
};

// Parses the first 80 bytes of `data`; kInvalidArgument if there are fewer.
Result<BlockHeader> parse_header(ByteView data);

struct TxIn {
    Hash prev_txid;  // internal order
    std::uint32_t prev_vout = 0;
    Bytes script_sig;
    std::vector<Bytes> witness;  // the input's witness stack (BIP141); empty if none
};

struct TxOut {
    std::uint64_t value = 0;  // satoshis
    Bytes script_pubkey;
};

struct Transaction {
    Hash txid;   // of the serialization without witness data, internal order
    Hash wtxid;  // of the whole serialization (BIP141); the txid when it has no witness
    bool has_witness = false;
    std::vector<TxIn> inputs;
    std::vector<TxOut> outputs;
    bool is_coinbase() const;
};

struct Block {
    BlockHeader header;
    std::vector<Transaction> txs;
};

// Parses a serialized block and checks that its transactions hash to the header's
// merkle root (rejecting the duplicated-subtree mutation of CVE-2012-2459), and, when
// any transaction carries witness data, that the coinbase commits to their wtxids
// (BIP141), as the merkle root does not cover witnesses. Errors are kInvalidArgument
// naming the byte offset within the block and what was wrong.
Result<Block> parse_block(ByteView data);

// The merkle root of `txids`; `mutated` is set if two identical hashes were paired.
Hash merkle_root(std::vector<Hash> txids, bool* mutated = nullptr);

// The height a BIP34 coinbase commits to (the first push of its scriptSig), if any.
std::optional<std::uint64_t> bip34_height(const Transaction& coinbase);

}  // namespace stateroot::indexer
