// PNG writer with no library: 8-bit RGB, filter 0 on every row, zlib stream of stored (uncompressed)
// deflate blocks, CRC-32 and Adler-32 computed here. Files are larger than a compressing encoder's but
// every PNG reader takes them. PPM (P6) reader for control images.
#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>

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
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!f) throw Error(Error::kUser, path + ": cannot be written");
}

Image read_ppm(const std::string& path) {
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
        }
        return t;
    };
    Image img;
    const std::string magic = token();
    const std::string w = token(), h = token(), maxval = token();
    try {
        img.width = std::stoi(w);
        img.height = std::stoi(h);
    } catch (const std::exception&) {
        img.width = img.height = 0;
    }
    if (magic != "P6" || maxval != "255" || img.width <= 0 || img.height <= 0)
        throw Error(Error::kUser, path + ": not a binary PPM (P6, maxval 255); convert the control image, e.g. "
                                         "PIL's Image.save(path, 'PPM')");
    img.rgb.resize(static_cast<std::size_t>(img.width) * img.height * 3);
    f.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    if (f.gcount() != static_cast<std::streamsize>(img.rgb.size())) throw Error(Error::kUser, path + ": truncated PPM");
    return img;
}

}  // namespace pixart
