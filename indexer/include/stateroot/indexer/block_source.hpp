// Where blocks come from: blk-framed files (4-byte network magic, 4-byte little-endian
// length, block), raw block files (one serialized block), and Bitcoin Core block
// directories (blk?????.dat, obfuscated with the 8-byte key in xor.dat when present:
// plain byte = stored byte XOR key[file offset mod 8]).
//
// Scanning reads each record's framing and 80-byte header, not the blocks themselves;
// read_block() fetches one block's bytes later.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stateroot/indexer/bitcoin.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::indexer {

enum class Network { kMainnet, kTestnet3, kTestnet4, kSignet, kRegtest };

// "mainnet", "testnet3", "testnet4", "signet", "regtest" (also "main", "testnet", "test").
std::optional<Network> parse_network(std::string_view name);
std::string_view network_name(Network n);
std::array<std::uint8_t, 4> network_magic(Network n);
// The first height from which every block's coinbase starts with its height (BIP34).
std::uint64_t bip34_activation(Network n);
// The easiest target a block of the network may have (its powLimit), as compact bits.
std::uint32_t pow_limit_bits(Network n);

using XorKey = std::array<std::uint8_t, 8>;

struct BlockLocation {
    std::string file;
    std::uint64_t offset = 0;  // of the block's first byte
    std::uint32_t size = 0;
    std::optional<XorKey> xor_key;
};

struct FoundBlock {
    BlockHeader header;
    BlockLocation location;
};

// The blocks of a blk-framed file, in file order. Zero padding between and after
// records is skipped. Errors (kInvalidArgument) name the file and offset: a wrong
// magic, a truncated record, a length past the end of the file, a block shorter than
// a header.
Result<std::vector<FoundBlock>> scan_blk_file(const std::string& path, Network network,
                                              const std::optional<XorKey>& xor_key = std::nullopt);

// A file holding one serialized block.
Result<FoundBlock> scan_raw_file(const std::string& path);

// Every blk?????.dat of a Bitcoin Core blocks directory, in file number order, with
// xor.dat applied when present and non-zero.
Result<std::vector<FoundBlock>> scan_blocks_dir(const std::string& dir, Network network);

// The key of a Bitcoin Core blocks directory's xor.dat; nullopt if it has none, or an
// all-zero one (not obfuscated).
Result<std::optional<XorKey>> read_xor_key(const std::string& dir);

// The bytes of one block.
Result<Bytes> read_block(const BlockLocation& location);

}  // namespace stateroot::indexer
