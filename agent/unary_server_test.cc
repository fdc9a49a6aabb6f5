// The agent's unary server and the socket's front door, with real peers on
// both sides: the plugin's own client (cni/grpc_unary.h) and gRPC's C++
// client, against handlers here and gRPC's own server behind the front.
#include "agent/unary_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/socket_front.h"
#include "cni/grpc_unary.h"
#include "fabric/nat/v1/nat.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "testing/http2_frames.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;
using ::testing::HasSubstr;
namespace v1 = ::fabric::nat::v1;

constexpr char kAttach[] = "/fabric.nat.v1.AttachmentService/Attach";
constexpr char kDetach[] = "/fabric.nat.v1.AttachmentService/Detach";

int Connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// gRPC's own Attach, behind the front: its answers say where they came from.
class GrpcAttachments : public v1::AttachmentService::Service {
 public:
  grpc::Status Attach(grpc::ServerContext*, const v1::AttachRequest* req,
                      v1::AttachResponse* resp) override {
    resp->add_mappings()->set_id("from-grpc:" + req->attachment().key().container_id());
    return grpc::Status::OK;
  }
};

class SocketFrontTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fusv-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/agent.sock";
    grpc::ServerBuilder builder;
    builder.RegisterService(&grpc_attachments_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    front_.reset();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  // The front with handlers here: Attach answers "from-front", records the
  // call; Detach answers what `detach_status` says.
  void StartFront(SocketFrontOptions options = {}) {
    UnaryHandlers h;
    h[kAttach] = [this](const UnaryCall& call, absl::string_view bytes, std::string* out) {
      v1::AttachRequest req;
      if (!req.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
        return absl::InternalError("unparsable");
      }
      {
        std::lock_guard<std::mutex> l(mu_);
        seen_.push_back(call);
      }
      v1::AttachResponse resp;
      resp.add_mappings()->set_id("from-front:" + req.attachment().key().container_id());
      // An echo of the request's size: large requests arrive whole.
      resp.add_mappings()->set_description(absl::StrCat(bytes.size()));
      *out = resp.SerializeAsString();
      return absl::OkStatus();
    };
    h[kDetach] = [this](const UnaryCall&, absl::string_view, std::string* out) {
      *out = std::string(big_answer_, 'x');
      return detach_status_;
    };
    auto f = SocketFront::Start(path_, server_.get(), std::move(h), options);
    ASSERT_OK(f.status());
    front_ = *std::move(f);
  }

  // The plugin's client, as the plugin calls.
  absl::StatusOr<v1::AttachResponse> PluginAttach(const std::string& container,
                                                  size_t padding = 0) {
    v1::AttachRequest req;
    req.mutable_attachment()->mutable_key()->set_container_id(container);
    req.mutable_attachment()->mutable_key()->set_network_name(std::string(padding, 'n'));
    cni::UnaryCall call;
    call.path = kAttach;
    call.request = req.SerializeAsString();
    call.deadline = absl::Now() + absl::Seconds(5);
    call.metadata = {{"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}};
    int fd = Connect(path_);
    if (fd < 0) return absl::UnavailableError("connect");
    absl::StatusOr<std::string> r = cni::CallUnary(fd, call);
    close(fd);
    if (!r.ok()) return r.status();
    v1::AttachResponse resp;
    if (!resp.ParseFromString(*r)) return absl::InternalError("answer does not parse");
    return resp;
  }

  // served_here() once it reaches `n` (a worker counts a connection when
  // the client has closed it), or after 5 s.
  uint64_t Served(uint64_t n) {
    absl::Time until = absl::Now() + absl::Seconds(5);
    while (front_->served_here() < n && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
    return front_->served_here();
  }

  absl::StatusOr<std::string> PluginCall(const std::string& path, const std::string& request) {
    cni::UnaryCall call;
    call.path = path;
    call.request = request;
    call.deadline = absl::Now() + absl::Seconds(5);
    int fd = Connect(path_);
    if (fd < 0) return absl::UnavailableError("connect");
    absl::StatusOr<std::string> r = cni::CallUnary(fd, call);
    close(fd);
    return r;
  }

  std::string dir_, path_;
  GrpcAttachments grpc_attachments_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<SocketFront> front_;
  std::mutex mu_;
  std::vector<UnaryCall> seen_;
  absl::Status detach_status_;
  size_t big_answer_ = 0;
};

TEST_F(SocketFrontTest, ThePluginsCallIsServedHereWithItsDeadlineAndTrace) {
  StartFront();
  absl::Time before = absl::Now();
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse resp, PluginAttach("c1"));
  ASSERT_EQ(resp.mappings_size(), 2);
  EXPECT_EQ(resp.mappings(0).id(), "from-front:c1");
  EXPECT_EQ(Served(1), 1u);
  EXPECT_EQ(front_->handed_to_grpc(), 0u);
  std::lock_guard<std::mutex> l(mu_);
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].path, kAttach);
  EXPECT_EQ(seen_[0].traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_GT(seen_[0].deadline, before + absl::Seconds(4));
  EXPECT_LE(seen_[0].deadline, absl::Now() + absl::Seconds(5));
}

TEST_F(SocketFrontTest, GrpcsOwnClientIsHandedToGrpcsServer) {
  StartFront();
  auto channel = grpc::CreateChannel("unix:" + path_, grpc::InsecureChannelCredentials());
  auto stub = v1::AttachmentService::NewStub(channel);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::AttachRequest req;
    req.mutable_attachment()->mutable_key()->set_container_id("c2");
    v1::AttachResponse resp;
    grpc::Status s = stub->Attach(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.mappings_size(), 1);
    EXPECT_EQ(resp.mappings(0).id(), "from-grpc:c2");
  }
  // One connection, three calls on it.
  EXPECT_EQ(front_->handed_to_grpc(), 1u);
  EXPECT_EQ(front_->served_here(), 0u);
}

TEST_F(SocketFrontTest, AMethodWithoutAHandlerGoesToGrpc) {
  StartFront();
  EXPECT_THAT(PluginCall("/fabric.nat.v1.AgentService/GetStatus", ""),
              StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_EQ(front_->handed_to_grpc(), 1u);
}

TEST_F(SocketFrontTest, AnErrorKeepsItsCodeAndMessage) {
  StartFront();
  detach_status_ = absl::FailedPreconditionError("port 80%\nin use \xc3\xa9");
  EXPECT_THAT(PluginCall(kDetach, ""),
              StatusIs(absl::StatusCode::kFailedPrecondition, "port 80%\nin use \xc3\xa9"));
  EXPECT_EQ(Served(1), 1u);
}

TEST_F(SocketFrontTest, ARequestOverTheLimitIsResourceExhausted) {
  SocketFrontOptions options;
  options.limits.max_request_bytes = 1000;
  StartFront(options);
  EXPECT_THAT(PluginAttach("c3", 2000),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("larger than 1000 bytes")));
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse small, PluginAttach("c4", 500));
  EXPECT_EQ(small.mappings(0).id(), "from-front:c4");
}

// A 1 MB request crosses the server's 64 KiB flow-control windows; a 1 MB
// answer the client's.
TEST_F(SocketFrontTest, LargeCallsCrossTheFlowControlWindows) {
  StartFront();
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse resp, PluginAttach("c5", 1 << 20));
  ASSERT_EQ(resp.mappings_size(), 2);
  size_t echoed = 0;
  ASSERT_TRUE(absl::SimpleAtoi(resp.mappings(1).description(), &echoed));
  EXPECT_GT(echoed, size_t{1} << 20);
  big_answer_ = 1 << 20;
  ASSERT_OK_AND_ASSIGN(std::string answer, PluginCall(kDetach, ""));
  EXPECT_EQ(answer.size(), size_t{1} << 20);
}

// More at once than the workers and their queue: the rest are gRPC's, and
// every one is answered.
TEST_F(SocketFrontTest, ManyPluginsAtOnceAreAllAnswered) {
  StartFront();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<v1::AttachResponse> r = PluginAttach(absl::StrCat("p", i));
      if (r.ok() && (r->mappings(0).id() == absl::StrCat("from-front:p", i) ||
                     r->mappings(0).id() == absl::StrCat("from-grpc:p", i))) {
        ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 64);
  uint64_t here = Served(64 - front_->handed_to_grpc());
  EXPECT_EQ(here + front_->handed_to_grpc(), 64u);
  EXPECT_GE(here, 8u);
}

// Clients that hold every worker (headers sent, the message never) and
// fill the queue: the next plugin call is served by gRPC's server instead
// of waiting behind them.
TEST_F(SocketFrontTest, WorkersHeldBySlowClientsDoNotDelayTheNextCall) {
  SocketFrontOptions options;
  options.workers = 2;
  StartFront(options);
  nghttp2_hd_deflater* deflater = nullptr;
  ASSERT_EQ(nghttp2_hd_deflate_new(&deflater, 4096), 0);
  std::string stalled = testing::kHttp2Preface;
  testing::AppendFrame(&stalled, NGHTTP2_SETTINGS, 0, 0, "");
  testing::AppendFrame(&stalled, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1,
                       testing::EncodeHeaders(deflater, {{":method", "POST"},
                                                         {":scheme", "http"},
                                                         {":authority", "agent"},
                                                         {":path", kAttach},
                                                         {"content-type", "application/grpc"}}));
  nghttp2_hd_deflate_del(deflater);
  std::vector<int> slow;
  for (int i = 0; i < 4; ++i) {  // two held by the workers, two queued
    int fd = Connect(path_);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, stalled.data(), stalled.size()), static_cast<ssize_t>(stalled.size()));
    slow.push_back(fd);
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::Time start = absl::Now();
  ASSERT_OK_AND_ASSIGN(v1::AttachResponse resp, PluginAttach("next"));
  EXPECT_EQ(resp.mappings(0).id(), "from-grpc:next");
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_GE(front_->handed_to_grpc(), 1u);  // a slow one too, if it found the queue full
  for (int fd : slow) close(fd);
}

TEST_F(SocketFrontTest, ASilentConnectionIsHandedToGrpcAfterASecond) {
  StartFront();
  int fd = Connect(path_);
  ASSERT_GE(fd, 0);
  absl::Time until = absl::Now() + absl::Seconds(5);
  while (front_->handed_to_grpc() == 0 && absl::Now() < until)
    absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(front_->handed_to_grpc(), 1u);
  close(fd);
  // The front still serves.
  ASSERT_OK(PluginAttach("after").status());
}

TEST_F(SocketFrontTest, TheSocketIsPrivateAndGoesWithTheFront) {
  StartFront();
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  front_.reset();
  EXPECT_NE(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
}

// ServeUnaryConnection alone, on a socketpair written by hand.
absl::Status ServeBytes(const std::string& bytes) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  EXPECT_EQ(write(sv[1], bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  shutdown(sv[1], SHUT_WR);
  UnaryHandlers h;
  h["/a/B"] = [](const UnaryCall&, absl::string_view, std::string*) { return absl::OkStatus(); };
  UnaryServerLimits limits;
  limits.io_timeout = absl::Seconds(2);
  absl::Status s = ServeUnaryConnection(sv[0], h, limits);  // closes sv[0]
  close(sv[1]);
  return s;
}

TEST(ServeUnaryConnectionTest, NotHttp2IsRefused) {
  EXPECT_THAT(ServeBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not speak HTTP/2")));
}

TEST(ServeUnaryConnectionTest, APeerThatClosesBeforeItsCallIsUnavailable) {
  std::string bytes = testing::kHttp2Preface;
  testing::AppendFrame(&bytes, NGHTTP2_SETTINGS, 0, 0, "");
  EXPECT_THAT(ServeBytes(bytes), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(FirstCallPathTest, FindsThePathOfTheFirstHeaders) {
  nghttp2_hd_deflater* deflater = nullptr;
  ASSERT_EQ(nghttp2_hd_deflate_new(&deflater, 4096), 0);
  std::string block = testing::EncodeHeaders(
      deflater, {{":method", "POST"}, {":path", kAttach}, {"content-type", "application/grpc"}});
  nghttp2_hd_deflate_del(deflater);
  std::string head = testing::kHttp2Preface;
  testing::AppendFrame(&head, NGHTTP2_SETTINGS, 0, 0, "");
  std::string whole = head;
  testing::AppendFrame(&whole, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, block);
  EXPECT_EQ(FirstCallPath(whole), kAttach);
  // Padded, with a priority: the same block inside.
  std::string padded = head;
  testing::AppendFrame(&padded, NGHTTP2_HEADERS,
                       NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_PADDED | NGHTTP2_FLAG_PRIORITY, 1,
                       std::string(1, '\3') + std::string(5, '\0') + block + "xyz");
  EXPECT_EQ(FirstCallPath(padded), kAttach);
  // Not (yet) a whole call's headers: gRPC's server gets those connections.
  EXPECT_EQ(FirstCallPath(head), std::nullopt);
  EXPECT_EQ(FirstCallPath(whole.substr(0, whole.size() - 1)), std::nullopt);
  std::string continued = head;
  testing::AppendFrame(&continued, NGHTTP2_HEADERS, 0, 1, block);
  EXPECT_EQ(FirstCallPath(continued), std::nullopt);
  std::string data_first = head;
  testing::AppendFrame(&data_first, NGHTTP2_DATA, 0, 1, "x");
  EXPECT_EQ(FirstCallPath(data_first), std::nullopt);
  EXPECT_EQ(FirstCallPath("PRI * HTTP/2.0\r\n\r\nSM\r\n"), std::nullopt);
  EXPECT_EQ(FirstCallPath("GET / HTTP/1.1\r\n\r\n"), std::nullopt);
  std::string garbage = head;
  testing::AppendFrame(&garbage, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, "\xff\xff\xff");
  EXPECT_EQ(FirstCallPath(garbage), std::nullopt);
}

TEST(GrpcTimeoutTest, ParsesEveryUnitAndRefusesTheRest) {
  EXPECT_EQ(ParseGrpcTimeout("1H"), absl::Hours(1));
  EXPECT_EQ(ParseGrpcTimeout("2M"), absl::Minutes(2));
  EXPECT_EQ(ParseGrpcTimeout("3S"), absl::Seconds(3));
  EXPECT_EQ(ParseGrpcTimeout("4000m"), absl::Milliseconds(4000));
  EXPECT_EQ(ParseGrpcTimeout("5u"), absl::Microseconds(5));
  EXPECT_EQ(ParseGrpcTimeout("99999999n"), absl::Nanoseconds(99999999));
  EXPECT_EQ(ParseGrpcTimeout("123456789n"), std::nullopt);  // 9 digits
  EXPECT_EQ(ParseGrpcTimeout("5"), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout("5s"), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout("-5S"), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout(""), std::nullopt);
  // What the plugin sends, read back.
  for (absl::Duration d : {absl::Milliseconds(1), absl::Seconds(5), absl::Hours(30)}) {
    std::optional<absl::Duration> back = ParseGrpcTimeout(cni::GrpcTimeout(d));
    ASSERT_TRUE(back.has_value());
    EXPECT_GE(*back, d);
  }
}

TEST(PercentEncodeTest, EncodesWhatGrpcMessageMustAndDecodesBack) {
  EXPECT_EQ(PercentEncode("plain text"), "plain text");
  EXPECT_EQ(PercentEncode("100%\n\xc3\xa9"), "100%25%0A%C3%A9");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(cni::PercentDecode(PercentEncode(all)), all);
}

}  // namespace
}  // namespace fabric::agent
