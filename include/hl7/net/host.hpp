// Checking a host's form before any I/O.
#pragma once

#include <hl7/error.hpp>

#include <boost/outcome/result.hpp>

#include <string>
#include <string_view>

namespace hl7 {

namespace outcome = BOOST_OUTCOME_V2_NAMESPACE;

/// What kind of host a text names.
enum class host_kind {
    ipv4, ///< a dotted quad, e.g. 192.0.2.1
    ipv6, ///< an IPv6 address, compressed or not, e.g. 2001:db8::1
    name, ///< a DNS name, resolved at connect time, e.g. hl7.example.org
};

/// A host whose form was checked.
struct host {
    host_kind kind;
    /// The host as given, without brackets around an IPv6 address.
    std::string text;
};

/// Checks the form of `text`, without any I/O:
///   - IPv4: four decimal parts 0-255 without leading zeros;
///   - IPv6: any textual form inet_pton accepts (compressed `::`, embedded IPv4), with or
///     without brackets (`[2001:db8::1]`); a zone (`fe80::1%eth0`) is accepted;
///   - DNS name: labels of 1-63 letters, digits and hyphens, not starting or ending with a
///     hyphen, separated by dots, 253 characters at most (a final dot is allowed); a name
///     whose labels are all digits is refused, since it would read as a bad IPv4 address.
/// Anything else (empty, spaces, underscores, `999.1.1.1`, `[hl7.example.org]`) fails with
/// errc::invalid_host. Thread safety: pure function.
outcome::result<host> parse_host(std::string_view text);

} // namespace hl7
