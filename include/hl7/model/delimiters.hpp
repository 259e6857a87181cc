// The delimiters of an HL7 v2 message: the field separator (MSH-1) and the encoding
// characters (MSH-2).
#pragma once

namespace hl7 {

/// The delimiters of a message: MSH-1 and the characters of MSH-2.
/// Thread safety: a plain value.
struct delimiters {
    char field = '|';
    char component = '^';
    char repetition = '~';
    char escape = '\\';
    char subcomponent = '&';
    /// The optional fifth encoding character (HL7 v2.7 and later); '\0' when absent.
    char truncation = '\0';

    friend bool operator==(const delimiters&, const delimiters&) = default;
};

} // namespace hl7
