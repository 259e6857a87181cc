#include "model/text.hpp"

namespace hl7 {

bool detail::usable_delimiters(const delimiters& d) noexcept
{
    const char set[] = {d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation};
    const std::size_t n = d.truncation ? 6 : 5;
    for (std::size_t i = 0; i < n; ++i) {
        const char c = set[i];
        if (c == '\r' || c == '\n' || c == '\0' || detail::is_upper(c) || detail::is_digit(c) || (c >= 'a' && c <= 'z'))
            return false;
        for (std::size_t j = i + 1; j < n; ++j)
            if (set[j] == c)
                return false;
    }
    return true;
}

// MSH-1 is the byte after the segment id; MSH-2 runs from there to the next field
// separator (or the end of the segment) and holds four or five encoding characters.
outcome::result<delimiters> detail::read_delimiters(std::string_view bytes) noexcept
{
    if (bytes.size() < 3 ||
        (bytes.compare(0, 3, "MSH") != 0 && bytes.compare(0, 3, "FHS") != 0 && bytes.compare(0, 3, "BHS") != 0))
        return errc::not_hl7;
    if (bytes.size() < 4)
        return errc::invalid_encoding_characters;
    delimiters d;
    d.field = bytes[3];
    std::size_t end = 4;
    while (end < bytes.size() && bytes[end] != d.field && bytes[end] != '\r' && bytes[end] != '\n')
        ++end;
    const std::string_view enc = bytes.substr(4, end - 4);
    if (enc.size() < 4 || enc.size() > 5)
        return errc::invalid_encoding_characters;
    d.component = enc[0];
    d.repetition = enc[1];
    d.escape = enc[2];
    d.subcomponent = enc[3];
    d.truncation = enc.size() == 5 ? enc[4] : '\0';
    if (!usable_delimiters(d))
        return errc::invalid_encoding_characters;
    return d;
}

// Segments may end in CR, LF or CRLF; the message keeps CR only. Compacts in place, since
// the result is never longer than the input.
void detail::normalise_line_ends(std::string& s)
{
    const std::size_t first = s.find('\n');
    if (first == std::string::npos)
        return;
    std::size_t out = first;
    bool after_cr = first > 0 && s[first - 1] == '\r';
    for (std::size_t in = first; in < s.size(); ++in) {
        const char c = s[in];
        if (c == '\n' && after_cr) {
            after_cr = false; // the LF of a CRLF
            continue;
        }
        after_cr = c == '\r';
        s[out++] = c == '\n' ? '\r' : c;
    }
    s.resize(out);
}

// Narrows `s`, a field, to the repetition, component and subcomponent that `p` names. A

} // namespace hl7
