#include "stateroot/engine/proof.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "stateroot/engine/changes.hpp"
#include "stateroot/engine/json.hpp"

namespace stateroot::engine {

using nlohmann::json;

json to_json(const Proof& p) {
    json side = json::array();
    for (const Hash& h : p.side_nodes) side.push_back(h.hex());
    auto opt = [](const std::optional<Bytes>& b) { return b ? json(to_hex(*b)) : json(nullptr); };
    return json{{"height", p.height},
                {"root", p.root.hex()},
                {"key", to_hex(p.key)},
                {"path", p.path.hex()},
                {"value", opt(p.value)},
                {"side_nodes", std::move(side)},
                {"non_membership_leaf", opt(p.non_membership_leaf)},
                {"sibling_data", opt(p.sibling_data)}};
}

namespace {

// A path has 256 bits, so a walk passes at most 256 branches.
constexpr std::size_t kMaxDepth = 256;

std::unexpected<Error> not_a_proof(const std::string& why) {
    return make_error(ErrorCode::kInvalidArgument, "not a proof: " + why);
}

Result<Bytes> hex_field(const json& j, const char* name) {
    if (!j.contains(name) || !j[name].is_string()) {
        return not_a_proof(fmt::format("\"{}\" must be a hex string", name));
    }
    auto b = from_hex(j[name].get<std::string>());
    if (!b) return not_a_proof(fmt::format("\"{}\" is not valid hex", name));
    return *b;
}

Result<Hash> hash_field(const json& j, const char* name) {
    auto b = hex_field(j, name);
    if (!b) return std::unexpected(b.error());
    if (b->size() != 32) return not_a_proof(fmt::format("\"{}\" must be 32 bytes", name));
    return Hash::from(*b);
}

Result<std::optional<Bytes>> optional_hex_field(const json& j, const char* name) {
    if (!j.contains(name)) return not_a_proof(fmt::format("\"{}\" is missing", name));
    if (j[name].is_null()) return std::optional<Bytes>();
    auto b = hex_field(j, name);
    if (!b) return std::unexpected(b.error());
    return std::optional<Bytes>(std::move(*b));
}

std::unexpected<Error> invalid(const std::string& why) {
    return make_error(ErrorCode::kInvalid, why);
}

}  // namespace

Result<Proof> proof_from_json(const json& j) {
    if (!j.is_object()) return not_a_proof("expected a JSON object");
    // A field this format does not have is refused, not passed over: a file that says
    // more than it proves would be read as claiming it.
    static constexpr std::string_view kFields[] = {"height", "root", "key", "path", "value",
                                                   "side_nodes", "non_membership_leaf", "sibling_data"};
    for (const auto& [name, value] : j.items()) {
        if (std::find(std::begin(kFields), std::end(kFields), name) == std::end(kFields)) {
            return not_a_proof(fmt::format("unknown field \"{}\"", name));
        }
    }
    Proof p;
    // Read unsigned, like every height: heights of 2^63 and above are committed too.
    // (Parsed text holds a non-negative integer as unsigned; JSON built in code may not.)
    const auto height_ok = [](const json& h) {
        return h.is_number_unsigned() || (h.is_number_integer() && h.get<std::int64_t>() >= 0);
    };
    if (!j.contains("height") || !height_ok(j["height"])) {
        return not_a_proof("\"height\" must be a non-negative integer");
    }
    p.height = j["height"].get<std::uint64_t>();
    auto root = hash_field(j, "root");
    if (!root) return std::unexpected(root.error());
    p.root = *root;
    auto key = hex_field(j, "key");
    if (!key) return std::unexpected(key.error());
    p.key = std::move(*key);
    // A key the engine refuses can have no proof from it.
    if (Status s = check_key_size(p.key); !s) return not_a_proof(s.error().message);
    auto path = hash_field(j, "path");
    if (!path) return std::unexpected(path.error());
    p.path = *path;
    auto value = optional_hex_field(j, "value");
    if (!value) return std::unexpected(value.error());
    p.value = std::move(*value);
    if (!j.contains("side_nodes") || !j["side_nodes"].is_array()) {
        return not_a_proof("\"side_nodes\" must be an array of hex strings");
    }
    if (j["side_nodes"].size() > kMaxDepth) {
        return not_a_proof(fmt::format("{} side nodes, more than {}", j["side_nodes"].size(), kMaxDepth));
    }
    for (const json& s : j["side_nodes"]) {
        if (!s.is_string()) return not_a_proof("\"side_nodes\" must be an array of hex strings");
        auto b = from_hex(s.get<std::string>());
        if (!b || b->size() != 32) return not_a_proof("every side node must be 32 bytes of hex");
        p.side_nodes.push_back(Hash::from(*b));
    }
    auto nml = optional_hex_field(j, "non_membership_leaf");
    if (!nml) return std::unexpected(nml.error());
    p.non_membership_leaf = std::move(*nml);
    auto sib = optional_hex_field(j, "sibling_data");
    if (!sib) return std::unexpected(sib.error());
    p.sibling_data = std::move(*sib);
    return p;
}

Result<Proof> parse_proof(std::string_view text) {
    auto j = parse_json(text);
    if (!j) return not_a_proof(j.error().message);
    return proof_from_json(*j);
}

Status verify(const Proof& p, const Hash& root) {
    const std::size_t depth = p.side_nodes.size();
    if (depth > kMaxDepth) return invalid(fmt::format("{} side nodes, more than {}", depth, kMaxDepth));
    if (sha256(p.key) != p.path) return invalid("path is not the SHA-256 of key");
    if (p.value && p.value->empty()) return invalid("value is empty (an empty value means absent)");
    if (p.value && p.non_membership_leaf) {
        return invalid("a proof of presence cannot carry a non-membership leaf");
    }
    if (p.sibling_data.has_value() != (depth > 0)) {
        return invalid(depth > 0 ? "sibling_data is missing"
                                 : "sibling_data given with no side nodes");
    }
    if (p.sibling_data &&
        (p.sibling_data->size() != 65 || sha256(*p.sibling_data) != p.side_nodes[0])) {
        return invalid("sibling_data does not hash to the first side node");
    }

    Hash cur;
    if (p.value) {
        cur = leaf_hash(p.path, sha256(*p.value));
    } else if (!p.non_membership_leaf) {
        cur = kZeroHash;
    } else {
        const Bytes& leaf = *p.non_membership_leaf;
        if (leaf.size() != 65 || leaf[0] != kLeafPrefix) {
            return invalid("non_membership_leaf is not 65 bytes of leaf data");
        }
        const Hash other = Hash::from({leaf.data() + 1, 32});
        if (other == p.path) return invalid("non_membership_leaf is the leaf of the proven path");
        if (static_cast<std::size_t>(common_prefix_bits(other, p.path)) < depth) {
            return invalid("non_membership_leaf is not on the proven path");
        }
        cur = sha256(leaf);
    }
    for (std::size_t i = 0; i < depth; ++i) {
        const Hash& s = p.side_nodes[i];
        cur = bit(p.path, static_cast<int>(depth - 1 - i)) == 1 ? node_hash(s, cur)
                                                                : node_hash(cur, s);
    }
    if (cur != root) {
        return invalid(fmt::format("the proof computes root {}, not {}", cur.hex(), root.hex()));
    }
    // A proof whose root field names another root says something false of its height,
    // even when its hashes reach the root checked against.
    if (p.root != root) {
        return invalid(fmt::format("the proof's root field is {}, not the root it computes ({})",
                                   p.root.hex(), root.hex()));
    }
    return {};
}

namespace {

Bytes node_data(std::uint8_t prefix, const Hash& a, const Hash& b) {
    Bytes d;
    d.reserve(65);
    d.push_back(prefix);
    d.insert(d.end(), a.bytes.begin(), a.bytes.end());
    d.insert(d.end(), b.bytes.begin(), b.bytes.end());
    return d;
}

// Reads the persisted subtree `id` (a branch record `rec`) for what proofs need beyond
// its top hash: its own hash at its split depth and the bits of its prefix.
struct BranchView {
    NodeReader& reader;
    NodeId id;
    const NodeRecord& rec;

    Result<Hash> own() {
        Hash h[2];
        for (int side = 0; side < 2; ++side) {
            auto c = reader.read(rec.child[side]);
            if (!c) return std::unexpected(c.error());
            h[side] = c->hash;
        }
        return node_hash(h[0], h[1]);
    }

    Result<Hash> prefix() {
        NodeId cur = rec.child[0];
        for (;;) {
            auto c = reader.read(cur);
            if (!c) return std::unexpected(c.error());
            if (c->leaf) return c->path;
            cur = c->child[0];
        }
    }

    // The hash of this subtree at depth `at` (between its slot and its split depth), and
    // the 65-byte data of the node there.
    Result<std::pair<Hash, Bytes>> at_depth(int at, const Hash& prefix_path) {
        auto own_hash = own();
        if (!own_hash) return std::unexpected(own_hash.error());
        if (at == rec.depth) {
            Hash h[2];
            for (int side = 0; side < 2; ++side) {
                auto c = reader.read(rec.child[side]);
                if (!c) return std::unexpected(c.error());
                h[side] = c->hash;
            }
            return std::pair{*own_hash, node_data(kNodePrefix, h[0], h[1])};
        }
        Hash below = *own_hash;  // hash at depth j + 1 while wrapping level j
        for (int j = rec.depth - 1; j > at; --j) {
            below = bit(prefix_path, j) == 0 ? node_hash(below, kZeroHash)
                                             : node_hash(kZeroHash, below);
        }
        Bytes data = bit(prefix_path, at) == 0 ? node_data(kNodePrefix, below, kZeroHash)
                                               : node_data(kNodePrefix, kZeroHash, below);
        return std::pair{sha256(data), std::move(data)};
    }
};

// The data of the node at depth `at` in the subtree `id`, whose slot is `at`.
Result<Bytes> slot_data(NodeReader& reader, NodeId id, int at) {
    auto rec = reader.read(id);
    if (!rec) return std::unexpected(rec.error());
    if (rec->leaf) return node_data(kLeafPrefix, rec->path, rec->value_hash);
    BranchView b{reader, id, *rec};
    auto prefix = b.prefix();
    if (!prefix) return std::unexpected(prefix.error());
    auto node = b.at_depth(at, *prefix);
    if (!node) return std::unexpected(node.error());
    return std::move(node->second);
}

}  // namespace

Result<ProofNodes> prove_path(NodeReader& reader, NodeId root_id, const Hash& path) {
    ProofNodes out;
    std::vector<Hash> top_down;  // side nodes from depth 1 downwards
    NodeId id = root_id;
    NodeId last_sibling = kNoNode;
    int at = 0;
    while (id != kNoNode) {
        auto rec = reader.read(id);
        if (!rec) return std::unexpected(rec.error());
        if (rec->leaf) {
            if (rec->path == path) {
                out.value_hash = rec->value_hash;
            } else {
                out.non_membership_leaf = node_data(kLeafPrefix, rec->path, rec->value_hash);
            }
            break;
        }
        // A branch splits at or below its slot, and its paths share the bits above the
        // slot with this one; a record written wrong would send the walk astray.
        auto misplaced = [&] {
            return make_error(ErrorCode::kCorruption,
                              fmt::format("corrupt tree: node {} (split depth {}) does not "
                                          "belong at depth {}",
                                          id, rec->depth, at));
        };
        if (rec->depth < at) return misplaced();
        if (rec->depth > at) {
            BranchView b{reader, id, *rec};
            auto prefix = b.prefix();
            if (!prefix) return std::unexpected(prefix.error());
            const int j = common_prefix_bits(path, *prefix);
            if (j < at) return misplaced();
            if (j < rec->depth) {
                // The path leaves the one-sided levels at depth j: the walk ends on the
                // empty side at j + 1, beside the subtree's node there.
                top_down.insert(top_down.end(), j - at, kZeroHash);
                auto node = b.at_depth(j + 1, *prefix);
                if (!node) return std::unexpected(node.error());
                top_down.push_back(node->first);
                out.sibling_data = std::move(node->second);
                break;
            }
            top_down.insert(top_down.end(), rec->depth - at, kZeroHash);
            at = rec->depth;
        }
        const int side = bit(path, at);
        auto other = reader.read(rec->child[1 - side]);
        if (!other) return std::unexpected(other.error());
        top_down.push_back(other->hash);
        last_sibling = rec->child[1 - side];
        id = rec->child[side];
        ++at;
    }
    if (!out.sibling_data && last_sibling != kNoNode) {
        auto data = slot_data(reader, last_sibling, at);
        if (!data) return std::unexpected(data.error());
        out.sibling_data = std::move(*data);
    }
    out.side_nodes.assign(top_down.rbegin(), top_down.rend());
    return out;
}

}  // namespace stateroot::engine
