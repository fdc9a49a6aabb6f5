// Store: the agent's durable state in SQLite (WAL). The store is the truth;
// the kernel is made to match it. Every write is one transaction, committed
// (fsync'd per synchronous=FULL) before the agent replies.
//
// Holds attachments (CNI) and mappings (all owners) as serialized v1 protos,
// keyed for lookup; the schema is versioned (PRAGMA user_version).
//
// Thread-compatible: the agent's core serializes all calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fabric/nat/v1/nat.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace fabric::agent {

namespace v1 = ::fabric::nat::v1;

// One write, applied as a single transaction.
struct StoreWrite {
  std::vector<v1::Attachment> put_attachments;
  std::vector<v1::AttachmentKey> delete_attachments;
  std::vector<v1::PortMapping> put_mappings;
  std::vector<std::string> delete_mappings;  // mapping ids
  std::vector<v1::Pinhole> put_pinholes;
  std::vector<uint32_t> delete_pinholes;  // unique ids
  // The counter mapping ids are drawn from, when it moved.
  std::optional<int64_t> next_mapping_id;
  // Start of the NAT-PMP/PCP epoch (unix seconds), when first set.
  std::optional<int64_t> epoch_start;
  bool empty() const {
    return put_attachments.empty() && delete_attachments.empty() &&
           put_mappings.empty() && delete_mappings.empty() && put_pinholes.empty() &&
           delete_pinholes.empty() &&
           !next_mapping_id.has_value() && !epoch_start.has_value();
  }
};

struct StoreContents {
  std::vector<v1::Attachment> attachments;
  std::vector<v1::PortMapping> mappings;
  std::vector<v1::Pinhole> pinholes;
  int64_t next_mapping_id = 1;
  // Unset in a new store: the mapping table starts now.
  std::optional<int64_t> epoch_start;
};

class Store {
 public:
  // Opens (creating if needed) <dir>/state.db, mode 0600 (and its -wal and
  // -shm files), in a directory only its owner can enter (a directory open
  // to others is set to 0700 when it is ours, refused otherwise).
  // kFailedPrecondition with the path and the cause when the file is
  // unreadable, corrupt, or of a newer schema: the agent must then refuse
  // to start.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir);
  // Whether `path` is a fabric-nat database (a store or a backup of one),
  // looked at read-only.
  static bool IsStoreFile(const std::string& path);
  ~Store();

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Everything stored.
  absl::StatusOr<StoreContents> Load() const;

  // Applies `write` atomically. kInternal with SQLite's message on failure;
  // nothing is written then.
  absl::Status Commit(const StoreWrite& write) { return Commit(write, nullptr); }
  // The same with `inside` (the kernel batch) run after the rows are
  // written and before COMMIT: BEGIN IMMEDIATE, rows, inside(), COMMIT. When
  // inside() fails the transaction is rolled back and its status returned;
  // nothing is written. A failure of COMMIT itself (after inside() did its
  // work) is kInternal with SQLite's message, and also rolls back.
  absl::Status Commit(const StoreWrite& write, const std::function<absl::Status()>& inside);

  // Writes a consistent snapshot of the database to `path` (online backup).
  absl::Status Backup(const std::string& path) const;

  const std::string& path() const { return path_; }
  // True when Open() found no database (no file, or an empty one) and made
  // a new one: the agent must not take an empty store as the truth while
  // the kernel still holds its rules.
  bool fresh() const { return fresh_; }
  // A random id made when the store was made (kept in its meta table, so
  // backups carry it): the marker the agent leaves on its kernel table.
  const std::string& id() const { return id_; }
  static constexpr int kSchemaVersion = 2;

 private:
  // The statements Commit runs, prepared once (on first use) and kept:
  // preparing them per commit was about a tenth of an ADD's store time.
  enum Cached {
    kBegin,
    kCommit,
    kRollback,
    kDeleteAttachment,
    kPutAttachment,
    kDeleteMapping,
    kPutMapping,
    kDeletePinhole,
    kPutPinhole,
    kPutNextMappingId,
    kPutEpochStart,
    kCachedCount
  };
  Store(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  absl::Status Exec(const char* sql);
  // The statement, reset and with no bindings; nullptr when SQLite refuses
  // to prepare it (sqlite3_errmsg says why).
  sqlite3_stmt* Prepared(Cached which);
  void Rollback();

  sqlite3* db_;
  sqlite3_stmt* cached_[kCachedCount] = {};
  std::string path_;
  bool fresh_ = false;
  std::string id_;
};

// "cid/ifname/network": the owner id of an attachment's mappings.
std::string AttachmentOwnerId(const v1::AttachmentKey& key);

}  // namespace fabric::agent
