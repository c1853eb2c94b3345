// Synthetic Bitcoin chains for tests: valid serialization, txids and merkle roots, and
// transactions that spend earlier outputs, so the UTXO indexer has real work. Every
// header has the regtest target and is mined to meet it; the first block's parent is
// all zeros (a genesis block).
#pragma once

#include <cstdint>
#include <string>

#include "stateroot/storage/bytes.hpp"

namespace stateroot::test {

struct ChainSpec {
    std::uint64_t blocks = 100;
    std::uint64_t txs_per_block = 10;  // besides the coinbase
    std::uint64_t seed = 1;
};

// The chain as blk-framed records with the regtest magic (fabfb5da).
Bytes make_chain(const ChainSpec& spec);

}  // namespace stateroot::test
