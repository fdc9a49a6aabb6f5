#include "cni/plugin.h"

#include "cni/go_json.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace fabric::cni {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

// Records what the plugin asked; answers with the configured statuses.
class FakeAgent : public AgentClient {
 public:
  absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& a) override {
    attached.push_back(a);
    if (!attach_status.ok()) return attach_status;
    return v1::AttachResponse();
  }
  absl::Status Detach(const v1::AttachmentKey& key) override {
    detached.push_back(key);
    return detach_status;
  }
  absl::Status Check(const v1::AttachmentKey& key) override {
    checked.push_back(key);
    return check_status;
  }
  absl::StatusOr<v1::GarbageCollectResponse> GarbageCollect(
      const v1::GarbageCollectRequest& r) override {
    gc.push_back(r);
    return v1::GarbageCollectResponse();
  }
  absl::StatusOr<v1::GetStatusResponse> GetStatus() override {
    if (!status_status.ok()) return status_status;
    v1::GetStatusResponse r;
    r.set_ready(ready);
    r.set_reason("store unreadable");
    return r;
  }

  std::vector<v1::Attachment> attached;
  std::vector<v1::AttachmentKey> detached, checked;
  std::vector<v1::GarbageCollectRequest> gc;
  absl::Status attach_status, detach_status, check_status, status_status;
  bool ready = true;
};

class PluginTest : public ::testing::Test {
 protected:
  Outcome Run(const std::string& command, const json& config,
              std::map<std::string, std::string> env = {}) {
    Invocation in;
    in.env = {{"CNI_COMMAND", command},
              {"CNI_CONTAINERID", "3f2a9b1c"},
              {"CNI_NETNS", "/run/netns/c1"},
              {"CNI_IFNAME", "eth0"},
              {"CNI_PATH", "/usr/lib/cni"}};
    for (auto& [k, v] : env) {
      if (v.empty()) {
        in.env.erase(k);
      } else {
        in.env[k] = v;
      }
    }
    in.stdin_data = config.is_null() ? "" : config.dump();
    return RunBytes(in);
  }

  // Runs ADD with `stdin_data` exactly as a runtime wrote it.
  Outcome AddBytes(const std::string& stdin_data) {
    Invocation in;
    in.env = {{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "3f2a9b1c"},
              {"CNI_NETNS", "/run/netns/c1"}, {"CNI_IFNAME", "eth0"},
              {"CNI_PATH", "/usr/lib/cni"}};
    in.stdin_data = stdin_data;
    return RunBytes(in);
  }

  // ADD with `stdin_data` succeeds and asks for 8080/tcp -> 80 on any
  // address and 5353/udp -> 53 on 192.0.2.1 (what every runtime below asks).
  void ExpectAddSendsTwoMappings(const std::string& stdin_data) {
    Outcome o = AddBytes(stdin_data);
    ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
    ASSERT_EQ(agent_.attached.size(), 1u);
    const v1::Attachment& a = agent_.attached[0];
    ASSERT_EQ(a.port_mappings_size(), 2);
    EXPECT_EQ(a.port_mappings(0).host_port(), 8080);
    EXPECT_EQ(a.port_mappings(0).container_port(), 80);
    EXPECT_EQ(a.port_mappings(0).protocol(), v1::PROTOCOL_TCP);
    EXPECT_EQ(a.port_mappings(0).host_ip(), "");
    EXPECT_EQ(a.port_mappings(1).host_port(), 5353);
    EXPECT_EQ(a.port_mappings(1).container_port(), 53);
    EXPECT_EQ(a.port_mappings(1).protocol(), v1::PROTOCOL_UDP);
    EXPECT_EQ(a.port_mappings(1).host_ip(), "192.0.2.1");
  }

  Outcome RunBytes(const Invocation& in) {
    return RunPlugin(in, [this](const std::string& socket) {
      socket_ = socket;
      return std::unique_ptr<AgentClient>(new Proxy(&agent_));
    });
  }

  static json PrevResult(const std::string& version) {
    json r = {{"cniVersion", version},
              {"interfaces",
               {{{"name", "cni0"}, {"mac", "aa:bb:cc:dd:ee:ff"}},
                {{"name", "veth1234"}, {"mac", "aa:bb:cc:dd:ee:01"}},
                {{"name", "eth0"}, {"mac", "aa:bb:cc:dd:ee:02"},
                 {"sandbox", "/run/netns/c1"}}}},
              {"ips",
               {{{"interface", 2}, {"address", "10.22.0.5/16"},
                 {"gateway", "10.22.0.1"}},
                {{"interface", 2}, {"address", "fd00::5/64"}}}},
              {"dns", json::object()}};
    if (version < "1.0.0") {
      r["ips"][0]["version"] = "4";
      r["ips"][1]["version"] = "6";
    }
    return r;
  }

  static json Config(const std::string& version) {
    return {{"cniVersion", version},
            {"name", "podnet"},
            {"type", "fabric-nat"},
            {"runtimeConfig",
             {{"portMappings",
               {{{"hostPort", 8080}, {"containerPort", 80}, {"protocol", "tcp"}},
                {{"hostPort", 5353}, {"containerPort", 53}, {"protocol", "UDP"},
                 {"hostIP", "192.0.2.1"}}}}}},
            {"prevResult", PrevResult(version)}};
  }

  // Forwards to the test's FakeAgent, which outlives the plugin's client.
  class Proxy : public AgentClient {
   public:
    explicit Proxy(FakeAgent* a) : a_(a) {}
    absl::StatusOr<v1::AttachResponse> Attach(const v1::Attachment& x) override { return a_->Attach(x); }
    absl::Status Detach(const v1::AttachmentKey& k) override { return a_->Detach(k); }
    absl::Status Check(const v1::AttachmentKey& k) override { return a_->Check(k); }
    absl::StatusOr<v1::GarbageCollectResponse> GarbageCollect(const v1::GarbageCollectRequest& r) override {
      return a_->GarbageCollect(r);
    }
    absl::StatusOr<v1::GetStatusResponse> GetStatus() override { return a_->GetStatus(); }

   private:
    FakeAgent* a_;
  };

  FakeAgent agent_;
  std::string socket_;
};

TEST_F(PluginTest, VersionListsEveryVersion) {
  Outcome o = Run("VERSION", json{{"cniVersion", "1.1.0"}});
  EXPECT_EQ(o.exit_code, 0);
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out["cniVersion"], "1.1.0");
  EXPECT_EQ(out["supportedVersions"],
            json({"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}));
  EXPECT_EQ(Run("VERSION", json()).exit_code, 0);
}

TEST_F(PluginTest, AddSendsTheAttachmentAndEchoesPrevResult) {
  json config = Config("1.0.0");
  config["masquerade"] = true;
  config["agentSocket"] = "/tmp/x.sock";
  Outcome o = Run("ADD", config);
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  EXPECT_EQ(socket_, "/tmp/x.sock");
  ASSERT_EQ(agent_.attached.size(), 1u);
  const v1::Attachment& a = agent_.attached[0];
  EXPECT_EQ(a.key().container_id(), "3f2a9b1c");
  EXPECT_EQ(a.key().ifname(), "eth0");
  EXPECT_EQ(a.key().network_name(), "podnet");
  EXPECT_EQ(a.netns_path(), "/run/netns/c1");
  EXPECT_EQ(a.host_interface(), "cni0");
  ASSERT_EQ(a.container_addresses_size(), 2);
  EXPECT_EQ(a.container_addresses(0), "10.22.0.5/16");
  EXPECT_TRUE(a.options().masquerade());
  EXPECT_TRUE(a.options().hairpin());
  EXPECT_FALSE(a.options().localhost());
  ASSERT_EQ(a.port_mappings_size(), 2);
  EXPECT_EQ(a.port_mappings(1).protocol(), v1::PROTOCOL_UDP);
  EXPECT_EQ(a.port_mappings(1).host_ip(), "192.0.2.1");
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out, PrevResult("1.0.0"));
}

TEST_F(PluginTest, UpstreamKeyOverridesTheAgentsFlagOnlyWhenGiven) {
  json config = Config("1.0.0");
  ASSERT_EQ(Run("ADD", config).exit_code, 0);
  ASSERT_EQ(agent_.attached.size(), 1u);
  EXPECT_FALSE(agent_.attached[0].options().has_upstream());  // the flag decides
  config["upstream"] = false;
  ASSERT_EQ(Run("ADD", config).exit_code, 0);
  ASSERT_EQ(agent_.attached.size(), 2u);
  ASSERT_TRUE(agent_.attached[1].options().has_upstream());
  EXPECT_FALSE(agent_.attached[1].options().upstream());
  config["upstream"] = "yes";
  Outcome o = Run("ADD", config);
  EXPECT_EQ(o.exit_code, 1);
  json err = json::parse(o.stdout_data);
  EXPECT_EQ(err["code"], 7);
  EXPECT_EQ(err["msg"], "invalid network config: \"upstream\" must be true or false");
}

TEST_F(PluginTest, SnatAddressGoesToTheAgentAndIsChecked) {
  json config = Config("1.0.0");
  config["snatAddress"] = "203.0.113.5";
  Outcome o = Run("ADD", config);
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  ASSERT_EQ(agent_.attached.size(), 1u);
  EXPECT_EQ(agent_.attached[0].options().snat_address(), "203.0.113.5");
  // Absent: none.
  o = Run("ADD", Config("1.0.0"));
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  EXPECT_EQ(agent_.attached[1].options().snat_address(), "");
  // A wrong type or value is a config error naming the key; nothing is asked.
  for (json bad : {json(5), json("wan0"), json("0.0.0.0"), json("127.0.0.1"), json("224.0.0.1"),
                   json("ff02::1"), json("::1"), json(true)}) {
    config["snatAddress"] = bad;
    o = Run("ADD", config);
    json e = json::parse(o.stdout_data);
    EXPECT_EQ(e["code"], 7) << bad;
    EXPECT_THAT(e["msg"].get<std::string>(), HasSubstr("\"snatAddress\" must be a unicast"));
  }
  // Of a family the container has no address of.
  config["snatAddress"] = "2001:db8::5";
  config["prevResult"]["ips"] = json::array({config["prevResult"]["ips"][0]});
  o = Run("ADD", config);
  json e = json::parse(o.stdout_data);
  EXPECT_EQ(e["code"], 7);
  EXPECT_THAT(e["msg"].get<std::string>(),
              HasSubstr("\"snatAddress\" 2001:db8::5 is IPv6 but prevResult names no IPv6 "
                        "address for the container interface"));
  EXPECT_EQ(agent_.attached.size(), 2u);
}

TEST_F(PluginTest, ResultIsConvertedToTheConfigVersion) {
  json config = Config("0.3.1");
  config["prevResult"] = PrevResult("1.0.0");  // a runtime sent 1.0 layout
  Outcome o = Run("ADD", config);
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out["cniVersion"], "0.3.1");
  EXPECT_EQ(out["ips"][0]["version"], "4");
  EXPECT_EQ(out["ips"][1]["version"], "6");
  config = Config("1.1.0");
  config["prevResult"] = PrevResult("0.4.0");
  config["prevResult"]["interfaces"][2]["mtu"] = 1400;  // 1.1 fields pass through
  o = Run("ADD", config);
  out = json::parse(o.stdout_data);
  EXPECT_EQ(out["cniVersion"], "1.1.0");
  EXPECT_FALSE(out["ips"][0].contains("version"));
  EXPECT_EQ(out["interfaces"][2]["mtu"], 1400);
}

TEST_F(PluginTest, CniVersionsPicksTheHighestSupported) {
  json config = Config("0.4.0");
  config.erase("cniVersion");
  config["cniVersions"] = {"0.4.0", "1.1.0", "9.9.9"};
  Outcome o = Run("ADD", config);
  ASSERT_EQ(o.exit_code, 0);
  EXPECT_EQ(json::parse(o.stdout_data)["cniVersion"], "1.1.0");
}

TEST_F(PluginTest, ErrorsAreSpecObjects) {
  Outcome o = Run("ADD", Config("1.0.0"), {{"CNI_NETNS", ""}, {"CNI_PATH", ""}});
  EXPECT_NE(o.exit_code, 0);
  json e = json::parse(o.stdout_data);
  EXPECT_EQ(e["code"], 4);
  EXPECT_THAT(e["msg"].get<std::string>(), HasSubstr("CNI_NETNS, CNI_PATH"));
  EXPECT_EQ(e["cniVersion"], "1.0.0");

  Invocation bad;
  bad.env = {{"CNI_COMMAND", "ADD"}};
  bad.stdin_data = "{not json";
  o = RunPlugin(bad, nullptr);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 6);

  json no_prev = Config("1.0.0");
  no_prev.erase("prevResult");
  o = Run("ADD", no_prev);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 7);
  EXPECT_THAT(o.stdout_data, HasSubstr("chained plugin"));

  json bad_port = Config("1.0.0");
  bad_port["runtimeConfig"]["portMappings"][0]["hostPort"] = 70000;
  o = Run("ADD", bad_port);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 7);
  EXPECT_THAT(o.stdout_data, HasSubstr("portMappings[0].hostPort must be 1-65535"));

  json bad_proto = Config("1.0.0");
  bad_proto["runtimeConfig"]["portMappings"][0]["protocol"] = "icmp";
  EXPECT_EQ(json::parse(Run("ADD", bad_proto).stdout_data)["code"], 7);

  json old = Config("0.2.0");
  EXPECT_EQ(json::parse(Run("ADD", old).stdout_data)["code"], 1);
  EXPECT_TRUE(agent_.attached.empty());
}

TEST_F(PluginTest, AgentErrorsMapToCodes) {
  agent_.attach_status = absl::UnavailableError("cannot reach fabric-agent at /x");
  json e = json::parse(Run("ADD", Config("1.0.0")).stdout_data);
  EXPECT_EQ(e["code"], 11);
  agent_.attach_status = absl::AlreadyExistsError(
      "host port 8080/tcp on 0.0.0.0 is held by container beef (eth0)");
  e = json::parse(Run("ADD", Config("1.0.0")).stdout_data);
  EXPECT_EQ(e["code"], kPortHeld);
  EXPECT_THAT(e["msg"].get<std::string>(), HasSubstr("held by container beef"));
  agent_.attach_status = absl::ResourceExhaustedError("no free port");
  EXPECT_EQ(json::parse(Run("ADD", Config("1.0.0")).stdout_data)["code"],
            kPortsExhausted);
}

TEST_F(PluginTest, DelNeedsNoPrevResultOrNetns) {
  json config = Config("1.0.0");
  config.erase("prevResult");
  Outcome o = Run("DEL", config, {{"CNI_NETNS", ""}});
  EXPECT_EQ(o.exit_code, 0) << o.stdout_data;
  EXPECT_EQ(o.stdout_data, "");
  ASSERT_EQ(agent_.detached.size(), 1u);
  EXPECT_EQ(agent_.detached[0].network_name(), "podnet");
}

TEST_F(PluginTest, CheckNeedsVersionAndReportsMissingRules) {
  EXPECT_EQ(json::parse(Run("CHECK", Config("0.3.1")).stdout_data)["code"], 1);
  EXPECT_EQ(Run("CHECK", Config("1.0.0")).exit_code, 0);
  agent_.check_status = absl::FailedPreconditionError("missing from the kernel: dnat ...");
  json e = json::parse(Run("CHECK", Config("1.0.0")).stdout_data);
  EXPECT_EQ(e["code"], kRulesMissing);
  agent_.check_status = absl::NotFoundError("container 3f2a is not attached");
  EXPECT_EQ(json::parse(Run("CHECK", Config("1.0.0")).stdout_data)["code"], 3);
}

TEST_F(PluginTest, GcAcceptsBothKeys) {
  json config = {{"cniVersion", "1.1.0"},
                 {"name", "podnet"},
                 {"type", "fabric-nat"},
                 {"cni.dev/valid-attachments",
                  {{{"containerID", "a"}, {"ifname", "eth0"}},
                   {{"containerID", "b"}, {"ifname", "eth0"}}}}};
  Outcome o = Run("GC", config, {{"CNI_CONTAINERID", ""}, {"CNI_NETNS", ""}, {"CNI_IFNAME", ""}});
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  ASSERT_EQ(agent_.gc.size(), 1u);
  EXPECT_EQ(agent_.gc[0].network_name(), "podnet");
  EXPECT_EQ(agent_.gc[0].valid_attachments_size(), 2);
  config.erase("cni.dev/valid-attachments");
  config["cni.dev/attachments"] = {{{"containerID", "c"}, {"ifname", "eth0"}}};
  ASSERT_EQ(Run("GC", config).exit_code, 0);
  EXPECT_EQ(agent_.gc[1].valid_attachments(0).container_id(), "c");
  config["cniVersion"] = "1.0.0";
  EXPECT_EQ(json::parse(Run("GC", config).stdout_data)["code"], 1);
}

TEST_F(PluginTest, GcWithoutTheValidListDeletesNothing) {
  json config = {{"cniVersion", "1.1.0"}, {"name", "podnet"}, {"type", "fabric-nat"}};
  Outcome o = Run("GC", config);
  EXPECT_NE(o.exit_code, 0);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 7);
  config["cni.dev/valid-attachments"] = {{{"containerID", "a"}}};  // no ifname
  EXPECT_EQ(json::parse(Run("GC", config).stdout_data)["code"], 7);
  EXPECT_TRUE(agent_.gc.empty());
}

TEST_F(PluginTest, OddlyTypedPrevResultIsAnErrorNotACrash) {
  json config = Config("1.0.0");
  config["prevResult"]["ips"] = {{{"address", 5}, {"interface", "x"}}};
  config["prevResult"]["interfaces"][0]["name"] = 7;
  Outcome o = Run("ADD", config);
  EXPECT_NE(o.exit_code, 0);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 7);
  EXPECT_THAT(o.stdout_data, HasSubstr("names no IP address"));
}

TEST_F(PluginTest, CniVersionChosenByTheRuntimeWins) {
  json config = Config("1.0.0");
  config["cniVersions"] = {"0.4.0", "1.1.0"};
  Outcome o = Run("ADD", config);
  ASSERT_EQ(o.exit_code, 0);
  EXPECT_EQ(json::parse(o.stdout_data)["cniVersion"], "1.0.0");
}

TEST_F(PluginTest, StatusReportsAvailability) {
  json config = {{"cniVersion", "1.1.0"}, {"name", "podnet"}, {"type", "fabric-nat"}};
  EXPECT_EQ(Run("STATUS", config).exit_code, 0);
  agent_.ready = false;
  Outcome o = Run("STATUS", config);
  EXPECT_NE(o.exit_code, 0);
  EXPECT_EQ(json::parse(o.stdout_data)["code"], 50);
  agent_.status_status = absl::UnavailableError("no socket");
  EXPECT_EQ(json::parse(Run("STATUS", config).stdout_data)["code"], 50);
}


// prevResult as the bridge plugin prints it (1.0.0), compact, for the literal
// runtime inputs below.
constexpr char kBridgePrevResult[] =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},)"
    R"({"name":"veth1234","mac":"aa:bb:cc:dd:ee:01"},)"
    R"({"name":"eth0","mac":"aa:bb:cc:dd:ee:02","sandbox":"/var/run/netns/cni-1"}],)"
    R"("ips":[{"interface":2,"address":"10.22.0.5/16","gateway":"10.22.0.1"}],"dns":{}})";

// containerd 1.6 (CRI plugin, go-cni): PortMapping has no JSON tags, so Go
// field names are the keys; libcni injects runtimeConfig last (struct field
// order) after re-marshalling the rest (sorted keys), and HostIP is always
// present, empty for "any".
TEST_F(PluginTest, ContainerdGoFieldNamesArePortMappings) {
  std::string in = std::string(
      R"({"agentSocket":"/run/fabric-nat/agent.sock","capabilities":{"portMappings":true},)"
      R"("cniVersion":"1.0.0","hairpin":true,"masquerade":true,"name":"podnet","prevResult":)") +
      kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[)"
      R"({"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""},)"
      R"({"HostPort":5353,"ContainerPort":53,"Protocol":"udp","HostIP":"192.0.2.1"}]},)"
      R"("type":"fabric-nat"})";
  ExpectAddSendsTwoMappings(in);
}

// CRI-O (ocicni): tagged hostPort/containerPort/protocol/hostIP.
TEST_F(PluginTest, CrioTaggedKeysArePortMappings) {
  std::string in = std::string(
      R"({"capabilities":{"portMappings":true},"cniVersion":"1.0.0","name":"crio",)"
      R"("prevResult":)") + kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[)"
      R"({"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},)"
      R"({"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.1"}]},)"
      R"("type":"fabric-nat"})";
  ExpectAddSendsTwoMappings(in);
}

// Podman 4 (CNI backend): tagged keys, hostIP omitted when empty.
TEST_F(PluginTest, PodmanOmitsAnEmptyHostIP) {
  std::string in = std::string(
      R"({"capabilities":{"portMappings":true},"cniVersion":"0.4.0","name":"podman",)"
      R"("prevResult":)") + kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[)"
      R"({"hostPort":8080,"containerPort":80,"protocol":"tcp"},)"
      R"({"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.1"}]},)"
      R"("type":"fabric-nat"})";
  ExpectAddSendsTwoMappings(in);
}

// libcni's own tools (cnitool's CAP_ARGS) pass the user's JSON through: any
// spelling Go would accept, e.g. all lower case, and the capability key too.
TEST_F(PluginTest, AnySpellingGoAcceptsIsAccepted) {
  std::string in = std::string(
      R"({"cniVersion":"1.1.0","name":"cnitool","type":"fabric-nat","prevResult":)") +
      kBridgePrevResult +
      R"(,"runtimeConfig":{"PORTMAPPINGS":[)"
      R"({"hostport":8080,"CONTAINERPORT":80,"PROTOCOL":"TCP"},)"
      // U+017F (long s) and U+212A (Kelvin) fold to s and k in Go too.
      "{\"ho\xC5\xBFtPort\":5353,\"containerPort\":53,\"protocol\":\"udp\",\"hostip\":\"192.0.2.1\"}]}}";
  ExpectAddSendsTwoMappings(in);
}

TEST_F(PluginTest, ExactSpellingWinsOverAFoldedOne) {
  std::string in = std::string(
      R"({"cniVersion":"1.0.0","name":"n","type":"fabric-nat","prevResult":)") +
      kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[{"HostPort":9,"hostPort":8080,"containerPort":80}]}})";
  Outcome o = AddBytes(in);
  ASSERT_EQ(o.exit_code, 0) << o.stdout_data;
  ASSERT_EQ(agent_.attached.size(), 1u);
  EXPECT_EQ(agent_.attached[0].port_mappings(0).host_port(), 8080);
}

// Go would keep the last of two folded spellings in document order, which a
// parsed object has lost: a clear error instead of a guess.
TEST_F(PluginTest, TwoFoldedSpellingsWithoutAnExactOneAreAnError) {
  std::string in = std::string(
      R"({"cniVersion":"1.0.0","name":"n","type":"fabric-nat","prevResult":)") +
      kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[{"HostPort":9,"HOSTPORT":8080,"containerPort":80}]}})";
  Outcome o = AddBytes(in);
  EXPECT_EQ(o.exit_code, 1);
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out["code"], 7);
  EXPECT_EQ(out["msg"], "invalid network config: runtimeConfig.portMappings[0] has "
                        "\"HOSTPORT\", \"HostPort\", keys that differ only in case");
  EXPECT_TRUE(agent_.attached.empty());
}

TEST_F(PluginTest, AFoldedKeyOfTheWrongTypeNamesTheField) {
  std::string in = std::string(
      R"({"cniVersion":"1.0.0","name":"n","type":"fabric-nat","prevResult":)") +
      kBridgePrevResult +
      R"(,"runtimeConfig":{"portMappings":[{"HostPort":"8080","ContainerPort":80}]}})";
  Outcome o = AddBytes(in);
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out["code"], 7);
  EXPECT_EQ(out["msg"], "invalid network config: runtimeConfig.portMappings[0].hostPort "
                        "must be 1-65535");
  EXPECT_TRUE(agent_.attached.empty());
}

// Issue 10, item 14: a prevResult nested 30,000 deep used to crash the
// plugin (exit 139, no error object).
TEST_F(PluginTest, DeepOrHugeInputIsADecodeErrorNotACrash) {
  std::string deep = std::string(
      R"({"cniVersion":"1.0.0","name":"n","type":"fabric-nat","prevResult":)") +
      std::string(30000, '[') + std::string(30000, ']') + "}";
  Outcome o = AddBytes(deep);
  EXPECT_EQ(o.exit_code, 1);
  json out = json::parse(o.stdout_data);
  EXPECT_EQ(out["code"], 6);
  EXPECT_EQ(out["msg"], "failed to decode the network configuration: nested 30001 levels "
                        "deep, more than 64");
  // Brackets inside strings are not nesting.
  std::string quoted = std::string(
      R"({"cniVersion":"1.0.0","name":"n","type":"fabric-nat","note":")") +
      std::string(500, '[') + R"(","prevResult":)" + kBridgePrevResult + "}";
  EXPECT_EQ(AddBytes(quoted).exit_code, 0);
  std::string huge = std::string(R"({"cniVersion":"1.0.0","name":"n","pad":")") +
                     std::string(2 << 20, 'x') + "\"}";
  out = json::parse(AddBytes(huge).stdout_data);
  EXPECT_EQ(out["code"], 6);
  EXPECT_THAT(out["msg"].get<std::string>(), HasSubstr("more than 1048576"));
  EXPECT_TRUE(agent_.attached.size() == 1);  // only the quoted one
}

TEST(GoFoldTest, FoldsAsciiAndTheTwoRunesGoFoldsToAscii) {
  EXPECT_EQ(GoFold("HostPort"), "hostport");
  EXPECT_EQ(GoFold("\xE2\x84\xAA"), "k");
  EXPECT_EQ(GoFold("\xC5\xBF"), "s");
  // Other non-ASCII bytes are kept, so they never match an ASCII name.
  EXPECT_EQ(GoFold("h\xC3\xB6st"), "h\xC3\xB6st");
}

}  // namespace
}  // namespace fabric::cni
