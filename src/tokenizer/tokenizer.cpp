// Tokenizer factory (the implementations arrive with the tokenizer issue).
#include "mlxterp/error.hpp"
#include "mlxterp/tokenizer.hpp"

namespace mlxterp {

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  MLXTERP_FAIL(path, ": tokenizers are not available yet in this build");
}

}  // namespace mlxterp
