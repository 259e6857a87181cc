// Paths into a message: `SEG[n].F[r].C.S`, one-based.
//
//   MSA.1        first field of the first MSA segment
//   PID.5.1      first component of PID-5 (repetition 1)
//   PID.5.1.1    first subcomponent of that component
//   PID.3        the whole of PID-3, all repetitions
//   PID.3[2].1   first component of the second repetition of PID-3
//   OBX[2].5     fifth field of the second OBX segment
//   OBX[2]       the whole second OBX segment
//   MSH.1        the field separator itself;  MSH.2  the encoding characters
// A path that goes below the field level takes repetition 1 unless `[r]` says otherwise.
//
// Segment ids. A path's segment id is an uppercase letter followed by two uppercase letters
// or digits (path::parse checks this). A lookup or an edit (message::get, count, set) also
// accepts the id only when it is a standard HL7 segment (versions 2.1 to 2.8.2), a Z-segment,
// or a segment the message itself carries; any other id (`PDI.5`, a typo) is
// errc::invalid_path. The hl7 tool applies the same rule, through the same calls.
#pragma once

#include <hl7/error.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace hl7 {

/// A parsed path (see the top of this header for the syntax). Parse one from text with
/// path::parse, or keep a parsed path and change its members, e.g. to walk OBX segments:
///
///     auto p = hl7::path::parse("OBX.5").value();
///     for (p.occurrence = 1; p.occurrence <= n; ++p.occurrence) use(msg.get(p));
///
/// Thread safety: a plain value.
struct path {
    /// The segment identifier, e.g. {'P','I','D'}.
    std::array<char, 3> segment{};
    /// Which segment with that identifier, from 1 (`OBX[2]`).
    std::uint32_t occurrence = 1;
    /// The field, from 1; 0 names the whole segment.
    std::uint32_t field = 0;
    /// The repetition, from 1; 0 names the whole field with all its repetitions, and is
    /// only valid when component is 0.
    std::uint32_t repetition = 0;
    /// The component, from 1; 0 names the whole repetition.
    std::uint32_t component = 0;
    /// The subcomponent, from 1; 0 names the whole component.
    std::uint32_t subcomponent = 0;

    /// Parses `SEG[n].F[r].C.S`. A missing `[r]` below the field level means repetition 1.
    /// Fails with errc::invalid_path when the text is malformed: a segment id that is not an
    /// uppercase letter followed by two uppercase letters or digits, an index that is zero,
    /// negative, empty or not a number, an empty part, a trailing dot, more than four parts,
    /// or `[r]` anywhere but on the segment and the field. Whether the segment id is a
    /// known one is checked at lookup (see the top of this header), not here.
    static outcome::result<path> parse(std::string_view text) noexcept;

    /// The canonical text of the path, e.g. "PID.3[2].1"; `[1]` is left out.
    std::string to_string() const;

    friend bool operator==(const path&, const path&) = default;
};

} // namespace hl7
