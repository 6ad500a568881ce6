// GGML block formats: sizes and dequantization to float32.
//
// Block layouts (little-endian; "f16" is an IEEE half; QK_K = 256), as ggml defines them:
//   Q4_0  18 B / 32:  f16 d, u8 qs[16]                    x = d * (q - 8), q = 4 bits
//   Q4_1  20 B / 32:  f16 d, f16 m, u8 qs[16]             x = d * q + m
//   Q5_0  22 B / 32:  f16 d, u32 qh, u8 qs[16]            x = d * (q - 16), q = 4 low bits | bit j of qh << 4
//   Q5_1  24 B / 32:  f16 d, f16 m, u32 qh, u8 qs[16]     x = d * q + m
//   Q8_0  34 B / 32:  f16 d, i8 qs[32]                    x = d * q
//   Q2_K  84 B / 256: u8 scales[16], u8 qs[64], f16 d, f16 dmin
//                     16 groups of 16: x = (d * (sc & 15)) * q - dmin * (sc >> 4), q = 2 bits
//   Q3_K 110 B / 256: u8 hmask[32], u8 qs[64], u8 scales[12], f16 d
//                     16 groups of 16, 6-bit signed scales (s - 32); q = 2 low bits - (high bit ? 0 : 4)
//   Q4_K 144 B / 256: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
//                     8 groups of 32, 6-bit scale and min each: x = (d * sc) * q - dmin * m
//   Q5_K 176 B / 256: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]   (Q4_K + a fifth bit)
//   Q6_K 210 B / 256: u8 ql[128], u8 qh[64], i8 scales[16], f16 d
//                     16 groups of 16: x = (d * sc) * (q - 32), q = 4 low bits | 2 high bits << 4
// Within a 256 super-block, nibble/bit-plane k of byte l belongs to element 32k + l of its 128- or
// 64-element half (see each function). The arithmetic follows ggml's reference dequantizers operation by
// operation (products rounded in the same order), so results are bit-identical to gguf-py/ggml.
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

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

// Known GGML type ids we cannot read, named so the error says what the file holds.
const char* unsupported_name(uint32_t t) {
  switch (t) {
    case 9: return "Q8_1";
    case 15: return "Q8_K";
    case 16: return "IQ2_XXS";
    case 17: return "IQ2_XS";
    case 18: return "IQ3_XXS";
    case 19: return "IQ1_S";
    case 20: return "IQ4_NL";
    case 21: return "IQ3_S";
    case 22: return "IQ2_S";
    case 23: return "IQ4_XS";
    case 29: return "IQ1_M";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    case 39: return "MXFP4";
    default: return nullptr;
  }
}

[[noreturn]] void fail_type(GGMLType t) {
  const char* known = unsupported_name(uint32_t(t));
  MLXTERP_FAIL("GGUF: unsupported tensor type ", uint32_t(t), known ? cat(" (", known, ")") : std::string(),
               "; expected F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K (hint: "
               "re-quantize the model to one of these types with llama.cpp's llama-quantize)");
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

inline uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- 32-element blocks ----------------------------------------------------------------------------

void block_q4_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(int(qs[j] & 0x0F) - 8);
    y[j + 16] = d * float(int(qs[j] >> 4) - 8);
  }
}

void block_q4_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(qs[j] & 0x0F) + m;
    y[j + 16] = d * float(qs[j] >> 4) + m;
  }
}

void block_q5_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint32_t qh = u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | int((qh >> j) & 1u) << 4;
    const int hi = (qs[j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * float(lo - 16);
    y[j + 16] = d * float(hi - 16);
  }
}

void block_q5_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint32_t qh = u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | int((qh >> j) & 1u) << 4;
    const int hi = (qs[j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * float(lo) + m;
    y[j + 16] = d * float(hi) + m;
  }
}

void block_q8_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * float(qs[j]);
}

// ---- 256-element super-blocks -----------------------------------------------------------------------

void block_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = f16(b + 80), dmin = f16(b + 82);
  for (int g = 0; g < 16; ++g) {  // group g: elements 16g .. 16g+15
    const float dl = d * float(scales[g] & 0x0F);
    const float ml = dmin * float(scales[g] >> 4);
    const int half = g / 8, plane = (g % 8) / 2, off = 16 * (g % 2);
    const uint8_t* q = qs + 32 * half + off;
    for (int l = 0; l < 16; ++l) y[16 * g + l] = dl * float((q[l] >> (2 * plane)) & 3) - ml;
  }
}

void block_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16(b + 108);
  for (int g = 0; g < 16; ++g) {
    const int low = g < 8 ? (sc[g] & 0x0F) : (sc[g - 8] >> 4);
    const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    const float dl = d * float((low | high << 4) - 32);
    for (int l = 0; l < 16; ++l) {
      const int e = 16 * g + l;  // element within the super-block
      const int q2 = (qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
      const int hbit = (hmask[e % 32] >> (e / 32)) & 1;
      y[e] = dl * float(q2 - (hbit ? 0 : 4));
    }
  }
}

// The 12 packed bytes of Q4_K/Q5_K hold 8 six-bit scales and 8 six-bit mins.
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void block_q4_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {  // group j: elements 32j .. 32j+31, nibble j%2 of qs[32*(j/2) + l]
    int sc, m;
    scale_min_k4(j, scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) y[32 * j + l] = d1 * float((q[l] >> shift) & 0x0F) - m1;
  }
}

void block_q5_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | ((qh[l] >> j) & 1) << 4;
      y[32 * j + l] = d1 * float(v) - m1;
    }
  }
}

void block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, r = e % 128, k = r / 32, l = r % 32;
    const int lo = (ql[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
    const int hi = (qh[32 * n + l] >> (2 * k)) & 3;
    y[e] = (d * float(sc[e / 16])) * float((lo | hi << 4) - 32);
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(GGMLType t) {
  switch (t) {
    case GGMLType::Q4_0: return block_q4_0;
    case GGMLType::Q4_1: return block_q4_1;
    case GGMLType::Q5_0: return block_q5_0;
    case GGMLType::Q5_1: return block_q5_1;
    case GGMLType::Q8_0: return block_q8_0;
    case GGMLType::Q2_K: return block_q2_k;
    case GGMLType::Q3_K: return block_q3_k;
    case GGMLType::Q4_K: return block_q4_k;
    case GGMLType::Q5_K: return block_q5_k;
    case GGMLType::Q6_K: return block_q6_k;
    default: return nullptr;
  }
}

}  // namespace

const char* ggml_type_name(GGMLType t) {
  const TypeInfo* i = find_type(t);
  if (i) return i->name;
  const char* known = unsupported_name(uint32_t(t));
  return known ? known : "unknown";
}

size_t ggml_block_bytes(GGMLType t) {
  const TypeInfo* i = find_type(t);
  if (!i) fail_type(t);
  return i->block_bytes;
}

size_t ggml_block_elems(GGMLType t) {
  const TypeInfo* i = find_type(t);
  if (!i) fail_type(t);
  return i->block_elems;
}

void ggml_dequantize(GGMLType t, const uint8_t* src, float* dst, size_t n_elems) {
  const TypeInfo* info = find_type(t);
  if (!info) fail_type(t);
  MLXTERP_CHECK(n_elems % info->block_elems == 0, "GGUF: cannot dequantize ", n_elems, " elements of ", info->name,
                "; expected a multiple of its block size ", info->block_elems);
  if (t == GGMLType::F32) {
    std::memcpy(dst, src, n_elems * 4);
    return;
  }
  if (t == GGMLType::F16) {
    for (size_t i = 0; i < n_elems; ++i) dst[i] = f16(src + 2 * i);
    return;
  }
  if (t == GGMLType::BF16) {
    for (size_t i = 0; i < n_elems; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      uint32_t bits = uint32_t(h) << 16;
      std::memcpy(dst + i, &bits, 4);
    }
    return;
  }
  BlockFn fn = block_fn(t);
  MLXTERP_CHECK(fn, "GGUF: cannot dequantize ", info->name, " to float32; expected a float or quantized type");
  const int64_t n_blocks = int64_t(n_elems / info->block_elems);
  const size_t bb = info->block_bytes, be = info->block_elems;
  // Blocks are independent: split them over the intra-op threads (grain ~64 KB of output).
  at::parallel_for(0, n_blocks, int64_t(16384 / be), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(src + size_t(i) * bb, dst + size_t(i) * be);
  });
}

}  // namespace mlxterp
