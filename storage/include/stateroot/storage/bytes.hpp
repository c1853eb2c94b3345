// Byte strings and their hex form.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace stateroot {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

inline ByteView as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
inline std::string_view as_chars(ByteView b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Lowercase hex without a 0x prefix.
std::string to_hex(ByteView bytes);

// Decodes hex in either case, with or without a leading "0x"/"0X".
// Returns nullopt if the text has an odd number of digits or a non-hex character.
std::optional<Bytes> from_hex(std::string_view text);

// Big-endian fixed-width integers, the encoding of heights and counters inside keys
// so that byte order equals numeric order.
void put_be64(Bytes& out, std::uint64_t v);
// Writes `v` big-endian into p[0, 8).
void set_be64(std::uint8_t* p, std::uint64_t v);
std::uint64_t get_be64(const std::uint8_t* p);
void put_be32(Bytes& out, std::uint32_t v);
std::uint32_t get_be32(const std::uint8_t* p);

// LEB128 unsigned varints.
void put_varint(Bytes& out, std::uint64_t v);
// Reads a varint at `pos`, advancing it; nullopt if truncated or longer than 10 bytes.
std::optional<std::uint64_t> get_varint(ByteView in, std::size_t& pos);

}  // namespace stateroot
