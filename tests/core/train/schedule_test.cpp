#include "train/schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

namespace peftkit {
namespace {

TEST(Schedule, CosineFromInitToFinalWithWarmupFactor) {
  train::ScheduleSettings s{"cos", 1e-3, 1e-4, 10, 100};
  const double pi = std::numbers::pi;
  auto cosine = [&](double step) {
    return 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + std::cos(pi * step / 100));
  };
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 0), cosine(0) * 0.01);
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 5), cosine(5) * (0.01 + 0.99 * 0.5));
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 10), cosine(10));
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 50), cosine(50));
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 100), 1e-4);
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 150), 1e-4);
}

TEST(Schedule, ConstantWhenInitEqualsFinal) {
  train::ScheduleSettings s{"cos", 2e-5, 2e-5, 0, 100};
  for (int64_t step : {0, 37, 99, 100}) EXPECT_DOUBLE_EQ(train::learning_rate(s, step), 2e-5);
}

TEST(Schedule, WsdWarmsUpLinearlyFromZeroThenDecaysToFinal) {
  train::ScheduleSettings s{"wsd", 1e-3, 1e-5, 20, 120};
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 5), 1e-3 * 5 / 20);
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 20), 1e-3);
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 70),
                   1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + std::cos(std::numbers::pi * 50 / 100)));
  EXPECT_DOUBLE_EQ(train::learning_rate(s, 120),
                   1e-5);  // lr_final honoured (RWKV-PEFT decays to 0)
}

}  // namespace
}  // namespace peftkit
