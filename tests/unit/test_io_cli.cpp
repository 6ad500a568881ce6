// Bad model files through the command line: exit 1, one `error: <file>: ...` line on stderr, nothing on
// stdout. (The CLI contract is in docs/CLI.md.)
#include "common.hpp"
#include "test_io_util.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

void expect_load_error(const std::string& model, const std::string& needle) {
  CliResult r = run_cli("components --model '" + model + "'");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(starts_with(r.err, "error: ")) << r.err;
  EXPECT_HAS(r.err, needle);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
}

}  // namespace

TEST(IOCli, BadModelFilesExitOneNamingTheFile) {
  MLXTERP_REQUIRE_DATA("models/stories260K/stories260K.gguf");
  TempDir tmp;
  const std::string gguf = read_file(data_path("models/stories260K/stories260K.gguf"));
  write_bytes(tmp.file("cut.gguf"), gguf.substr(0, gguf.size() / 2));
  expect_load_error(tmp.file("cut.gguf"), tmp.file("cut.gguf") + ": tensor '");

  const std::string bin = read_file(data_path("models/stories260K/stories260K.bin"));
  write_bytes(tmp.file("cut.bin"), bin.substr(0, 1000));
  expect_load_error(tmp.file("cut.bin"), tmp.file("cut.bin") + ": file size disagrees with its header");

  // An HF directory whose safetensors is truncated.
  TempDir hf;
  write_bytes(hf.file("config.json"), read_file(data_path("models/stories260K/hf/config.json")));
  const std::string st = read_file(data_path("models/stories260K/hf/model.safetensors"));
  write_bytes(hf.file("model.safetensors"), st.substr(0, st.size() - 100));
  expect_load_error(hf.path, hf.file("model.safetensors") + ": tensor '");

  // A config.json that disagrees with the weights.
  write_bytes(hf.file("model.safetensors"), st);
  auto cfg = nlohmann::json::parse(read_file(data_path("models/stories260K/hf/config.json")));
  cfg["hidden_size"] = 32;
  write_bytes(hf.file("config.json"), cfg.dump());
  expect_load_error(hf.path, "the config implies");
}
