// SHA-256 (FIPS 180-4), written here so the runtime needs no crypto library: the manifest lists every
// file of an engine folder with its sha256, and the loader checks each one. sha256_file uses OpenSSL's
// libcrypto instead where CMake finds it (faster on CPUs with SHA extensions); tests hold both to hashlib.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pixart {

class Sha256 {
  public:
    Sha256();
    void update(const void* data, std::size_t size);
    std::string hexdigest();  // finishes the hash; call once

  private:
    void block(const std::uint8_t* p);
    std::uint32_t h_[8];
    std::uint8_t buf_[64];
    std::size_t fill_ = 0;
    std::uint64_t bytes_ = 0;
};

std::string sha256_hex(const std::string& data);
std::string sha256_file(const std::string& path);  // std::runtime_error when unreadable
std::string sha256_fd(int fd);                      // an open file from its start (pread); the faster hasher
std::string sha256_bytes(const std::string& data);  // the same hasher as sha256_file, over bytes in memory

}  // namespace pixart
