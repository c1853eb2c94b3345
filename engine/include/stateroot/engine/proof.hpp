// Inclusion and exclusion proofs in the non-compact format of docs/smt-spec.md section 7, their
// JSON form, and their verification (which needs nothing but the proof and a root).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "stateroot/engine/hash.hpp"
#include "stateroot/engine/node_store.hpp"
#include "stateroot/storage/bytes.hpp"
#include "stateroot/storage/result.hpp"

namespace stateroot::engine {

struct Proof {
    std::uint64_t height = 0;
    Hash root;
    Bytes key;
    Hash path;                                 // SHA-256 of key
    std::optional<Bytes> value;                // the value if the key is present
    std::vector<Hash> side_nodes;              // bottom-up; side_nodes.size() is the walk depth D
    std::optional<Bytes> non_membership_leaf;  // 0x00 ‖ other path ‖ H(other value)
    std::optional<Bytes> sibling_data;         // preimage of side_nodes[0]; absent iff D = 0
};

// {"height", "root", "key", "path", "value", "side_nodes", "non_membership_leaf",
//  "sibling_data"}: hex lowercase without 0x, absent fields as null.
nlohmann::json to_json(const Proof& proof);
// Parses the JSON form (hex in either case, optional 0x). kInvalidArgument ("not a proof:
// ..."), naming the field, if it is not a proof: a field missing, of the wrong form or
// unknown, a key the engine would refuse, more than 256 side nodes.
Result<Proof> proof_from_json(const nlohmann::json& json);
// The same from JSON text, which also must name no field twice.
Result<Proof> parse_proof(std::string_view text);

// Checks that `proof` shows its key present with its value (or absent, if it has no
// value) under `root`, and names `root` in its root field. kInvalid with the reason if
// it does not.
Status verify(const Proof& proof, const Hash& root);

// The part of a proof that comes from the tree: what the walk of docs/smt-spec.md section 5
// finds for `path` in the tree rooted at `root_id`.
struct ProofNodes {
    std::vector<Hash> side_nodes;
    std::optional<Bytes> non_membership_leaf;
    std::optional<Bytes> sibling_data;
    std::optional<Hash> value_hash;  // set when the walk ends on the leaf of `path`
};
// Reads the nodes it needs through `reader`: about two records per level.
Result<ProofNodes> prove_path(NodeReader& reader, NodeId root_id, const Hash& path);

}  // namespace stateroot::engine
