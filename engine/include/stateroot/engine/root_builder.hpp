// RootBuilder: the root of a set of leaves given in ascending path order, computed
// from scratch in one pass with O(depth) memory. This is the audit path
// (`stateroot check`), independent of the incremental tree and its stored nodes.
#pragma once

#include <cstdint>
#include <vector>

#include "stateroot/engine/hash.hpp"

namespace stateroot::engine {

class RootBuilder {
  public:
    // Adds a leaf. Paths must be strictly ascending; returns false (ignoring the leaf)
    // otherwise.
    bool add(const Hash& path, const Hash& value_hash);
    // The root of every leaf added (docs/smt-spec.md section 5); the builder is then empty again.
    Hash finish();
    std::uint64_t leaves() const { return leaves_; }

  private:
    struct Subtree {
        Hash own;   // hash at `depth` (a leaf: its leaf hash)
        int depth;  // split depth; 256 for a leaf
        Hash path;  // any path below, for the bits of one-sided levels
        int link;   // split depth between this subtree and the next one on the stack
    };
    Hash hash_at(const Subtree& s, int depth) const;
    Subtree merge(const Subtree& left, const Subtree& right, int depth) const;

    std::vector<Subtree> stack_;
    std::uint64_t leaves_ = 0;
};

}  // namespace stateroot::engine
