#include <hl7/net/host.hpp>

#include <boost/asio/ip/address_v6.hpp>

#include <algorithm>

namespace hl7 {
namespace {

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_alnum(char c) noexcept { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

bool is_ipv4(std::string_view s) noexcept
{
    int parts = 0;
    while (true) {
        std::size_t n = 0;
        int v = 0;
        while (n < s.size() && is_digit(s[n]) && n < 3)
            v = v * 10 + (s[n++] - '0');
        if (n == 0 || v > 255 || (n > 1 && s[0] == '0'))
            return false;
        s.remove_prefix(n);
        if (++parts == 4)
            return s.empty();
        if (s.empty() || s.front() != '.')
            return false;
        s.remove_prefix(1);
    }
}

bool is_dns_name(std::string_view s) noexcept
{
    if (!s.empty() && s.back() == '.')
        s.remove_suffix(1);
    if (s.empty() || s.size() > 253)
        return false;
    bool all_digits = true;
    while (true) {
        const std::size_t dot = std::min(s.find('.'), s.size());
        const std::string_view label = s.substr(0, dot);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-' ||
            !std::all_of(label.begin(), label.end(), [](char c) { return is_alnum(c) || c == '-'; }))
            return false;
        all_digits = all_digits && std::all_of(label.begin(), label.end(), is_digit);
        if (dot == s.size())
            return !all_digits;
        s.remove_prefix(dot + 1);
    }
}

} // namespace

outcome::result<host> parse_host(std::string_view text)
{
    std::string_view inner = text;
    const bool bracketed = inner.size() >= 2 && inner.front() == '[' && inner.back() == ']';
    if (bracketed)
        inner = inner.substr(1, inner.size() - 2);
    if (inner.find(':') != std::string_view::npos) {
        boost::system::error_code ec;
        (void)boost::asio::ip::make_address_v6(std::string(inner), ec);
        if (ec)
            return errc::invalid_host;
        return host{host_kind::ipv6, std::string(inner)};
    }
    if (bracketed)
        return errc::invalid_host;
    if (is_ipv4(inner))
        return host{host_kind::ipv4, std::string(inner)};
    if (is_dns_name(inner))
        return host{host_kind::name, std::string(inner)};
    return errc::invalid_host;
}

} // namespace hl7
