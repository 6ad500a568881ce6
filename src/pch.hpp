// Precompiled header: libtorch and the standard library pieces almost every file uses.
#pragma once
#include <ATen/ATen.h>
#include "mlxterp/torch_compat.hpp"
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <filesystem>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
