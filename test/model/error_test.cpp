#include <hl7/error.hpp>

#include <doctest/doctest.h>

#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>

#include <set>
#include <string>

TEST_CASE("library errors are in the hl7 category and have distinct messages")
{
    // The values run from 1 without gaps; the first one without a message of its own ends them.
    std::set<std::string> messages;
    int e = static_cast<int>(hl7::errc::not_hl7);
    for (;; ++e) {
        const boost::system::error_code ec = static_cast<hl7::errc>(e);
        CHECK(std::string(ec.category().name()) == "hl7");
        if (ec.message().starts_with("unknown hl7 error"))
            break;
        messages.insert(ec.message());
    }
    CHECK(messages.size() == static_cast<std::size_t>(e - 1));
    CHECK(e > static_cast<int>(hl7::errc::tls_handshake_failed));
}

TEST_CASE("only failures after the message was written are in doubt")
{
    using hl7::errc;
    for (const errc e : {errc::ack_timeout, errc::connection_lost, errc::ack_mismatch, errc::invalid_ack,
                         errc::frame_too_large})
        CHECK(hl7::in_doubt(e));
    for (const errc e : {errc::queue_full, errc::queue_timeout, errc::not_connected, errc::closed,
                         errc::missing_control_id, errc::message_too_large, errc::block_byte_in_message,
                         errc::hook_failed, errc::connect_timeout, errc::tls_untrusted_certificate})
        CHECK_FALSE(hl7::in_doubt(e));
    CHECK_FALSE(hl7::in_doubt(boost::system::error_code()));
    CHECK_FALSE(hl7::in_doubt(boost::asio::error::operation_aborted));
    CHECK_FALSE(hl7::in_doubt(hl7::ack_errc::application_error));
}

TEST_CASE("negative acknowledgements are in the hl7.ack category")
{
    const boost::system::error_code ae = hl7::ack_errc::application_error;
    const boost::system::error_code ar = hl7::ack_errc::application_reject;
    CHECK(std::string(ae.category().name()) == "hl7.ack");
    CHECK(ae.message() == "application error (AE/CE)");
    CHECK(ar.message() == "application reject (AR/CR)");
    CHECK(ae != ar);
}

TEST_CASE("error codes compare equal to their enumerators and not across categories")
{
    const boost::system::error_code ec = hl7::errc::ack_timeout;
    CHECK(ec == hl7::errc::ack_timeout);
    CHECK(ec != hl7::errc::connect_timeout);
    CHECK(boost::system::error_code(hl7::ack_errc::application_error) !=
          boost::system::error_code(hl7::errc::not_hl7));
    CHECK(boost::system::system_error(ec).what() == std::string("no acknowledgement within the ACK timeout [hl7:15]"));
}

TEST_CASE("an unknown value still has a message")
{
    const boost::system::error_code ec(999, hl7::error_category());
    CHECK(ec.message() == "unknown hl7 error 999");
}
