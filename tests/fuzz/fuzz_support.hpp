// What the fuzz targets share: failing a check (an abort, which libFuzzer reports as a
// crash with the input that caused it), scratch directories removed at exit, and a
// small committed database for the targets that read one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "stateroot/engine/engine.hpp"
#include "stateroot/storage/bytes.hpp"

namespace stateroot::fuzz {

[[noreturn]] void fail(const char* file, int line, const std::string& what);

// Checks an invariant; the message arguments are only formatted when it fails.
#define FUZZ_CHECK(cond, ...)                                                        \
    do {                                                                             \
        if (!(cond)) {                                                               \
            ::stateroot::fuzz::fail(__FILE__, __LINE__,                              \
                                    std::string(#cond) + ": " + fmt::format(__VA_ARGS__)); \
        }                                                                            \
    } while (0)

// A fresh directory under the system temp dir for this process, removed at exit.
const std::filesystem::path& scratch_dir();

// Writes `data` to `path`, replacing the file.
void write_file(const std::filesystem::path& path, ByteView data);

// The database of tests/fuzz/state.jsonl (heights 0-3, with puts, deletes, re-puts and
// block hashes), committed on first use in scratch_dir() and closed at exit.
struct State {
    std::unique_ptr<engine::Engine> engine;
    std::map<std::uint64_t, engine::Hash> roots;  // every committed height
};
State& state();

}  // namespace stateroot::fuzz
