// Copyright regserve authors.
//
// regserve-plan: prints what this machine's hardware probe sees and the plan
// regserved would make for a pair of image sizes, without running anything.
//
//   regserve-plan 18960x14960x3                      # fixed = moving
//   regserve-plan 18960x14960x3 9000x7000x1 --vram_budget=2G --ram_budget=8G
//   regserve-plan 18960x14960x3 --max_registration_mp=5 --device=cpu
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/hardware/hardware.h"
#include "core/plan/plan.h"

namespace regserve {
namespace {

bool ParseSize(const std::string& text, ImageSpec* spec) {
  std::vector<std::string> p = absl::StrSplit(text, 'x');
  if (p.size() < 2 || p.size() > 3) return false;
  spec->channels = 3;
  spec->type = SampleType::kUInt8;
  return absl::SimpleAtoi(p[0], &spec->width) &&
         absl::SimpleAtoi(p[1], &spec->height) &&
         (p.size() == 2 || absl::SimpleAtoi(p[2], &spec->channels));
}

// "8G", "512M", "1073741824".
bool ParseBytes(std::string text, uint64_t* out) {
  uint64_t scale = 1;
  if (!text.empty()) {
    switch (text.back()) {
      case 'K':
      case 'k':
        scale = 1ull << 10;
        break;
      case 'M':
      case 'm':
        scale = 1ull << 20;
        break;
      case 'G':
      case 'g':
        scale = 1ull << 30;
        break;
      case 'T':
      case 't':
        scale = 1ull << 40;
        break;
      default:
        break;
    }
    if (scale != 1) text.pop_back();
  }
  double v = 0;
  if (!absl::SimpleAtod(text, &v) || v < 0) return false;
  *out = static_cast<uint64_t>(v * scale);
  return true;
}

int Main(int argc, char** argv) {
  std::vector<ImageSpec> sizes;
  BudgetOverrides overrides;
  JobOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bool ok = true;
    if (a.rfind("--vram_budget=", 0) == 0) {
      ok = ParseBytes(a.substr(14), &overrides.vram_bytes);
    } else if (a.rfind("--ram_budget=", 0) == 0) {
      ok = ParseBytes(a.substr(13), &overrides.ram_bytes);
    } else if (a.rfind("--max_registration_mp=", 0) == 0) {
      ok = absl::SimpleAtod(a.substr(22), &options.max_registration_megapixels);
    } else if (a.rfind("--device=", 0) == 0) {
      auto d = ParseDevicePreference(a.substr(9));
      ok = d.ok();
      if (ok) options.device = *d;
    } else {
      ImageSpec s;
      ok = ParseSize(a, &s);
      if (ok) sizes.push_back(s);
    }
    if (!ok) {
      std::fprintf(stderr, "regserve-plan: bad argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (sizes.empty() || sizes.size() > 2) {
    std::fprintf(
        stderr,
        "usage: regserve-plan FIXED[xC] [MOVING[xC]] [--ram_budget=8G] "
        "[--vram_budget=2G] [--max_registration_mp=N] "
        "[--device=auto|cpu|cuda]\n");
    return 2;
  }
  if (sizes.size() == 1) sizes.push_back(sizes[0]);
  auto hw = NewSystemProbe()->Probe();
  if (!hw.ok()) {
    std::fprintf(stderr, "regserve-plan: %s\n", hw.status().ToString().c_str());
    return 1;
  }
  std::printf("hardware: %s\n", hw->DebugString().c_str());
  for (const GpuInfo& g : hw->gpus) {
    std::printf("gpu %d: %s free=%llu MiB total=%llu MiB\n", g.index,
                g.name.c_str(),
                static_cast<unsigned long long>(g.vram_free_bytes >> 20),
                static_cast<unsigned long long>(g.vram_total_bytes >> 20));
  }
  const Budgets budgets = BudgetsFromHardware(*hw, overrides);
  std::printf("budgets: RAM %.0f MB, VRAM %.0f MB%s\n", budgets.ram_bytes / 1e6,
              budgets.vram_bytes / 1e6, budgets.has_gpu ? "" : " (no GPU)");
  auto plan = MakePlan(sizes[0], sizes[1], options, budgets);
  if (!plan.ok()) {
    std::printf("refused: %s\n", plan.status().ToString().c_str());
    return 1;
  }
  for (const std::string& r : plan->reasons) std::printf("  %s\n", r.c_str());
  std::printf("warp: device=%s tile_size=%lld\n",
              std::string(WarpDeviceName(plan->warp_device)).c_str(),
              static_cast<long long>(plan->tile_size));
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
