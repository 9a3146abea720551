// PNG writer with no library: 8-bit RGB, filter 0 on every row, zlib stream of stored (uncompressed)
// deflate blocks, CRC-32 and Adler-32 computed here. Files are larger than a compressing encoder's but
// every PNG reader takes them; written through a temporary file beside the destination and renamed, so a
// full disk or a read-only folder leaves nothing (exit 2, the errno text). PPM (P6, maxval 255) reader for
// control images, bounded: a regular file only (a FIFO or device is refused by its type before it is
// opened), the header's pixel count checked against PIL's limit and the file's size before any pixel
// memory is allocated; a maxval other than 255 (16-bit samples) is refused, as the Python runtime does.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "manifest.hpp"
#include "pixart/runtime.hpp"

namespace pixart {
namespace {

const std::array<std::uint32_t, 256>& crc_table() {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t n = 0; n < 256; ++n) {
            std::uint32_t c = n;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }();
    return table;
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n, std::uint32_t crc = 0) {
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) crc = crc_table()[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

void put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

void chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
    put32(out, static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> body(type, type + 4);
    body.insert(body.end(), data.begin(), data.end());
    out.insert(out.end(), body.begin(), body.end());
    put32(out, crc32(body.data(), body.size()));
}

}  // namespace

void write_png(const std::string& path, const Image& image) {
    if (image.width <= 0 || image.height <= 0 ||
        image.rgb.size() != static_cast<std::size_t>(image.width) * image.height * 3)
        throw Error(Error::kUser, "write_png: the image is empty or its size does not match width x height x 3");
    // raw scanlines: filter byte 0 + RGB row
    std::vector<std::uint8_t> raw;
    const std::size_t row = static_cast<std::size_t>(image.width) * 3;
    raw.reserve((row + 1) * image.height);
    for (int y = 0; y < image.height; ++y) {
        raw.push_back(0);
        raw.insert(raw.end(), image.rgb.begin() + y * row, image.rgb.begin() + (y + 1) * row);
    }
    // zlib: header (deflate, 32K window, no dictionary), stored blocks of <= 65535 bytes, Adler-32
    std::vector<std::uint8_t> z{0x78, 0x01};
    std::size_t pos = 0;
    do {
        const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
        const bool last = pos + n == raw.size();
        z.push_back(last ? 1 : 0);
        z.push_back(static_cast<std::uint8_t>(n & 0xff));
        z.push_back(static_cast<std::uint8_t>(n >> 8));
        z.push_back(static_cast<std::uint8_t>(~n & 0xff));
        z.push_back(static_cast<std::uint8_t>((~n >> 8) & 0xff));
        z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
        pos += n;
    } while (pos < raw.size());
    std::uint32_t a = 1, b = 0;
    for (std::uint8_t c : raw) {
        a = (a + c) % 65521;
        b = (b + a) % 65521;
    }
    put32(z, (b << 16) | a);

    std::vector<std::uint8_t> out{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr;
    put32(ihdr, static_cast<std::uint32_t>(image.width));
    put32(ihdr, static_cast<std::uint32_t>(image.height));
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, truecolour, deflate, filter 0, no interlace
    chunk(out, "IHDR", ihdr);
    chunk(out, "IDAT", z);
    chunk(out, "IEND", {});
    const std::size_t slash = path.rfind('/');
    const std::string tmp = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." +
                            path.substr(slash == std::string::npos ? 0 : slash + 1) + ".tmp";
    auto fail = [&](int err) {
        ::unlink(tmp.c_str());
        throw Error(Error::kUser, "--out " + path + ": cannot be written (" + std::strerror(err) + "); nothing was left there");
    };
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(Error::kUser, "--out " + path + ": cannot be written (" + std::strerror(errno) + ")");
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::write(fd, out.data() + done, out.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int err = n < 0 ? errno : ENOSPC;
            ::close(fd);
            fail(err);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 && errno != EINVAL) {
        const int err = errno;
        ::close(fd);
        fail(err);
    }
    if (::close(fd) != 0) fail(errno);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail(errno);
}

// PIL's Image.MAX_IMAGE_PIXELS: the Python runtime refuses larger control images (a decompression bomb)
constexpr long long kMaxImagePixels = 89478485;

Image read_ppm(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw Error(Error::kUser, "--control-image " + path + ": not a readable image (" + std::strerror(errno) + ")");
    if (!S_ISREG(st.st_mode))
        throw Error(Error::kUser, "--control-image " + path + ": not a regular file (" + file_kind(st.st_mode) + "); give a file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw Error(Error::kUser, path + ": cannot be read");
    auto token = [&f]() {
        std::string t;
        char c;
        while (f.get(c)) {
            if (c == '#') {
                std::string skip;
                std::getline(f, skip);
                continue;
            }
            if (std::isspace(static_cast<unsigned char>(c))) {
                if (!t.empty()) break;
                continue;
            }
            t += c;
            if (t.size() > 32) break;  // no header field is longer: never read an unbounded "token"
        }
        return t;
    };
    Image img;
    const std::string magic = token();
    const std::string w = token(), h = token(), maxval = token();
    long long width = 0, height = 0;
    const bool numeric = !w.empty() && !h.empty() && w.size() < 12 && h.size() < 12 &&
                         std::all_of(w.begin(), w.end(), ::isdigit) && std::all_of(h.begin(), h.end(), ::isdigit);
    if (numeric) {
        width = std::stoll(w);
        height = std::stoll(h);
    }
    if (magic != "P6" || !numeric || width <= 0 || height <= 0 || maxval.empty() ||
        !std::all_of(maxval.begin(), maxval.end(), ::isdigit))
        throw Error(Error::kUser, "--control-image " + path + ": not a binary PPM (P6, maxval 255); convert the control image, "
                                                              "e.g. PIL's Image.save(path, 'PPM')");
    if (maxval != "255")
        throw Error(Error::kUser, "--control-image " + path + ": maxval " + maxval + ", not 8 bits a sample; control images "
                                                              "are 8-bit (convert it first)");
    if (width * height > kMaxImagePixels)
        throw Error(Error::kUser, "--control-image " + path + ": too large (" + std::to_string(width * height) +
                                      " pixels, more than " + std::to_string(kMaxImagePixels) + "); give an image near the output size");
    const long long need = width * height * 3;
    if (static_cast<long long>(f.tellg()) < 0 || static_cast<long long>(st.st_size) - static_cast<long long>(f.tellg()) < need)
        throw Error(Error::kUser, path + ": truncated PPM");
    img.width = static_cast<int>(width);
    img.height = static_cast<int>(height);
    img.rgb.resize(static_cast<std::size_t>(need));
    f.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    if (f.gcount() != static_cast<std::streamsize>(img.rgb.size())) throw Error(Error::kUser, path + ": truncated PPM");
    return img;
}

}  // namespace pixart
