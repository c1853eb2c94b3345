#include "stateroot/engine/root_builder.hpp"

namespace stateroot::engine {

// A subtree whose top branch splits at depth d, seen from a shallower slot, is wrapped
// once per one-sided level in between; a leaf is the same at every depth.
Hash RootBuilder::hash_at(const Subtree& s, int depth) const {
    if (s.depth == 256) return s.own;
    Hash h = s.own;
    for (int j = s.depth - 1; j >= depth; --j) {
        h = bit(s.path, j) == 0 ? node_hash(h, kZeroHash) : node_hash(kZeroHash, h);
    }
    return h;
}

RootBuilder::Subtree RootBuilder::merge(const Subtree& left, const Subtree& right,
                                        int depth) const {
    return {node_hash(hash_at(left, depth + 1), hash_at(right, depth + 1)), depth, left.path, 0};
}

bool RootBuilder::add(const Hash& path, const Hash& value_hash) {
    Subtree leaf{leaf_hash(path, value_hash), 256, path, 0};
    if (stack_.empty()) {
        stack_.push_back(leaf);
        ++leaves_;
        return true;
    }
    // Leaves arrive in order, so the split between the previous leaf and this one is the
    // shallowest still open: every subtree on the stack linked deeper is complete.
    Subtree cur = stack_.back();  // always the previous leaf
    if (!(cur.path < path)) return false;
    const int s = common_prefix_bits(cur.path, path);
    stack_.pop_back();
    while (!stack_.empty() && stack_.back().link > s) {
        const Subtree left = stack_.back();
        stack_.pop_back();
        cur = merge(left, cur, left.link);
    }
    cur.link = s;
    stack_.push_back(cur);
    stack_.push_back(leaf);
    ++leaves_;
    return true;
}

Hash RootBuilder::finish() {
    if (stack_.empty()) return kZeroHash;
    Subtree cur = stack_.back();
    stack_.pop_back();
    while (!stack_.empty()) {
        const Subtree left = stack_.back();
        stack_.pop_back();
        cur = merge(left, cur, left.link);
    }
    leaves_ = 0;
    return hash_at(cur, 0);
}

}  // namespace stateroot::engine
