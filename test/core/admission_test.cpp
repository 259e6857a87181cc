// Which connections the server takes, and what its connections share: the allow-list of
// networks, the limits in total and per source, the TLS handshakes under way, the byte budget
// and the rate limit on events. No I/O; time is made up.
#include "core/admission.hpp"
#include "core/server_shared.hpp"

#include <doctest/doctest.h>

#include <boost/asio/ip/address.hpp>

#include <atomic>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using hl7::errc;
using hl7::detail::admission;
using hl7::detail::network;
namespace asio = boost::asio;

namespace {

asio::ip::address ip(const char* text)
{
    return asio::ip::make_address(text);
}

network net(const char* text)
{
    auto n = network::parse(text);
    REQUIRE_MESSAGE(n.has_value(), text);
    return n.value();
}

} // namespace

TEST_CASE("networks in CIDR notation match the addresses inside them, IPv4 ones also when IPv4-mapped")
{
    CHECK(net("10.0.0.0/8").contains(ip("10.255.1.2")));
    CHECK_FALSE(net("10.0.0.0/8").contains(ip("11.0.0.1")));
    CHECK(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
    CHECK(net("192.0.2.7").contains(ip("192.0.2.7")));
    CHECK_FALSE(net("192.0.2.7").contains(ip("192.0.2.8")));
    CHECK(net("192.0.2.0/25").contains(ip("192.0.2.127")));
    CHECK_FALSE(net("192.0.2.0/25").contains(ip("192.0.2.128")));
    CHECK(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
    CHECK_FALSE(net("2001:db8::/32").contains(ip("2001:db9::1")));
    CHECK_FALSE(net("2001:db8::/32").contains(ip("10.0.0.1")));
    CHECK(net("::1").contains(ip("::1")));
    CHECK(net("0.0.0.0/0").contains(ip("203.0.113.9")));
    CHECK_FALSE(net("0.0.0.0/0").contains(ip("2001:db8::1")));
    CHECK(net("::/0").contains(ip("2001:db8::1")));
}

TEST_CASE("a malformed network is invalid_network")
{
    for (const char* bad : {"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/8x", "10.0.0.1/8", "host.example/8",
                            "2001:db8::/129", "10.0.0.0/-1", "[::1]", "10.0.0.0/ 8"}) {
        CAPTURE(bad);
        const auto n = network::parse(bad);
        REQUIRE(n.has_error());
        CHECK(n.error() == errc::invalid_network);
    }
}

TEST_CASE("a source outside the allow-list is refused; with no list every source is allowed")
{
    admission open({}, {});
    CHECK_FALSE(open.admit(ip("203.0.113.9")));
    admission listed({}, {net("10.0.0.0/8"), net("2001:db8::/32")});
    CHECK(listed.admit(ip("203.0.113.9")) == errc::source_not_allowed);
    CHECK_FALSE(listed.admit(ip("10.1.1.1")));
    CHECK_FALSE(listed.admit(ip("2001:db8::5")));
    CHECK(listed.open() == 2);
}

TEST_CASE("connections beyond max_connections are refused until one ends")
{
    admission a({.max_connections = 2}, {});
    CHECK_FALSE(a.admit(ip("192.0.2.1")));
    CHECK_FALSE(a.admit(ip("192.0.2.2")));
    CHECK(a.admit(ip("192.0.2.3")) == errc::too_many_connections);
    a.release(ip("192.0.2.1"));
    CHECK_FALSE(a.admit(ip("192.0.2.3")));
    CHECK(a.open() == 2);
}

TEST_CASE("one source cannot hold more than max_per_source connections; others still get in")
{
    admission a({.max_connections = 10, .max_per_source = 2}, {});
    CHECK_FALSE(a.admit(ip("192.0.2.1")));
    CHECK_FALSE(a.admit(ip("192.0.2.1")));
    CHECK(a.admit(ip("192.0.2.1")) == errc::too_many_from_source);
    CHECK(a.admit(ip("::ffff:192.0.2.1")) == errc::too_many_from_source); // the same host
    CHECK_FALSE(a.admit(ip("192.0.2.2")));
    CHECK(a.from_source(ip("192.0.2.1")) == 2);
    a.release(ip("192.0.2.1"));
    CHECK_FALSE(a.admit(ip("192.0.2.1")));
    CHECK(a.open() == 3);
}

TEST_CASE("an IPv6 source is its /64: the addresses of one host's network share its limit")
{
    admission a({.max_per_source = 2}, {});
    CHECK_FALSE(a.admit(ip("2001:db8:1:2::a")));
    CHECK_FALSE(a.admit(ip("2001:db8:1:2:ffff::b")));
    CHECK(a.admit(ip("2001:db8:1:2::c")) == errc::too_many_from_source);
    CHECK_FALSE(a.admit(ip("2001:db8:1:3::a")));
}

TEST_CASE("releasing every connection leaves nothing counted")
{
    admission a({.max_per_source = 5}, {});
    for (int i = 0; i < 3; ++i)
        CHECK_FALSE(a.admit(ip("192.0.2.1")));
    for (int i = 0; i < 3; ++i)
        a.release(ip("192.0.2.1"));
    a.release(ip("192.0.2.1")); // one too many changes nothing
    CHECK(a.open() == 0);
    CHECK(a.from_source(ip("192.0.2.1")) == 0);
}

TEST_CASE("accepting pauses while max_handshakes TLS handshakes are under way")
{
    admission a({.max_handshakes = 2}, {});
    CHECK(a.may_accept());
    a.handshake_started();
    a.handshake_started();
    CHECK_FALSE(a.may_accept());
    a.handshake_ended();
    CHECK(a.may_accept());
    admission unbounded({}, {});
    for (int i = 0; i < 1000; ++i)
        unbounded.handshake_started();
    CHECK(unbounded.may_accept());
}

TEST_CASE("the byte budget refuses what would pass its limit and counts exactly under concurrency")
{
    hl7::detail::byte_budget b(100);
    CHECK(b.take(60));
    CHECK_FALSE(b.take(41));
    CHECK(b.take(40));
    CHECK(b.used() == 100);
    b.give(100);
    CHECK(b.used() == 0);

    hl7::detail::byte_budget shared(1000);
    std::atomic<int> refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 10000; ++i) {
                if (shared.take(7))
                    shared.give(7);
                else
                    ++refused;
            }
        });
    for (auto& t : threads)
        t.join();
    CHECK(shared.used() == 0);
    hl7::detail::byte_budget unlimited(0);
    CHECK(unlimited.take(std::size_t{1} << 40));
}

TEST_CASE("the event limit lets ten through, then one per interval, telling how many were left out")
{
    using kind = hl7::server_event::kind;
    hl7::detail::event_limiter limit;
    const auto t0 = hl7::detail::clock::time_point{} + 1h;
    for (int i = 0; i < 10; ++i)
        CHECK(limit.admit(kind::bad_frame, t0) == std::optional<std::uint64_t>(0));
    for (int i = 0; i < 50; ++i)
        CHECK_FALSE(limit.admit(kind::bad_frame, t0 + 500ms).has_value());
    CHECK(limit.admit(kind::unparsable, t0) == std::optional<std::uint64_t>(0)); // each kind its own
    CHECK(limit.admit(kind::bad_frame, t0 + 1s) == std::optional<std::uint64_t>(50));
    CHECK_FALSE(limit.admit(kind::bad_frame, t0 + 1500ms).has_value());
    CHECK(limit.admit(kind::bad_frame, t0 + 2s) == std::optional<std::uint64_t>(1));
    // After a quiet spell the bucket is full again.
    for (int i = 0; i < 10; ++i)
        CHECK(limit.admit(kind::bad_frame, t0 + 1h).has_value());
    CHECK_FALSE(limit.admit(kind::bad_frame, t0 + 1h).has_value());
}

TEST_CASE("every limit has a name")
{
    std::vector<std::string> names;
    for (std::size_t i = 0; i < hl7::server_limit_count; ++i)
        names.emplace_back(hl7::to_string(static_cast<hl7::server_limit>(i)));
    CHECK(names.front() == "allowed_sources");
    CHECK(names.back() == "handshake_timeout");
    for (const auto& n : names)
        CHECK(n != "unknown");
}
