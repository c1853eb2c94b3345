// Runs the `stateroot` binary (STATEROOT_BIN) as a user would, for the CLI tests.
#pragma once

#include <fmt/format.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "files.hpp"
#include "temp_dir.hpp"

namespace stateroot::test {

struct Run {
    int code;
    std::string out;
    std::string err;
};

class Cli {
public:
    // Runs `stateroot <args>` with `input` on stdin; `args` is shell text, so a path from
    // the checkout in it goes through shell_quoted.
    Run run(const std::string& args, const std::string& input = "") {
        const std::string in = dir_.sub("stdin"), out = dir_.sub("stdout"), err = dir_.sub("stderr");
        std::ofstream(in) << input;
        const std::string cmd = fmt::format("{} {} <{} >{} 2>{}", shell_quoted(STATEROOT_BIN), args,
                                            shell_quoted(in), shell_quoted(out), shell_quoted(err));
        const int status = std::system(cmd.c_str());
        return {WEXITSTATUS(status), slurp(out), slurp(err)};
    }
    std::string db() const { return dir_.sub("db"); }
    std::string file(const std::string& name, const std::string& content) {
        const std::string path = dir_.sub(name);
        std::ofstream(path) << content;
        return path;
    }

private:
    TempDir dir_;
};

inline std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
}

}  // namespace stateroot::test
