// Which connections a server takes: the allow-list of source networks, the limits on
// connections in total and per source, and the bound on TLS handshakes under way, which
// decides whether the acceptor accepts another connection now. Plain bookkeeping, stepped by
// the acceptor's strand; no I/O.
#pragma once

#include <hl7/error.hpp>

#include <boost/asio/ip/address.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

namespace hl7::detail {

/// An IPv4 or IPv6 network in CIDR notation. IPv4 networks are kept as IPv4-mapped IPv6, so
/// that they match IPv4 peers of an IPv6 socket too.
struct network {
    std::array<unsigned char, 16> bytes{};
    unsigned prefix = 0; // of the 128 bits

    /// "10.0.0.0/8", "192.0.2.7" (a /32), "2001:db8::/32", "::1" (a /128). The address's bits
    /// past the prefix must be zero ("10.0.0.1/8" is refused as the likely typo it is).
    /// Fails with errc::invalid_network.
    static outcome::result<network> parse(std::string_view text);

    bool contains(const boost::asio::ip::address& a) const noexcept;
};

/// An address as 16 bytes, IPv4 ones mapped into IPv6.
std::array<unsigned char, 16> as_v6_bytes(const boost::asio::ip::address& a) noexcept;

struct admission_limits {
    std::size_t max_connections = 0; ///< 0: no limit
    std::size_t max_per_source = 0;  ///< 0: no limit
    std::size_t max_handshakes = 0;  ///< 0: no limit
};

class admission {
public:
    admission(admission_limits limits, std::vector<network> allowed);

    /// Counts a connection from `source` in, or says why it is refused:
    /// errc::source_not_allowed, too_many_connections or too_many_from_source.
    boost::system::error_code admit(const boost::asio::ip::address& source);
    /// Counts out a connection admitted before.
    void release(const boost::asio::ip::address& source) noexcept;

    /// A TLS handshake starts, or ends (either way).
    void handshake_started() noexcept { ++handshakes_; }
    void handshake_ended() noexcept { --handshakes_; }
    /// Whether another connection may be accepted now: fewer handshakes under way than allowed.
    bool may_accept() const noexcept { return limits_.max_handshakes == 0 || handshakes_ < limits_.max_handshakes; }

    std::size_t open() const noexcept { return open_; }
    std::size_t handshakes() const noexcept { return handshakes_; }
    /// Connections counted for the source of `a` (its IPv4 address or IPv6 /64).
    std::size_t from_source(const boost::asio::ip::address& a) const;

private:
    using source_key = std::array<unsigned char, 16>;
    static source_key key_of(const boost::asio::ip::address& a) noexcept;

    admission_limits limits_;
    std::vector<network> allowed_;
    std::size_t open_ = 0;
    std::size_t handshakes_ = 0;
    std::map<source_key, std::size_t> per_source_;
};

} // namespace hl7::detail
