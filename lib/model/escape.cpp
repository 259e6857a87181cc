#include <hl7/model/escape.hpp>

#include "model/text.hpp"

namespace hl7 {
namespace {


int hex_value(char c) noexcept
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

// Resolves one escape body (the text between two escape characters) into out; false when
// the body is one that is kept verbatim.
bool resolve_escape(std::string_view body, const delimiters& d, std::string& out)
{
    if (body.size() == 1) {
        switch (body[0]) {
        case 'F': out += d.field; return true;
        case 'S': out += d.component; return true;
        case 'T': out += d.subcomponent; return true;
        case 'R': out += d.repetition; return true;
        case 'E': out += d.escape; return true;
        case 'P':
            if (!d.truncation)
                return false;
            out += d.truncation;
            return true;
        default: return false;
        }
    }
    if (body[0] != 'X' || body.size() % 2 == 0)
        return false;
    const std::size_t start = out.size();
    for (std::size_t i = 1; i < body.size(); i += 2) {
        const int hi = hex_value(body[i]);
        const int lo = hex_value(body[i + 1]);
        if (hi < 0 || lo < 0) {
            out.resize(start);
            return false;
        }
        out += static_cast<char>(hi * 16 + lo);
    }
    return true;
}


} // namespace

std::string unescape(std::string_view text, const delimiters& d)
{
    std::string out;
    out.reserve(text.size());
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t open = text.find(d.escape, pos);
        if (open == std::string_view::npos)
            break;
        const std::size_t close = text.find(d.escape, open + 1);
        if (close == std::string_view::npos)
            break;
        out.append(text, pos, open - pos);
        const std::string_view body = text.substr(open + 1, close - open - 1);
        if (body.empty() || !resolve_escape(body, d, out))
            out.append(text, open, close - open + 1);
        pos = close + 1;
    }
    out.append(text, pos);
    return out;
}

void detail::append_escaped(std::string& out, std::string_view text, const delimiters& d)
{
    // What each byte becomes, 0 for itself: one table lookup per byte rather than ten
    // comparisons. Delimiters get their named escapes; the bytes that would end a segment
    // (CR, LF) or cut the MLLP frame short (0x0B, 0x1C) get hex escapes, indexes into `hex`.
    static constexpr std::string_view hex[] = {"", "X0D", "X0A", "X0B", "X1C"};
    char code[256] = {};
    code[static_cast<unsigned char>('\r')] = 1;
    code[static_cast<unsigned char>('\n')] = 2;
    code[0x0B] = 3;
    code[0x1C] = 4;
    if (d.truncation)
        code[static_cast<unsigned char>(d.truncation)] = 'P';
    code[static_cast<unsigned char>(d.escape)] = 'E';
    code[static_cast<unsigned char>(d.repetition)] = 'R';
    code[static_cast<unsigned char>(d.subcomponent)] = 'T';
    code[static_cast<unsigned char>(d.component)] = 'S';
    code[static_cast<unsigned char>(d.field)] = 'F';
    // Runs of ordinary bytes are appended whole: most values have nothing to escape.
    std::size_t run = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = code[static_cast<unsigned char>(text[i])];
        if (c == 0)
            continue;
        out.append(text, run, i - run);
        out += d.escape;
        if (c < 5)
            out += hex[static_cast<unsigned char>(c)];
        else
            out += c;
        out += d.escape;
        run = i + 1;
    }
    out.append(text, run);
}

std::string escape(std::string_view text, const delimiters& d)
{
    std::string out;
    out.reserve(text.size());
    detail::append_escaped(out, text, d);
    return out;
}


} // namespace hl7
