// Writing HL7 text onto the end of a string, for code that builds a message in one piece
// (make_ack) without a temporary string per value.
#pragma once

#include <hl7/model/message.hpp>

#include <string>
#include <string_view>

namespace hl7::detail {

/// Appends `text` escaped as hl7::escape does.
void append_escaped(std::string& out, std::string_view text, const delimiters& d);

/// Appends the current local time as hl7::make_timestamp does.
void append_timestamp(std::string& out);

} // namespace hl7::detail
