#include <hl7/error.hpp>

#include <doctest/doctest.h>

#include <boost/system/system_error.hpp>

#include <set>
#include <string>

TEST_CASE("library errors are in the hl7 category and have distinct messages")
{
    std::set<std::string> messages;
    for (int e = static_cast<int>(hl7::errc::not_hl7); e <= static_cast<int>(hl7::errc::tls_handshake_failed); ++e) {
        const boost::system::error_code ec = static_cast<hl7::errc>(e);
        CHECK(std::string(ec.category().name()) == "hl7");
        CHECK(ec.message().find("unknown") == std::string::npos);
        messages.insert(ec.message());
    }
    CHECK(messages.size() == static_cast<std::size_t>(hl7::errc::tls_handshake_failed));
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
