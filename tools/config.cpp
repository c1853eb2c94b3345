#include "config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <string_view>
#include <nlohmann/json.hpp>
#include <variant>

#include "stateroot/indexer/block_source.hpp"

namespace stateroot::tools {

namespace {

using Field = std::variant<std::string Config::*, std::uint64_t Config::*, bool Config::*>;

struct Option {
    const char* name;
    Field field;
    // For a string whose values are limited: what it must be if `value` is not one of
    // them, else empty.
    std::string (*unaccepted)(std::string_view value) = nullptr;
    // A directory: set empty by a flag or variable, it is a caller's variable that was
    // never set (`--db "$DIR"`), which must not quietly mean "none". The shipped file's
    // "" is the documented default, none.
    bool directory = false;
    // For a whole number: the largest taken. Durations stop at a day, where a larger
    // one would overflow the clock's nanoseconds and time out at once instead.
    std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
};

constexpr std::uint64_t kDayMs = 24 * 60 * 60 * 1000;

std::string unaccepted_network(std::string_view value) {
    if (indexer::parse_network(value)) return {};
    return "one of mainnet, testnet3, testnet4, signet or regtest";
}

std::string unaccepted_log_level(std::string_view value) {
    for (std::string_view level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
        if (value == level) return {};
    }
    return "one of trace, debug, info, warn, error, critical or off";
}

// The one list of options: file keys, STATEROOT_<NAME> variables and --name flags.
const Option kOptions[] = {
    {"db", &Config::db, nullptr, true},
    {"rpc_addr", &Config::rpc_addr},
    {"rpc_token", &Config::rpc_token},
    {"rpc_threads", &Config::rpc_threads},
    {"rpc_max_connections", &Config::rpc_max_connections},
    {"rpc_timeout_ms", &Config::rpc_timeout_ms, nullptr, false, kDayMs},
    {"rpc_idle_ms", &Config::rpc_idle_ms, nullptr, false, kDayMs},
    {"secondary", &Config::secondary, nullptr, true},
    {"catch_up_ms", &Config::catch_up_ms, nullptr, false, kDayMs},
    {"network", &Config::network, unaccepted_network},
    {"max_reorg_depth", &Config::max_reorg_depth},
    {"cache_mb", &Config::cache_mb},
    {"node_cache_mb", &Config::node_cache_mb},
    {"sync", &Config::sync},
    {"log_level", &Config::log_level, unaccepted_log_level},
};

const Option* find(const std::string& name) {
    for (const Option& o : kOptions) {
        if (name == o.name) return &o;
    }
    return nullptr;
}

// What a string option must be, if `value` is not accepted; empty if it is.
std::string unaccepted(const Option& o, std::string_view value) { return o.unaccepted ? o.unaccepted(value) : ""; }

// Sets an option from text (environment variables and flags).
Status set_text(Config& c, const Option& o, const std::string& text, const std::string& where) {
    auto bad = [&](std::string_view what) {
        return make_error(ErrorCode::kInvalidArgument,
                          fmt::format("{}: option \"{}\" must be {}, got \"{}\"", where, o.name, what, text));
    };
    if (auto p = std::get_if<std::string Config::*>(&o.field)) {
        if (const std::string what = unaccepted(o, text); !what.empty()) return bad(what);
        if (o.directory && text.empty()) return bad("a directory");
        c.**p = text;
    } else if (auto u = std::get_if<std::uint64_t Config::*>(&o.field)) {
        const auto v = parse_decimal(text);
        if (!v) return bad("a non-negative integer");
        if (*v > o.max) return bad(fmt::format("at most {}", o.max));
        c.**u = *v;
    } else {
        const auto b = std::get<bool Config::*>(o.field);
        if (text == "true" || text == "1") {
            c.*b = true;
        } else if (text == "false" || text == "0") {
            c.*b = false;
        } else {
            return bad("true or false");
        }
    }
    return {};
}

Status set_json(Config& c, const Option& o, const nlohmann::json& v, const std::string& where) {
    auto bad = [&](std::string_view what) {
        return make_error(ErrorCode::kInvalidArgument, fmt::format("{}: option \"{}\" must be {}", where, o.name, what));
    };
    if (auto p = std::get_if<std::string Config::*>(&o.field)) {
        if (!v.is_string()) return bad("a string");
        if (const std::string what = unaccepted(o, v.get<std::string>()); !what.empty()) {
            return bad(fmt::format("{}, got \"{}\"", what, v.get<std::string>()));
        }
        c.**p = v.get<std::string>();
    } else if (auto u = std::get_if<std::uint64_t Config::*>(&o.field)) {
        if (!v.is_number_unsigned()) return bad("a non-negative integer");
        if (v.get<std::uint64_t>() > o.max) return bad(fmt::format("at most {}, got {}", o.max, v.get<std::uint64_t>()));
        c.**u = v.get<std::uint64_t>();
    } else {
        if (!v.is_boolean()) return bad("true or false");
        c.*std::get<bool Config::*>(o.field) = v.get<bool>();
    }
    return {};
}

std::string env_name(const char* option) {
    std::string n = "STATEROOT_";
    for (const char* p = option; *p; ++p) n += static_cast<char>(std::toupper(static_cast<unsigned char>(*p)));
    return n;
}

}  // namespace

std::optional<std::uint64_t> parse_decimal(std::string_view text) {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return v;
}

std::vector<std::string> config_option_names() {
    std::vector<std::string> names;
    for (const Option& o : kOptions) names.emplace_back(o.name);
    return names;
}

Result<Config> load_config(const std::string& file, const ConfigFlags& flags,
                           const std::function<const char*(const char*)>& env) {
    Config c;
    if (!file.empty()) {
        std::ifstream in(file);
        if (!in) return make_error(ErrorCode::kInvalidArgument, fmt::format("cannot read config file {}", file));
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            return make_error(ErrorCode::kInvalidArgument, fmt::format("config file {}: not JSON: {}", file, e.what()));
        } catch (const std::ios_base::failure& e) {  // a directory, say
            return make_error(ErrorCode::kInvalidArgument,
                              fmt::format("cannot read config file {}: {}", file, e.code().message()));
        }
        if (!j.is_object()) return make_error(ErrorCode::kInvalidArgument, fmt::format("config file {}: not a JSON object", file));
        for (const auto& [key, value] : j.items()) {
            if (key.rfind("//", 0) == 0) continue;  // a comment
            const Option* o = find(key);
            if (!o) return make_error(ErrorCode::kInvalidArgument, fmt::format("config file {}: unknown option \"{}\"", file, key));
            if (Status s = set_json(c, *o, value, "config file " + file); !s) return std::unexpected(s.error());
        }
    }
    for (const Option& o : kOptions) {
        const std::string name = env_name(o.name);
        const char* value = env ? env(name.c_str()) : std::getenv(name.c_str());
        if (!value) continue;
        if (Status s = set_text(c, o, value, "environment variable " + name); !s) return std::unexpected(s.error());
    }
    for (const auto& [name, value] : flags) {
        const Option* o = find(name);
        if (!o) return make_error(ErrorCode::kInvalidArgument, fmt::format("unknown option \"{}\"", name));
        std::string flag = "--" + name;
        std::replace(flag.begin(), flag.end(), '_', '-');
        if (Status s = set_text(c, *o, value, "flag " + flag); !s) return std::unexpected(s.error());
    }
    return c;
}

nlohmann::json to_json(const Config& c) {
    nlohmann::json j = nlohmann::json::object();
    for (const Option& o : kOptions) {
        std::visit([&](auto field) { j[o.name] = c.*field; }, o.field);
    }
    return j;
}

}  // namespace stateroot::tools
