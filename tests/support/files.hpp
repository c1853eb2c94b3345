// Small file helpers for tests.
#pragma once

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "stateroot/storage/bytes.hpp"

namespace stateroot::test {

inline Bytes read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
}

inline std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

inline void write_file(const std::string& path, ByteView b) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// `s` as one word for /bin/sh, whatever it holds: the checkout's path may have spaces.
inline std::string shell_quoted(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// A file of the shipped real blocks.
inline std::string block_fixture(const std::string& name) {
    return std::string(STATEROOT_FIXTURES) + "/blocks/" + name;
}

}  // namespace stateroot::test
