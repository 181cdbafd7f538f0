#include "edgeq/model/state_dict.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace edgeq {

std::string format_shape(const std::vector<int64_t>& shape) {
    return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace edgeq
