// Models and images the tests build themselves, so that unit tests need neither the data set
// nor a trained checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>

#include "edgeq/data/dataset.h"
#include "edgeq/model/fashion_cnn.h"

namespace edgeq::test {

// A FashionCNN with seeded random weights and non-trivial BatchNorm statistics (mean and
// variance far from 0 and 1, so that a wrong fold shows), in eval mode.
FashionCnn make_random_fashion_cnn(uint64_t seed);

// `count` seeded images of smooth random blobs with labels 0..9, Fashion-MNIST-sized.
LabelledImages make_synthetic_images(int64_t count, uint64_t seed);

// Writes a float model that neither the quantizer nor npu-sim takes whole:
// x -> Relu 'first_relu' -> Erf 'my_erf' -> Relu 'last' -> y, input [N, channels, 28, 28].
void write_erf_model(const std::filesystem::path& path, int64_t channels);

}  // namespace edgeq::test
