// llama2.c checkpoints (.bin): the legacy v0 layout (7 int32 header, float32 weights, RoPE tables)
// and the v1 "ak42" layout (256-byte header, float32). Weights are mapped to HF names, with Q/K rows
// un-permuted from Meta's interleaved RoPE pairs to HF's rotate_half layout; the others stay views of the
// memory-mapped file (read-only: clone before editing in place).
#include "mlxterp/error.hpp"
#include "mlxterp/model.hpp"

namespace mlxterp {

namespace {

at::Tensor interleaved_to_hf(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({n_heads, rows / n_heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

}  // namespace

ModelFiles read_llama2c_model(const std::string& path) {
  auto file = MappedFile::open(path);
  const size_t size = file->size();
  MLXTERP_CHECK(size >= 28, path, ": too short for a llama2.c checkpoint; expected at least a 28-byte header, got ",
                size, " bytes (truncated file?)");
  uint32_t magic;
  std::memcpy(&magic, file->data(), 4);
  Header h{};
  size_t offset = 0;
  int version = 0;
  bool shared = true;
  if (magic == 0x616b3432) {  // "ak42"
    int32_t v;
    std::memcpy(&v, file->data() + 4, 4);
    MLXTERP_CHECK(v == 1, path, ": unsupported llama2.c checkpoint version; expected the legacy format or version 1 "
                  "(float32), got ", v, v == 2 ? " (version 2 is int8-quantized: re-export with --version 1)" : "");
    MLXTERP_CHECK(size >= 256, path, ": truncated version-1 header; expected at least 256 bytes, got ", size);
    std::memcpy(&h, file->data() + 8, sizeof h);
    shared = file->data()[8 + sizeof h] != 0;
    offset = 256;
    version = 1;
  } else {
    std::memcpy(&h, file->data(), sizeof h);
    shared = h.vocab_size > 0;
    h.vocab_size = std::abs(h.vocab_size);
    offset = sizeof h;
  }
  auto pos = [&](const char* name, int32_t v) {
    MLXTERP_CHECK(v > 0 && v < (1 << 24), path, ": header field ", name, " is out of range; expected 1 .. 16777215, got ",
                  v, " (not a llama2.c checkpoint?)");
  };
  pos("dim", h.dim);
  pos("hidden_dim", h.hidden_dim);
  pos("n_layers", h.n_layers);
  pos("n_heads", h.n_heads);
  pos("n_kv_heads", h.n_kv_heads);
  pos("vocab_size", h.vocab_size);
  pos("seq_len", h.seq_len);
  MLXTERP_CHECK(h.dim % h.n_heads == 0 && h.n_heads % h.n_kv_heads == 0 && (h.dim / h.n_heads) % 2 == 0, path,
                ": header sizes are inconsistent; expected dim divisible by n_heads into an even head size and n_heads "
                "divisible by n_kv_heads, got dim=", h.dim, ", n_heads=", h.n_heads, ", n_kv_heads=", h.n_kv_heads,
                " (not a llama2.c checkpoint?)");
  const int64_t d = h.dim, hd = h.dim / h.n_heads, L = h.n_layers, V = h.vocab_size, F = h.hidden_dim;
  const int64_t kv = h.n_kv_heads * hd;
  // In 128-bit arithmetic: header fields up to 2^24 make these products overflow 64 bits.
  using u128 = unsigned __int128;
  u128 n_floats = u128(V) * d + u128(L) * d * 2 + u128(L) * d * d * 2 + u128(L) * d * kv * 2 + u128(L) * d * F * 3 + d;
  if (version == 0) n_floats += u128(h.seq_len) * hd;  // freq_cis real + imag
  if (!shared) n_floats += u128(V) * d;
  const u128 expect128 = offset + n_floats * 4;
  const std::string expect_str = expect128 >> 63 ? std::string("more than 2^63") : std::to_string(uint64_t(expect128));
  MLXTERP_CHECK(expect128 == u128(size), path, ": file size disagrees with its header (dim=", d, ", hidden_dim=", F,
                ", n_layers=", L, ", n_heads=", h.n_heads, ", n_kv_heads=", h.n_kv_heads, ", vocab=", V,
                ", seq_len=", h.seq_len, shared ? ", shared classifier" : ", separate classifier", "); expected ",
                expect_str, " bytes, got ", size, " (truncated, or not a float32 llama2.c checkpoint?)");

  // Weights are zero-copy views of the (read-only, 4-byte aligned) mapping, which they keep alive: loading
  // costs no second copy of the file. Only the un-permuted Q/K are new tensors.
  const float* base = reinterpret_cast<const float*>(file->data() + offset);
  MLXTERP_ASSERT(reinterpret_cast<uintptr_t>(base) % alignof(float) == 0);
  size_t cursor = 0;
  auto next = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    at::Tensor t = at::from_blob(const_cast<float*>(base + cursor), shape, [file](void*) {}, at::kFloat);
    cursor += size_t(n);
    return t;
  };
  ModelFiles out;
  TensorMap& W = out.weights;
  auto layer = [](int64_t i, const char* s) { return "model.layers." + std::to_string(i) + "." + s; };
  if (version == 0) {
    W["model.embed_tokens.weight"] = next({V, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "input_layernorm.weight")] = next({d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.q_proj.weight")] = interleaved_to_hf(next({d, d}), h.n_heads);
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.k_proj.weight")] = interleaved_to_hf(next({kv, d}), h.n_kv_heads);
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.v_proj.weight")] = next({kv, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.o_proj.weight")] = next({d, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "post_attention_layernorm.weight")] = next({d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.gate_proj.weight")] = next({F, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.down_proj.weight")] = next({d, F});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.up_proj.weight")] = next({F, d});
    W["model.norm.weight"] = next({d});
    cursor += size_t(h.seq_len) * hd;  // RoPE tables (recomputed)
  } else {
    for (int64_t i = 0; i < L; ++i) W[layer(i, "input_layernorm.weight")] = next({d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "post_attention_layernorm.weight")] = next({d});
    W["model.norm.weight"] = next({d});
    W["model.embed_tokens.weight"] = next({V, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.q_proj.weight")] = interleaved_to_hf(next({d, d}), h.n_heads);
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.k_proj.weight")] = interleaved_to_hf(next({kv, d}), h.n_kv_heads);
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.v_proj.weight")] = next({kv, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "self_attn.o_proj.weight")] = next({d, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.gate_proj.weight")] = next({F, d});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.down_proj.weight")] = next({d, F});
    for (int64_t i = 0; i < L; ++i) W[layer(i, "mlp.up_proj.weight")] = next({F, d});
  }
  if (!shared) W["lm_head.weight"] = next({V, d});
  MLXTERP_ASSERT(offset + cursor * 4 == size);

  ModelConfig& c = out.config;
  c.arch = c.model_type = "llama";
  c.d_model = d;
  c.n_layers = L;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.d_head = hd;
  c.d_mlp = F;
  c.d_vocab = V;
  c.n_ctx = h.seq_len;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = shared;
  c.layer_types.assign(L, "full_attention");
  c.rope["default"] = RopeParams{};
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.raw = nlohmann::json{{"model_type", "llama"}, {"source", "llama2.c"}};
  c.validate(path);
  // Tokenizer beside it: tokenizer.bin, tok*.bin, tokenizer.model.
  std::string dir = dirname(path);
  if (dir.empty()) dir = ".";
  for (const char* cand : {"tokenizer.bin", "tokenizer.model"}) {
    std::string p = join_path(dir, cand);
    if (file_exists(p)) {
      out.tokenizer_path = p;
      break;
    }
  }
  if (out.tokenizer_path.empty()) {
    std::error_code ec;
    std::vector<std::string> toks;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      std::string n = e.path().filename().string();
      if (starts_with(n, "tok") && ends_with(n, ".bin")) toks.push_back(e.path().string());
    }
    std::sort(toks.begin(), toks.end());
    // Prefer the one whose vocabulary size is in its name (tok512.bin for a 512-token model).
    for (const auto& t : toks)
      if (basename(t) == "tok" + std::to_string(V) + ".bin") out.tokenizer_path = t;
    if (out.tokenizer_path.empty() && !toks.empty()) out.tokenizer_path = toks[0];
  }
  return out;
}

}  // namespace mlxterp
