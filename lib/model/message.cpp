#include <hl7/model/message.hpp>

#include <boost/outcome/try.hpp>

#include "model/append.hpp"
#include "model/segment_ids.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <limits>
#include <random>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace hl7 {
namespace {

constexpr std::uint32_t pack_id(const char* p) noexcept
{
    return static_cast<std::uint32_t>(static_cast<unsigned char>(p[0])) |
           static_cast<std::uint32_t>(static_cast<unsigned char>(p[1])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(p[2])) << 16;
}

constexpr std::uint32_t msh_id = pack_id("MSH");
constexpr std::uint32_t fhs_id = pack_id("FHS");
constexpr std::uint32_t bhs_id = pack_id("BHS");

bool is_upper(char c) noexcept { return c >= 'A' && c <= 'Z'; }
bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

bool usable_delimiters(const delimiters& d) noexcept
{
    const char set[] = {d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation};
    const std::size_t n = d.truncation ? 6 : 5;
    for (std::size_t i = 0; i < n; ++i) {
        const char c = set[i];
        if (c == '\r' || c == '\n' || c == '\0' || is_upper(c) || is_digit(c) || (c >= 'a' && c <= 'z'))
            return false;
        for (std::size_t j = i + 1; j < n; ++j)
            if (set[j] == c)
                return false;
    }
    return true;
}

// MSH-1 is the byte after the segment id; MSH-2 runs from there to the next field
// separator (or the end of the segment) and holds four or five encoding characters.
outcome::result<delimiters> read_delimiters(std::string_view bytes) noexcept
{
    if (bytes.size() < 3 ||
        (bytes.compare(0, 3, "MSH") != 0 && bytes.compare(0, 3, "FHS") != 0 && bytes.compare(0, 3, "BHS") != 0))
        return errc::not_hl7;
    if (bytes.size() < 4)
        return errc::bad_encoding_characters;
    delimiters d;
    d.field = bytes[3];
    std::size_t end = 4;
    while (end < bytes.size() && bytes[end] != d.field && bytes[end] != '\r' && bytes[end] != '\n')
        ++end;
    const std::string_view enc = bytes.substr(4, end - 4);
    if (enc.size() < 4 || enc.size() > 5)
        return errc::bad_encoding_characters;
    d.component = enc[0];
    d.repetition = enc[1];
    d.escape = enc[2];
    d.subcomponent = enc[3];
    d.truncation = enc.size() == 5 ? enc[4] : '\0';
    if (!usable_delimiters(d))
        return errc::bad_encoding_characters;
    return d;
}

// Segments may end in CR, LF or CRLF; the message keeps CR only. Compacts in place, since
// the result is never longer than the input.
void normalise_line_ends(std::string& s)
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
// piece ends at its own delimiter or at any delimiter of a higher level, and an empty piece
// has no parts. Fields are short, so a plain byte loop beats memchr's call overhead here.
bool descend(std::string_view& s, const path& p, const delimiters& d) noexcept
{
    const char* b = s.data();
    const char* const e = b + s.size();
    if (b == e)
        return false;
    auto until = [e](const char* q, char a, char b2, char c) noexcept {
        while (q < e && *q != a && *q != b2 && *q != c)
            ++q;
        return q;
    };
    // Skips n-1 `sep`s from q; fails when a higher-level delimiter or the end comes first.
    auto skip = [&](const char*& q, std::uint32_t n, char sep, char up1, char up2) noexcept {
        for (; n > 1; --n) {
            q = until(q, sep, up1, up2);
            if (q == e || *q != sep)
                return false;
            ++q;
        }
        return true;
    };
    if (!skip(b, p.repetition, d.repetition, d.repetition, d.repetition))
        return false;
    if (p.component) {
        if (b == e || *b == d.repetition || !skip(b, p.component, d.component, d.repetition, d.repetition))
            return false;
        if (p.subcomponent) {
            if (b == e || *b == d.component || *b == d.repetition ||
                !skip(b, p.subcomponent, d.subcomponent, d.component, d.repetition))
                return false;
            s = std::string_view(b, static_cast<std::size_t>(until(b, d.subcomponent, d.component, d.repetition) - b));
        } else {
            s = std::string_view(b, static_cast<std::size_t>(until(b, d.component, d.repetition, d.repetition) - b));
        }
    } else {
        s = std::string_view(b, static_cast<std::size_t>(until(b, d.repetition, d.repetition, d.repetition) - b));
    }
    return true;
}

// set() creates at most this many parts (segments, fields, repetitions, components or
// subcomponents) at one level, so that a path like PID.999999999 cannot blow a message up.
constexpr std::uint32_t max_created = 65535;

// Within s[b, e) finds the n-th (1-based) piece separated by `d`, appending separators at
// e when there are fewer pieces; gives the piece's range. Unlike descend(), an empty region
// has one (empty) piece, so that set() can create what is missing.
bool ensure_piece(std::string& s, std::size_t& b, std::size_t& e, char d, std::uint32_t n)
{
    std::size_t pos = b;
    for (std::uint32_t i = 1; i < n; ++i) {
        const std::size_t hit = s.find(d, pos);
        if (hit == std::string::npos || hit >= e) {
            if (n - i > max_created)
                return false;
            s.insert(e, n - i, d);
            b = e = e + (n - i);
            return true;
        }
        pos = hit + 1;
    }
    const std::size_t hit = s.find(d, pos);
    b = pos;
    e = (hit == std::string::npos || hit >= e) ? e : hit;
    return true;
}

bool known_segment(const std::array<char, 3>& id) noexcept
{
    if (id[0] == 'Z')
        return true;
    const std::string_view s(id.data(), 3);
    return std::binary_search(detail::standard_segment_ids.begin(), detail::standard_segment_ids.end(), s);
}

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

// The path grammar, without building a result: lookups by text call this directly.
bool read_path(std::string_view text, path& r) noexcept
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

} // namespace

// ---------------------------------------------------------------------------------------
// path

outcome::result<path> path::parse(std::string_view text) noexcept
{
    path r;
    if (!read_path(text, r))
        return errc::bad_path;
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

// ---------------------------------------------------------------------------------------
// value, escapes

std::string value::decoded() const
{
    if (!present_ || literal_)
        return std::string(raw_);
    const char structure[] = {delims_->field, delims_->repetition, delims_->component, delims_->subcomponent};
    if (raw_.find_first_of(std::string_view(structure, 4)) != std::string_view::npos)
        return std::string(raw_);
    return unescape(raw_, *delims_);
}

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
    // What each byte becomes, 0 for itself: one table lookup per byte rather than eight
    // comparisons.
    char code[256] = {};
    code[static_cast<unsigned char>('\r')] = 'D';
    code[static_cast<unsigned char>('\n')] = 'A';
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
        if (c == 'D' || c == 'A')
            out += c == 'D' ? "X0D" : "X0A";
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

void detail::append_timestamp(std::string& out)
{
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    // localtime_r takes a process-wide lock and works through the zone's rules: done once a
    // second per thread rather than for every ACK. Offsets change on second boundaries only.
    thread_local std::time_t cached = -1;
    thread_local char seconds[16]; // YYYYMMDDHHMMSS
    thread_local char zone[6];     // +ZZZZ
    if (t != cached) {
        std::tm tm{};
        localtime_r(&t, &tm);
        std::strftime(seconds, sizeof seconds, "%Y%m%d%H%M%S", &tm);
        const long off = tm.tm_gmtoff / 60;
        const long a = off < 0 ? -off : off;
        zone[0] = off < 0 ? '-' : '+';
        zone[1] = static_cast<char>('0' + a / 600);
        zone[2] = static_cast<char>('0' + a / 60 % 10);
        zone[3] = static_cast<char>('0' + a % 60 / 10);
        zone[4] = static_cast<char>('0' + a % 10);
        zone[5] = '\0';
        cached = t;
    }
    out += seconds;
    out += '.';
    out += static_cast<char>('0' + ms / 100);
    out += static_cast<char>('0' + ms / 10 % 10);
    out += static_cast<char>('0' + ms % 10);
    out += zone;
}

std::string make_timestamp()
{
    std::string s;
    s.reserve(23);
    detail::append_timestamp(s);
    return s;
}

std::string make_control_id()
{
    // 8 base-36 digits of per-process randomness, then a process-wide counter in base 36.
    static const std::string prefix = [] {
        std::random_device rd;
        std::uint64_t r = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        std::string p(8, '0');
        for (char& c : p) {
            c = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r % 36];
            r /= 36;
        }
        return p;
    }();
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
    char digits[13];
    int len = 0;
    do {
        digits[len++] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[n % 36];
        n /= 36;
    } while (n && len < 12);
    std::string id = prefix;
    while (len > 0)
        id += digits[--len];
    return id;
}

// ---------------------------------------------------------------------------------------
// message

outcome::result<message> message::parse(std::string_view bytes)
{
    return parse(std::string(bytes));
}

outcome::result<message> message::parse(std::string&& bytes)
{
    if (bytes.size() >= std::numeric_limits<std::uint32_t>::max())
        return boost::system::errc::make_error_code(boost::system::errc::value_too_large);
    BOOST_OUTCOME_TRY(auto d, read_delimiters(bytes));
    message m;
    m.data_ = std::move(bytes);
    m.delims_ = d;
    normalise_line_ends(m.data_);
    m.index();
    return m;
}

outcome::result<message> message::create(const header& h)
{
    const hl7::delimiters& d = h.delimiters;
    if (!usable_delimiters(d))
        return errc::bad_encoding_characters;
    message m;
    m.delims_ = d;
    m.data_ = {'M', 'S', 'H', d.field, d.component, d.repetition, d.escape, d.subcomponent};
    if (d.truncation)
        m.data_ += d.truncation;
    m.data_ += '\r';
    m.index();
    const std::pair<const char*, std::string_view> fields[] = {
        {"MSH.3", h.sending_application}, {"MSH.4", h.sending_facility},
        {"MSH.5", h.receiving_application}, {"MSH.6", h.receiving_facility},
        {"MSH.9.1", h.message_type}, {"MSH.9.2", h.trigger_event},
        {"MSH.9.3", h.message_structure}, {"MSH.11", h.processing_id},
        {"MSH.12", h.version},
    };
    BOOST_OUTCOME_TRY(m.set("MSH.7", make_timestamp()));
    BOOST_OUTCOME_TRY(m.set("MSH.10", make_control_id()));
    for (const auto& [p, v] : fields) {
        if (!v.empty()) {
            BOOST_OUTCOME_TRY(m.set(p, v));
        }
    }
    return m;
}

void message::add_segment(std::uint32_t begin, std::uint32_t end, std::uint32_t first_sep, std::uint32_t seps_end)
{
    if (end == begin)
        return; // an empty line (two CRs in a row) makes no segment
    char id[3] = {0, 0, 0};
    std::memcpy(id, data_.data() + begin, std::min<std::uint32_t>(3, end - begin));
    const std::uint32_t packed = pack_id(id);
    segments_.push_back(
        {begin, end, first_sep, seps_end - first_sep, packed, packed == msh_id || packed == fhs_id || packed == bhs_id});
}

// One pass over the bytes records every field separator and every segment end. On SSE2 it
// compares 16 bytes at a time and writes a block's separators through a raw pointer (room
// for a whole block is made once per block), so a separator costs a few instructions.
void message::index()
{
    segments_.clear();
    segments_.reserve(data_.size() / 48 + 4);
    seps_.resize(data_.size() / 4 + 16);

    const char* const base = data_.data();
    const std::size_t size = data_.size();
    const char sep = delims_.field;
    std::uint32_t* out = seps_.data();
    std::uint32_t* limit = out + seps_.size();
    std::uint32_t seg_begin = 0;
    std::uint32_t seg_first = 0;
    auto make_room = [&](std::size_t n) {
        if (static_cast<std::size_t>(limit - out) < n) {
            const auto used = static_cast<std::size_t>(out - seps_.data());
            seps_.resize(seps_.size() * 2 + n);
            out = seps_.data() + used;
            limit = seps_.data() + seps_.size();
        }
    };
    auto filled = [&] { return static_cast<std::uint32_t>(out - seps_.data()); };

    std::size_t i = 0;
#if defined(__SSE2__)
    const __m128i vsep = _mm_set1_epi8(sep);
    const __m128i vcr = _mm_set1_epi8('\r');
    for (; i + 16 <= size; i += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + i));
        unsigned seps = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, vsep)));
        unsigned crs = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, vcr)));
        const auto at = static_cast<std::uint32_t>(i);
        make_room(16);
        while (crs) {
            const unsigned cr = static_cast<unsigned>(__builtin_ctz(crs));
            crs &= crs - 1;
            for (unsigned before = seps & ((1u << cr) - 1); before; before &= before - 1)
                *out++ = at + static_cast<std::uint32_t>(__builtin_ctz(before));
            seps &= ~((1u << cr) - 1);
            add_segment(seg_begin, at + cr, seg_first, filled());
            seg_begin = at + cr + 1;
            seg_first = filled();
        }
        for (; seps; seps &= seps - 1)
            *out++ = at + static_cast<std::uint32_t>(__builtin_ctz(seps));
    }
#endif
    for (; i < size; ++i) {
        if (base[i] == sep) {
            make_room(1);
            *out++ = static_cast<std::uint32_t>(i);
        } else if (base[i] == '\r') {
            add_segment(seg_begin, static_cast<std::uint32_t>(i), seg_first, filled());
            seg_begin = static_cast<std::uint32_t>(i) + 1;
            seg_first = filled();
        }
    }
    add_segment(seg_begin, static_cast<std::uint32_t>(size), seg_first, filled());
    seps_.resize(filled());
}

const message::segment_entry* message::find_segment(const hl7::path& p) const noexcept
{
    const std::uint32_t id = pack_id(p.segment.data());
    std::uint32_t seen = 0;
    for (const segment_entry& s : segments_)
        if (s.id == id && ++seen == p.occurrence)
            return &s;
    return nullptr;
}

outcome::result<void> message::check_path(const hl7::path& p) const noexcept
{
    if (!known_segment(p.segment)) {
        // An id outside the standard table is still fine when the message carries it.
        const std::uint32_t id = pack_id(p.segment.data());
        if (std::none_of(segments_.begin(), segments_.end(), [id](const segment_entry& s) { return s.id == id; }))
            return errc::bad_path;
    }
    return outcome::success();
}

outcome::result<value> message::get(std::string_view text) const
{
    hl7::path p;
    if (!read_path(text, p))
        return errc::bad_path;
    return get(p);
}

outcome::result<value> message::get(const hl7::path& p) const
{
    if (p.component && !p.repetition)
        return errc::bad_path;
    const segment_entry* seg = find_segment(p);
    if (!seg) {
        BOOST_OUTCOME_TRY(check_path(p));
        return value{};
    }
    const char* const base = data_.data();
    if (p.field == 0)
        return value{{base + seg->begin, seg->end - seg->begin}, delims_, false};
    if (seg->header && p.field <= 2) {
        if (p.repetition || p.component)
            return errc::bad_path;
        if (p.field == 1)
            return seg->sep_count ? value{{base + seg->begin + 3, 1}, delims_, true} : value{};
    }
    const std::uint32_t k = seg->header ? p.field - 1 : p.field;
    if (k > seg->sep_count)
        return value{};
    const std::uint32_t b = seps_[seg->first_sep + k - 1] + 1;
    const std::uint32_t e = k < seg->sep_count ? seps_[seg->first_sep + k] : seg->end;
    std::string_view s(base + b, e - b);
    if (seg->header && p.field == 2)
        return value{s, delims_, true};
    if (p.repetition && !descend(s, p, delims_))
        return value{};
    return value{s, delims_, false};
}

outcome::result<std::size_t> message::count(std::string_view text) const
{
    BOOST_OUTCOME_TRY(auto p, path::parse(text));
    return count(p);
}

outcome::result<std::size_t> message::count(const hl7::path& p) const
{
    if (p.repetition || p.component)
        return errc::bad_path;
    if (p.field == 0) {
        if (p.occurrence != 1)
            return errc::bad_path;
        BOOST_OUTCOME_TRY(check_path(p));
        const std::uint32_t id = pack_id(p.segment.data());
        return static_cast<std::size_t>(
            std::count_if(segments_.begin(), segments_.end(), [id](const segment_entry& s) { return s.id == id; }));
    }
    BOOST_OUTCOME_TRY(auto v, get(p));
    if (v.raw().empty())
        return std::size_t{0};
    if (v.literal_)
        return std::size_t{1};
    return static_cast<std::size_t>(std::count(v.raw().begin(), v.raw().end(), delims_.repetition)) + 1;
}

outcome::result<void> message::set(std::string_view text, std::string_view v)
{
    BOOST_OUTCOME_TRY(auto p, path::parse(text));
    return set(p, v);
}

outcome::result<void> message::set(const hl7::path& p, std::string_view v)
{
    if (p.field == 0 || (p.component && !p.repetition))
        return errc::bad_path;
    const std::uint32_t id = pack_id(p.segment.data());
    const bool header = id == msh_id || id == fhs_id || id == bhs_id;
    if (header && p.field <= 2)
        return errc::bad_path;
    BOOST_OUTCOME_TRY(check_path(p));

    // Build the new segment text aside, so that a refused path leaves the message as it was.
    const segment_entry* seg = find_segment(p);
    std::string s = seg ? data_.substr(seg->begin, seg->end - seg->begin) : std::string(p.segment.data(), 3);
    const std::uint32_t piece = header ? p.field : p.field + 1; // piece 1 is the empty text before the first separator
    std::size_t b = 3;
    std::size_t e = s.size();
    if (!ensure_piece(s, b, e, delims_.field, piece) ||
        (p.repetition && !ensure_piece(s, b, e, delims_.repetition, p.repetition)) ||
        (p.component && !ensure_piece(s, b, e, delims_.component, p.component)) ||
        (p.subcomponent && !ensure_piece(s, b, e, delims_.subcomponent, p.subcomponent)))
        return errc::bad_path;
    s.replace(b, e - b, escape(v, delims_));
    if (data_.size() + s.size() + 4 * std::size_t{p.occurrence} >= std::numeric_limits<std::uint32_t>::max())
        return boost::system::errc::make_error_code(boost::system::errc::value_too_large);

    if (seg) {
        data_.replace(seg->begin, seg->end - seg->begin, s);
    } else {
        // Missing segments go after the last one with this id, or after the last segment.
        std::uint32_t have = 0;
        const segment_entry* last = &segments_.back();
        for (const segment_entry& x : segments_)
            if (x.id == id) {
                ++have;
                last = &x;
            }
        if (p.occurrence - have > max_created)
            return errc::bad_path;
        std::string added;
        for (; have + 1 < p.occurrence; ++have) {
            added += '\r';
            added.append(p.segment.data(), 3);
        }
        added += '\r';
        added += s;
        data_.insert(last->end, added);
    }
    index();
    return outcome::success();
}

} // namespace hl7
