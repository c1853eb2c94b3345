// Result<T> and Error: how every library function of stateroot reports failure.
//
// Libraries never throw across their API. A function that can fail returns
// Result<T> (T on success, Error otherwise); one with nothing to return uses Status.
// Absence is not an error: lookups return std::optional.
#pragma once

#include <expected>
#include <string>
#include <utility>

namespace stateroot {

// Stable error kinds. The CLI maps kInvalid and kNotFound to exit code 1 and
// everything else to exit code 2.
enum class ErrorCode {
    kInvalidArgument,  // the caller's input is malformed or out of range
    kNotFound,         // a height or object the caller named does not exist
    kInvalid,          // a well-formed object failed a check (e.g. a proof that does not verify)
    kConflict,         // the input contradicts what is committed (e.g. other changes at a height)
    kCorruption,       // bytes read from disk do not decode
    kIoError,          // the storage layer failed
    kBusy,             // the database is in use by another writer
};

struct Error {
    ErrorCode code;
    std::string message;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

inline std::unexpected<Error> make_error(ErrorCode code, std::string message) {
    return std::unexpected<Error>(Error{code, std::move(message)});
}

// Prefixes an error's message with context ("file.jsonl:3: ..."), keeping its code.
inline std::unexpected<Error> with_context(const Error& error, const std::string& context) {
    return std::unexpected<Error>(Error{error.code, context + ": " + error.message});
}

}  // namespace stateroot
