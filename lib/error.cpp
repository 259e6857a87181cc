#include <hl7/error.hpp>

#include <string>

namespace hl7 {
namespace {

class hl7_category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "hl7"; }

    std::string message(int ev) const override
    {
        switch (static_cast<errc>(ev)) {
        case errc::not_hl7: return "not an HL7 message: it does not start with MSH, FHS or BHS";
        case errc::invalid_encoding_characters: return "MSH-1/MSH-2 do not define usable delimiters";
        case errc::invalid_path: return "invalid path";
        case errc::frame_too_large: return "MLLP frame larger than the maximum frame size";
        case errc::invalid_frame: return "invalid MLLP frame: start block inside an unfinished frame";
        case errc::block_byte_in_message:
            return "message contains an MLLP block byte (0x0B or 0x1C) and cannot be framed";
        case errc::buffer_too_small: return "buffer too small";
        case errc::invalid_host: return "invalid host: not an IPv4 address, an IPv6 address or a DNS name";
        case errc::invalid_port: return "invalid port: not in 1-65535";
        case errc::resolve_failed: return "host name did not resolve";
        case errc::connect_timeout: return "connect timed out";
        case errc::not_connected: return "not connected: gave up after the maximum number of connection attempts";
        case errc::queue_full: return "send queue full";
        case errc::queue_timeout: return "message waited too long in the send queue";
        case errc::ack_timeout: return "no acknowledgement within the ACK timeout";
        case errc::ack_mismatch: return "acknowledgement does not match the message sent (MSA-2 != MSH-10)";
        case errc::invalid_ack: return "reply is not a valid acknowledgement";
        case errc::no_ack_requested: return "the message asks for no acknowledgement (MSH-15/MSH-16)";
        case errc::connection_lost: return "connection lost while waiting for the acknowledgement";
        case errc::missing_control_id: return "message has no MSH-10 control id";
        case errc::message_too_large: return "message larger than the connection's maximum message size";
        case errc::hook_failed: return "a send or receive hook threw";
        case errc::closed: return "closed";
        case errc::tls_setup_failed: return "TLS setup failed: a CA, certificate or key could not be loaded";
        case errc::tls_handshake_timeout: return "TLS handshake timed out";
        case errc::tls_untrusted_certificate: return "TLS: peer certificate not trusted";
        case errc::tls_name_mismatch: return "TLS: server certificate does not match the expected name";
        case errc::tls_certificate_expired: return "TLS: peer certificate expired or not yet valid";
        case errc::tls_no_client_certificate: return "TLS: the server requires a client certificate";
        case errc::tls_plaintext_peer: return "TLS: peer does not speak TLS";
        case errc::tls_handshake_failed: return "TLS handshake failed";
        case errc::tls_client_not_allowed: return "TLS: the client certificate names no allowed client";
        case errc::source_not_allowed: return "connection refused: source address not allowed";
        case errc::too_many_connections: return "connection refused: the server holds its maximum of connections";
        case errc::too_many_from_source:
            return "connection refused: the source address holds its maximum of connections";
        case errc::idle_timeout: return "no message within the idle timeout";
        case errc::frame_timeout: return "frame not finished within the frame timeout";
        case errc::write_timeout: return "reply not written within the write timeout";
        case errc::buffer_limit: return "the server's budget of buffered bytes is spent";
        case errc::message_too_complex: return "message has more segments or fields than allowed";
        case errc::too_many_bad_frames: return "too many bad frames in a row";
        case errc::handler_failed: return "the message handler threw an exception";
        case errc::session_failed: return "connection ended by an unexpected internal error";
        case errc::invalid_network: return "invalid network: not an IP address or CIDR network";
        }
        return "unknown hl7 error " + std::to_string(ev);
    }
};

class ack_category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "hl7.ack"; }

    std::string message(int ev) const override
    {
        switch (static_cast<ack_errc>(ev)) {
        case ack_errc::application_error: return "application error (AE/CE)";
        case ack_errc::application_reject: return "application reject (AR/CR)";
        }
        return "unknown hl7.ack error " + std::to_string(ev);
    }
};

} // namespace

bool in_doubt(const boost::system::error_code& ec) noexcept
{
    return ec == errc::ack_timeout || ec == errc::connection_lost || ec == errc::ack_mismatch ||
           ec == errc::invalid_ack || ec == errc::frame_too_large;
}

const boost::system::error_category& error_category() noexcept
{
    static const hl7_category instance;
    return instance;
}

const boost::system::error_category& ack_error_category() noexcept
{
    static const ack_category instance;
    return instance;
}

} // namespace hl7
