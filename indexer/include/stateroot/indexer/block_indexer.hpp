// BlockIndexer: what turns a block into the changes of its height. The loop takes any
// indexer; a new one is a class implementing changes().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "stateroot/engine/changes.hpp"
#include "stateroot/indexer/bitcoin.hpp"
#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::indexer {

// The state before the block being indexed.
class StateReader {
  public:
    virtual ~StateReader() = default;
    virtual Result<std::optional<Bytes>> get(ByteView key) = 0;
};

class BlockIndexer {
  public:
    virtual ~BlockIndexer() = default;
    // The changes `block` makes at `height` (block_hash is set by the loop). Errors are
    // kInvalidArgument naming what in the block is wrong.
    virtual Result<engine::Changes> changes(const Block& block, std::uint64_t height,
                                            StateReader& state) = 0;
};

// The UTXO set (docs/schema.md, "the UTXO indexer"):
//   key   = "utxo/" ‖ txid (32, internal order) ‖ vout (4, LE)
//   value = amount (8, LE) ‖ height (4, LE) ‖ coinbase (1) ‖ scriptPubKey
// Genesis outputs, OP_RETURN outputs and scripts over 10,000 bytes are not added; each
// input deletes its prevout; an output created and spent in one block leaves nothing.
class UtxoIndexer final : public BlockIndexer {
  public:
    // With `allow_missing_prevouts`, spending an unknown outpoint is skipped instead of
    // being an error (for indexes started mid-chain).
    explicit UtxoIndexer(bool allow_missing_prevouts)
        : allow_missing_prevouts_(allow_missing_prevouts) {}
    Result<engine::Changes> changes(const Block& block, std::uint64_t height,
                                    StateReader& state) override;

    static constexpr std::string_view kPrefix = "utxo/";
    static constexpr std::size_t kMaxScriptSize = 10'000;
    static Bytes key(const Hash& txid, std::uint32_t vout);
    static Bytes value(std::uint64_t amount, std::uint32_t height, bool coinbase, ByteView script);

  private:
    bool allow_missing_prevouts_;
};

// The built-in indexer called `name` ("utxo"), or kInvalidArgument listing the names.
Result<std::unique_ptr<BlockIndexer>> make_indexer(std::string_view name,
                                                   bool allow_missing_prevouts);

}  // namespace stateroot::indexer
