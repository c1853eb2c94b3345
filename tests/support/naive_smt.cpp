#include "naive_smt.hpp"

#include <openssl/evp.h>

#include <cstring>
#include <stdexcept>

namespace stateroot::test::naive {

Digest sha256(ByteView data) {
    Digest out;
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1) {
        throw std::runtime_error("EVP_Digest failed");
    }
    return out;
}

namespace {

using Entries = std::vector<std::pair<Digest, Digest>>;

int bit_of(const Digest& p, int i) { return (p[i / 8] >> (7 - i % 8)) & 1; }

Digest hash_of(std::uint8_t prefix, const Digest& a, const Digest& b) {
    std::uint8_t buf[65];
    buf[0] = prefix;
    std::memcpy(buf + 1, a.data(), 32);
    std::memcpy(buf + 33, b.data(), 32);
    return sha256({buf, 65});
}

// T(S_d, d) exactly as defined: empty -> Z, one entry -> its leaf, else split on bit d.
Digest subtree(const Entries& s, int d) {
    if (s.empty()) return Digest{};
    if (s.size() == 1) return hash_of(0x00, s[0].first, s[0].second);
    Entries left, right;
    for (const auto& e : s) (bit_of(e.first, d) == 0 ? left : right).push_back(e);
    return hash_of(0x01, subtree(left, d + 1), subtree(right, d + 1));
}

}  // namespace

Digest root(const State& state) { return subtree(Entries(state.begin(), state.end()), 0); }

Walk walk(const State& state, const Digest& path) {
    Walk w;
    std::vector<Digest> top_down;
    Entries s(state.begin(), state.end());
    for (int d = 0;; ++d) {
        if (s.empty()) break;
        if (s.size() == 1) {
            w.leaf = s[0];
            break;
        }
        Entries mine, other;
        for (const auto& e : s) (bit_of(e.first, d) == bit_of(path, d) ? mine : other).push_back(e);
        top_down.push_back(subtree(other, d + 1));
        s = std::move(mine);
    }
    w.side_nodes.assign(top_down.rbegin(), top_down.rend());
    return w;
}

}  // namespace stateroot::test::naive
