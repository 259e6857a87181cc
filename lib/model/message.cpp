#include <hl7/model/message.hpp>

#include <boost/outcome/try.hpp>

#include "model/segment_ids.hpp"
#include "model/text.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
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


} // namespace

// ---------------------------------------------------------------------------------------
// value

std::string value::decoded() const
{
    if (!present_ || literal_)
        return std::string(raw_);
    const char structure[] = {delims_->field, delims_->repetition, delims_->component, delims_->subcomponent};
    if (raw_.find_first_of(std::string_view(structure, 4)) != std::string_view::npos)
        return std::string(raw_);
    return unescape(raw_, *delims_);
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
    BOOST_OUTCOME_TRY(auto d, detail::read_delimiters(bytes));
    message m;
    m.data_ = std::move(bytes);
    m.delims_ = d;
    detail::normalise_line_ends(m.data_);
    m.index();
    return m;
}

outcome::result<message> message::create(const header& h)
{
    const hl7::delimiters& d = h.delimiters;
    if (!detail::usable_delimiters(d))
        return errc::invalid_encoding_characters;
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
            return errc::invalid_path;
    }
    return outcome::success();
}

outcome::result<value> message::get(std::string_view text) const
{
    hl7::path p;
    if (!detail::read_path(text, p))
        return errc::invalid_path;
    return get(p);
}

outcome::result<value> message::get(const hl7::path& p) const
{
    if (p.component && !p.repetition)
        return errc::invalid_path;
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
            return errc::invalid_path;
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
        return errc::invalid_path;
    if (p.field == 0) {
        if (p.occurrence != 1)
            return errc::invalid_path;
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

std::string_view message::control_id() const noexcept
{
    static const hl7::path msh10 = path::parse("MSH.10").value();
    const auto v = get(msh10);
    return v ? v.value().raw() : std::string_view{};
}

outcome::result<void> message::set(std::string_view text, std::string_view v)
{
    BOOST_OUTCOME_TRY(auto p, path::parse(text));
    return set(p, v);
}

outcome::result<void> message::set(const hl7::path& p, std::string_view v)
{
    return write(p, escape(v, delims_));
}

outcome::result<void> message::set(std::string_view text, std::initializer_list<std::string_view> parts)
{
    BOOST_OUTCOME_TRY(auto p, path::parse(text));
    return set(p, std::span<const std::string_view>(parts.begin(), parts.size()));
}

outcome::result<void> message::set(const hl7::path& p, std::span<const std::string_view> parts)
{
    if (p.subcomponent)
        return errc::invalid_path;
    const char joint = p.component ? delims_.subcomponent : delims_.component;
    std::string joined;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (i)
            joined += joint;
        detail::append_escaped(joined, parts[i], delims_);
    }
    return write(p, joined);
}

// Puts `text`, already escaped, where `p` points.
outcome::result<void> message::write(const hl7::path& p, std::string_view text)
{
    if (p.field == 0 || (p.component && !p.repetition))
        return errc::invalid_path;
    const std::uint32_t id = pack_id(p.segment.data());
    const bool header = id == msh_id || id == fhs_id || id == bhs_id;
    if (header && p.field <= 2)
        return errc::invalid_path;
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
        return errc::invalid_path;
    s.replace(b, e - b, text);
    if (data_.size() + s.size() + 4 * std::size_t{p.occurrence} >= std::numeric_limits<std::uint32_t>::max())
        return boost::system::errc::make_error_code(boost::system::errc::value_too_large);

    if (seg) {
        data_.replace(seg->begin, seg->end - seg->begin, s);
    } else {
        // Missing segments go after the last one with this id, or after the last segment.
        std::uint32_t have = 0;
        std::size_t at = segments_.empty() ? data_.size() : segments_.back().end;
        for (const segment_entry& x : segments_)
            if (x.id == id) {
                ++have;
                at = x.end;
            }
        if (p.occurrence - have > max_created)
            return errc::invalid_path;
        std::string added;
        for (; have + 1 < p.occurrence; ++have) {
            if (at + added.size() > 0)
                added += '\r';
            added.append(p.segment.data(), 3);
        }
        if (at + added.size() > 0)
            added += '\r';
        added += s;
        data_.insert(at, added);
    }
    index();
    return outcome::success();
}

} // namespace hl7
