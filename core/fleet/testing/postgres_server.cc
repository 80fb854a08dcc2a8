// Copyright regserve authors.
#include "core/fleet/testing/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;

// $REGSERVE_PG_BIN, else the newest /usr/lib/postgresql/<N>/bin with
// initdb and pg_ctl; "" when none.
std::string FindBinDir() {
  auto has_tools = [](const fs::path& dir) {
    return fs::exists(dir / "initdb") && fs::exists(dir / "pg_ctl");
  };
  if (const char* env = std::getenv("REGSERVE_PG_BIN"); env && *env) {
    return has_tools(env) ? std::string(env) : std::string();
  }
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    if (has_tools(entry.path() / "bin")) found.push_back(entry.path() / "bin");
  }
  if (found.empty()) return "";
  // Newest major version first: compare as numbers ("9.6" < "15").
  std::sort(found.begin(), found.end(),
            [](const fs::path& a, const fs::path& b) {
              return std::atof(a.parent_path().filename().c_str()) >
                     std::atof(b.parent_path().filename().c_str());
            });
  return found.front().string();
}

// A port the kernel reports free on 127.0.0.1 (it may be taken again before
// the server binds it; StartOnPort's caller retries with another).
absl::StatusOr<int> FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  if (port <= 0) return absl::InternalError("no free loopback port");
  return port;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->bin_dir_ = FindBinDir();
  if (server->bin_dir_.empty()) {
    return absl::NotFoundError(
        "no PostgreSQL server binaries (initdb, pg_ctl) in $REGSERVE_PG_BIN "
        "or /usr/lib/postgresql/*/bin; install Debian's postgresql package "
        "(scripts/setup.sh does)");
  }
  std::string tmpl =
      (fs::temp_directory_path() / "regserve-pg.XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, " failed"));
  }
  server->dir_ = tmpl;
  server->data_dir_ = tmpl + "/data";
  server->log_path_ = tmpl + "/log";
  if (geteuid() == 0) {
    const passwd* pw = getpwnam("postgres");
    if (pw == nullptr) pw = getpwnam("nobody");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "running as root and neither user 'postgres' nor 'nobody' exists "
          "to run PostgreSQL as");
    }
    server->run_uid_ = static_cast<int>(pw->pw_uid);
    server->run_gid_ = static_cast<int>(pw->pw_gid);
    if (chown(tmpl.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError(absl::StrCat("chown ", tmpl, " failed"));
    }
  }
  REGSERVE_RETURN_IF_ERROR(server->InitDb());
  absl::Status started;
  for (int attempt = 0; attempt < 3; ++attempt) {
    REGSERVE_ASSIGN_OR_RETURN(int port, FreeLoopbackPort());
    started = server->StartOnPort(port);
    if (started.ok()) return server;
  }
  return started;
}

PostgresServer::~PostgresServer() {
  if (running_) Stop().IgnoreError();
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

std::string PostgresServer::ConnectionString(const std::string& dbname) const {
  return absl::StrCat("host=127.0.0.1 port=", port_,
                      " user=regserve dbname=", dbname, " connect_timeout=5");
}

absl::StatusOr<std::string> PostgresServer::CreateDatabase(
    const std::string& name) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      })) {
    return absl::InvalidArgumentError(absl::StrCat("bad database name ", name));
  }
  try {
    pqxx::connection conn(ConnectionString("postgres"));
    pqxx::nontransaction txn(conn);  // CREATE DATABASE cannot run in a block
    txn.exec(absl::StrCat("CREATE DATABASE ", name));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("CREATE DATABASE ", name, ": ", e.what()));
  }
  return ConnectionString(name);
}

absl::Status PostgresServer::Stop() {
  if (!running_) return absl::OkStatus();
  REGSERVE_RETURN_IF_ERROR(
      RunTool("pg_ctl", {"-D", data_dir_, "-m", "immediate", "-w", "stop"}));
  running_ = false;
  return absl::OkStatus();
}

absl::Status PostgresServer::Restart() {
  REGSERVE_RETURN_IF_ERROR(Stop());
  return StartOnPort(port_);
}

absl::Status PostgresServer::InitDb() {
  // -N: no fsync of the new cluster; C locale: no dependence on the
  // machine's locales.
  return RunTool("initdb", {"-D", data_dir_, "-U", "regserve", "--auth=trust",
                            "-N", "-E", "UTF8", "--locale=C"});
}

absl::Status PostgresServer::StartOnPort(int port) {
  const std::string options = absl::StrCat(
      "-c listen_addresses=127.0.0.1 -p ", port, " -k ", dir_,
      " -c fsync=off -c full_page_writes=off", " -c max_connections=50");
  REGSERVE_RETURN_IF_ERROR(
      RunTool("pg_ctl", {"-D", data_dir_, "-l", log_path_, "-w", "-t", "30",
                         "-o", options, "start"}));
  port_ = port;
  running_ = true;
  return absl::OkStatus();
}

absl::Status PostgresServer::RunTool(const std::string& program,
                                     const std::vector<std::string>& args) {
  const std::string path = bin_dir_ + "/" + program;
  std::vector<std::string> argv_store = {path};
  argv_store.insert(argv_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Opened before the fork: the child only calls async-signal-safe
  // functions. The log is made by whoever runs first, so it is the run
  // user's when root drops to it below.
  const std::string tool_log = dir_ + "/tools.log";
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    if (run_uid_ >= 0) {
      if (setgroups(0, nullptr) != 0 || setgid(run_gid_) != 0 ||
          setuid(run_uid_) != 0) {
        _exit(126);
      }
    }
    int fd = open(tool_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    if (chdir(dir_.c_str()) != 0) _exit(126);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      program, " ", absl::StrJoin(args, " "), " failed (wait status ", wstatus,
      "); log tail:\n", LogTail()));
}

// The last lines of the tools' output and of the server's log.
std::string PostgresServer::LogTail() const {
  std::string out;
  for (const std::string& path : {dir_ + "/tools.log", log_path_}) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (text.size() > 2000) text = text.substr(text.size() - 2000);
    absl::StrAppend(&out, "== ", path, "\n", text);
  }
  return out;
}

}  // namespace regserve
