// A naive sparse Merkle tree written straight from docs/smt-spec.md section 5, independent of the
// engine (its own SHA-256 calls, no incremental state): the reference the tests compare
// the engine against.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "stateroot/storage/bytes.hpp"

namespace stateroot::test::naive {

using Digest = std::array<std::uint8_t, 32>;

Digest sha256(ByteView data);

// The state: path -> H(value).
using State = std::map<Digest, Digest>;

// T(S, 0).
Digest root(const State& state);

// What the walk of docs/smt-spec.md section 5 finds for `path`: side nodes bottom-up, and the leaf
// it ends on (path, value hash), if any.
struct Walk {
    std::vector<Digest> side_nodes;
    std::optional<std::pair<Digest, Digest>> leaf;
};
Walk walk(const State& state, const Digest& path);

}  // namespace stateroot::test::naive
