#include <hl7/net/host.hpp>

#include <doctest/doctest.h>

#include <string>

using hl7::host_kind;

namespace {

host_kind kind_of(const std::string& text)
{
    auto h = hl7::parse_host(text);
    REQUIRE_MESSAGE(h.has_value(), text);
    return h.value().kind;
}

} // namespace

TEST_CASE("dotted quads are IPv4 hosts")
{
    for (const char* text : {"192.0.2.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "10.0.0.254"})
        CHECK_MESSAGE(kind_of(text) == host_kind::ipv4, text);
}

TEST_CASE("IPv6 addresses are accepted compressed or not, with or without brackets")
{
    for (const char* text : {"2001:db8::1", "::1", "::", "[::1]", "[2001:db8::1]", "fe80::1%1",
                             "2001:0db8:0000:0000:0000:ff00:0042:8329", "::ffff:192.0.2.1", "1::"})
        CHECK_MESSAGE(kind_of(text) == host_kind::ipv6, text);
    CHECK(hl7::parse_host("[2001:db8::1]").value().text == "2001:db8::1");
}

TEST_CASE("well-formed DNS names are name hosts")
{
    const std::string longest_label(63, 'a');
    std::string longest_name;
    while (longest_name.size() + 64 <= 253)
        longest_name += longest_label + ".";
    longest_name += std::string(253 - longest_name.size(), 'b');
    REQUIRE(longest_name.size() == 253);
    for (const std::string& text : {std::string("localhost"), std::string("hl7.example.org"), std::string("hl7.example.org."),
                                    std::string("a-b.c-d.e"), std::string("x1"), std::string("1x"), std::string("123abc.example"),
                                    longest_label + ".org", longest_name, std::string("MiXeD.Case.Org")})
        CHECK_MESSAGE(kind_of(text) == host_kind::name, text);
}

TEST_CASE("anything else is an invalid host")
{
    const std::string long_label(64, 'a');
    std::string too_long;
    while (too_long.size() < 254)
        too_long += "abcdefghi.";
    too_long.resize(254);
    too_long.back() = 'x';
    const char* bad[] = {"", " ", "192.0.2.1 ", " localhost", "999.1.1.1", "256.0.0.1", "1.2.3", "1.2.3.4.5",
                         "01.2.3.4", "1..2.3", "-hl7.example.org", "hl7-.example.org", "hl7..example.org",
                         "hl7_example.org", "hl7.example.org..", ".hl7", "[hl7.example.org]", "[192.0.2.1]",
                         "2001:db8:::1", "2001:db8::g", "[::1", "::1]", "1:2:3:4:5:6:7:8:9", "host:2575",
                         "hl7 .org", "ex\xC3\xA4mple.org", "http://hl7.example.org", "12345"};
    for (const char* text : bad) {
        auto h = hl7::parse_host(text);
        REQUIRE_MESSAGE(h.has_error(), std::string(text));
        CHECK(h.error() == hl7::errc::invalid_host);
    }
    for (const std::string& text : {long_label + ".org", too_long}) {
        auto h = hl7::parse_host(text);
        REQUIRE_MESSAGE(h.has_error(), text);
        CHECK(h.error() == hl7::errc::invalid_host);
    }
}
