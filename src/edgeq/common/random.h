// Seeded randomness whose results the C++ standard fixes, so that a seed gives the same split,
// shuffle and augmentation with any compiler: std::mt19937_64's output is specified, while the
// algorithms of std::uniform_int_distribution and std::shuffle are not.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>

namespace edgeq {

// Uniform integer in [0, bound), by rejection sampling on the raw 64-bit output.
inline uint64_t uniform_below(std::mt19937_64& generator, uint64_t bound) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t value = generator();
    while (value >= limit) {
        value = generator();
    }
    return value % bound;
}

// Fisher-Yates shuffle in place.
template <typename T>
void shuffle_in_place(std::span<T> values, std::mt19937_64& generator) {
    for (size_t i = values.size(); i > 1; --i) {
        std::swap(values[i - 1], values[uniform_below(generator, i)]);
    }
}

}  // namespace edgeq
