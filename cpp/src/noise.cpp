#include "noise.hpp"

#include <cmath>

namespace pixart {
namespace {

// SeedSequence constants (numpy/random/bit_generator.pyx, after M. O'Neill's seed_seq_fe).
constexpr std::uint32_t kInitA = 0x43b0d7e5u, kMultA = 0x931e8875u;
constexpr std::uint32_t kInitB = 0x8b51f9ddu, kMultB = 0x58f38dedu;
constexpr std::uint32_t kMixL = 0xca01f9ddu, kMixR = 0x4973f715u;
constexpr int kXShift = 16;
constexpr std::size_t kPool = 4;

struct Hasher {
    std::uint32_t k;
    std::uint32_t operator()(std::uint32_t value) {
        value ^= k;
        k *= kMultA;
        value *= k;
        return value ^ (value >> kXShift);
    }
};

std::uint32_t mix(std::uint32_t x, std::uint32_t y) {
    std::uint32_t r = kMixL * x - kMixR * y;
    return r ^ (r >> kXShift);
}

}  // namespace

std::vector<std::uint64_t> seed_sequence_state(std::uint64_t entropy, std::size_t n_words) {
    // the integer as little-endian 32-bit words; 0 is one word
    std::vector<std::uint32_t> words;
    do {
        words.push_back(static_cast<std::uint32_t>(entropy & 0xffffffffu));
        entropy >>= 32;
    } while (entropy);

    std::uint32_t pool[kPool];
    Hasher hash{kInitA};
    for (std::size_t i = 0; i < kPool; ++i) pool[i] = hash(i < words.size() ? words[i] : 0u);
    for (std::size_t src = 0; src < kPool; ++src)
        for (std::size_t dst = 0; dst < kPool; ++dst)
            if (src != dst) pool[dst] = mix(pool[dst], hash(pool[src]));
    for (std::size_t src = kPool; src < words.size(); ++src)
        for (std::size_t dst = 0; dst < kPool; ++dst) pool[dst] = mix(pool[dst], hash(words[src]));

    std::vector<std::uint64_t> out(n_words);
    std::uint32_t k = kInitB;
    for (std::size_t i = 0; i < 2 * n_words; ++i) {
        std::uint32_t v = pool[i % kPool];
        v ^= k;
        k *= kMultB;
        v *= k;
        v ^= v >> kXShift;
        out[i / 2] |= static_cast<std::uint64_t>(v) << (32 * (i % 2));
    }
    return out;
}

namespace {
using u128 = unsigned __int128;
const u128 kPcgMult = (static_cast<u128>(0x2360ed051fc65da4ull) << 64) | 0x4385df649fccf645ull;
}  // namespace

Pcg64::Pcg64(std::uint64_t seed) {
    const auto s = seed_sequence_state(seed, 4);
    const u128 init_state = (static_cast<u128>(s[0]) << 64) | s[1];
    const u128 init_seq = (static_cast<u128>(s[2]) << 64) | s[3];
    // pcg_setseq_128_srandom_r
    state_ = 0;
    inc_ = (init_seq << 1) | 1u;
    state_ = state_ * kPcgMult + inc_;
    state_ += init_state;
    state_ = state_ * kPcgMult + inc_;
}

std::uint64_t Pcg64::next64() {
    state_ = state_ * kPcgMult + inc_;
    const std::uint64_t hi = static_cast<std::uint64_t>(state_ >> 64), lo = static_cast<std::uint64_t>(state_);
    const unsigned rot = static_cast<unsigned>(state_ >> 122);
    const std::uint64_t x = hi ^ lo;
    return (x >> rot) | (x << ((64 - rot) & 63));
}

std::uint32_t Pcg64::next32() {
    if (has32_) {
        has32_ = false;
        return buffered_;
    }
    const std::uint64_t v = next64();
    has32_ = true;
    buffered_ = static_cast<std::uint32_t>(v >> 32);
    return static_cast<std::uint32_t>(v);
}

float Pcg64::next_float() { return static_cast<float>(next32() >> 8) * (1.0f / 16777216.0f); }

namespace {

// Ziggurat of 256 layers for the standard normal density f(x) = exp(-x^2/2), in numpy's layout:
// x[255] = r (base), x[i-1] from f(x[i-1]) = f(x[i]) + v / x[i], x[0] = 0 (top); layer 0 is the base
// strip with the tail: v = r f(r) + the tail's area. k[i] = round(2^23 x[i-1]/x[i]), w[i] = x[i] / 2^23,
// f[i] = f(x[i]), all rounded to nearest from long double (equal to numpy's float tables entry by entry).
struct ZigguratF {
    std::uint32_t k[256];
    float w[256];
    float f[256];
    float r, inv_r;

    ZigguratF() {
        const long double R = 3.6541528853610087963519472518L, scale = 8388608.0L;
        const long double fr = std::exp(-0.5L * R * R);
        const long double V = R * fr + std::sqrt(std::acos(-1.0L) / 2.0L) * std::erfc(R / std::sqrt(2.0L));
        long double x[256];
        x[255] = R;
        for (int i = 255; i >= 2; --i) x[i - 1] = std::sqrt(-2.0L * std::log(V / x[i] + std::exp(-0.5L * x[i] * x[i])));
        x[0] = 0.0L;
        k[0] = static_cast<std::uint32_t>(std::round(R * fr / V * scale));
        w[0] = static_cast<float>(V / fr / scale);
        f[0] = 1.0f;
        for (int i = 1; i < 256; ++i) {
            k[i] = static_cast<std::uint32_t>(std::round(x[i - 1] / x[i] * scale));
            w[i] = static_cast<float>(x[i] / scale);
            f[i] = static_cast<float>(std::exp(-0.5L * x[i] * x[i]));
        }
        r = static_cast<float>(R);
        inv_r = static_cast<float>(1.0L / R);
    }
};

const ZigguratF& ziggurat() {
    static const ZigguratF z;
    return z;
}

}  // namespace

float standard_normal_f(Pcg64& rng) {
    const ZigguratF& z = ziggurat();
    for (;;) {
        const std::uint32_t r = rng.next32();
        const int idx = static_cast<int>(r & 0xffu);
        const bool negative = (r >> 8) & 1u;
        const std::uint32_t rabs = (r >> 9) & 0x7fffffu;
        float x = static_cast<float>(rabs) * z.w[idx];
        if (negative) x = -x;
        if (rabs < z.k[idx]) return x;
        if (idx == 0) {  // the tail beyond r (Marsaglia's method with exponentials)
            for (;;) {
                const float xx = -z.inv_r * std::log1p(-rng.next_float());
                const float yy = -std::log1p(-rng.next_float());
                if (yy + yy > xx * xx) return ((rabs >> 8) & 1u) ? -(z.r + xx) : z.r + xx;
            }
        }
        // the wedge: numpy compares in double here (exp of a double argument)
        if ((z.f[idx - 1] - z.f[idx]) * rng.next_float() + z.f[idx] < std::exp(-0.5 * x * x)) return x;
    }
}

std::vector<float> standard_normal(std::uint64_t seed, std::size_t count) {
    Pcg64 rng(seed);
    std::vector<float> out(count);
    for (auto& v : out) v = standard_normal_f(rng);
    return out;
}

}  // namespace pixart
