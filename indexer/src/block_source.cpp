#include "stateroot/indexer/block_source.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

namespace stateroot::indexer {

namespace fs = std::filesystem;

std::optional<Network> parse_network(std::string_view name) {
    if (name == "mainnet" || name == "main") return Network::kMainnet;
    if (name == "testnet3" || name == "testnet" || name == "test") return Network::kTestnet3;
    if (name == "testnet4") return Network::kTestnet4;
    if (name == "signet") return Network::kSignet;
    if (name == "regtest") return Network::kRegtest;
    return std::nullopt;
}

std::string_view network_name(Network n) {
    switch (n) {
        case Network::kMainnet:
            return "mainnet";
        case Network::kTestnet3:
            return "testnet3";
        case Network::kTestnet4:
            return "testnet4";
        case Network::kSignet:
            return "signet";
        case Network::kRegtest:
            return "regtest";
    }
    return "?";
}

std::uint64_t bip34_activation(Network n) {
    switch (n) {
        case Network::kMainnet:
            return 227931;
        case Network::kTestnet3:
            return 21111;
        case Network::kTestnet4:
        case Network::kSignet:
        case Network::kRegtest:
            return 1;
    }
    return 0;
}

std::uint32_t pow_limit_bits(Network n) {
    switch (n) {
        case Network::kMainnet:
        case Network::kTestnet3:
        case Network::kTestnet4:
            return 0x1d00ffff;
        case Network::kSignet:
            return 0x1e0377ae;
        case Network::kRegtest:
            return 0x207fffff;
    }
    return 0x1d00ffff;
}

std::array<std::uint8_t, 4> network_magic(Network n) {
    switch (n) {
        case Network::kMainnet:
            return {0xf9, 0xbe, 0xb4, 0xd9};
        case Network::kTestnet3:
            return {0x0b, 0x11, 0x09, 0x07};
        case Network::kTestnet4:
            return {0x1c, 0x16, 0x3f, 0x28};
        case Network::kSignet:
            return {0x0a, 0x03, 0xcf, 0x40};
        case Network::kRegtest:
            return {0xfa, 0xbf, 0xb5, 0xda};
    }
    return {};
}

namespace {

std::unexpected<Error> bad(const std::string& file, std::uint64_t offset, const std::string& why) {
    return make_error(ErrorCode::kInvalidArgument,
                      fmt::format("{}: offset {}: {}", file, offset, why));
}

// A file read at arbitrary offsets with its obfuscation undone.
class File {
  public:
    File(const std::string& path, std::optional<XorKey> key)
        : path_(path), in_(path, std::ios::binary), key_(key) {
        std::error_code ec;
        size_ = fs::file_size(path, ec);
        if (ec) in_.setstate(std::ios::failbit);
    }
    bool ok() const { return static_cast<bool>(in_); }
    std::uint64_t size() const { return size_; }

    // Reads up to n bytes at `offset` (fewer at the end of the file), deobfuscated.
    Result<Bytes> read(std::uint64_t offset, std::uint64_t n) {
        auto b = read_stored(offset, n);
        if (b) deobfuscate(*b, offset);
        return b;
    }
    // The same bytes as they are on disk.
    Result<Bytes> read_stored(std::uint64_t offset, std::uint64_t n) {
        n = std::min(n, offset < size_ ? size_ - offset : 0);
        Bytes b(n);
        in_.seekg(static_cast<std::streamoff>(offset));
        in_.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(n));
        if (!in_) {
            return make_error(ErrorCode::kIoError,
                              fmt::format("{}: offset {}: read error", path_, offset));
        }
        return b;
    }
    void deobfuscate(Bytes& b, std::uint64_t offset) const {
        if (!key_) return;
        for (std::uint64_t i = 0; i < b.size(); ++i) b[i] ^= (*key_)[(offset + i) % 8];
    }
    bool obfuscated() const { return key_.has_value(); }

  private:
    std::string path_;
    std::ifstream in_;
    std::optional<XorKey> key_;
    std::uint64_t size_ = 0;
};

// Whether every stored byte from `pos` to the end of the file is zero; `head` holds the
// stored bytes from `pos` on, as far as they were read.
Result<bool> zeros_to_end(File& f, std::uint64_t pos, const Bytes& head) {
    constexpr std::uint64_t kChunk = 1 << 20;
    auto zero = [](const Bytes& b) {
        return std::all_of(b.begin(), b.end(), [](std::uint8_t x) { return x == 0; });
    };
    if (!zero(head)) return false;
    for (std::uint64_t at = pos + head.size(); at < f.size(); at += kChunk) {
        auto more = f.read_stored(at, kChunk);
        if (!more) return std::unexpected(more.error());
        if (!zero(*more)) return false;
    }
    return true;
}

}  // namespace

Result<std::vector<FoundBlock>> scan_blk_file(const std::string& path, Network network,
                                              const std::optional<XorKey>& xor_key) {
    File f(path, xor_key);
    if (!f.ok())
        return make_error(ErrorCode::kInvalidArgument, fmt::format("cannot read {}", path));
    const auto magic = network_magic(network);
    std::vector<FoundBlock> out;
    std::uint64_t pos = 0;
    // A record's frame and header are read at once; zero padding in 64 KiB steps.
    constexpr std::uint64_t kFrame = 8 + kHeaderSize, kChunk = 1 << 16;
    std::uint64_t want = kFrame;
    while (pos < f.size()) {
        auto head = f.read_stored(pos, want);
        if (!head) return std::unexpected(head.error());
        // Bitcoin Core preallocates its files with zeros as stored, not obfuscated: in an
        // obfuscated file, stored zeros from here to the end are that preallocation.
        if (f.obfuscated()) {
            auto tail = zeros_to_end(f, pos, *head);
            if (!tail) return std::unexpected(tail.error());
            if (*tail) break;
        }
        // Skip zero padding: zeros once deobfuscated, as a plain file's are.
        f.deobfuscate(*head, pos);
        const auto nonzero =
            std::find_if(head->begin(), head->end(), [](std::uint8_t b) { return b != 0; });
        if (nonzero == head->end()) {
            pos += head->size();
            want = kChunk;
            continue;
        }
        want = kFrame;
        if (nonzero != head->begin()) {
            pos += static_cast<std::uint64_t>(nonzero - head->begin());
            continue;
        }
        auto& frame = head;  // a record starts here
        if (frame->size() > kFrame) frame->resize(kFrame);
        if (frame->size() < 8) {
            return bad(path, pos,
                       fmt::format("truncated record: {} bytes left, a record header needs 8",
                                   frame->size()));
        }
        if (!std::equal(magic.begin(), magic.end(), frame->begin())) {
            return bad(path, pos,
                       fmt::format("wrong magic {} (expected {} for {})",
                                   to_hex(ByteView(*frame).first(4)), to_hex(magic),
                                   network_name(network)));
        }
        const std::uint32_t size = static_cast<std::uint32_t>((*frame)[4]) |
                                   static_cast<std::uint32_t>((*frame)[5]) << 8 |
                                   static_cast<std::uint32_t>((*frame)[6]) << 16 |
                                   static_cast<std::uint32_t>((*frame)[7]) << 24;
        // A larger length is a corrupt record, not a block (MAX_BLOCK_SERIALIZED_SIZE).
        constexpr std::uint32_t kMaxBlockSize = 4'000'000;
        if (size > kMaxBlockSize) {
            return bad(path, pos,
                       fmt::format("block length {} exceeds the {}-byte limit of a block", size,
                                   kMaxBlockSize));
        }
        const std::uint64_t left = f.size() - pos - 8;
        if (size > left) {
            return bad(path, pos,
                       fmt::format("block length {} runs past the end of the file ({} bytes left)",
                                   size, left));
        }
        if (size < kHeaderSize) {
            return bad(path, pos,
                       fmt::format("block length {} is shorter than a block header", size));
        }
        auto header = parse_header(ByteView(*frame).subspan(8));
        if (!header) return bad(path, pos, header.error().message);
        out.push_back({*header, {path, pos + 8, size, xor_key}});
        pos += 8 + size;
    }
    return out;
}

Result<FoundBlock> scan_raw_file(const std::string& path) {
    File f(path, std::nullopt);
    if (!f.ok())
        return make_error(ErrorCode::kInvalidArgument, fmt::format("cannot read {}", path));
    if (f.size() > 0xffffffffu) return bad(path, 0, "file is too large to be one block");
    auto head = f.read(0, kHeaderSize);
    if (!head) return std::unexpected(head.error());
    auto header = parse_header(*head);
    if (!header) return bad(path, 0, header.error().message);
    return FoundBlock{*header, {path, 0, static_cast<std::uint32_t>(f.size()), std::nullopt}};
}

Result<std::optional<XorKey>> read_xor_key(const std::string& dir) {
    std::error_code ec;
    const fs::path xor_path = fs::path(dir) / "xor.dat";
    if (!fs::exists(xor_path, ec)) return std::optional<XorKey>();
    File f(xor_path.string(), std::nullopt);
    auto bytes = f.read(0, 8);
    if (!bytes) return std::unexpected(bytes.error());
    if (bytes->size() != 8)
        return bad(xor_path.string(), 0, fmt::format("xor.dat holds {} bytes, not 8", bytes->size()));
    XorKey k;
    std::copy(bytes->begin(), bytes->end(), k.begin());
    if (std::all_of(k.begin(), k.end(), [](std::uint8_t b) { return b == 0; })) return std::optional<XorKey>();
    return std::optional<XorKey>(k);
}

Result<std::vector<FoundBlock>> scan_blocks_dir(const std::string& dir, Network network) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        return make_error(ErrorCode::kInvalidArgument, fmt::format("{} is not a directory", dir));
    auto key = read_xor_key(dir);
    if (!key) return std::unexpected(key.error());
    static const std::regex kBlk("blk[0-9]{5}\\.dat");
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), kBlk)) {
            files.push_back(entry.path().string());
        }
    }
    if (ec)
        return make_error(ErrorCode::kIoError,
                          fmt::format("cannot list {}: {}", dir, ec.message()));
    if (files.empty()) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("{} holds no blk?????.dat files (is it Bitcoin Core's blocks/ "
                                      "directory?)",
                                      dir));
    }
    std::sort(files.begin(), files.end());
    std::vector<FoundBlock> out;
    for (const std::string& file : files) {
        auto found = scan_blk_file(file, network, *key);
        if (!found) return std::unexpected(found.error());
        out.insert(out.end(), found->begin(), found->end());
    }
    return out;
}

Result<Bytes> read_block(const BlockLocation& loc) {
    File f(loc.file, loc.xor_key);
    if (!f.ok()) return make_error(ErrorCode::kIoError, fmt::format("cannot read {}", loc.file));
    auto b = f.read(loc.offset, loc.size);
    if (!b) return std::unexpected(b.error());
    if (b->size() != loc.size)
        return bad(loc.file, loc.offset, "the file is shorter than when it was scanned");
    return b;
}

}  // namespace stateroot::indexer
