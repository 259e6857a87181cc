// What the model's files share: reading the delimiters and line ends of a message, the
// path grammar, and appending escaped values and timestamps onto a string (for code that
// builds a message in one piece, as make_ack does, without a temporary string per value).
#pragma once

#include <hl7/model/delimiters.hpp>
#include <hl7/model/path.hpp>

#include <string>
#include <string_view>

namespace hl7::detail {

inline bool is_upper(char c) noexcept { return c >= 'A' && c <= 'Z'; }
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

/// True when `d` can delimit a message: distinct characters, none a letter, digit, CR, LF or NUL.
bool usable_delimiters(const delimiters& d) noexcept;

/// The delimiters that MSH-1/MSH-2 (or FHS/BHS) at the start of `bytes` define: errc::not_hl7
/// or errc::invalid_encoding_characters.
outcome::result<delimiters> read_delimiters(std::string_view bytes) noexcept;

/// Turns LF and CRLF segment ends into CR, in place.
void normalise_line_ends(std::string& s);

/// The path grammar (see path::parse), without building a result: lookups by text call it
/// directly.
bool read_path(std::string_view text, path& r) noexcept;

/// Appends `text` escaped as hl7::escape does.
void append_escaped(std::string& out, std::string_view text, const delimiters& d);

/// Appends the current local time as hl7::make_timestamp does.
void append_timestamp(std::string& out);

} // namespace hl7::detail
