// Each system library wrapper links and works.
#include <grpcpp/grpcpp.h>
#include <libiptc/libiptc.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnftnl/table.h>
#include <microhttpd.h>
#include <miniupnpc/miniupnpc.h>
#include <nghttp2/nghttp2.h>
#include <miniupnpc/upnperrors.h>
#include <pugixml.hpp>
#include <sqlite3.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/common.h"
#include "gtest/gtest.h"

TEST(SystemLibrariesTest, EachLinksAndAnswers) {
  EXPECT_EQ(absl::StrCat("a", 1), "a1");
  EXPECT_FALSE(grpc::Version().empty());
  ASSERT_NE(nghttp2_version(0), nullptr);
  EXPECT_GE(nghttp2_version(0)->version_num, 0x013400);  // Debian 12: 1.52
  EXPECT_GT(GOOGLE_PROTOBUF_VERSION, 3000000);
  nftnl_table* t = nftnl_table_alloc();
  ASSERT_NE(t, nullptr);
  nftnl_table_free(t);
  EXPECT_EQ(MNL_ALIGN(3), 4);
  nf_conntrack* ct = nfct_new();
  ASSERT_NE(ct, nullptr);
  nfct_destroy(ct);
  // libiptc: an error string lookup needs no kernel.
  EXPECT_NE(iptc_strerror(0), nullptr);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(":memory:", &db), SQLITE_OK);
  sqlite3_close(db);
  EXPECT_STREQ(MHD_get_reason_phrase_for(431), "Request Header Fields Too Large");
  EXPECT_EQ(MHD_is_feature_supported(MHD_FEATURE_EPOLL), MHD_YES);
  EXPECT_EQ(nlohmann::json::parse(R"({"a": [1, 2]})")["a"][1], 2);
  pugi::xml_document doc;
  ASSERT_TRUE(doc.load_string("<a><b>x</b></a>"));
  EXPECT_STREQ(doc.child("a").child("b").text().get(), "x");
  // libminiupnpc: an error string lookup needs no network.
  EXPECT_STREQ(strupnperror(718), "ConflictInMappingEntry");
}
