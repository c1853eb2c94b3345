// Fuzz target: the JSON form of proofs (engine::parse_proof) and engine::verify.
//
// The input is read as `stateroot verify` reads a proof file. A proof that parses must
// survive to_json -> proof_from_json unchanged, and is verified against its own root and
// against the root of every height of the database of tests/fuzz/state.jsonl. Whenever
// it verifies against one of those, it must tell the truth: its value is the key's value
// at that height (or absent, if it has none). The seeds are proofs `stateroot prove`
// gave for that database.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "fuzz_support.hpp"
#include "stateroot/engine/proof.hpp"

using namespace stateroot;
using nlohmann::json;

namespace {

bool same(const engine::Proof& a, const engine::Proof& b) {
    return a.height == b.height && a.root == b.root && a.key == b.key && a.path == b.path && a.value == b.value &&
           a.side_nodes == b.side_nodes && a.non_membership_leaf == b.non_membership_leaf &&
           a.sibling_data == b.sibling_data;
}

void check_verdict(const Status& s) {
    FUZZ_CHECK(s || (s.error().code == ErrorCode::kInvalid && !s.error().message.empty()),
               "verify failed with code {}: {}", static_cast<int>(s.error().code), s.error().message);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::state();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::State& st = fuzz::state();
    // As `stateroot verify` reads a proof file.
    const auto proof = engine::parse_proof(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!proof) {
        FUZZ_CHECK(proof.error().code == ErrorCode::kInvalidArgument && proof.error().message.starts_with("not a proof: "),
                   "parse_proof: {}", proof.error().message);
        return 0;
    }
    const json written = engine::to_json(*proof);
    const auto reread = engine::proof_from_json(json::parse(written.dump()));
    FUZZ_CHECK(reread && same(*proof, *reread), "to_json -> proof_from_json changes the proof: {}", written.dump());

    check_verdict(engine::verify(*proof, proof->root));
    auto view = st.engine->view();
    FUZZ_CHECK(view.has_value(), "view: {}", view ? "" : view.error().message);
    for (const auto& [height, root] : st.roots) {
        const Status s = engine::verify(*proof, root);
        check_verdict(s);
        if (!s) continue;
        auto value = view->get(proof->key, height);
        FUZZ_CHECK(value.has_value(), "get: {}", value ? "" : value.error().message);
        FUZZ_CHECK(*value == proof->value, "a proof that key {} is {} verifies against the root of height {}, "
                                           "where it is {}",
                   to_hex(proof->key), proof->value ? to_hex(*proof->value) : "absent", height,
                   *value ? to_hex(**value) : "absent");
    }
    return 0;
}
