// The HL7 v2 message model: parsing, path lookups, editing and building.
//
// A message owns its bytes. Parsing reads the delimiters from MSH-1/MSH-2 and builds an
// index of segments and field separators once; a lookup goes straight to its segment and
// field through the index and scans only inside that field. Bytes are never re-encoded:
// UTF-8, Latin-1 or any other 8-bit text passes through unchanged. Paths are described in
// <hl7/model/path.hpp>, escapes in <hl7/model/escape.hpp>.
//
// Thread safety: a message is a value type. Concurrent reads of one message are safe;
// a write (set) must not run concurrently with any other access to the same message.
#pragma once

#include <hl7/error.hpp>
#include <hl7/model/delimiters.hpp>
#include <hl7/model/escape.hpp>
#include <hl7/model/path.hpp>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hl7 {

/// What a path names in a message: present (possibly empty) or absent. Holds a view into
/// the message, so it is valid while the message is alive and not modified.
class value {
public:
    /// An absent value.
    value() = default;

    /// True when the message has what the path names (even if it is empty); false when
    /// the segment, field, repetition, component or subcomponent does not exist.
    bool present() const noexcept { return present_; }

    /// The bytes exactly as on the wire, escapes included; empty when absent.
    std::string_view raw() const noexcept { return raw_; }

    /// The value with escape sequences resolved, as hl7::unescape does. A value that still contains structure (a field with repetitions, a component with
    /// subcomponents...) is returned as its wire text, since resolving escapes there would
    /// make delimiters ambiguous; so are MSH-1 and MSH-2.
    std::string decoded() const;

    /// True when the value is the HL7 null `""` (a field explicitly cleared by the sender).
    bool is_null() const noexcept { return present_ && raw_ == "\"\""; }

    /// True when present and the wire text equals `text`.
    friend bool operator==(const value& v, std::string_view text) noexcept
    {
        return v.present_ && v.raw_ == text;
    }

private:
    friend class message;
    value(std::string_view raw, const delimiters& d, bool literal) noexcept
        : raw_(raw), delims_(&d), present_(true), literal_(literal)
    {
    }

    std::string_view raw_;
    const delimiters* delims_ = nullptr;
    bool present_ = false;
    bool literal_ = false;
};

/// Lets `msg.get("MSA.1") == "AA"` be written directly: true when the lookup succeeded,
/// the value is present and its wire text equals `text`.
inline bool operator==(const outcome::result<value>& r, std::string_view text) noexcept
{
    return r.has_value() && r.value() == text;
}

/// What message::create puts in a new message's MSH segment.
struct header {
    std::string_view sending_application = {};   ///< MSH-3
    std::string_view sending_facility = {};      ///< MSH-4
    std::string_view receiving_application = {}; ///< MSH-5
    std::string_view receiving_facility = {};    ///< MSH-6
    std::string_view message_type = {};          ///< MSH-9.1, e.g. "ADT"
    std::string_view trigger_event = {};         ///< MSH-9.2, e.g. "A01"
    std::string_view message_structure = {};     ///< MSH-9.3, e.g. "ADT_A01"; empty leaves it out
    std::string_view processing_id = "P";   ///< MSH-11
    std::string_view version = "2.5.1";     ///< MSH-12
    hl7::delimiters delimiters{};           ///< MSH-1 and MSH-2
};

/// An HL7 v2 message (or an FHS/BHS batch), owning its bytes.
class message {
public:
    /// An empty message: no bytes, no segments; every path is absent in it.
    message() = default;

    /// Parses `bytes` (copied). Segments may end in CR, LF or CRLF; they are stored and
    /// written back ended by CR. Fails with errc::not_hl7 when the bytes do not start with
    /// `MSH`, `FHS` or `BHS`, and errc::invalid_encoding_characters when MSH-1/MSH-2 do not
    /// define usable delimiters (see hl7::errc).
    static outcome::result<message> parse(std::string_view bytes);
    /// As above, taking ownership of `bytes` instead of copying them.
    static outcome::result<message> parse(std::string&& bytes);
    /// As above, for a string literal (which would fit both overloads above equally well).
    static outcome::result<message> parse(const char* bytes) { return parse(std::string_view(bytes)); }

    /// A new message holding only an MSH segment filled from `h`: MSH-7 is the current
    /// local time in HL7 TS format (YYYYMMDDHHMMSS.SSS+ZZZZ) and MSH-10 a new
    /// make_control_id(). Values are escaped as set() does. Fails with
    /// errc::invalid_encoding_characters when `h.delimiters` are not usable.
    static outcome::result<message> create(const header& h);

    /// Looks a path up. Fails with errc::invalid_path when the path is malformed, names a
    /// segment id that is neither standard HL7, a Z-segment nor one this message carries
    /// (see <hl7/model/path.hpp>), or goes below MSH-1/MSH-2.
    /// A well-formed path to something the message lacks gives an absent value.
    /// An empty field, repetition or component has no parts: a path below it is absent.
    outcome::result<value> get(std::string_view path) const;
    outcome::result<value> get(const hl7::path& path) const;

    /// Counts: for a segment path (`OBX`), the segments with that id; for a field path
    /// (`PID.3`, `OBX[2].5`), the repetitions of that field (0 when absent or empty).
    /// Any other path fails with errc::invalid_path.
    outcome::result<std::size_t> count(std::string_view path) const;
    outcome::result<std::size_t> count(const hl7::path& path) const;

    /// Writes `text` at `path`, escaped as hl7::escape does (so that no value can change the
    /// message's structure or break its MLLP frame), creating whatever is missing on the way: segments (added after the last segment
    /// with the same id, or at the end), fields, repetitions, components, subcomponents.
    /// A field path replaces the whole field, all repetitions included; a segment path is
    /// not accepted. Fails with errc::invalid_path for a malformed path, a segment path,
    /// MSH-1/MSH-2 (the delimiters cannot be changed in place), or a path that would create
    /// more than 65,535 parts at one level (`PID.999999999` on a short PID). On failure the
    /// message is unchanged.
    outcome::result<void> set(std::string_view path, std::string_view text);
    outcome::result<void> set(const hl7::path& path, std::string_view text);

    /// Writes a composite value: `parts` are the pieces one level below `path`, each escaped
    /// as above and joined by the delimiter of that level: the components of a field or of a
    /// repetition, the subcomponents of a component. `set("MSH.9", {"ORU", "R01", "ORU_R01"})`
    /// writes `ORU^R01^ORU_R01`. A subcomponent path has no level below it: errc::invalid_path.
    /// Otherwise as set(path, text).
    outcome::result<void> set(std::string_view path, std::initializer_list<std::string_view> parts);
    outcome::result<void> set(const hl7::path& path, std::span<const std::string_view> parts);

    /// MSH-10, the message control id, as on the wire; empty when the message has none.
    std::string_view control_id() const noexcept;

    /// The message's bytes, segments ended by CR. For a parsed message that was not
    /// modified and whose segments ended in CR, these are exactly the parsed bytes.
    std::string_view str() const noexcept { return data_; }

    /// The delimiters in use.
    const hl7::delimiters& delimiters() const noexcept { return delims_; }

    /// The number of segments.
    std::size_t segment_count() const noexcept { return segments_.size(); }

private:
    struct segment_entry {
        std::uint32_t begin;     // offset of the segment id
        std::uint32_t end;       // offset of the terminator (or of the end of data)
        std::uint32_t first_sep; // index into seps_ of this segment's first field separator
        std::uint32_t sep_count; // field separators in this segment
        std::uint32_t id;        // the three id bytes, packed
        bool header;             // MSH, FHS or BHS: the first separator is field 1
    };

    // An allocator whose resize() leaves new elements uninitialised: the separator index is
    // sized before it is filled, and zeroing it first would cost as much as filling it.
    template <class T>
    struct uninitialised_allocator : std::allocator<T> {
        template <class U>
        struct rebind {
            using other = uninitialised_allocator<U>;
        };
        using std::allocator<T>::allocator;
        template <class U>
        void construct(U* p) noexcept
        {
            ::new (static_cast<void*>(p)) U;
        }
        template <class U, class... Args>
        void construct(U* p, Args&&... args)
        {
            ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
        }
    };

    void index();
    void add_segment(std::uint32_t begin, std::uint32_t end, std::uint32_t first_sep, std::uint32_t seps_end);
    const segment_entry* find_segment(const hl7::path& p) const noexcept;
    outcome::result<void> check_path(const hl7::path& p) const noexcept;
    outcome::result<void> write(const hl7::path& p, std::string_view escaped);

    std::string data_;
    hl7::delimiters delims_;
    std::vector<segment_entry> segments_;
    // Offsets of the field separators, segment after segment.
    std::vector<std::uint32_t, uninitialised_allocator<std::uint32_t>> seps_;
};

/// A new message control id (for MSH-10): at most 20 characters, unique within the process
/// (a counter) and unlikely to repeat across processes (a random per-process prefix).
/// Thread safety: safe to call concurrently.
std::string make_control_id();

/// The current local time in HL7 TS format, YYYYMMDDHHMMSS.SSS+ZZZZ (for MSH-7, EVN-2...).
/// Thread safety: safe to call concurrently.
std::string make_timestamp();

} // namespace hl7
