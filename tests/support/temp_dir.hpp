// A fresh directory under the system temp dir, removed with everything in it.
#pragma once

#include <filesystem>
#include <string>

namespace stateroot::test {

class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::string str() const { return path_.string(); }
    // A path inside the directory.
    std::string sub(const std::string& name) const { return (path_ / name).string(); }

  private:
    std::filesystem::path path_;
};

}  // namespace stateroot::test
