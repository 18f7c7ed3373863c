// The watchdog: silent while heartbeats arrive; on a stall it reports the last iteration
// and every thread's phase stack, dumps native stacks, and exits with its exit code.
#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <thread>

#include "train/watchdog.h"

using namespace std::chrono_literals;
using primus::train::Watchdog;
using primus::train::WatchdogOptions;

TEST(Watchdog, QuietWhileHeartbeatsArrive) {
  WatchdogOptions o;
  o.timeout = 200ms;
  o.exit_process = false;
  o.dump_native_stacks = false;
  std::string report;
  o.sink = [&](const std::string& s) { report = s; };
  Watchdog dog(o);
  for (int i = 1; i <= 30; ++i) {
    std::this_thread::sleep_for(20ms);
    dog.heartbeat(i);
  }
  EXPECT_FALSE(dog.fired());
  EXPECT_TRUE(report.empty());
}

TEST(Watchdog, ReportsPhasesOfEveryThreadOnAStall) {
  WatchdogOptions o;
  o.timeout = 150ms;
  o.exit_process = false;
  o.dump_native_stacks = false;
  std::mutex m;
  std::string report;
  o.sink = [&](const std::string& s) {
    std::lock_guard<std::mutex> lock(m);
    report = s;
  };
  Watchdog dog(o);
  dog.name_thread("main");
  dog.heartbeat(41);
  std::thread loader([&] {
    dog.name_thread("data-loader");
    Watchdog::Phase p(dog, "read shard 3");
    std::this_thread::sleep_for(600ms);
  });
  {
    Watchdog::Phase step(dog, "train_step 42");
    {
      Watchdog::Phase fwd(dog, "forward");
    }
    Watchdog::Phase ar(dog, "all-reduce grads");
    for (int i = 0; i < 100 && !dog.fired(); ++i) std::this_thread::sleep_for(10ms);
  }
  loader.join();
  ASSERT_TRUE(dog.fired());
  std::lock_guard<std::mutex> lock(m);
  EXPECT_NE(report.find("last completed iteration: 41"), std::string::npos) << report;
  EXPECT_NE(report.find("main (tid"), std::string::npos) << report;
  EXPECT_NE(report.find("train_step 42 > all-reduce grads"), std::string::npos) << report;
  EXPECT_EQ(report.find("forward"), std::string::npos) << report;  // left already
  EXPECT_NE(report.find("data-loader (tid"), std::string::npos) << report;
  EXPECT_NE(report.find("read shard 3"), std::string::npos) << report;
}

TEST(WatchdogDeathTest, ExitsWithStacksAndCode) {
  EXPECT_EXIT(
      {
        WatchdogOptions o;
        o.timeout = 100ms;
        o.exit_code = 124;
        Watchdog dog(o);
        dog.name_thread("main");
        dog.heartbeat(7);
        Watchdog::Phase p(dog, "waiting for NCCL all-reduce");
        std::this_thread::sleep_for(10s);  // the hang
        std::exit(0);
      },
      testing::ExitedWithCode(124),
      "no progress for .*last completed iteration: 7(.|\n)*waiting for NCCL all-reduce(.|\n)*native stack of main");
}
