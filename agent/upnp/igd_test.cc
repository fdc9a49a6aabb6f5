#include "agent/upnp/igd.h"

#include <pugixml.hpp>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/upnp/description.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nat/backend/fake/fake_backend.h"
#include "testing/status_matchers.h"

namespace fabric::agent::upnp {
namespace {

using ::testing::HasSubstr;

constexpr char kV2[] = "urn:schemas-upnp-org:service:WANIPConnection:2";
constexpr char kV1[] = "urn:schemas-upnp-org:service:WANIPConnection:1";

nat::IpAddress Ip(const std::string& s) { return *nat::IpAddress::Parse(s); }

class IgdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    Restart();
  }

  void Restart() {
    igd_.reset();
    core_.reset();
    auto store = Store::Open(dir_);
    ASSERT_OK(store.status());
    CoreOptions options{40000, 40099};
    options.now = [this] { return now_; };
    if (firewall_) options.firewall6_interface = "wan0";
    core_ = std::make_unique<AgentCore>(std::move(*store), &backend_, &conntrack_, options);
    ASSERT_OK(core_->Start());
    core_->SetExternalAddress(Ip("198.18.0.1"));
    IgdConfig config;
    config.policy.max_per_client = 3;
    config.policy.max_leases = 5;
    config.policy.max_lifetime = kUpnpMaxLease;
    config.wan_interface = "wan0";
    config.sys_class_net = dir_ + "/sys";
    config.same_port = same_port_;
    config.ipv6_firewall = firewall_;
    igd_ = std::make_unique<IgdControl>(core_.get(), config, [this] { return now_; });
  }

  // Calls `action` with `args` ("Name", "value" pairs) as `client`.
  IgdControl::Reply Call(const std::string& action,
                         std::vector<std::pair<std::string, std::string>> args,
                         const std::string& client = "192.168.1.10", const char* type = kV2,
                         const std::string& path = kIpConnection.control_path) {
    SoapCall call;
    call.service_type = type;
    call.version = std::string(type).back() - '0';
    call.action = action;
    call.arguments = std::move(args);
    return igd_->Handle(path, call, Ip(client));
  }

  static std::vector<std::pair<std::string, std::string>> Add(
      int ext, int internal, const std::string& client = "192.168.1.10",
      const std::string& lease = "3600", const std::string& proto = "TCP") {
    return {{"NewRemoteHost", ""},
            {"NewExternalPort", absl::StrCat(ext)},
            {"NewProtocol", proto},
            {"NewInternalPort", absl::StrCat(internal)},
            {"NewInternalClient", client},
            {"NewEnabled", "1"},
            {"NewPortMappingDescription", "game <1>"},
            {"NewLeaseDuration", lease}};
  }

  // A response argument's value.
  static std::string Value(const IgdControl::Reply& r, const std::string& name) {
    pugi::xml_document doc;
    EXPECT_TRUE(doc.load_string(r.body.c_str())) << r.body;
    pugi::xml_node resp = doc.child("s:Envelope").child("s:Body").first_child();
    return resp.child(name.c_str()).text().get();
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  bool same_port_ = false;
  bool firewall_ = false;
  nat::FakeBackend backend_;
  nat::RecordingConntrackCleaner conntrack_;
  std::unique_ptr<AgentCore> core_;
  std::unique_ptr<IgdControl> igd_;
};

TEST_F(IgdTest, AddPortMappingPublishesAndDeleteRemoves) {
  IgdControl::Reply r = Call("AddPortMapping", Add(8080, 80));
  ASSERT_EQ(r.fault, 0) << r.detail;
  EXPECT_EQ(r.http_code, 200);
  ASSERT_EQ(backend_.rules().dnat.size(), 1u);
  EXPECT_THAT(backend_.rules().DebugString(), HasSubstr("198.18.0.1"));
  std::vector<v1::PortMapping> all = core_->ListMappings(v1::OWNER_KIND_UPNP, "192.168.1.10");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].host_port(), 8080u);
  EXPECT_EQ(all[0].target_port(), 80u);
  EXPECT_EQ(all[0].description(), "game <1>");
  EXPECT_EQ(FromTimestamp(all[0].expires_at()), now_ + absl::Seconds(3600));

  IgdControl::Reply e = Call("GetSpecificPortMappingEntry",
                             {{"NewRemoteHost", ""}, {"NewExternalPort", "8080"},
                              {"NewProtocol", "TCP"}});
  ASSERT_EQ(e.fault, 0) << e.detail;
  EXPECT_EQ(Value(e, "NewInternalClient"), "192.168.1.10");
  EXPECT_EQ(Value(e, "NewInternalPort"), "80");
  EXPECT_EQ(Value(e, "NewPortMappingDescription"), "game <1>");
  EXPECT_EQ(Value(e, "NewLeaseDuration"), "3600");

  IgdControl::Reply d = Call("DeletePortMapping", {{"NewRemoteHost", ""},
                                                   {"NewExternalPort", "8080"},
                                                   {"NewProtocol", "TCP"}});
  ASSERT_EQ(d.fault, 0) << d.detail;
  EXPECT_TRUE(backend_.rules().dnat.empty());
  // Deleting what is not there: 714 (IGD:2 2.5.17).
  EXPECT_EQ(Call("DeletePortMapping", {{"NewRemoteHost", ""},
                                       {"NewExternalPort", "8080"},
                                       {"NewProtocol", "TCP"}})
                .fault,
            714);
}

TEST_F(IgdTest, RefreshKeepsTheMappingAndAnotherHostConflicts) {
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80)).fault, 0);
  now_ += absl::Seconds(100);
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.10", "7200")).fault, 0);
  std::vector<v1::PortMapping> all = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(FromTimestamp(all[0].expires_at()), now_ + absl::Seconds(7200));
  // The same host to another internal port: replaced.
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 81)).fault, 0);
  all = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].target_port(), 81u);
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
  // Another host: 718, nothing changed.
  IgdControl::Reply r = Call("AddPortMapping", Add(8080, 80, "192.168.1.11"), "192.168.1.11");
  EXPECT_EQ(r.fault, 718);
  EXPECT_THAT(r.body, HasSubstr("ConflictInMappingEntry"));
  EXPECT_THAT(r.detail, HasSubstr("tcp port 8080 is mapped to 192.168.1.10:81"));
  // ... who may not delete it either.
  EXPECT_EQ(Call("DeletePortMapping",
                 {{"NewRemoteHost", ""}, {"NewExternalPort", "8080"}, {"NewProtocol", "TCP"}},
                 "192.168.1.11")
                .fault,
            606);
  EXPECT_EQ(core_->ListMappings(v1::OWNER_KIND_UPNP, "").size(), 1u);
}

TEST_F(IgdTest, ArgumentFaults) {
  auto with = [](std::vector<std::pair<std::string, std::string>> args, const std::string& name,
                 const std::string& value) {
    for (auto& [n, v] : args) {
      if (n == name) v = value;
    }
    return args;
  };
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.99")).fault, 606);
  EXPECT_EQ(Call("AddPortMapping", Add(0, 80)).fault, 716);
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 0)).fault, 732);
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 0), "192.168.1.10", kV1).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewRemoteHost", "203.0.113.9")).fault,
            726);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewProtocol", "SCTP")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewExternalPort", "65536")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewExternalPort", "-1")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewLeaseDuration", "1e3")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewInternalClient", "host")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", with(Add(8080, 80), "NewEnabled", "maybe")).fault, 402);
  EXPECT_EQ(Call("AddPortMapping", {{"NewRemoteHost", ""}}).fault, 402);
  EXPECT_EQ(Call("NoSuchAction", {}).fault, 401);
  // IGD:2 actions are not there for an IGD:1 caller.
  EXPECT_EQ(Call("AddAnyPortMapping", Add(8080, 80), "192.168.1.10", kV1).fault, 401);
  // A service type the path does not serve.
  EXPECT_EQ(Call("GetExternalIPAddress", {}, "192.168.1.10",
                 "urn:schemas-upnp-org:service:WANIPConnection:3")
                .fault,
            401);
  EXPECT_TRUE(backend_.rules().dnat.empty());
}

TEST_F(IgdTest, LeaseZeroIsTheMaximumOnIgd2AndPermanentOnIgd1) {
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.10", "0")).fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8081, 81, "192.168.1.10", "99999999")).fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8082, 82, "192.168.1.10", "0"), "192.168.1.10", kV1).fault,
            0);
  std::vector<v1::PortMapping> all = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(FromTimestamp(all[0].expires_at()), now_ + absl::Seconds(604800));
  EXPECT_EQ(FromTimestamp(all[1].expires_at()), now_ + absl::Seconds(604800));
  EXPECT_FALSE(all[2].has_expires_at());
  // Leases run out on time; the permanent one stays.
  now_ += absl::Seconds(604800);
  EXPECT_EQ(core_->ExpireLeases(), 2);
  all = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].host_port(), 8082u);
  EXPECT_EQ(backend_.rules().dnat.size(), 1u);
}

TEST_F(IgdTest, OtherMechanismsQuotaAndTheContainersRange) {
  // A container's published port.
  v1::Attachment a;
  a.mutable_key()->set_container_id("c1");
  a.mutable_key()->set_ifname("eth0");
  a.mutable_key()->set_network_name("net1");
  a.set_netns_path("/run/netns/c1");
  a.add_container_addresses("10.22.0.5/16");
  a.set_host_interface("cni0");
  v1::PortMappingRequest* pm = a.add_port_mappings();
  pm->set_protocol(v1::PROTOCOL_TCP);
  pm->set_host_port(9000);
  pm->set_container_port(80);
  ASSERT_OK(core_->Attach(a).status());
  IgdControl::Reply r = Call("AddPortMapping", Add(9000, 80));
  EXPECT_EQ(r.fault, 729);
  EXPECT_THAT(r.detail, HasSubstr("held by"));
  EXPECT_EQ(Call("AddPortMapping", Add(9000, 80), "192.168.1.10", kV1).fault, 718);
  // The containers' dynamic range (40000-40099 here) is not for leases.
  r = Call("AddPortMapping", Add(40050, 80));
  EXPECT_EQ(r.fault, 729);
  EXPECT_THAT(r.detail, HasSubstr("outside the ports leases take"));
  // A container address may not ask at all.
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 80, "10.22.0.9"), "10.22.0.9").fault, 606);
  // Quota: 3 per host; 728 on IGD:2, 501 on IGD:1.
  for (int p = 8001; p <= 8003; ++p) ASSERT_EQ(Call("AddPortMapping", Add(p, p)).fault, 0);
  r = Call("AddPortMapping", Add(8004, 8004));
  EXPECT_EQ(r.fault, 728);
  EXPECT_THAT(r.detail, HasSubstr("already holds 3 leases"));
  EXPECT_EQ(Call("AddPortMapping", Add(8004, 8004), "192.168.1.10", kV1).fault, 501);
  // ... shared with NAT-PMP: another host with one NAT-PMP lease gets two.
  LeaseRequest pmp;
  pmp.client = Ip("192.168.1.20");
  pmp.internal_port = 5000;
  pmp.lifetime = 3600;
  LeasePolicy policy;
  policy.max_per_client = 3;
  ASSERT_EQ(core_->Lease(pmp, policy).outcome, LeaseOutcome::kOk);
  ASSERT_EQ(Call("AddPortMapping", Add(8101, 1, "192.168.1.20"), "192.168.1.20").fault, 0);
  // The global cap (5) is reached: 3 + 1 + 1.
  r = Call("AddPortMapping", Add(8102, 2, "192.168.1.21"), "192.168.1.21");
  EXPECT_EQ(r.fault, 728);
  EXPECT_THAT(r.detail, HasSubstr("already holds 5 leases"));
}

TEST_F(IgdTest, AddAnyTakesTheNearestFreePortAndSamePortIsEnforced) {
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.11"), "192.168.1.11").fault, 0);
  IgdControl::Reply r = Call("AddAnyPortMapping", Add(8080, 80));
  ASSERT_EQ(r.fault, 0) << r.detail;
  EXPECT_EQ(Value(r, "NewReservedPort"), "8081");
  r = Call("AddAnyPortMapping", Add(0, 8090));
  ASSERT_EQ(r.fault, 0) << r.detail;
  EXPECT_EQ(Value(r, "NewReservedPort"), "8090");
  same_port_ = true;
  Restart();
  EXPECT_EQ(Call("AddPortMapping", Add(9090, 9091)).fault, 724);
  r = Call("AddAnyPortMapping", Add(9090, 9091));
  ASSERT_EQ(r.fault, 0) << r.detail;
  EXPECT_EQ(Value(r, "NewReservedPort"), "9091");
}

TEST_F(IgdTest, NatPmpLeaseOfTheSameHostIsReplacedAPcpLeaseIsNot) {
  LeaseRequest pmp;
  pmp.client = Ip("192.168.1.10");
  pmp.internal_port = 5000;
  pmp.suggested_port = 5000;
  pmp.lifetime = 3600;
  LeasePolicy policy;
  ASSERT_EQ(core_->Lease(pmp, policy).external_port, 5000);
  ASSERT_EQ(Call("AddPortMapping", Add(5000, 6000)).fault, 0);
  std::vector<v1::PortMapping> all = core_->ListMappings(v1::OWNER_KIND_UNSPECIFIED, "");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].owner().kind(), v1::OWNER_KIND_UPNP);
  EXPECT_EQ(all[0].target_port(), 6000u);
  // The NAT-PMP lease's companion UDP port went with it; UDP 5000 is free.
  ASSERT_EQ(Call("AddPortMapping", Add(5000, 6000, "192.168.1.10", "60", "UDP")).fault, 0);

  LeaseRequest pcp = pmp;
  pcp.kind = v1::OWNER_KIND_PCP;
  pcp.internal_port = 7000;
  pcp.suggested_port = 7000;
  pcp.nonce = std::string(12, 'n');
  ASSERT_EQ(core_->Lease(pcp, policy).external_port, 7000);
  EXPECT_EQ(Call("AddPortMapping", Add(7000, 7000)).fault, 729);
  EXPECT_EQ(Call("DeletePortMapping",
                 {{"NewRemoteHost", ""}, {"NewExternalPort", "7000"}, {"NewProtocol", "TCP"}})
                .fault,
            606);
}

TEST_F(IgdTest, EnumerationRangeDeletionAndListing) {
  ASSERT_EQ(Call("AddPortMapping", Add(8082, 82)).fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80)).fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8081, 81, "192.168.1.11"), "192.168.1.11").fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.10", "60", "UDP")).fault, 0);
  // Index order: TCP by port, then UDP.
  std::vector<std::string> seen;
  for (int i = 0;; ++i) {
    IgdControl::Reply r =
        Call("GetGenericPortMappingEntry", {{"NewPortMappingIndex", absl::StrCat(i)}});
    if (r.fault != 0) {
      EXPECT_EQ(r.fault, 713);
      break;
    }
    seen.push_back(Value(r, "NewProtocol") + "/" + Value(r, "NewExternalPort") + "/" +
                   Value(r, "NewInternalClient"));
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"TCP/8080/192.168.1.10", "TCP/8081/192.168.1.11",
                                            "TCP/8082/192.168.1.10",
                                            "UDP/8080/192.168.1.10"}));
  auto list = [&](const std::string& from, const std::string& to, const std::string& manage) {
    return Call("GetListOfPortMappings", {{"NewStartPort", from},
                                          {"NewEndPort", to},
                                          {"NewProtocol", "TCP"},
                                          {"NewManage", manage},
                                          {"NewNumberOfPorts", "0"}});
  };
  IgdControl::Reply l = list("8000", "8100", "1");
  ASSERT_EQ(l.fault, 0) << l.detail;
  pugi::xml_document listing;
  ASSERT_TRUE(listing.load_string(Value(l, "NewPortListing").c_str()));
  int entries = 0;
  for (pugi::xml_node e : listing.child("p:PortMappingList").children("p:PortMappingEntry")) {
    ++entries;
    EXPECT_STREQ(e.child("p:NewProtocol").text().get(), "TCP");
  }
  EXPECT_EQ(entries, 3);
  l = list("8000", "8100", "0");
  EXPECT_THAT(l.body, HasSubstr("8082"));
  EXPECT_THAT(l.body, ::testing::Not(HasSubstr("192.168.1.11")));
  EXPECT_EQ(list("9000", "9100", "1").fault, 730);
  EXPECT_EQ(list("9100", "9000", "1").fault, 733);

  auto range = [&](const std::string& from, const std::string& to) {
    return Call("DeletePortMappingRange", {{"NewStartPort", from},
                                           {"NewEndPort", to},
                                           {"NewProtocol", "TCP"},
                                           {"NewManage", "1"}});
  };
  EXPECT_EQ(range("8100", "8000").fault, 733);
  ASSERT_EQ(range("8000", "8100").fault, 0);
  // Only the requester's own TCP mappings went.
  std::vector<v1::PortMapping> left = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(range("8000", "8100").fault, 730);
}

TEST_F(IgdTest, StatusAddressAndCountersComeFromTheWan) {
  EXPECT_EQ(Value(Call("GetExternalIPAddress", {}), "NewExternalIPAddress"), "198.18.0.1");
  IgdControl::Reply s = Call("GetStatusInfo", {});
  EXPECT_EQ(Value(s, "NewConnectionStatus"), "Connected");
  EXPECT_EQ(Value(s, "NewLastConnectionError"), "ERROR_NONE");
  EXPECT_EQ(Value(Call("GetConnectionTypeInfo", {}), "NewConnectionType"), "IP_Routed");
  std::string wan = dir_ + "/sys/wan0";
  ASSERT_EQ(system(("mkdir -p " + wan + "/statistics").c_str()), 0);
  std::ofstream(wan + "/statistics/tx_bytes") << "4294967301\n";  // 2^32 + 5: wraps
  std::ofstream(wan + "/statistics/rx_packets") << "77\n";
  std::ofstream(wan + "/speed") << "1000\n";
  std::ofstream(wan + "/operstate") << "up\n";
  const std::string path = kCommonInterfaceConfig.control_path;
  const char* cif = kCommonInterfaceConfig.type;
  EXPECT_EQ(Value(Call("GetTotalBytesSent", {}, "192.168.1.10", cif, path), "NewTotalBytesSent"),
            "5");
  EXPECT_EQ(Value(Call("GetTotalPacketsReceived", {}, "192.168.1.10", cif, path),
                  "NewTotalPacketsReceived"),
            "77");
  IgdControl::Reply link = Call("GetCommonLinkProperties", {}, "192.168.1.10", cif, path);
  EXPECT_EQ(Value(link, "NewPhysicalLinkStatus"), "Up");
  EXPECT_EQ(Value(link, "NewLayer1UpstreamMaxBitRate"), "1000000000");
  core_->SetExternalAddress(std::nullopt);
  EXPECT_EQ(Value(Call("GetStatusInfo", {}), "NewConnectionStatus"), "Disconnected");
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 80)).fault, 501);
}

TEST_F(IgdTest, LeasesSurviveARestart) {
  ASSERT_EQ(Call("AddPortMapping", Add(8080, 80)).fault, 0);
  ASSERT_EQ(Call("AddPortMapping", Add(8081, 81, "192.168.1.10", "0"), "192.168.1.10", kV1).fault,
            0);
  Restart();
  std::vector<v1::PortMapping> all = core_->ListMappings(v1::OWNER_KIND_UPNP, "");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].description(), "game <1>");
  EXPECT_EQ(FromTimestamp(all[0].expires_at()), now_ + absl::Seconds(3600));
  EXPECT_FALSE(all[1].has_expires_at());
  // The index came back: the entry is found and another host still conflicts.
  EXPECT_EQ(Call("GetSpecificPortMappingEntry",
                 {{"NewRemoteHost", ""}, {"NewExternalPort", "8080"}, {"NewProtocol", "TCP"}})
                .fault,
            0);
  EXPECT_EQ(Call("AddPortMapping", Add(8080, 80, "192.168.1.11"), "192.168.1.11").fault, 718);
}

TEST_F(IgdTest, PinholesAndTheirFaults) {
  const char* fc = kIpv6Firewall.type;
  const std::string path = kIpv6Firewall.control_path;
  const std::string me = "2001:db8:77::10";
  auto add = [&](const std::string& client, const std::string& port, const std::string& proto,
                 const std::string& lease = "3600", const std::string& from = "2001:db8:77::10",
                 const std::string& remote = "") {
    return Call("AddPinhole",
                {{"RemoteHost", remote}, {"RemotePort", "0"}, {"InternalClient", client},
                 {"InternalPort", port}, {"Protocol", proto}, {"LeaseTime", lease}},
                from, fc, path);
  };
  // The service is not there without the firewall.
  EXPECT_EQ(add(me, "80", "6").fault, 401);
  firewall_ = true;
  Restart();
  EXPECT_EQ(Value(Call("GetFirewallStatus", {}, me, fc, path), "FirewallEnabled"), "1");
  IgdControl::Reply r = add(me, "80", "6");
  ASSERT_EQ(r.fault, 0) << r.detail;
  EXPECT_EQ(Value(r, "UniqueID"), "1");
  ASSERT_EQ(backend_.rules().pinholes.size(), 1u);
  EXPECT_EQ(backend_.rules().firewall6_interfaces, (std::set<std::string>{"wan0"}));
  // The same pinhole again: refreshed, same id. A remote-specific one: new.
  EXPECT_EQ(Value(add(me, "80", "6", "60"), "UniqueID"), "1");
  EXPECT_EQ(Value(add(me, "80", "6", "60", me, "2001:db8:1::2"), "UniqueID"), "2");
  EXPECT_EQ(add("2001:db8:77::99", "80", "6").fault, 606);
  EXPECT_EQ(add(me, "80", "6", "3600", "192.168.1.10").fault, 606);  // over IPv4
  EXPECT_EQ(add(me, "0", "6").fault, 706);
  EXPECT_EQ(add(me, "80", "65535").fault, 707);
  EXPECT_EQ(add(me, "80", "132").fault, 705);
  EXPECT_EQ(add(me, "80", "6", "0").fault, 402);
  EXPECT_EQ(add(me, "80", "6", "86401").fault, 402);
  EXPECT_EQ(add("192.168.1.10", "80", "6").fault, 402);
  // Quota: 3 per host (the lease quota's number).
  ASSERT_EQ(add(me, "81", "17").fault, 0);
  r = add(me, "82", "17");
  EXPECT_EQ(r.fault, 701);
  EXPECT_THAT(r.detail, HasSubstr("already holds 3 pinholes"));
  auto by_id = [&](const std::string& action, const std::string& id, const std::string& from,
                   std::vector<std::pair<std::string, std::string>> more = {}) {
    more.insert(more.begin(), {"UniqueID", id});
    return Call(action, more, from, fc, path);
  };
  EXPECT_EQ(by_id("UpdatePinhole", "1", me, {{"NewLeaseTime", "100"}}).fault, 0);
  EXPECT_EQ(by_id("UpdatePinhole", "1", "2001:db8:77::99", {{"NewLeaseTime", "100"}}).fault, 606);
  EXPECT_EQ(by_id("UpdatePinhole", "9", me, {{"NewLeaseTime", "100"}}).fault, 704);
  EXPECT_EQ(Value(by_id("GetPinholePackets", "1", me), "PinholePackets"), "0");
  EXPECT_EQ(by_id("CheckPinholeWorking", "1", me).fault, 709);
  EXPECT_EQ(by_id("DeletePinhole", "1", "2001:db8:77::99").fault, 606);
  EXPECT_EQ(by_id("DeletePinhole", "1", me).fault, 0);
  EXPECT_EQ(by_id("DeletePinhole", "1", me).fault, 704);
  EXPECT_EQ(backend_.rules().pinholes.size(), 2u);
  // Leases run out (pinhole 2 had 60 s, pinhole 3 3600 s); restarts keep the rest.
  now_ += absl::Seconds(61);
  EXPECT_EQ(core_->ExpireLeases(), 1);
  Restart();
  EXPECT_EQ(backend_.rules().pinholes.size(), 1u);
  EXPECT_EQ(by_id("GetPinholePackets", "3", me).fault, 0);
  // The firewall turned off: stored pinholes go at start.
  firewall_ = false;
  Restart();
  EXPECT_TRUE(backend_.rules().pinholes.empty());
  EXPECT_TRUE(backend_.rules().firewall6_interfaces.empty());
}

}  // namespace
}  // namespace fabric::agent::upnp
