// Acknowledgements: generating them (the receiving side) and reading them (the sending side).
#pragma once

#include <hl7/model/message.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace hl7 {

/// The outcome an acknowledgement reports.
enum class ack_code {
    accept, ///< AA, or CA in enhanced mode
    error,  ///< AE, or CE in enhanced mode
    reject, ///< AR, or CR in enhanced mode
};

/// Optional content of a generated acknowledgement.
struct ack_options {
    /// MSA-3, a text message for the sender. Escaped as message::set does.
    std::string_view text = {};
    /// When not 0, an ERR segment is added with ERR-3 = `<code>^<text>^HL70357` (HL7 table
    /// 0357, e.g. 207 "Application internal error") and ERR-4 = `E`.
    std::uint16_t error_code = 0;
    /// ERR-8, the user message of the ERR segment; when set without error_code, the ERR
    /// segment uses code 207.
    std::string_view error_text = {};
};

/// Builds the acknowledgement of `received`: MSH with the same delimiters, MSH-3/4 and
/// MSH-5/6 swapped, MSH-7 now, MSH-9 `ACK^<trigger>^ACK`, a new MSH-10, MSH-11 and MSH-12
/// copied; MSA-1 the code (AA/AE/AR, or CA/CE/CR when MSH-15 or MSH-16 is valued, which
/// asks for enhanced acknowledgement mode), MSA-2 the received MSH-10, MSA-3 and ERR as
/// `options` say. The sender's fields are copied as they are on the wire (components kept).
/// Fails with errc::not_hl7 when `received` has no MSH segment (an FHS/BHS batch
/// without messages). Thread safety: pure function.
outcome::result<message> make_ack(const message& received, ack_code code, const ack_options& options = {});

/// A negative acknowledgement as an error: the code (ack_errc::application_error or
/// ack_errc::application_reject, or errc::garbled_ack) and the peer's explanation, MSA-3
/// and the ERR segments' texts (ERR-8, else ERR-3.2) joined by "; ".
struct nack {
    boost::system::error_code code;
    std::string text;
};

/// Lets BOOST_OUTCOME_TRY pass a nack on from a function that returns an error_code based
/// result (the code is kept, the text dropped), and makes `.value()` on a failed
/// result<T, nack> throw boost::system::system_error with the code.
inline boost::system::error_code make_error_code(const nack& n) noexcept { return n.code; }

/// Reads an acknowledgement's MSA-1. The one-line way to treat AE/AR (CE/CR) as errors:
///
///     auto ok = hl7::accepted(ack);   // outcome::result<void, hl7::nack>
///     if (!ok) log(ok.error().code.message(), ok.error().text);
///
/// Success for AA and CA; ack_errc::application_error for AE and CE;
/// ack_errc::application_reject for AR and CR; errc::garbled_ack when there is no MSA
/// segment or MSA-1 is anything else. Thread safety: pure function.
outcome::result<void, nack> accepted(const message& ack);

} // namespace hl7
