#include "agent/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fabric::agent {

namespace {

absl::Status SqlError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(
      absl::StrCat("store: ", what, ": ", sqlite3_errmsg(db)));
}

// Binds text or a blob without a copy: the caller's string outlives the
// step (Run resets the statement and clears its bindings).
void BindText(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}
void BindBlob(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}
bool Run(sqlite3_stmt* s) {
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE;
}

// A prepared statement, finalized on scope exit.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return stmt_; }
  void BindText(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()),
                      SQLITE_TRANSIENT);
  }
  void BindBlob(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()),
                      SQLITE_TRANSIENT);
  }
  // Runs a statement that returns no rows, then resets it for reuse.
  bool Run() { return fabric::agent::Run(stmt_); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

std::string Blob(sqlite3_stmt* s, int col) {
  const void* p = sqlite3_column_blob(s, col);
  int n = sqlite3_column_bytes(s, col);
  return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
}

}  // namespace

std::string AttachmentOwnerId(const v1::AttachmentKey& key) {
  return absl::StrCat(key.container_id(), "/", key.ifname(), "/",
                      key.network_name());
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir) {
  mkdir(dir.c_str(), 0700);
  // The state names every container and client: nobody else may read or
  // plant it. A directory open to others is fixed when it is ours, refused
  // otherwise.
  struct stat dst;
  if (stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("state dir ", dir, " is not a directory"));
  }
  if ((dst.st_mode & 0077) != 0) {
    if (dst.st_uid != geteuid()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "state dir %s is open to other users (mode %04o) and not owned by this user; "
          "give it mode 0700 and this user as owner",
          dir, dst.st_mode & 07777));
    }
    if (chmod(dir.c_str(), 0700) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state dir ", dir, " is open to other users and chmod 0700 failed: ",
          std::strerror(errno)));
    }
  }
  std::string path = absl::StrCat(dir, "/state.db");
  // Create the file 0600 ourselves: SQLite gives its -wal and -shm files the
  // database file's mode.
  bool fresh = false;
  {
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || st.st_size == 0) fresh = true;
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      fchmod(fd, 0600);
      close(fd);
    }
    for (const char* suffix : {"-wal", "-shm"}) {
      chmod(absl::StrCat(path, suffix).c_str(), 0600);  // from an older agent
    }
  }
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                               SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  auto refuse = [&](absl::string_view why) {
    std::string msg = absl::StrCat(
        "store ", path, " cannot be used: ", why,
        db != nullptr ? absl::StrCat(" (", sqlite3_errmsg(db), ")") : "",
        ". The agent will not start and leaves the kernel rules as they are; "
        "restore a backup (fabricctl backup) or move the file away to start "
        "empty.");
    if (db != nullptr) sqlite3_close(db);
    return absl::FailedPreconditionError(msg);
  };
  if (rc != SQLITE_OK) return refuse("cannot open");
  std::unique_ptr<Store> store(new Store(db, path));
  store->fresh_ = fresh;
  sqlite3_busy_timeout(db, 5000);
  // Reading the schema version is the first real read: a corrupt or
  // non-database file fails here.
  int version = -1;
  {
    Statement s(db, "PRAGMA user_version");
    if (!s.ok() || sqlite3_step(s.get()) != SQLITE_ROW) {
      store->db_ = nullptr;
      return refuse("not a readable SQLite database");
    }
    version = sqlite3_column_int(s.get(), 0);
  }
  {
    Statement s(db, "PRAGMA quick_check");
    if (!s.ok() || sqlite3_step(s.get()) != SQLITE_ROW ||
        std::string(reinterpret_cast<const char*>(
            sqlite3_column_text(s.get(), 0))) != "ok") {
      store->db_ = nullptr;
      return refuse("integrity check failed");
    }
  }
  if (version > kSchemaVersion) {
    store->db_ = nullptr;
    return refuse(absl::StrCat("schema version ", version,
                               " is newer than this agent's (",
                               kSchemaVersion, ")"));
  }
  // A page cache of 1 MiB, not SQLite's 2: a commit touches a few pages
  // per row; the full reads (the check above, Load) are done once.
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON", "PRAGMA cache_size=-1024"}) {
    if (absl::Status s = store->Exec(pragma); !s.ok()) return s;
  }
  // Migrations, one per version step, each in its own transaction.
  if (version < 1) {
    absl::Status s = store->Exec(
        "BEGIN;"
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE IF NOT EXISTS attachments("
        "  container_id TEXT NOT NULL, ifname TEXT NOT NULL,"
        "  network TEXT NOT NULL, spec BLOB NOT NULL,"
        "  PRIMARY KEY(container_id, ifname, network));"
        "CREATE TABLE IF NOT EXISTS mappings("
        "  id TEXT PRIMARY KEY, owner_kind INTEGER NOT NULL,"
        "  owner_id TEXT NOT NULL, spec BLOB NOT NULL);"
        "CREATE INDEX IF NOT EXISTS mappings_owner ON mappings(owner_kind, owner_id);"
        "INSERT OR IGNORE INTO meta VALUES('next_mapping_id', '1');"
        "PRAGMA user_version=1;"
        "COMMIT;");
    if (!s.ok()) return s;
  }
  if (version < 2) {
    absl::Status s = store->Exec(
        "BEGIN;"
        "CREATE TABLE IF NOT EXISTS pinholes(id INTEGER PRIMARY KEY, spec BLOB NOT NULL);"
        "PRAGMA user_version=2;"
        "COMMIT;");
    if (!s.ok()) return s;
  }
  // The store's id: made once (stores from before it get one now).
  {
    Statement s(db, "SELECT value FROM meta WHERE key='store_id'");
    if (s.ok() && sqlite3_step(s.get()) == SQLITE_ROW) {
      store->id_ = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
    }
  }
  if (store->id_.empty()) {
    std::ifstream random("/dev/urandom", std::ios::binary);
    unsigned char bytes[16] = {};
    random.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
    std::string id = "fabric-nat-store-";
    for (unsigned char b : bytes) absl::StrAppend(&id, absl::Hex(b, absl::kZeroPad2));
    Statement put(db, "INSERT OR REPLACE INTO meta VALUES('store_id', ?1)");
    put.BindText(1, id);
    if (!put.Run()) return SqlError(db, "write the store id");
    store->id_ = id;
  }
  return store;
}

bool Store::IsStoreFile(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return false;
  }
  bool ours = false;
  {
    Statement s(db, "SELECT value FROM meta WHERE key='next_mapping_id'");
    ours = s.ok() && sqlite3_step(s.get()) == SQLITE_ROW;
  }
  sqlite3_close(db);
  return ours;
}

Store::~Store() {
  for (sqlite3_stmt* s : cached_) sqlite3_finalize(s);
  if (db_ != nullptr) sqlite3_close(db_);
}

absl::Status Store::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return absl::InternalError(absl::StrCat("store: ", msg));
  }
  return absl::OkStatus();
}

absl::StatusOr<StoreContents> Store::Load() const {
  StoreContents out;
  // A read that stops early is an error, never the end of a table: the
  // agent would delete from the kernel what it did not read.
  auto unreadable = [this](absl::string_view what) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store ", path_, ": reading ", what, " failed (", sqlite3_errmsg(db_),
        "); the agent will not start and leaves the kernel as it is"));
  };
  {
    Statement s(db_, "SELECT spec FROM attachments");
    if (!s.ok()) return SqlError(db_, "read attachments");
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
      v1::Attachment a;
      if (!a.ParseFromString(Blob(s.get(), 0))) {
        return absl::FailedPreconditionError(
            absl::StrCat("store ", path_, ": an attachment row is corrupt"));
      }
      out.attachments.push_back(std::move(a));
    }
    if (rc != SQLITE_DONE) return unreadable("attachments");
  }
  {
    Statement s(db_, "SELECT spec FROM mappings ORDER BY rowid");
    if (!s.ok()) return SqlError(db_, "read mappings");
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
      v1::PortMapping m;
      if (!m.ParseFromString(Blob(s.get(), 0))) {
        return absl::FailedPreconditionError(
            absl::StrCat("store ", path_, ": a mapping row is corrupt"));
      }
      out.mappings.push_back(std::move(m));
    }
    if (rc != SQLITE_DONE) return unreadable("mappings");
  }
  {
    Statement s(db_, "SELECT spec FROM pinholes ORDER BY id");
    if (!s.ok()) return SqlError(db_, "read pinholes");
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
      v1::Pinhole p;
      if (!p.ParseFromString(Blob(s.get(), 0))) {
        return absl::FailedPreconditionError(
            absl::StrCat("store ", path_, ": a pinhole row is corrupt"));
      }
      out.pinholes.push_back(std::move(p));
    }
    if (rc != SQLITE_DONE) return unreadable("pinholes");
  }
  // The whole-table read filled the page cache; the agent's writes do not
  // need it (about 2 MB back at 100k mappings).
  sqlite3_db_release_memory(db_);
  // The id counter must pass every stored id, whatever the meta row says
  // (missing, or behind): reusing an id would overwrite a live mapping.
  int64_t highest = 0;
  for (const v1::PortMapping& m : out.mappings) {
    int64_t n = 0;
    if (absl::StartsWith(m.id(), "m-") && absl::SimpleAtoi(m.id().substr(2), &n)) {
      highest = std::max(highest, n);
    }
  }
  out.next_mapping_id = highest + 1;
  {
    Statement s(db_, "SELECT value FROM meta WHERE key='next_mapping_id'");
    int rc = s.ok() ? sqlite3_step(s.get()) : SQLITE_ERROR;
    if (rc == SQLITE_ROW) {
      out.next_mapping_id = std::max<int64_t>(out.next_mapping_id, sqlite3_column_int64(s.get(), 0));
    } else if (rc != SQLITE_DONE) {
      return unreadable("the mapping id counter");
    }
  }
  {
    Statement s(db_, "SELECT value FROM meta WHERE key='epoch_start'");
    if (s.ok() && sqlite3_step(s.get()) == SQLITE_ROW) {
      out.epoch_start = sqlite3_column_int64(s.get(), 0);
    }
  }
  return out;
}

sqlite3_stmt* Store::Prepared(Cached which) {
  static constexpr const char* kSql[kCachedCount] = {
      "BEGIN IMMEDIATE",
      "COMMIT",
      "ROLLBACK",
      "DELETE FROM attachments WHERE container_id=?1 AND ifname=?2 AND network=?3",
      "INSERT OR REPLACE INTO attachments VALUES(?1,?2,?3,?4)",
      "DELETE FROM mappings WHERE id=?1",
      "INSERT OR REPLACE INTO mappings VALUES(?1,?2,?3,?4)",
      "DELETE FROM pinholes WHERE id=?1",
      "INSERT OR REPLACE INTO pinholes VALUES(?1,?2)",
      "UPDATE meta SET value=?1 WHERE key='next_mapping_id'",
      "INSERT OR REPLACE INTO meta VALUES('epoch_start', ?1)",
  };
  sqlite3_stmt*& s = cached_[which];
  if (s == nullptr &&
      sqlite3_prepare_v3(db_, kSql[which], -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) !=
          SQLITE_OK) {
    sqlite3_finalize(s);
    s = nullptr;
  }
  return s;
}

void Store::Rollback() {
  if (sqlite3_stmt* s = Prepared(kRollback)) {
    sqlite3_step(s);
    sqlite3_reset(s);
  } else {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
}


absl::Status Store::Commit(const StoreWrite& write,
                           const std::function<absl::Status()>& inside) {
  if (write.empty()) return inside ? inside() : absl::OkStatus();
  sqlite3_stmt* begin = Prepared(kBegin);
  if (begin == nullptr) return SqlError(db_, "begin");
  if (!Run(begin)) return SqlError(db_, "begin");
  auto fail = [&](absl::string_view what) {
    absl::Status s = SqlError(db_, what);
    Rollback();
    return s;
  };
  // A statement is prepared (the first time) only when the write has rows
  // for it.
  if (!write.delete_attachments.empty()) {
    sqlite3_stmt* del = Prepared(kDeleteAttachment);
    if (del == nullptr) return fail("delete attachment");
    for (const v1::AttachmentKey& k : write.delete_attachments) {
      BindText(del, 1, k.container_id());
      BindText(del, 2, k.ifname());
      BindText(del, 3, k.network_name());
      if (!Run(del)) return fail("delete attachment");
    }
  }
  std::string blob;
  if (!write.put_attachments.empty()) {
    sqlite3_stmt* put = Prepared(kPutAttachment);
    if (put == nullptr) return fail("write attachment");
    for (const v1::Attachment& a : write.put_attachments) {
      BindText(put, 1, a.key().container_id());
      BindText(put, 2, a.key().ifname());
      BindText(put, 3, a.key().network_name());
      a.SerializeToString(&blob);
      BindBlob(put, 4, blob);
      if (!Run(put)) return fail("write attachment");
    }
  }
  if (!write.delete_mappings.empty()) {
    sqlite3_stmt* del = Prepared(kDeleteMapping);
    if (del == nullptr) return fail("delete mapping");
    for (const std::string& id : write.delete_mappings) {
      BindText(del, 1, id);
      if (!Run(del)) return fail("delete mapping");
    }
  }
  if (!write.put_mappings.empty()) {
    sqlite3_stmt* put = Prepared(kPutMapping);
    if (put == nullptr) return fail("write mapping");
    for (const v1::PortMapping& m : write.put_mappings) {
      BindText(put, 1, m.id());
      sqlite3_bind_int(put, 2, m.owner().kind());
      BindText(put, 3, m.owner().id());
      m.SerializeToString(&blob);
      BindBlob(put, 4, blob);
      if (!Run(put)) return fail("write mapping");
    }
  }
  if (!write.delete_pinholes.empty()) {
    sqlite3_stmt* del = Prepared(kDeletePinhole);
    if (del == nullptr) return fail("delete pinhole");
    for (uint32_t id : write.delete_pinholes) {
      sqlite3_bind_int64(del, 1, id);
      if (!Run(del)) return fail("delete pinhole");
    }
  }
  if (!write.put_pinholes.empty()) {
    sqlite3_stmt* put = Prepared(kPutPinhole);
    if (put == nullptr) return fail("write pinhole");
    for (const v1::Pinhole& p : write.put_pinholes) {
      sqlite3_bind_int64(put, 1, p.unique_id());
      p.SerializeToString(&blob);
      BindBlob(put, 2, blob);
      if (!Run(put)) return fail("write pinhole");
    }
  }
  if (write.next_mapping_id.has_value()) {
    sqlite3_stmt* put = Prepared(kPutNextMappingId);
    if (put == nullptr) return fail("write mapping id counter");
    std::string value = absl::StrCat(*write.next_mapping_id);
    BindText(put, 1, value);
    if (!Run(put)) return fail("write mapping id counter");
  }
  if (write.epoch_start.has_value()) {
    sqlite3_stmt* put = Prepared(kPutEpochStart);
    if (put == nullptr) return fail("write epoch start");
    std::string value = absl::StrCat(*write.epoch_start);
    BindText(put, 1, value);
    if (!Run(put)) return fail("write epoch start");
  }
  if (inside) {
    if (absl::Status s = inside(); !s.ok()) {
      Rollback();
      return s;
    }
  }
  sqlite3_stmt* commit = Prepared(kCommit);
  if (commit == nullptr || !Run(commit)) return fail("commit");
  return absl::OkStatus();
}

absl::Status Store::Backup(const std::string& path) const {
  sqlite3* dest = nullptr;
  if (sqlite3_open(path.c_str(), &dest) != SQLITE_OK) {
    absl::Status s = absl::FailedPreconditionError(
        absl::StrCat("backup: cannot open ", path, ": ", sqlite3_errmsg(dest)));
    sqlite3_close(dest);
    return s;
  }
  sqlite3_backup* b = sqlite3_backup_init(dest, "main", db_, "main");
  if (b == nullptr) {
    absl::Status s = SqlError(dest, absl::StrCat("backup to ", path));
    sqlite3_close(dest);
    return s;
  }
  sqlite3_backup_step(b, -1);
  sqlite3_backup_finish(b);
  int rc = sqlite3_errcode(dest);
  absl::Status s = rc == SQLITE_OK
                       ? absl::OkStatus()
                       : SqlError(dest, absl::StrCat("backup to ", path));
  sqlite3_close(dest);
  return s;
}

}  // namespace fabric::agent
