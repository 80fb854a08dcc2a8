// Copyright regserve authors.
#include "core/scheduler/scheduler.h"

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

constexpr uint64_t kMB = 1000 * 1000;

SchedulerConfig Config(uint64_t ram, std::vector<uint64_t> vram,
                       int cpu_slots = 2) {
  SchedulerConfig c;
  c.ram_budget_bytes = ram;
  c.vram_budget_bytes = std::move(vram);
  c.cpu_slots = cpu_slots;
  c.gpu_slots_per_gpu = 1;
  c.live_check_period = absl::Milliseconds(10);
  return c;
}

ResourceRequest Cpu(uint64_t ram, std::string label = "") {
  ResourceRequest r;
  r.lane = Lane::kCpu;
  r.ram_bytes = ram;
  r.label = std::move(label);
  return r;
}

ResourceRequest Gpu(uint64_t ram, uint64_t vram, int gpu = -1) {
  ResourceRequest r;
  r.lane = Lane::kGpu;
  r.ram_bytes = ram;
  r.vram_bytes = vram;
  r.gpu = gpu;
  return r;
}

// Waits (bounded) until `n` requests are waiting in `s`.
void WaitForWaiters(const ResourceScheduler& s, int n) {
  for (int i = 0; i < 2000 && s.Stats().waiting < n; ++i)
    absl::SleepFor(absl::Milliseconds(1));
  ASSERT_GE(s.Stats().waiting, n);
}

TEST(Scheduler, ReservesAndReleases) {
  ResourceScheduler s(Config(1000 * kMB, {}), nullptr);
  auto a = s.Acquire(Cpu(600 * kMB, "a"), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(s.Stats().ram_reserved_bytes, 600 * kMB);
  EXPECT_EQ(s.Stats().cpu_running, 1);
  a->Release();
  EXPECT_FALSE(a->held());
  EXPECT_EQ(s.Stats().ram_reserved_bytes, 0u);
  {
    auto b = s.Acquire(Cpu(1000 * kMB), 0, 2, nullptr);
    ASSERT_TRUE(b.ok());
    Reservation moved = std::move(*b);
    EXPECT_TRUE(moved.held());
    EXPECT_EQ(s.Stats().ram_reserved_bytes, 1000 * kMB);
  }
  EXPECT_EQ(s.Stats().ram_reserved_bytes, 0u);
}

// A stage alone gets every core; stages admitted beside others share them,
// never below min_threads; a released stage's cores go to the next one.
TEST(Scheduler, ThreadShareFollowsTheStagesRunning) {
  SchedulerConfig c = Config(1000 * kMB, {1000 * kMB}, /*cpu_slots=*/4);
  c.machine_threads = 16;
  c.min_threads = 3;
  ResourceScheduler s(c, nullptr);
  auto a = s.Acquire(Cpu(10 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->threads(), 16);
  auto b = s.Acquire(Gpu(10 * kMB, 10 * kMB), 0, 2, nullptr);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->threads(), 8);  // a warp's writer shares the cores too
  auto d = s.Acquire(Cpu(10 * kMB), 0, 3, nullptr);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->threads(), 5);
  auto e = s.Acquire(Cpu(10 * kMB), 0, 4, nullptr);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->threads(), 4);
  auto f = s.Acquire(Cpu(10 * kMB), 0, 5, nullptr);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->threads(), 3);  // 16 / 5, but never below min_threads
  Reservation moved = std::move(*f);
  EXPECT_EQ(moved.threads(), 3);
  a->Release();
  b->Release();
  d->Release();
  e->Release();
  moved.Release();
  auto g = s.Acquire(Cpu(10 * kMB), 0, 6, nullptr);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->threads(), 16);
}

TEST(Scheduler, ThreadShareFromTheResourceConfig) {
  ResourceConfig rc;
  rc.machine_threads = 16;
  rc.elastix_threads = 4;
  const SchedulerConfig c = ToSchedulerConfig(rc);
  EXPECT_EQ(c.machine_threads, 16);
  EXPECT_EQ(c.min_threads, 4);
}

TEST(Scheduler, RefusesWhatCanNeverFit) {
  ResourceScheduler s(Config(1000 * kMB, {500 * kMB}), nullptr);
  absl::Status st = s.CheckFits(Cpu(1001 * kMB, "job x: decode"));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("job x: decode needs 1001 MB"), std::string::npos)
      << st;
  EXPECT_EQ(s.Acquire(Gpu(1, 501 * kMB), 0, 1, nullptr).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.Acquire(Gpu(1, 1, 3), 0, 1, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  ResourceScheduler no_gpu(Config(1000 * kMB, {}), nullptr);
  EXPECT_EQ(no_gpu.CheckFits(Gpu(1, 1)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(Scheduler, PriorityOrderThenFifo) {
  ResourceScheduler s(Config(1000 * kMB, {}, /*cpu_slots=*/1), nullptr);
  auto blocker = s.Acquire(Cpu(1), 0, 0, nullptr);
  ASSERT_TRUE(blocker.ok());
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  // (priority, sequence) pairs submitted in a scrambled order.
  const std::vector<std::pair<int, int>> jobs = {
      {0, 5}, {5, 7}, {0, 3}, {5, 6}, {9, 9}};
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] {
      auto r = s.Acquire(Cpu(1), jobs[i].first, jobs[i].second, nullptr);
      ASSERT_TRUE(r.ok());
      absl::MutexLock lock(&mu);
      order.push_back(jobs[i].second);
    });
    WaitForWaiters(s, static_cast<int>(i) + 1);
  }
  blocker->Release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{9, 6, 7, 3, 5}));
}

TEST(Scheduler, BigWaiterIsNotStarvedBySmallOnes) {
  ResourceScheduler s(Config(1000 * kMB, {}, /*cpu_slots=*/4), nullptr);
  auto a = s.Acquire(Cpu(500 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  std::atomic<bool> big_done{false};
  std::thread big([&] {
    auto r = s.Acquire(Cpu(800 * kMB), 0, 2, nullptr);
    ASSERT_TRUE(r.ok());
    big_done = true;
  });
  WaitForWaiters(s, 1);
  // 500 MB is free now, but 800 MB is held back for the earlier big job:
  // a 300 MB job must wait, a 100 MB job... also waits (800 > 500 free).
  CancelToken cancel;
  cancel.set_deadline(absl::Now() + absl::Milliseconds(150));
  EXPECT_EQ(s.Acquire(Cpu(100 * kMB), 0, 3, &cancel).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(big_done);
  a->Release();
  big.join();
  EXPECT_TRUE(big_done);
}

TEST(Scheduler, LaterSmallJobFitsBesideBlockedBigOne) {
  ResourceScheduler s(Config(1000 * kMB, {}, /*cpu_slots=*/4), nullptr);
  auto a = s.Acquire(Cpu(300 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  std::thread big(
      [&] { ASSERT_TRUE(s.Acquire(Cpu(900 * kMB), 0, 2, nullptr).ok()); });
  WaitForWaiters(s, 1);
  // Free: 700 MB; held back for the big one: 700 (all of it). So nothing is
  // left for a later job until the first finishes.
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Milliseconds(100));
  EXPECT_FALSE(s.Acquire(Cpu(50 * kMB), 0, 3, &c).ok());
  a->Release();
  big.join();
}

TEST(Scheduler, CpuJobBackfillsBesideAWarpWaitingForVram) {
  ResourceScheduler s(Config(4000 * kMB, {1000 * kMB}, /*cpu_slots=*/2),
                      nullptr);
  auto warp1 = s.Acquire(Gpu(500 * kMB, 900 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(warp1.ok());
  std::thread warp2([&] {
    ASSERT_TRUE(s.Acquire(Gpu(1000 * kMB, 900 * kMB), 0, 2, nullptr).ok());
  });
  WaitForWaiters(s, 1);
  // RAM left: 3500 MB, of which 1000 MB are held back for warp2 (blocked on
  // VRAM). A later registration of 2000 MB still fits beside it...
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Seconds(5));
  auto reg = s.Acquire(Cpu(2000 * kMB), 0, 3, &c);
  ASSERT_TRUE(reg.ok()) << reg.status();
  // ...but one that would eat into warp2's share waits.
  CancelToken c2;
  c2.set_deadline(absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(s.Acquire(Cpu(1000 * kMB), 0, 4, &c2).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  warp1->Release();
  warp2.join();
}

TEST(Scheduler, RegistrationOverlapsWarpOfAnotherJob) {
  ResourceScheduler s(Config(4000 * kMB, {2000 * kMB}, /*cpu_slots=*/1),
                      nullptr);
  auto warp = s.Acquire(Gpu(1000 * kMB, 1500 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(warp.ok());
  EXPECT_EQ(warp->gpu(), 0);
  // A second job's registration runs at the same time on the CPU lane.
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Seconds(5));
  auto reg = s.Acquire(Cpu(1000 * kMB), 0, 2, &c);
  ASSERT_TRUE(reg.ok()) << reg.status();
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.cpu_running, 1);
  EXPECT_EQ(st.gpu_running[0], 1);
  EXPECT_EQ(st.held_labels.size(), 2u);
}

TEST(Scheduler, PlacesOnTheGpuThatFitsThenShortestQueue) {
  // GPUs with different budgets: 1 GB, 4 GB, 2 GB, 4 GB.
  ResourceScheduler s(
      Config(100000 * kMB, {1000 * kMB, 4000 * kMB, 2000 * kMB, 4000 * kMB}),
      nullptr);
  auto a = s.Acquire(Gpu(1, 3000 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->gpu() == 1 || a->gpu() == 3);
  auto b = s.Acquire(Gpu(1, 3000 * kMB), 0, 2, nullptr);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->gpu() == 1 || b->gpu() == 3);
  EXPECT_NE(a->gpu(), b->gpu());  // one warp per GPU slot: never straddles
  auto c = s.Acquire(Gpu(1, 1500 * kMB), 0, 3, nullptr);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->gpu(), 2);
  auto d = s.Acquire(Gpu(1, 500 * kMB), 0, 4, nullptr);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->gpu(), 0);
  // All four GPUs are busy: a fifth job waits, then goes where one frees.
  std::thread t([&] {
    auto e = s.Acquire(Gpu(1, 3500 * kMB), 0, 5, nullptr);
    ASSERT_TRUE(e.ok());
    EXPECT_EQ(e->gpu(), 3);
  });
  WaitForWaiters(s, 1);
  if (a->gpu() == 3)
    a->Release();
  else
    b->Release();
  t.join();
}

// Injected hosts with 2 and 8 GPUs of different free VRAM: many concurrent
// warps, each placed on one GPU (never straddling), never over any GPU's
// budget, and a full GPU makes jobs wait or go elsewhere.
class MultiGpu : public testing::TestWithParam<std::vector<uint64_t>> {};

TEST_P(MultiGpu, WarpsSpreadOverGpusWithinEachBudget) {
  const std::vector<uint64_t> vram = GetParam();
  const int n = static_cast<int>(vram.size());
  ResourceScheduler s(Config(1'000'000 * kMB, vram), nullptr);
  std::vector<std::atomic<int64_t>> in_use(n);
  std::vector<std::atomic<int>> used(n);
  for (auto& v : in_use) v = 0;
  for (auto& u : used) u = 0;
  std::atomic<bool> violated{false};
  std::vector<std::thread> threads;
  for (int j = 0; j < 6 * n; ++j) {
    threads.emplace_back([&, j] {
      // Sizes up to the largest budget; some only fit the bigger GPUs.
      const uint64_t need = (100 + (j * 733) % 1900) * kMB;
      auto r = s.Acquire(Gpu(1, need), 0, j, nullptr);
      ASSERT_TRUE(r.ok()) << r.status();
      const int g = r->gpu();
      ASSERT_GE(g, 0);
      ASSERT_LT(g, n);
      if (need > vram[g]) violated = true;
      const int64_t now = in_use[g] += static_cast<int64_t>(need);
      if (now > static_cast<int64_t>(vram[g])) violated = true;
      ++used[g];
      absl::SleepFor(absl::Milliseconds(2));
      in_use[g] -= static_cast<int64_t>(need);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(violated);
  int gpus_used = 0;
  for (auto& u : used) gpus_used += u > 0;
  EXPECT_GE(gpus_used, std::min(n, 2));  // work went to more than one GPU
  const SchedulerStats st = s.Stats();
  for (int g = 0; g < n; ++g) EXPECT_EQ(st.vram_reserved_bytes[g], 0u);
}

INSTANTIATE_TEST_SUITE_P(
    InjectedHosts, MultiGpu,
    testing::Values(std::vector<uint64_t>{2000 * kMB, 1000 * kMB},
                    std::vector<uint64_t>{2000 * kMB, 500 * kMB, 1200 * kMB,
                                          2000 * kMB, 800 * kMB, 1600 * kMB,
                                          2000 * kMB, 300 * kMB}));

TEST(Scheduler, FullGpuSendsWorkToAnotherOne) {
  ResourceScheduler s(Config(100000 * kMB, {1000 * kMB, 1000 * kMB}), nullptr);
  auto a = s.Acquire(Gpu(1, 900 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  auto b = s.Acquire(Gpu(1, 900 * kMB), 0, 2, nullptr);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(a->gpu(), b->gpu());
  // Both full: the third waits (no OOM), and runs when one frees.
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Milliseconds(80));
  EXPECT_EQ(s.Acquire(Gpu(1, 900 * kMB), 0, 3, &c).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  const int freed = b->gpu();
  b->Release();
  auto d = s.Acquire(Gpu(1, 900 * kMB), 0, 4, nullptr);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->gpu(), freed);
}

TEST(Scheduler, SpecificGpuRequest) {
  ResourceScheduler s(Config(100000 * kMB, {4000 * kMB, 4000 * kMB}), nullptr);
  auto a = s.Acquire(Gpu(1, 100 * kMB, 1), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->gpu(), 1);
}

TEST(Scheduler, CancelWhileWaitingFreesTheHoldBack) {
  ResourceScheduler s(Config(1000 * kMB, {}, 4), nullptr);
  auto a = s.Acquire(Cpu(600 * kMB), 0, 1, nullptr);
  ASSERT_TRUE(a.ok());
  CancelToken cancel;
  std::thread big([&] {
    EXPECT_EQ(s.Acquire(Cpu(900 * kMB), 0, 2, &cancel).status().code(),
              absl::StatusCode::kCancelled);
  });
  WaitForWaiters(s, 1);
  cancel.Cancel("client cancelled");
  big.join();
  // With the big job gone, a 300 MB job fits at once.
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(s.Acquire(Cpu(300 * kMB), 0, 3, &c).ok());
}

TEST(Scheduler, ShutdownAbortsWaiters) {
  ResourceScheduler s(Config(1000 * kMB, {}, 1), nullptr);
  auto a = s.Acquire(Cpu(1), 0, 1, nullptr);
  std::thread t([&] {
    EXPECT_EQ(s.Acquire(Cpu(1), 0, 2, nullptr).status().code(),
              absl::StatusCode::kAborted);
  });
  WaitForWaiters(s, 1);
  s.Shutdown();
  t.join();
  EXPECT_EQ(s.Acquire(Cpu(1), 0, 3, nullptr).status().code(),
            absl::StatusCode::kAborted);
}

TEST(Scheduler, LiveReadingsGuardAgainstOtherProcesses) {
  HardwareSnapshot hw;
  hw.ram_total_bytes = 16000 * kMB;
  hw.ram_available_bytes = 200 * kMB;  // someone else uses the memory
  hw.gpus.push_back({0, "gpu", 8000 * kMB, 100 * kMB});
  FakeProbe probe(hw);
  ResourceScheduler s(Config(4000 * kMB, {4000 * kMB}), &probe);
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(s.Acquire(Cpu(500 * kMB), 0, 1, &c).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  std::thread t(
      [&] { EXPECT_TRUE(s.Acquire(Cpu(500 * kMB), 0, 2, nullptr).ok()); });
  absl::SleepFor(absl::Milliseconds(30));
  hw.ram_available_bytes = 8000 * kMB;
  probe.Set(hw);
  t.join();
  // VRAM: the budget allows 1 GB but only 100 MB is really free.
  CancelToken c2;
  c2.set_deadline(absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(s.Acquire(Gpu(1, 1000 * kMB), 0, 3, &c2).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

// A machine whose free RAM drops when a stage allocates, which happens only
// after the scheduler admitted it: `used` is what the admitted stages took.
class AllocatingProbe final : public HardwareProbe {
 public:
  explicit AllocatingProbe(uint64_t free) : free_(free) {}
  absl::StatusOr<HardwareSnapshot> Probe() override {
    HardwareSnapshot hw;
    hw.ram_total_bytes = 64000 * kMB;
    const uint64_t used = used_.load();
    hw.ram_available_bytes = free_.load() > used ? free_.load() - used : 0;
    return hw;
  }
  std::atomic<uint64_t> free_;
  std::atomic<uint64_t> used_{0};
};

TEST(Scheduler, OnePassDoesNotAdmitMoreThanTheLiveReadingShows) {
  // Budget 4800 MB and four slots, but only 200 MB is really free: four
  // 1000 MB stages wait. Then 1200 MB is free: exactly one fits, even though
  // all four are admitted in the same pass and none has allocated yet.
  AllocatingProbe probe(200 * kMB);
  ResourceScheduler s(Config(4800 * kMB, {}, /*cpu_slots=*/4), &probe);
  // All tokens exist before any thread reads the vector.
  std::vector<std::unique_ptr<CancelToken>> tokens;
  for (int i = 0; i < 4; ++i) tokens.push_back(std::make_unique<CancelToken>());
  std::vector<std::thread> threads;
  std::atomic<int> admitted{0};
  std::vector<Reservation> held(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<Reservation> r =
          s.Acquire(Cpu(1000 * kMB), 0, i + 1, tokens[i].get());
      if (!r.ok()) return;
      probe.used_ += 1000 * kMB;  // the stage allocates
      ++admitted;
      held[i] = *std::move(r);
    });
  }
  WaitForWaiters(s, 4);
  probe.free_ = 1200 * kMB;
  for (int i = 0; i < 200 && admitted.load() < 1; ++i)
    absl::SleepFor(absl::Milliseconds(5));
  absl::SleepFor(absl::Milliseconds(100));  // several live checks later
  EXPECT_EQ(admitted.load(), 1);
  EXPECT_EQ(s.Stats().ram_reserved_bytes, 1000 * kMB);
  for (auto& t : tokens) t->Cancel("test over");
  for (auto& t : threads) t.join();
}

TEST(Scheduler, RetainedVramOfOurOwnWarperCountsAsFree) {
  HardwareSnapshot hw;
  hw.ram_total_bytes = 16000 * kMB;
  hw.ram_available_bytes = 16000 * kMB;
  // 8 GB card, 3 GB of it cached by our own warper after the last warp.
  hw.gpus.push_back({0, "gpu", 8000 * kMB, 5000 * kMB});
  FakeProbe probe(hw);
  ResourceScheduler s(Config(8000 * kMB, {7000 * kMB}), &probe);
  CancelToken c;
  c.set_deadline(absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(s.Acquire(Gpu(1, 6000 * kMB), 0, 1, &c).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  s.SetRetainedVram(0, 3000 * kMB);
  CancelToken c2;
  c2.set_deadline(absl::Now() + absl::Seconds(5));
  absl::StatusOr<Reservation> r = s.Acquire(Gpu(1, 6000 * kMB), 0, 2, &c2);
  EXPECT_TRUE(r.ok()) << r.status();
  // Another process's use is not ours to add back.
  s.SetRetainedVram(0, 0);
}

// Many concurrent jobs, each running decode -> registration -> warp against
// an injected small budget: the reservations never exceed any budget.
TEST(Scheduler, ManyConcurrentJobsNeverOverReserve) {
  const uint64_t ram = 3000 * kMB;
  const std::vector<uint64_t> vram = {1000 * kMB, 1500 * kMB};
  ResourceScheduler s(Config(ram, vram, /*cpu_slots=*/3), nullptr);
  std::atomic<int64_t> ram_in_use{0}, max_ram{0};
  std::atomic<int64_t> vram_in_use[2] = {{0}, {0}};
  std::atomic<bool> violated{false};
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int j = 0; j < 48; ++j) {
    threads.emplace_back([&, j] {
      std::mt19937 rng(j);
      std::uniform_int_distribution<int> mb(1, 1400);
      for (int stage = 0; stage < 3; ++stage) {
        ResourceRequest r =
            stage < 2 ? Cpu(mb(rng) * kMB)
                      : Gpu(mb(rng) * kMB, (mb(rng) % 1000 + 1) * kMB);
        auto res = s.Acquire(r, j % 3, j, nullptr);
        ASSERT_TRUE(res.ok()) << res.status();
        const int64_t now = ram_in_use += res->ram_bytes();
        int64_t prev = max_ram;
        while (now > prev && !max_ram.compare_exchange_weak(prev, now)) {
        }
        if (now > static_cast<int64_t>(ram)) violated = true;
        if (res->gpu() >= 0) {
          const int64_t v = vram_in_use[res->gpu()] += res->vram_bytes();
          if (v > static_cast<int64_t>(vram[res->gpu()])) violated = true;
        }
        const SchedulerStats st = s.Stats();
        if (st.ram_reserved_bytes > ram ||
            st.vram_reserved_bytes[0] > vram[0] ||
            st.vram_reserved_bytes[1] > vram[1]) {
          violated = true;
        }
        absl::SleepFor(absl::Microseconds(200 + (j * 37) % 500));
        ram_in_use -= res->ram_bytes();
        if (res->gpu() >= 0) vram_in_use[res->gpu()] -= res->vram_bytes();
      }
      ++done;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(violated);
  EXPECT_EQ(done, 48);
  EXPECT_GT(max_ram, static_cast<int64_t>(ram / 3));  // it did run concurrently
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.ram_reserved_bytes, 0u);
  EXPECT_EQ(st.waiting, 0);
}

}  // namespace
}  // namespace regserve
