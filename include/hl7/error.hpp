// Error codes of hl7-client.
//
// Every expected failure in the library is reported as a boost::system::error_code
// in one of two categories:
//   - "hl7"     (hl7::errc): what went wrong on this side or on the wire: a message that
//                does not parse, a bad path, a frame too large, a timeout, a closed connection.
//   - "hl7.ack" (hl7::ack_errc): what the peer said in a negative acknowledgement.
// Errors from Asio and the operating system (connection refused, reset, ...) pass through
// unchanged in their own categories.
#pragma once

// Before C++20 every header would fail in many places; this stops the compiler at once with one
// message that says why (an #error would let it go on to report the rest).
#if __cplusplus < 202002L
#include <hl7-client needs C++20: compile with -std=c++20 (in Meson, cpp_std=c++20)>
#endif

#include <boost/outcome/result.hpp>
#include <boost/system/error_code.hpp>

#include <type_traits>

namespace hl7 {

/// Boost.Outcome, as the library uses it: `hl7::outcome::result<T>` holds a T or an error_code.
namespace outcome = BOOST_OUTCOME_V2_NAMESPACE;

/// Errors of the library itself (category name "hl7").
enum class errc {
    // --- message model -------------------------------------------------------------------
    /// The bytes do not start with an `MSH`, `FHS` or `BHS` header segment.
    not_hl7 = 1,
    /// MSH-1/MSH-2 do not define usable delimiters: fewer than four encoding characters,
    /// more than five, a repeated delimiter, or a delimiter that is a letter, digit, CR or LF.
    invalid_encoding_characters,
    /// A path that is malformed (`PID.0`, `PID..1`, `pid.5`, `PID.5.`), names an unknown
    /// segment, or names something that cannot be written (`MSH.1`, `MSH.2` in `set`).
    invalid_path,

    // --- MLLP framing ----------------------------------------------------------------------
    /// A frame grew past the configured maximum size; it was discarded.
    frame_too_large,
    /// A start block (0x0B) arrived inside an unfinished frame; the unfinished frame was
    /// discarded and decoding resumed at the new start block.
    invalid_frame,
    /// A message to be framed contains an MLLP block byte (0x0B or 0x1C), which would cut its
    /// frame short at the peer; it is not sent. message::set escapes both bytes, so this comes
    /// from parsed text or from a send hook's output.
    block_byte_in_message,
    /// The caller's buffer is too small for the encoded frame.
    buffer_too_small,

    // --- client --------------------------------------------------------------------------
    /// The host is neither an IPv4 address, an IPv6 address nor a well-formed DNS name.
    invalid_host,
    /// The port is outside 1-65535.
    invalid_port,
    /// The host name did not resolve to any address.
    resolve_failed,
    /// No TCP connection (and handshake) was established within the connect timeout.
    connect_timeout,
    /// The connection stopped reconnecting after the maximum number of consecutive failed
    /// attempts; it must be started again before messages can be sent.
    not_connected,
    /// The send queue is full.
    queue_full,
    /// The message waited in the queue, for a connection or its turn, longer than allowed.
    queue_timeout,
    /// No acknowledgement arrived within the ACK timeout. The message may or may not have
    /// been processed by the peer; the library never resends it by itself.
    ack_timeout,
    /// A reply arrived whose MSA-2 is not the MSH-10 of the message sent.
    ack_mismatch,
    /// A reply arrived that is not an acknowledgement: it does not parse, has no MSA
    /// segment, its MSA-1 is not one of AA, AE, AR, CA, CE, CR, or its MSA-2 is empty.
    invalid_ack,
    /// The received message's MSH-15 and MSH-16 ask for no acknowledgement of this outcome
    /// (see hl7::ack_code_for), so none was built.
    no_ack_requested,
    /// The link dropped after the message was written and before its acknowledgement
    /// arrived. As with ack_timeout, the peer may have processed it.
    connection_lost,
    /// The message has no MSH-10, so its acknowledgement could not be matched; not sent.
    missing_control_id,
    /// The message is larger than connection_options::max_message; not sent.
    message_too_large,
    /// A send hook or a receive hook threw: the message it was transforming is not sent, or
    /// the reply it was transforming cannot be read.
    hook_failed,
    /// The connection or client was closed.
    closed,

    // --- TLS -------------------------------------------------------------------------------
    /// The TLS options could not be applied: a CA, certificate or key file that is missing or
    /// unreadable, a key that does not match its certificate, an unknown cipher list.
    tls_setup_failed,
    /// The TLS handshake did not finish within the handshake timeout.
    tls_handshake_timeout,
    /// The peer's certificate does not chain to a trusted CA (or is self-signed).
    tls_untrusted_certificate,
    /// The server's certificate is not valid for the expected name or address (RFC 6125).
    tls_name_mismatch,
    /// The peer's certificate has expired (or is not valid yet).
    tls_certificate_expired,
    /// The server requires a client certificate and none was presented.
    tls_no_client_certificate,
    /// The peer does not speak TLS (it answered in plaintext).
    tls_plaintext_peer,
    /// The TLS handshake failed for another reason (no common protocol or cipher, a bad
    /// message...).
    tls_handshake_failed,
    /// The client's certificate is trusted but names none of the clients the server allows
    /// (tls_server_options::allowed_client_names); the connection is closed.
    tls_client_not_allowed,

    // --- server ----------------------------------------------------------------------------
    /// A connection came from an address outside server_options::allowed_sources; refused.
    source_not_allowed,
    /// The server already holds server_options::max_connections connections; refused.
    too_many_connections,
    /// The source address already holds server_options::max_per_source connections; refused.
    too_many_from_source,
    /// No message began within server_options::idle_timeout; the connection is closed.
    idle_timeout,
    /// A frame did not end within server_options::frame_timeout of its start; the connection
    /// is closed.
    frame_timeout,
    /// A reply was not written within server_options::write_timeout (the peer does not read);
    /// the connection is closed.
    write_timeout,
    /// The server's budget of buffered bytes (server_options::max_buffered) is spent; the
    /// connection that needed more is closed.
    buffer_limit,
    /// A message has more segments or fields than server_options::max_segments or max_fields
    /// allow; it is not parsed, and answered with AR when its header can be read.
    message_too_complex,
    /// server_options::max_bad_frames frames in a row were bad (oversized, cut short, not
    /// HL7, too complex); the connection is closed.
    too_many_bad_frames,
    /// The server's handler threw an exception.
    handler_failed,
    /// The server ended a connection because of an unexpected exception in its own work (out
    /// of memory, say).
    session_failed,
    /// An allowed source network is not an IPv4 or IPv6 network in CIDR notation
    /// ("10.0.0.0/8", "2001:db8::/32", or a single address).
    invalid_network,
};

/// Negative acknowledgements from the peer (category name "hl7.ack").
enum class ack_errc {
    /// MSA-1 was AE or CE: the peer could not process the message.
    application_error = 1,
    /// MSA-1 was AR or CR: the peer rejected the message.
    application_reject,
};

/// The "hl7" category. Thread-safe; a single instance.
const boost::system::error_category& error_category() noexcept;
/// The "hl7.ack" category. Thread-safe; a single instance.
const boost::system::error_category& ack_error_category() noexcept;

/// Whether a send that failed with `ec` may still have been processed by the peer: its message
/// was written, wholly or in part, and no acknowledgement matched it (errc::ack_timeout,
/// connection_lost, ack_mismatch, invalid_ack, frame_too_large). Such a message is in the
/// ambiguous window: sending it again may deliver it twice. Every other failure, cancellation
/// of a send that had not been written included, happens before the message reaches the wire.
/// (A message abandoned by terminal cancellation after it was written also completes with
/// operation_aborted; the caller that abandons it takes that doubt upon itself.)
bool in_doubt(const boost::system::error_code& ec) noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), error_category()};
}

inline boost::system::error_code make_error_code(ack_errc e) noexcept
{
    return {static_cast<int>(e), ack_error_category()};
}

} // namespace hl7

template <>
struct boost::system::is_error_code_enum<hl7::errc> : std::true_type {};
template <>
struct boost::system::is_error_code_enum<hl7::ack_errc> : std::true_type {};
