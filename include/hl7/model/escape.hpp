// HL7 escape sequences: turning text into a value that cannot break a message's structure,
// and back.
#pragma once

#include <hl7/model/delimiters.hpp>

#include <string>
#include <string_view>

namespace hl7 {

/// Escapes `text` for use as a value in a message with delimiters `d`: each delimiter, the
/// escape character and the truncation character become `\F\ \S\ \R\ \T\ \E\ \P\`; CR and
/// LF (which would end a segment) become `\X0D\` and `\X0A\`, and the MLLP block bytes 0x0B
/// and 0x1C (which would cut the message's frame short) become `\X0B\` and `\X1C\`.
/// Thread safety: pure function.
std::string escape(std::string_view text, const delimiters& d = {});

/// Resolves the escapes of a leaf value: `\F\ \S\ \T\ \R\ \E\` (and `\P\` when a truncation
/// character is defined) become the delimiters they name and `\Xhh...\` the bytes it spells;
/// formatting and character-set escapes (`\.br\`, `\H\`, `\N\`, `\Cxxyy\`, `\Mxxyyzz\`,
/// `\Zxx\`) and malformed escapes are kept as they are. Thread safety: pure function.
std::string unescape(std::string_view text, const delimiters& d = {});

} // namespace hl7
