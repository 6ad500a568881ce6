// The device-side token shuffle buffer of the streaming pipeline (runs on MLXTERP_TEST_DEVICE).
#include "common.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/shuffle_buffer.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

TEST(ShuffleBuffer, EveryRowLeavesExactlyOnceAndShuffled) {
  at::manual_seed(0);
  const at::Device dev = test_device();
  ShuffleBuffer buf(100, 3, at::TensorOptions().dtype(at::kFloat).device(dev));
  std::vector<at::Tensor> outs;
  int64_t next = 0;
  for (int64_t n : {30, 50, 40, 250, 7}) {  // 250 > capacity: several replacement rounds in one push
    at::Tensor rows = at::arange(next, next + n, at::kFloat).unsqueeze(1).repeat({1, 3}).to(dev);
    next += n;
    const int64_t before = buf.size();
    at::Tensor out = buf.push(rows);
    EXPECT_EQ(out.size(0), std::max<int64_t>(0, before + n - 100)) << "push of " << n;
    EXPECT_EQ(buf.size(), std::min<int64_t>(100, before + n));
    outs.push_back(out);
  }
  at::Tensor big = outs[3].select(1, 0).cpu();  // the 250-row push's output
  EXPECT_FALSE(at::equal(big, std::get<0>(big.sort())));  // not in arrival order
  outs.push_back(buf.drain());
  EXPECT_EQ(buf.size(), 0);
  at::Tensor all = at::cat(outs, 0).cpu();
  EXPECT_TRUE(at::equal(all.select(1, 0), all.select(1, 2)));  // rows stay whole
  EXPECT_TRUE(at::equal(std::get<0>(all.select(1, 0).sort()), at::arange(next, at::kFloat)));
}

TEST(ShuffleBuffer, RejectsRowsOfAnotherWidth) {
  ShuffleBuffer buf(10, 4, at::TensorOptions().dtype(at::kFloat));
  try {
    buf.push(at::zeros({2, 5}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rows must be [n, 4]; got [2, 5]"), std::string::npos) << e.what();
  }
}
