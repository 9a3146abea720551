// The project's noise contract in C++: numpy's `default_rng(seed).standard_normal(shape, dtype=float32)`,
// bit for bit (pixart_export/runtime/noise.py; tests/test_cpp.py compares >= 10^6 draws per seed).
//
//   SeedSequence(seed)  -> 4 x uint64 (numpy's hash-mix of the seed's 32-bit words, pool of 4)
//   PCG64               -> 128-bit LCG, XSL-RR 64-bit output; 32-bit draws use both halves of one output
//   normal_f            -> numpy's float32 ziggurat (256 layers, r = 3.6541528853610088), tables computed
//                          here from the layer recurrence (Marsaglia & Tsang 2000) rather than stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pixart {

// numpy.random.SeedSequence(entropy).generate_state(n_words, uint64) for a non-negative integer entropy.
std::vector<std::uint64_t> seed_sequence_state(std::uint64_t entropy, std::size_t n_words);

class Pcg64 {
  public:
    explicit Pcg64(std::uint64_t seed);  // as numpy.random.PCG64(seed)
    std::uint64_t next64();
    std::uint32_t next32();  // low half of a fresh 64-bit output first, then its high half
    float next_float();      // (next32 >> 8) * 2^-24, as numpy 2.4 does

  private:
    unsigned __int128 state_ = 0, inc_ = 0;
    bool has32_ = false;
    std::uint32_t buffered_ = 0;
};

// numpy's Generator.standard_normal(dtype=float32): one draw.
float standard_normal_f(Pcg64& rng);

// default_rng(seed).standard_normal(count, dtype=float32).
std::vector<float> standard_normal(std::uint64_t seed, std::size_t count);

}  // namespace pixart
