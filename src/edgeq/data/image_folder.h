// Folders of PNG images as model input: listing, decoding with libpng, bilinear resizing and
// per-channel normalization, one image at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace edgeq {

// Float image in planar layout [channels, height, width], row-major.
struct PlanarImage {
    int64_t channels = 0;
    int64_t height = 0;
    int64_t width = 0;
    std::vector<float> values;
};

// Size and colour of a PNG file, from its header.
struct PngInfo {
    int64_t width = 0;
    int64_t height = 0;
    int64_t channels = 0;  // 1 for grey (with or without alpha), 3 for colour or palette
};

// Lists the regular files of `folder` whose extension is ".png" in any letter case, sorted by
// file name in byte order, so the order does not depend on the file system or the locale.
// Subfolders are not searched. Other entries are skipped and counted in a debug log line.
// Throws Error naming the folder when it is missing or contains no PNG file.
std::vector<std::filesystem::path> list_png_files(const std::filesystem::path& folder);

// Reads the header of a PNG file. Throws Error naming the file when it is not a valid PNG.
PngInfo read_png_info(const std::filesystem::path& path);

// Decodes a PNG file (grey, grey+alpha, RGB, RGBA or palette; 1 to 16 bits) to `channels`
// channels (1 or 3) with values in [0, 1]: each sample is divided by 2^bit_depth - 1. Alpha is
// dropped, not composited. Throws Error naming the file when it is corrupt or truncated.
PlanarImage decode_png(const std::filesystem::path& path, int64_t channels);

// Resizes with bilinear interpolation and half-pixel centers, as PyTorch's
// interpolate(mode="bilinear", align_corners=False, antialias=False). Output pixel x reads the
// input at u = (x + 0.5) * in_width / out_width - 0.5, clamped below at 0. With x0 = floor(u),
// x1 = min(x0 + 1, in_width - 1) and t = u - x0, the value is (1 - t) * in[x0] + t * in[x1], and
// the same along the height. Without antialias a downscale by more than 2 skips input pixels.
PlanarImage resize_bilinear(const PlanarImage& image, int64_t height, int64_t width);

// Normalizes planar values [channels, plane] in place: x = (x - mean[c]) / std[c]. `mean` and
// `std` contain 1 value (for every channel) or one per channel. An empty `mean` means 0 and an
// empty `std` means 1. The caller checks the lengths and that every std is positive.
void normalize_channels(std::span<float> values, int64_t channels, const std::vector<float>& mean,
                        const std::vector<float>& std);

}  // namespace edgeq
