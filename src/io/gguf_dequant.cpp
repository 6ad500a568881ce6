// GGML block formats: sizes and dequantization to float32.
#include "mlxterp/error.hpp"
#include "mlxterp/io.hpp"

namespace mlxterp {

namespace {
struct TypeInfo {
  GGMLType type;
  const char* name;
  size_t block_elems, block_bytes;
};
constexpr TypeInfo kTypes[] = {
    {GGMLType::F32, "F32", 1, 4},        {GGMLType::F16, "F16", 1, 2},         {GGMLType::BF16, "BF16", 1, 2},
    {GGMLType::F64, "F64", 1, 8},        {GGMLType::I8, "I8", 1, 1},           {GGMLType::I16, "I16", 1, 2},
    {GGMLType::I32, "I32", 1, 4},        {GGMLType::I64, "I64", 1, 8},         {GGMLType::Q4_0, "Q4_0", 32, 18},
    {GGMLType::Q4_1, "Q4_1", 32, 20},    {GGMLType::Q5_0, "Q5_0", 32, 22},     {GGMLType::Q5_1, "Q5_1", 32, 24},
    {GGMLType::Q8_0, "Q8_0", 32, 34},    {GGMLType::Q2_K, "Q2_K", 256, 84},    {GGMLType::Q3_K, "Q3_K", 256, 110},
    {GGMLType::Q4_K, "Q4_K", 256, 144},  {GGMLType::Q5_K, "Q5_K", 256, 176},   {GGMLType::Q6_K, "Q6_K", 256, 210},
};
const TypeInfo* find_type(GGMLType t) {
  for (const auto& i : kTypes)
    if (i.type == t) return &i;
  return nullptr;
}
}  // namespace

const char* ggml_type_name(GGMLType t) {
  const TypeInfo* i = find_type(t);
  return i ? i->name : "unknown";
}

size_t ggml_block_bytes(GGMLType t) {
  const TypeInfo* i = find_type(t);
  MLXTERP_CHECK(i, "GGUF: unsupported tensor type ", uint32_t(t),
                "; expected F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K");
  return i->block_bytes;
}

size_t ggml_block_elems(GGMLType t) {
  const TypeInfo* i = find_type(t);
  MLXTERP_CHECK(i, "GGUF: unsupported tensor type ", uint32_t(t),
                "; expected F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K");
  return i->block_elems;
}

void ggml_dequantize(GGMLType t, const uint8_t* src, float* dst, size_t n_elems) {
  // Placeholder until the quantized formats land (tracked in issue 2): unquantized types only.
  (void)src;
  (void)dst;
  (void)n_elems;
  MLXTERP_FAIL("GGUF: dequantizing ", ggml_type_name(t), " is not supported yet");
}

}  // namespace mlxterp
