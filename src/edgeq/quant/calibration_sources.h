// Calibration data for image models of any size: a .npy array, an IDX image file or a folder of
// PNG images, each fed to the calibrator in batches [n, C, H, W] of float32.
//
// The .npy and PNG readers read one batch at a time, so memory does not grow with the number of
// samples. Every sample goes through the same preprocessing, in this order:
//   1. scale: uint8 data (IDX, uint8 .npy, 8-bit PNG) is divided by 255 and 16-bit PNG samples
//      by 65535, so values lie in [0, 1]; float32 .npy values are kept as they are;
//   2. resize to H x W, bilinear with half-pixel centers (see resize_bilinear), when --size
//      requests another size than the data's;
//   3. normalize per channel: (x - mean[c]) / std[c], when a mean or std is given.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgeq/data/idx.h"
#include "edgeq/data/npy.h"
#include "edgeq/quant/calibration.h"

namespace edgeq {

struct CalibrationSourceOptions {
    std::filesystem::path path;  // a PNG folder, a .npy file or an IDX image file
    int64_t batch_size = 100;
    std::optional<std::pair<int64_t, int64_t>> size;  // (height, width) to resize to
    std::vector<float> mean;                          // 1 value or one per channel; empty = 0
    std::vector<float> std;  // 1 value or one per channel, each > 0; empty = 1
    int64_t channels = 0;    // 0 = the model's channel count (PNG images are converted to it)
    int64_t limit = 0;       // use the first `limit` samples; 0 = all of them
};

enum class CalibrationSourceKind {
    kNpy,        // a .npy file [N, C, H, W] of float32 or uint8
    kIdx,        // an IDX3 unsigned-byte image file [N, H, W], gzip-compressed or plain
    kPngFolder,  // a folder of *.png files, in file name order
};

// Picks the kind from what `path` is. A folder is a PNG folder. A file is a .npy file when its
// name ends in ".npy" or it starts with NumPy's magic. It is an IDX file when it starts with the
// IDX3 unsigned-byte magic 0x00000803 (after gunzip) or its name ends in "-idx3-ubyte[.gz]".
// Throws Error naming the path when it is missing or none of these.
CalibrationSourceKind detect_calibration_source(const std::filesystem::path& path);

std::string calibration_source_kind_name(CalibrationSourceKind kind);

// Preprocessing steps of every sample on its way into a batch (see the file comment).
struct SamplePreprocessing {
    float input_divisor = 1.0F;  // raw values are divided by it first: 255 for uint8, else 1
    int64_t channels = 0;        // C, H and W of the output sample
    int64_t height = 0;
    int64_t width = 0;
    std::vector<float> mean;
    std::vector<float> std;
};

// Batches of preprocessed samples in index order. The last batch is kept even when it is short,
// so every sample counts whatever the batch size.
class SampleBatchReader : public CalibrationDataReader {
  public:
    std::optional<CalibrationBatch> next() override;
    void rewind() override { position_ = 0; }
    int64_t sample_count() const override { return sample_count_; }

    const SamplePreprocessing& preprocessing() const { return preprocessing_; }
    int64_t batch_size() const { return batch_size_; }

  protected:
    SampleBatchReader(SamplePreprocessing preprocessing, int64_t batch_size, int64_t sample_count);

    // Writes samples [first, first + count) to `output`, count * C * H * W values.
    virtual void read_samples(int64_t first, int64_t count, std::span<float> output) = 0;

    // Applies the preprocessing to one raw sample [C, raw_height, raw_width] and writes the
    // [C, H, W] result to `output`.
    void preprocess_sample(std::span<const float> raw, int64_t raw_height, int64_t raw_width,
                           std::span<float> output) const;

    int64_t sample_size() const;

  private:
    SamplePreprocessing preprocessing_;
    int64_t batch_size_;
    int64_t sample_count_;
    int64_t position_ = 0;
};

// Samples of a 4-D .npy array [N, C, H, W], read from the file one batch at a time.
class NpyCalibrationReader : public SampleBatchReader {
  public:
    // Uses the first `sample_count` rows of `file`. Its channel count must be
    // preprocessing.channels.
    NpyCalibrationReader(NpyFile file, SamplePreprocessing preprocessing, int64_t batch_size,
                         int64_t sample_count);

  protected:
    void read_samples(int64_t first, int64_t count, std::span<float> output) override;

  private:
    NpyFile file_;
    std::vector<float> raw_;  // the rows of the current batch, as stored
};

// Samples [1, rows, columns] of an IDX image file.
class IdxCalibrationReader : public SampleBatchReader {
  public:
    // Uses the first `sample_count` images. preprocessing.channels must be 1.
    // NOTE: the whole file stays in memory because read_idx_images reads it at once (47 MB of
    // pixels for Fashion-MNIST's 60,000 training images).
    IdxCalibrationReader(IdxImages images, SamplePreprocessing preprocessing, int64_t batch_size,
                         int64_t sample_count);

  protected:
    void read_samples(int64_t first, int64_t count, std::span<float> output) override;

  private:
    IdxImages images_;
};

// PNG images decoded one batch at a time and converted to preprocessing.channels channels.
class PngFolderCalibrationReader : public SampleBatchReader {
  public:
    // `files` in batch order. When `resize` is false every image must already be H x W.
    // Otherwise images of another size are resized to it.
    PngFolderCalibrationReader(std::vector<std::filesystem::path> files,
                               SamplePreprocessing preprocessing, bool resize, int64_t batch_size);

  protected:
    void read_samples(int64_t first, int64_t count, std::span<float> output) override;

  private:
    std::vector<std::filesystem::path> files_;
    bool resize_;
};

// Opens the calibration data at options.path with the reader that fits it (see
// detect_calibration_source) and checks it against the model input `model_input_shape`. That
// shape is [N, C, H, W] with entries <= 0 for dynamic dimensions, and an empty shape skips the
// check. The sample's C, H and W must match where the model fixes them. mean and std must have
// 1 or C values, every std must be positive, and the data must contain at least one sample.
// When the model fixes the batch size N, batches have N samples and the sample count must be a
// multiple of N. Throws Error with the fix otherwise.
std::unique_ptr<CalibrationDataReader> open_calibration_source(
    const CalibrationSourceOptions& options, const std::vector<int64_t>& model_input_shape);

// Parses a comma-separated list of numbers such as "0.485,0.456,0.406" (spaces allowed around
// the values). Throws Error(kUsage) naming `option_name` for an empty item, a value that is not a
// number, or a value that is not finite.
std::vector<float> parse_float_list(const std::string& text, const std::string& option_name);

}  // namespace edgeq
