// Acknowledgements: what a receiver answers (make_ack) and what a sender reads (hl7::ack).
//
// Which acknowledgement a message asks for (HL7 v2.5.1 section 2.9, table 0155):
//   - MSH-15 (accept acknowledgement type) and MSH-16 (application acknowledgement type) both
//     empty: original mode, answered AA, AE or AR.
//   - Otherwise enhanced mode. Each field says when its kind of acknowledgement is wanted:
//     AL always, NE never, ER on error or reject only, SU on success only; an empty field
//     asks for none of its kind, and any other value is read as AL, so that a sender that
//     wrote something unexpected still gets an answer. One reply is sent per message: the
//     accept acknowledgement (CA, CE, CR) when MSH-15 asks for it, else the application
//     acknowledgement (AA, AE, AR) when MSH-16 asks for it, else none.
//   - An acknowledgement (MSH-9.1 `ACK`) is never acknowledged: a receiver that answers ACKs
//     loops with any peer that does the same.
#pragma once

#include <hl7/model/message.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7 {

/// MSA-1, the acknowledgement code, spelled as on the wire.
enum class ack_code {
    AA, ///< application accept (original mode, or the application acknowledgement)
    AE, ///< application error
    AR, ///< application reject
    CA, ///< commit accept (the accept acknowledgement of enhanced mode)
    CE, ///< commit error
    CR, ///< commit reject
};

/// "AA", "AE", "AR", "CA", "CE" or "CR".
std::string_view to_string(ack_code code) noexcept;

/// The code spelled by `text` (exactly, upper case), or nullopt.
std::optional<ack_code> parse_ack_code(std::string_view text) noexcept;

/// What a receiver concludes about a message, whichever acknowledgement carries it.
enum class verdict {
    accept, ///< AA or CA
    error,  ///< AE or CE: the receiver could not process the message
    reject, ///< AR or CR: the receiver refused the message
};

/// "accept", "error" or "reject".
std::string_view to_string(verdict v) noexcept;

/// The verdict a code carries.
verdict verdict_of(ack_code code) noexcept;

/// The code of the one acknowledgement `received` asks for when its verdict is `v`, by the
/// rules at the top of this header; nullopt when it asks for none (enhanced mode with NE, or
/// ER on success, or SU on failure), or when `received` is itself an acknowledgement.
/// Thread safety: pure function.
std::optional<ack_code> ack_code_for(const message& received, verdict v);

/// Optional content of a generated acknowledgement.
struct ack_options {
    /// MSA-3, a text message for the sender. Escaped as message::set does.
    std::string_view text = {};
    /// When not 0, an ERR segment is added with ERR-3 = `<code>^<text>^HL70357` (HL7 table
    /// 0357, e.g. 207 "Application internal error") and ERR-4 = `E`. Only for an error or a
    /// reject.
    std::uint16_t error_code = 0;
    /// ERR-8, the user message of the ERR segment; when set without error_code, the ERR
    /// segment uses code 207.
    std::string_view error_text = {};
};

/// Builds the acknowledgement of `received` for verdict `v`: MSH with the same delimiters,
/// MSH-3/4 and MSH-5/6 swapped, MSH-7 now, MSH-9 `ACK^<trigger>^ACK`, a new MSH-10, MSH-11
/// and MSH-12 copied; MSA-1 the code ack_code_for gives, MSA-2 the received MSH-10, MSA-3
/// and ERR as `options` say. The sender's fields are copied as they are on the wire
/// (components kept). Fails with errc::not_hl7 when `received` has no MSH segment (an
/// FHS/BHS batch without messages), errc::no_ack_requested when ack_code_for gives none.
/// Thread safety: pure function.
outcome::result<message> make_ack(const message& received, verdict v, const ack_options& options = {});

/// One ERR segment of an acknowledgement, as on the wire (escapes resolved).
struct ack_error {
    std::string code;         ///< ERR-3.1, e.g. "207" (HL7 table 0357)
    std::string code_text;    ///< ERR-3.2, e.g. "Application internal error"
    std::string severity;     ///< ERR-4: E (error), W (warning), I (information)
    std::string location;     ///< ERR-2 as on the wire, e.g. `MSH^1^9`
    std::string user_message; ///< ERR-8
};

/// A received acknowledgement, read once so that nobody compares MSA-1 strings again.
///
/// A send completes with one (see connection::async_send). A default-constructed ack (what
/// a failed send completes with beside its error) holds an empty message, is not accepted()
/// and its error() is errc::invalid_ack.
///
/// Thread safety: a value type; concurrent reads are safe.
class ack {
public:
    ack() = default;

    /// Reads `m` as an acknowledgement. Fails with errc::invalid_ack when it has no MSA
    /// segment, its MSA-1 is not one of the six codes, or its MSA-2 is empty.
    /// `round_trip` is what round_trip() will say (the connection sets it).
    static outcome::result<ack> read(hl7::message m, std::chrono::microseconds round_trip = {});

    /// The acknowledgement message itself.
    const hl7::message& message() const noexcept { return message_; }
    /// MSA-1.
    ack_code code() const noexcept { return code_; }
    /// What MSA-1 says of the message.
    hl7::verdict verdict() const noexcept { return verdict_of(code_); }
    /// True for AA and CA.
    bool accepted() const noexcept { return valid_ && verdict() == verdict::accept; }
    /// MSA-2: the MSH-10 of the message acknowledged.
    std::string_view control_id() const noexcept;
    /// MSA-3, the text message, escapes resolved; empty when absent.
    std::string text() const;
    /// The ERR segments, in order.
    std::vector<ack_error> errors() const;
    /// What a log line wants: MSA-3 and each ERR segment's ERR-8 (else ERR-3.2), joined by
    /// "; ". Empty when the peer said nothing.
    std::string explanation() const;
    /// The verdict as an error: none for AA and CA, ack_errc::application_error for AE and
    /// CE, ack_errc::application_reject for AR and CR; errc::invalid_ack for a
    /// default-constructed ack.
    boost::system::error_code error() const noexcept;
    /// From the start of the message's write to the acknowledgement's arrival, as the
    /// connection measured it; zero for an ack read by hand.
    std::chrono::microseconds round_trip() const noexcept { return round_trip_; }

private:
    hl7::message message_;
    ack_code code_ = ack_code::AR;
    bool valid_ = false;
    std::chrono::microseconds round_trip_{};
};

} // namespace hl7
