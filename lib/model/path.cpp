#include <hl7/model/path.hpp>

#include "model/text.hpp"

#include <string>

namespace hl7 {
namespace {

using detail::is_digit;
using detail::is_upper;

// Reads a positive decimal index of at most nine digits (so that it fits in 32 bits).
inline bool read_index(const char*& p, const char* e, std::uint32_t& out) noexcept
{
    const char* const start = p;
    std::uint32_t v = 0;
    for (unsigned d; p < e && (d = static_cast<unsigned char>(*p) - unsigned{'0'}) <= 9; ++p)
        v = v * 10 + d;
    if (p == start || p - start > 9 || v == 0)
        return false;
    out = v;
    return true;
}

// Reads an optional "[n]".
inline bool read_bracket(const char*& p, const char* e, std::uint32_t& out) noexcept
{
    if (p == e || *p != '[')
        return true;
    ++p;
    if (!read_index(p, e, out) || p == e || *p != ']')
        return false;
    ++p;
    return true;
}

} // namespace

bool detail::read_path(std::string_view text, path& r) noexcept
{
    const char* p = text.data();
    const char* const e = p + text.size();
    if (text.size() < 3 || !is_upper(p[0]) || !(is_upper(p[1]) || is_digit(p[1])) || !(is_upper(p[2]) || is_digit(p[2])))
        return false;
    r.segment = {p[0], p[1], p[2]};
    p += 3;
    if (!read_bracket(p, e, r.occurrence))
        return false;
    if (p != e) {
        if (*p++ != '.' || !read_index(p, e, r.field) || !read_bracket(p, e, r.repetition))
            return false;
        if (p != e) {
            if (*p++ != '.' || !read_index(p, e, r.component))
                return false;
            if (p != e && (*p++ != '.' || !read_index(p, e, r.subcomponent)))
                return false;
            if (!r.repetition)
                r.repetition = 1;
        }
    }
    if (p != e)
        return false;
    return true;
}


outcome::result<path> path::parse(std::string_view text) noexcept
{
    path r;
    if (!detail::read_path(text, r))
        return errc::invalid_path;
    return r;
}

std::string path::to_string() const
{
    std::string s(segment.data(), 3);
    if (occurrence != 1)
        s += '[' + std::to_string(occurrence) + ']';
    if (field) {
        s += '.' + std::to_string(field);
        if (repetition > 1 || (repetition == 1 && !component))
            s += '[' + std::to_string(repetition) + ']';
    }
    if (component)
        s += '.' + std::to_string(component);
    if (subcomponent)
        s += '.' + std::to_string(subcomponent);
    return s;
}

} // namespace hl7
