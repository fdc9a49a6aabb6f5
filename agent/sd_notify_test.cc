#include "agent/sd_notify.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "testing/status_matchers.h"

namespace fabric::agent {
namespace {

using ::fabric::testing::StatusIs;

// A datagram socket standing in for systemd's notify socket.
class Listener {
 public:
  explicit Listener(const std::string& name)
      : fd_(socket(AF_UNIX, SOCK_DGRAM, 0)), name_(name) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (name.size() >= sizeof(addr.sun_path)) {
      ADD_FAILURE() << "socket path too long: " << name;
      return;
    }
    std::memcpy(addr.sun_path, name.data(), name.size());
    if (name[0] == '@') addr.sun_path[0] = '\0';
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr),
                   offsetof(sockaddr_un, sun_path) + name.size()),
              0);
  }
  ~Listener() {
    close(fd_);
    if (!name_.empty() && name_[0] == '/') unlink(name_.c_str());
  }
  std::string Receive() {
    char buf[256];
    ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
    return n < 0 ? "" : std::string(buf, n);
  }

 private:
  int fd_;
  std::string name_;
};

// A socket path short enough for sun_path (TEST_TMPDIR often is not).
std::string ShortPath(const std::string& tag) {
  return absl::StrCat("/tmp/fnt-notify-", getpid(), "-", tag);
}

TEST(NotifySystemdTest, SendsTheStateToAPathSocket) {
  std::string path = ShortPath("listener");
  Listener l(path);
  setenv("NOTIFY_SOCKET", path.c_str(), 1);
  EXPECT_OK(NotifySystemd("READY=1"));
  EXPECT_EQ(l.Receive(), "READY=1");
}

TEST(NotifySystemdTest, SendsToAnAbstractSocket) {
  std::string name = absl::StrCat("@fabric-notify-test-", getpid());
  Listener l(name);
  setenv("NOTIFY_SOCKET", name.c_str(), 1);
  EXPECT_OK(NotifySystemd("STOPPING=1"));
  EXPECT_EQ(l.Receive(), "STOPPING=1");
}

TEST(NotifySystemdTest, WithoutNotifySocketDoesNothing) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_OK(NotifySystemd("READY=1"));
}

TEST(NotifySystemdTest, AnAbsentListenerIsUnavailable) {
  std::string path = ShortPath("nobody");
  setenv("NOTIFY_SOCKET", path.c_str(), 1);
  EXPECT_THAT(NotifySystemd("READY=1"), StatusIs(absl::StatusCode::kUnavailable));
  setenv("NOTIFY_SOCKET", "relative", 1);
  EXPECT_THAT(NotifySystemd("READY=1"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fabric::agent
