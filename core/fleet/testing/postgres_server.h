// Copyright regserve authors.
//
// PostgresServer: a throwaway PostgreSQL server for tests. Test-only.
//
// Start() makes a temporary directory, runs initdb into it and starts the
// server with pg_ctl on a free loopback port (TCP on 127.0.0.1 only; its
// Unix socket in the same directory), trust authentication for the
// superuser "regserve". fsync and full_page_writes are off: the data dies
// with the test anyway, and it keeps writes fast on a slow disk. Commits
// still reach the WAL (synchronous_commit stays on), so a crash of the
// server (Stop, Restart) loses no committed row. The destructor stops the
// server and removes the directory.
//
// PostgreSQL refuses to run as root, and tests run as root here and in CI,
// so when the process is root the server's programs run as an unprivileged
// user: "postgres" (created by Debian's postgresql-common package, the one
// that ships the binaries) or else "nobody"; the temporary directory is
// given to that user. The child drops to it with setgid/setuid before exec,
// so nothing beyond the server binaries is needed (no sudo or runuser, no
// network).
//
// The binaries are looked for in $REGSERVE_PG_BIN, then in
// /usr/lib/postgresql/<N>/bin (Debian's layout, newest N first). When none
// is found Start() returns NOT_FOUND, and a test skips with its message:
//
//   static void SetUpTestSuite() {
//     auto server = PostgresServer::Start();
//     if (!server.ok()) skip_reason_ = server.status().ToString(); ...
//   }
//   void SetUp() override { if (!server_) GTEST_SKIP() << skip_reason_; }
//
// Thread safety: Start and the destructor must not race with other calls;
// ConnectionString and port are safe from any thread; CreateDatabase,
// Stop and Restart are serialised by the caller.
#ifndef REGSERVE_CORE_FLEET_TESTING_POSTGRES_SERVER_H_
#define REGSERVE_CORE_FLEET_TESTING_POSTGRES_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace regserve {

class PostgresServer {
 public:
  // NOT_FOUND: no server binaries (the test should skip). Other errors: the
  // server could not be set up or started; the message has the tail of its
  // log.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();

  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  int port() const { return port_; }

  // A libpq key=value connection string to database `dbname` as the
  // superuser over TCP on loopback.
  std::string ConnectionString(const std::string& dbname) const;

  // Creates an empty database (name: letters, digits, '_') and returns its
  // connection string. Each test takes its own, so tests do not share rows.
  absl::StatusOr<std::string> CreateDatabase(const std::string& name);

  // Stops the server at once (like a crash: no checkpoint), or starts it
  // again on the same port and data (what a restart of the database looks
  // like to its clients).
  absl::Status Stop();
  absl::Status Restart();

 private:
  PostgresServer() = default;

  absl::Status InitDb();
  absl::Status StartOnPort(int port);
  // Runs bin_dir_/program with args as run_as_ (when root), output appended
  // to the log; the status names the program and has the log's tail.
  absl::Status RunTool(const std::string& program,
                       const std::vector<std::string>& args);
  std::string LogTail() const;

  std::string bin_dir_;
  std::string dir_;       // the temporary directory (removed at the end)
  std::string data_dir_;  // dir_/data
  std::string log_path_;  // dir_/log
  int port_ = 0;
  bool running_ = false;
  // uid/gid to run the tools as; -1: the current user.
  int run_uid_ = -1;
  int run_gid_ = -1;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_FLEET_TESTING_POSTGRES_SERVER_H_
