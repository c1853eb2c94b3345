// make_chain: writes a synthetic regtest chain (tests/support/chain_gen.hpp) as a
// blk-framed file, for crash tests and benchmarks of the indexer loop.
//   make_chain OUT_FILE BLOCKS TXS_PER_BLOCK [SEED]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "chain_gen.hpp"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: make_chain OUT_FILE BLOCKS TXS_PER_BLOCK [SEED]\n");
        return 2;
    }
    stateroot::test::ChainSpec spec;
    spec.blocks = std::stoull(argv[2]);
    spec.txs_per_block = std::stoull(argv[3]);
    if (argc > 4) spec.seed = std::stoull(argv[4]);
    const stateroot::Bytes chain = stateroot::test::make_chain(spec);
    std::ofstream out(argv[1], std::ios::binary);
    out.write(reinterpret_cast<const char*>(chain.data()),
              static_cast<std::streamsize>(chain.size()));
    return out ? 0 : 2;
}
