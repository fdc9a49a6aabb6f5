#include "agent/ctl/store_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fabric::agent::ctl {

namespace v1 = ::fabric::nat::v1;

namespace {

// What tells a file changed: inode, size and mtime.
struct Fingerprint {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  auto tie() const { return std::tie(exists, dev, ino, size, mtime_ns); }
  bool operator==(const Fingerprint& o) const { return tie() == o.tie(); }
};

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

Fingerprint Stat(const std::string& path) {
  Fingerprint f;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return f;
  f.exists = true;
  f.dev = st.st_dev;
  f.ino = st.st_ino;
  f.size = st.st_size;
  f.mtime_ns = MtimeNs(st);
  return f;
}

absl::Status OpenError(const std::string& path, int err) {
  std::string msg = absl::StrCat("cannot read ", path, ": ", std::strerror(err));
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(
        absl::StrCat(msg, " (the store is 0600 root: run fabricctl as root, like the agent)"));
  }
  if (err == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

// Copies `from` (opened read-only) to a new file `to`, mode 0600.
absl::Status CopyFile(const std::string& from, const std::string& to) {
  int in = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return OpenError(from, errno);
  int out = open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    int err = errno;
    close(in);
    return absl::InternalError(absl::StrCat("cannot create ", to, ": ", std::strerror(err)));
  }
  char buf[65536];
  ssize_t n;
  absl::Status status;
  while ((n = read(in, buf, sizeof(buf))) > 0) {
    for (ssize_t done = 0; done < n;) {
      ssize_t w = write(out, buf + done, n - done);
      if (w < 0) {
        status = absl::InternalError(absl::StrCat("cannot write ", to, ": ", std::strerror(errno)));
        break;
      }
      done += w;
    }
    if (!status.ok()) break;
  }
  if (n < 0 && status.ok()) status = OpenError(from, errno);
  close(in);
  close(out);
  return status;
}

// A private directory (mkdtemp, 0700) removed with its files on scope exit.
class TempDir {
 public:
  absl::Status Make() {
    const char* base = getenv("TMPDIR");
    std::string pattern = absl::StrCat(base != nullptr && *base ? base : "/tmp",
                                       "/fabricctl-XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot make a temporary directory ", pattern,
                                              ": ", std::strerror(errno), " (set TMPDIR)"));
    }
    path_ = pattern;
    return absl::OkStatus();
  }
  ~TempDir() {
    if (path_.empty()) return;
    if (DIR* d = opendir(path_.c_str())) {
      while (dirent* e = readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
          unlink(absl::StrCat(path_, "/", e->d_name).c_str());
        }
      }
      closedir(d);
    }
    rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Copies state.db and state.db-wal of `db` into `dir` until a copy is made
// while neither file changes.
absl::Status Snapshot(const std::string& db, const std::string& dir) {
  const std::string wal = absl::StrCat(db, "-wal");
  for (int attempt = 0; attempt < 5; ++attempt) {
    for (const char* f : {"/state.db", "/state.db-wal", "/state.db-shm"}) {
      unlink(absl::StrCat(dir, f).c_str());
    }
    Fingerprint db_before = Stat(db), wal_before = Stat(wal);
    if (absl::Status s = CopyFile(db, dir + "/state.db"); !s.ok()) return s;
    if (wal_before.exists) {
      absl::Status s = CopyFile(wal, dir + "/state.db-wal");
      // A WAL removed meanwhile (the last connection closed): try again.
      if (!s.ok() && !absl::IsNotFound(s)) return s;
    }
    if (Stat(db) == db_before && Stat(wal) == wal_before) return absl::OkStatus();
    usleep(20000 * (attempt + 1));
  }
  return absl::AbortedError(absl::StrCat(
      db, " kept changing while fabricctl read it: an agent is writing it (is one running "
          "on another --socket?)"));
}

// A prepared statement, finalized on scope exit.
class Query {
 public:
  Query(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Query() { sqlite3_finalize(stmt_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  // SQLITE_ROW, SQLITE_DONE or an error.
  int Step() { return ok() ? sqlite3_step(stmt_) : rc_; }
  std::string Text(int col) {
    const unsigned char* t = sqlite3_column_text(stmt_, col);
    return t == nullptr ? "" : reinterpret_cast<const char*>(t);
  }
  std::string Blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p == nullptr ? "" : std::string(static_cast<const char*>(p), n);
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Reads the copy at `copy` into `r` (errors name `shown`, the agent's path).
absl::Status ReadCopy(const std::string& copy, const std::string& shown, StoreReading* r) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(copy.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  struct Closer {
    sqlite3* db;
    ~Closer() { sqlite3_close(db); }
  } closer{db};
  auto broken = [&](absl::string_view what) {
    return absl::FailedPreconditionError(absl::StrCat(
        shown, ": ", what, " (", db != nullptr ? sqlite3_errmsg(db) : "out of memory",
        "); the agent would refuse it too: restore a backup (fabricctl backup)"));
  };
  if (rc != SQLITE_OK) return broken("cannot open it");
  {
    Query q(db, "PRAGMA user_version");
    if (q.Step() != SQLITE_ROW) return broken("not a readable SQLite database");
    r->schema_version = static_cast<int>(q.Int(0));
  }
  if (r->schema_version < 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        shown, " holds no fabric-nat store (schema version ", r->schema_version,
        "); is --state_dir the agent's?"));
  }
  if (r->schema_version > kKnownSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        shown, " has schema version ", r->schema_version, ", newer than this fabricctl's (",
        kKnownSchemaVersion, "): use the fabricctl of the agent that wrote it"));
  }
  {
    Query q(db, "SELECT value FROM meta WHERE key='store_id'");
    int step = q.Step();
    if (step == SQLITE_ROW) {
      r->store_id = q.Text(0);
    } else if (step != SQLITE_DONE) {
      return broken("reading its meta table failed");
    }
  }
  {
    Query q(db, "SELECT spec FROM attachments");
    int step;
    while ((step = q.Step()) == SQLITE_ROW) {
      v1::Attachment a;
      if (!a.ParseFromString(q.Blob(0))) return broken("an attachment row is corrupt");
      r->attachments.push_back(std::move(a));
    }
    if (step != SQLITE_DONE) return broken("reading attachments failed");
  }
  {
    Query q(db, "SELECT spec FROM mappings");
    int step;
    while ((step = q.Step()) == SQLITE_ROW) {
      v1::PortMapping m;
      if (!m.ParseFromString(q.Blob(0))) return broken("a mapping row is corrupt");
      r->mappings.push_back(std::move(m));
    }
    if (step != SQLITE_DONE) return broken("reading mappings failed");
    std::sort(r->mappings.begin(), r->mappings.end(),
              [](const v1::PortMapping& a, const v1::PortMapping& b) { return a.id() < b.id(); });
  }
  if (r->schema_version >= 2) {
    Query q(db, "SELECT count(*) FROM pinholes");
    if (q.Step() != SQLITE_ROW) return broken("reading pinholes failed");
    r->pinholes = static_cast<size_t>(q.Int(0));
  }
  return absl::OkStatus();
}

void ReadLock(const std::string& path, StoreReading* r) {
  r->lock_path = path;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return;
  r->last_start = absl::FromUnixNanos(MtimeNs(st));
  std::ifstream f(path);
  std::string text;
  std::getline(f, text);
  text = std::string(absl::StripAsciiWhitespace(text));
  // "pid 4242, state dir /var/lib/fabric-nat, socket /run/fabric-nat/agent.sock"
  for (absl::string_view part : absl::StrSplit(text, ", ")) {
    if (absl::StartsWith(part, "pid ")) r->last_start_pid = std::string(part);
    if (absl::ConsumePrefix(&part, "socket ")) r->last_socket = std::string(part);
  }
  r->lock_holder = FlockHolder(path);
}

}  // namespace

pid_t FlockHolder(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return 0;
  // "1: FLOCK  ADVISORY  WRITE 4242 00:2d:123456 0 EOF" (a waiter has "->"
  // after the number).
  const std::string id =
      absl::StrFormat("%02x:%02x:%u", major(st.st_dev), minor(st.st_dev), st.st_ino);
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (f.size() < 6 || f[1] != "FLOCK" || f[5] != id) continue;
    int pid = 0;
    if (absl::SimpleAtoi(f[4], &pid) && pid > 0) return pid;
  }
  return 0;
}

absl::StatusOr<StoreReading> ReadStateDir(const std::string& state_dir) {
  StoreReading r;
  r.db_path = absl::StrCat(state_dir, "/state.db");
  struct stat st;
  if (stat(r.db_path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("no store at ", r.db_path,
                                              " to read instead (--state_dir: the agent's)"));
    }
    return OpenError(r.db_path, err);
  }
  for (const char* f : {"", "-wal"}) {
    std::string p = absl::StrCat(r.db_path, f);
    if (stat(p.c_str(), &st) == 0 && absl::FromUnixNanos(MtimeNs(st)) > r.last_written) {
      r.last_written = absl::FromUnixNanos(MtimeNs(st));
      r.last_written_file = absl::StrCat("state.db", f);
    }
  }
  TempDir tmp;
  if (absl::Status s = tmp.Make(); !s.ok()) return s;
  if (absl::Status s = Snapshot(r.db_path, tmp.path()); !s.ok()) return s;
  if (absl::Status s = ReadCopy(tmp.path() + "/state.db", r.db_path, &r); !s.ok()) return s;
  ReadLock(absl::StrCat(state_dir, "/agent.lock"), &r);
  return r;
}

}  // namespace fabric::agent::ctl
