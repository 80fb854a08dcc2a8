// libstdc++'s functions must bind to libstdc++ itself in a program linked
// like regserved, with LibTorch.
//
// The PyTorch wheel's libtorch.so and libtorch_cpu.so export their own
// unversioned copies of libstdc++ functions (all of std::filesystem among
// them: the wheel is built by gcc-toolset, which links the parts of
// libstdc++ newer than its base system statically). The dynamic linker binds
// a reference to the first definition in load order, and load order starts
// with the executable's DT_NEEDED list, which listed libtorch before
// libstdc++.so.6 (or, on the GPU machine, had no libstdc++ at all); regserved
// then called torch's std::filesystem::remove_all and crashed (SIGSEGV).
// cmake/regserve.cmake puts libstdc++ first in every executable's DT_NEEDED
// list; this test checks that in itself (linked with LibTorch through
// regserve_test, like every test) and in the regserved and regctl files.
// With Debian's LibTorch nothing is shadowed, but the load-order checks fail
// there too without the fix.

#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

#include "gtest/gtest.h"

namespace {

namespace fs = std::filesystem;

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool IsLibstdcxx(const std::string& name) {
  return Basename(name).rfind("libstdc++.so", 0) == 0;
}

bool IsTorch(const std::string& name) {
  std::string base = Basename(name);
  return base.rfind("libtorch", 0) == 0 || base.rfind("libc10", 0) == 0;
}

// The file of the loaded object that holds `address` ("" when none does;
// the main program's name is "" in the link map, "(main)" here).
std::string ObjectOf(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  std::string name = info.dli_fname;
  Dl_info self{};
  if (dladdr(reinterpret_cast<const void*>(&Basename), &self) != 0 &&
      self.dli_fbase == info.dli_fbase) {
    return "(main)";
  }
  return name;
}

// Loaded objects in load order (the order symbol lookup searches them).
std::vector<std::string> LoadedObjects() {
  std::vector<std::string> names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        static_cast<std::vector<std::string>*>(data)->push_back(
            info->dlpi_name ? info->dlpi_name : "");
        return 0;
      },
      &names);
  return names;
}

// DT_NEEDED entries of an ELF file, in order.
std::vector<std::string> NeededOf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string elf((std::istreambuf_iterator<char>(in)),
                  std::istreambuf_iterator<char>());
  std::vector<std::string> needed;
  if (elf.size() < sizeof(Elf64_Ehdr) || elf.compare(0, 4, ELFMAG) != 0 ||
      elf[EI_CLASS] != ELFCLASS64) {
    return needed;
  }
  Elf64_Ehdr eh;
  std::memcpy(&eh, elf.data(), sizeof eh);
  auto section = [&](size_t i) {
    Elf64_Shdr sh{};
    size_t off = eh.e_shoff + i * eh.e_shentsize;
    if (off + sizeof sh <= elf.size())
      std::memcpy(&sh, elf.data() + off, sizeof sh);
    return sh;
  };
  for (size_t i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr dyn = section(i);
    if (dyn.sh_type != SHT_DYNAMIC) continue;
    Elf64_Shdr str = section(dyn.sh_link);
    for (size_t off = dyn.sh_offset;
         off + sizeof(Elf64_Dyn) <= dyn.sh_offset + dyn.sh_size &&
         off + sizeof(Elf64_Dyn) <= elf.size();
         off += sizeof(Elf64_Dyn)) {
      Elf64_Dyn d;
      std::memcpy(&d, elf.data() + off, sizeof d);
      if (d.d_tag == DT_NULL) break;
      if (d.d_tag == DT_NEEDED && str.sh_offset + d.d_un.d_val < elf.size()) {
        needed.emplace_back(elf.c_str() + str.sh_offset + d.d_un.d_val);
      }
    }
  }
  return needed;
}

// libstdc++ functions that the PyTorch wheel's libraries were seen to
// export, or are likely to (all of std::filesystem is in that part).
const char* const kSymbols[] = {
    "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE",
    "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathERSt10error_code",
    "_ZNSt10filesystem18create_directoriesERKNS_7__cxx114pathE",
    "_ZNSt10filesystem18create_directoriesERKNS_7__cxx114pathERSt10error_code",
    "_ZNSt10filesystem6removeERKNS_7__cxx114pathE",
    "_ZNSt10filesystem6removeERKNS_7__cxx114pathERSt10error_code",
    "_ZNSt10filesystem6statusERKNS_7__cxx114pathE",
    "_ZNSt10filesystem6statusERKNS_7__cxx114pathERSt10error_code",
    "_ZNSt10filesystem12current_pathB5cxx11Ev",
    "_ZNSt10filesystem19temp_directory_pathB5cxx11Ev",
    "_ZNSt10filesystem16weakly_canonicalERKNS_7__cxx114pathE",
    "_ZNSt10filesystem7__cxx1118directory_iteratorC1ERKNS0_4pathENS_"
    "17directory_optionsEPSt10error_code",
    "_ZNSt10filesystem7__cxx1128recursive_directory_iteratorC1ERKNS0_4pathENS_"
    "17directory_optionsEPSt10error_code",
    "_ZNSt10filesystem7__cxx114path14_M_split_cmptsEv",
};

TEST(StdlibBindingTest, TorchIsLinked) {
  // Uses LibTorch, so that its libraries are loaded even where the linker
  // drops unused libraries (--as-needed); otherwise the test checks nothing.
  at::Tensor t = at::ones({4});
  EXPECT_EQ(t.sum().item<float>(), 4.0f);
  bool torch_loaded = false;
  for (const std::string& name : LoadedObjects()) torch_loaded |= IsTorch(name);
  EXPECT_TRUE(torch_loaded);
}

TEST(StdlibBindingTest, LibstdcxxIsSearchedBeforeTorch) {
  std::vector<std::string> objects = LoadedObjects();
  int first_stdcxx = -1, first_torch = -1;
  std::string order;
  for (size_t i = 0; i < objects.size(); ++i) {
    order += "  " + std::to_string(i) + " " + objects[i] + "\n";
    if (first_stdcxx < 0 && IsLibstdcxx(objects[i]))
      first_stdcxx = static_cast<int>(i);
    if (first_torch < 0 && IsTorch(objects[i]))
      first_torch = static_cast<int>(i);
  }
  ASSERT_GE(first_stdcxx, 0) << order;
  ASSERT_GE(first_torch, 0) << order;
  EXPECT_LT(first_stdcxx, first_torch)
      << "libstdc++ must come before every LibTorch library in load order:\n"
      << order;
}

TEST(StdlibBindingTest, SymbolsResolveIntoLibstdcxx) {
  int found = 0;
  for (const char* symbol : kSymbols) {
    void* address = dlsym(RTLD_DEFAULT, symbol);
    if (address == nullptr) continue;  // not in this libstdc++ version
    ++found;
    std::string object = ObjectOf(address);
    EXPECT_TRUE(IsLibstdcxx(object)) << symbol << " resolves into " << object;
    // Informative: which LibTorch libraries also define it (and would have
    // won had they come first).
    for (const std::string& name : LoadedObjects()) {
      if (!IsTorch(name)) continue;
      void* handle = dlopen(name.c_str(), RTLD_LAZY | RTLD_NOLOAD);
      if (handle == nullptr) continue;
      void* own = dlsym(handle, symbol);
      if (own != nullptr && ObjectOf(own) == name) {
        std::printf("note: %s also defines %s\n", Basename(name).c_str(),
                    symbol);
      }
      dlclose(handle);
    }
  }
  EXPECT_GE(found, 4);
}

TEST(StdlibBindingTest, AddressesTakenInThisProgramAreLibstdcxx) {
  const void* functions[] = {
      reinterpret_cast<const void*>(
          static_cast<std::uintmax_t (*)(const fs::path&)>(&fs::remove_all)),
      reinterpret_cast<const void*>(
          static_cast<bool (*)(const fs::path&)>(&fs::create_directories)),
      reinterpret_cast<const void*>(
          static_cast<fs::file_status (*)(const fs::path&)>(&fs::status)),
  };
  for (const void* f : functions) {
    std::string object = ObjectOf(f);
    // A non-PIE program's canonical PLT entry lies in the program itself;
    // then only the dlsym check above says where the call goes.
    if (object == "(main)") continue;
    EXPECT_TRUE(IsLibstdcxx(object)) << "resolves into " << object;
  }
}

TEST(StdlibBindingTest, FilesystemCallsWork) {
  // The crash happened here: remove_all of a directory tree.
  fs::path root = fs::temp_directory_path() /
                  ("stdlib_binding_test." + std::to_string(getpid()));
  fs::remove_all(root);
  ASSERT_TRUE(fs::create_directories(root / "a" / "b" / "c"));
  std::ofstream(root / "a" / "file.txt") << "x";
  std::ofstream(root / "a" / "b" / "c" / "file.txt") << "y";
  EXPECT_TRUE(fs::is_regular_file(root / "a" / "file.txt"));
  std::error_code ec;
  EXPECT_EQ(fs::remove_all(root, ec), 6u);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_FALSE(fs::exists(root));
}

TEST(StdlibBindingTest, ProgramsNeedLibstdcxxBeforeTorch) {
  for (const char* program : {REGSERVE_REGSERVED_PATH, REGSERVE_REGCTL_PATH}) {
    std::vector<std::string> needed = NeededOf(program);
    ASSERT_FALSE(needed.empty()) << program << ": no DT_NEEDED entries read";
    int first_stdcxx = -1, first_torch = -1;
    std::string list;
    for (size_t i = 0; i < needed.size(); ++i) {
      list += " " + needed[i];
      if (first_stdcxx < 0 && IsLibstdcxx(needed[i]))
        first_stdcxx = static_cast<int>(i);
      if (first_torch < 0 && IsTorch(needed[i]))
        first_torch = static_cast<int>(i);
    }
    ASSERT_GE(first_stdcxx, 0) << program << ":" << list;
    if (first_torch >= 0) {
      EXPECT_LT(first_stdcxx, first_torch) << program << ":" << list;
    }
  }
}

}  // namespace
