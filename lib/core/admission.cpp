#include "core/admission.hpp"

#include <algorithm>
#include <charconv>
#include <string>

namespace hl7::detail {

namespace asio = boost::asio;

std::array<unsigned char, 16> as_v6_bytes(const asio::ip::address& a) noexcept
{
    if (a.is_v4())
        return asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()).to_bytes();
    return a.to_v6().to_bytes();
}

outcome::result<network> network::parse(std::string_view text)
{
    const std::size_t slash = text.find('/');
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(std::string(text.substr(0, slash)), ec);
    if (ec || text.empty())
        return errc::invalid_network;
    const unsigned width = address.is_v4() ? 32 : 128;
    unsigned prefix = width;
    if (slash != std::string_view::npos) {
        const std::string_view digits = text.substr(slash + 1);
        const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
        if (err != std::errc() || end != digits.data() + digits.size() || digits.empty() || prefix > width)
            return errc::invalid_network;
    }
    network n;
    n.bytes = as_v6_bytes(address);
    n.prefix = prefix + (128 - width);
    for (unsigned bit = n.prefix; bit < 128; ++bit)
        if (n.bytes[bit / 8] & (0x80u >> (bit % 8)))
            return errc::invalid_network;
    return n;
}

bool network::contains(const asio::ip::address& a) const noexcept
{
    const auto b = as_v6_bytes(a);
    const unsigned whole = prefix / 8;
    for (unsigned i = 0; i < whole; ++i)
        if (b[i] != bytes[i])
            return false;
    if (const unsigned rest = prefix % 8) {
        const auto mask = static_cast<unsigned char>(0xFFu << (8 - rest));
        if ((b[whole] & mask) != bytes[whole])
            return false;
    }
    return true;
}

admission::admission(admission_limits limits, std::vector<network> allowed)
    : limits_(limits), allowed_(std::move(allowed))
{
}

// IPv6 hosts are usually given a /64 each, and can use any address in it.
admission::source_key admission::key_of(const asio::ip::address& a) noexcept
{
    source_key k = as_v6_bytes(a);
    const bool v4 = a.is_v4() || a.to_v6().is_v4_mapped();
    if (!v4)
        std::fill(k.begin() + 8, k.end(), 0);
    return k;
}

boost::system::error_code admission::admit(const asio::ip::address& source)
{
    if (!allowed_.empty() &&
        std::none_of(allowed_.begin(), allowed_.end(), [&](const network& n) { return n.contains(source); }))
        return errc::source_not_allowed;
    if (limits_.max_connections != 0 && open_ >= limits_.max_connections)
        return errc::too_many_connections;
    std::size_t& count = per_source_[key_of(source)];
    if (limits_.max_per_source != 0 && count >= limits_.max_per_source)
        return errc::too_many_from_source;
    ++count;
    ++open_;
    return {};
}

void admission::release(const asio::ip::address& source) noexcept
{
    const auto it = per_source_.find(key_of(source));
    if (it == per_source_.end())
        return;
    --open_;
    if (--it->second == 0)
        per_source_.erase(it);
}

std::size_t admission::from_source(const asio::ip::address& a) const
{
    const auto it = per_source_.find(key_of(a));
    return it == per_source_.end() ? 0 : it->second;
}

} // namespace hl7::detail
