// Stop signals: SIGTERM/SIGUSR1/SIGINT set the flag the loop polls; a second SIGINT exits
// at once; the previous handlers come back afterwards.
#include <gtest/gtest.h>
#include <signal.h>

#include "core/error.h"
#include "train/signals.h"

using primus::train::StopSignals;

namespace {
int g_custom_hits = 0;  // test-only: counts calls of the handler installed before StopSignals
void custom_handler(int) { ++g_custom_hits; }
}  // namespace

TEST(StopSignals, EachSignalRequestsAStop) {
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) {
    StopSignals s;
    EXPECT_FALSE(s.stop_requested());
    ASSERT_EQ(::raise(sig), 0);
    EXPECT_TRUE(s.stop_requested());
    EXPECT_EQ(s.signal_number(), sig);
    // A later different signal does not replace the first one.
    if (sig != SIGINT) {
      ::raise(SIGUSR1 == sig ? SIGTERM : SIGUSR1);
      EXPECT_EQ(s.signal_number(), sig);
    }
  }
  EXPECT_EQ(StopSignals::signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(StopSignals::signal_name(SIGUSR1), "SIGUSR1");
}

TEST(StopSignals, OnlyOneAtATimeAndHandlersAreRestored) {
  struct sigaction sa {};
  sa.sa_handler = custom_handler;
  sigemptyset(&sa.sa_mask);
  struct sigaction before {};
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &before), 0);
  {
    StopSignals s;
    EXPECT_THROW(StopSignals(), primus::Error);
    ::raise(SIGUSR1);
    EXPECT_EQ(g_custom_hits, 0);  // ours handled it
  }
  ::raise(SIGUSR1);
  EXPECT_EQ(g_custom_hits, 1);  // the previous handler is back
  sigaction(SIGUSR1, &before, nullptr);
}

TEST(StopSignalsDeathTest, SecondSigintExitsAtOnce) {
  EXPECT_EXIT(
      {
        StopSignals s;
        ::raise(SIGINT);
        ::raise(SIGINT);
        std::exit(0);  // not reached
      },
      testing::ExitedWithCode(130), "second SIGINT");
}
