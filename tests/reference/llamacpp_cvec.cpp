// Reference harness: run llama.cpp itself (libllama + libllama-common, any recent build) on a GGUF
// model with and without a GGUF control vector and print the logits of every position as JSON.
// Used by make_cvec_golden.py to establish, by measurement, where llama.cpp adds direction.N.
//
//   g++ -O2 -std=c++17 llamacpp_cvec.cpp -o llamacpp_cvec -L$LIB -l:libllama.so -l:libllama-common.so -l:libggml.so -Wl,-rpath,$LIB
//   LLAMA_BACKEND_DIR=$LIB ./llamacpp_cvec MODEL.gguf "1,403,407" [CVEC.gguf STRENGTH LAYER_START LAYER_END]
//
// No llama.cpp headers are needed: the handful of C functions are declared here. The two parameter
// structs are opaque blobs larger than any llama.cpp version's (x86-64 passes and returns such structs
// in memory, so the library reads and writes only its own prefix); llama_batch's layout has been
// stable since 2023. common_control_vector_load is llama.cpp's own GGUF control-vector loader.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
struct llama_model;
struct llama_context;
struct llama_vocab;
typedef int32_t llama_token;
struct llama_batch {
  int32_t n_tokens;
  llama_token* token;
  float* embd;
  int32_t* pos;
  int32_t* n_seq_id;
  int32_t** seq_id;
  int8_t* logits;
};
struct Blob {
  alignas(16) unsigned char bytes[4096];
};
Blob llama_model_default_params(void);
Blob llama_context_default_params(void);
void llama_backend_init(void);
void ggml_backend_load_all_from_path(const char* dir);  // libggml: CPU backend variants are plugins
llama_model* llama_model_load_from_file(const char* path, Blob params);
llama_context* llama_init_from_model(llama_model* model, Blob params);
llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
void llama_batch_free(llama_batch batch);
int32_t llama_decode(llama_context* ctx, llama_batch batch);
float* llama_get_logits_ith(llama_context* ctx, int32_t i);
int32_t llama_set_adapter_cvec(llama_context* ctx, const float* data, size_t len, int32_t n_embd, int32_t il_start,
                               int32_t il_end);
int32_t llama_model_n_embd(const llama_model* model);
int32_t llama_model_n_layer(const llama_model* model);
const llama_vocab* llama_model_get_vocab(const llama_model* model);
int32_t llama_vocab_n_tokens(const llama_vocab* vocab);
void llama_free(llama_context* ctx);
void llama_model_free(llama_model* model);
}

// llama.cpp common/common.h
struct common_control_vector_load_info {
  float strength;
  std::string fname;
};
struct common_control_vector_data {
  int n_embd;
  std::vector<float> data;
};
common_control_vector_data common_control_vector_load(const std::vector<common_control_vector_load_info>& load_infos);

int main(int argc, char** argv) {
  if (argc != 3 && argc != 7) {
    std::fprintf(stderr, "usage: %s MODEL.gguf IDS [CVEC.gguf STRENGTH LAYER_START LAYER_END]\n", argv[0]);
    return 2;
  }
  std::vector<llama_token> ids;
  for (std::string s = argv[2]; !s.empty();) {
    size_t c = s.find(',');
    ids.push_back(std::atoi(s.substr(0, c).c_str()));
    s = c == std::string::npos ? "" : s.substr(c + 1);
  }
  // The CPU backend is a plugin beside the libraries (libggml-cpu-*.so): load it from there.
  const char* dir = std::getenv("LLAMA_BACKEND_DIR");
  ggml_backend_load_all_from_path(dir ? dir : ".");
  llama_backend_init();
  llama_model* model = llama_model_load_from_file(argv[1], llama_model_default_params());
  if (!model) return 1;
  llama_context* ctx = llama_init_from_model(model, llama_context_default_params());
  if (!ctx) return 1;
  const int n_embd = llama_model_n_embd(model), n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  if (argc == 7) {
    common_control_vector_data cv = common_control_vector_load({{float(std::atof(argv[4])), argv[3]}});
    if (cv.n_embd == -1) return 1;
    if (llama_set_adapter_cvec(ctx, cv.data.data(), cv.data.size(), cv.n_embd, std::atoi(argv[5]), std::atoi(argv[6])) != 0)
      return 1;
  }
  llama_batch b = llama_batch_init(int32_t(ids.size()), 0, 1);
  b.n_tokens = int32_t(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    b.token[i] = ids[i];
    b.pos[i] = int32_t(i);
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  if (llama_decode(ctx, b) != 0) return 1;
  std::printf("{\"n_embd\": %d, \"n_layer\": %d, \"logits\": [", n_embd, llama_model_n_layer(model));
  for (size_t i = 0; i < ids.size(); ++i) {
    const float* l = llama_get_logits_ith(ctx, int32_t(i));
    std::printf("%s[", i ? ", " : "");
    for (int v = 0; v < n_vocab; ++v) std::printf("%s%.7g", v ? ", " : "", l[v]);
    std::printf("]");
  }
  std::printf("]}\n");
  llama_batch_free(b);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
