#include <hl7/model/ack.hpp>

#include "support/checks.hpp"

#include <doctest/doctest.h>

#include <boost/outcome/try.hpp>

using hl7::ack_code;
using hl7::message;
using hl7::test::cr;
using hl7::test::parsed;
using hl7::test::read_sample;

namespace {

message ack_of(const message& received, ack_code code, const hl7::ack_options& options = {})
{
    auto a = hl7::make_ack(received, code, options);
    REQUIRE(a.has_value());
    return std::move(a).value();
}

std::string raw(const message& m, std::string_view path)
{
    return std::string(m.get(path).value().raw());
}

// An original-mode message: MSH-15 and MSH-16 empty.
const std::string original_mode = cr("MSH|^~\\&|SENDAPP|SENDFAC^1.2.3^ISO|RECVAPP|RECVFAC|20240101120000||ADT^A04^ADT_A01|CTRL42|T|2.3\n"
                                     "PID|1||42\n");

} // namespace

TEST_CASE("an ACK swaps sender and receiver and answers the control id")
{
    const message m = parsed(original_mode);
    const message a = ack_of(m, ack_code::accept);
    CHECK(raw(a, "MSH.3") == "RECVAPP");
    CHECK(raw(a, "MSH.4") == "RECVFAC");
    CHECK(raw(a, "MSH.5") == "SENDAPP");
    CHECK(raw(a, "MSH.6") == "SENDFAC^1.2.3^ISO");
    CHECK(raw(a, "MSH.6.2") == "1.2.3");
    CHECK(raw(a, "MSH.9") == "ACK^A04^ACK");
    CHECK(raw(a, "MSH.11") == "T");
    CHECK(raw(a, "MSH.12") == "2.3");
    CHECK(raw(a, "MSA.1") == "AA");
    CHECK(raw(a, "MSA.2") == "CTRL42");
    CHECK(a.get("MSA.3").value().present() == false);
    CHECK(a.count("ERR").value() == 0);
    CHECK(raw(a, "MSH.10") != "CTRL42");
    CHECK(!raw(a, "MSH.10").empty());
    CHECK(raw(a, "MSH.7").size() == 23);
    CHECK(a.segment_count() == 2);
}

TEST_CASE("original mode acknowledges with AA, AE and AR")
{
    const message m = parsed(original_mode);
    CHECK(ack_of(m, ack_code::accept).get("MSA.1") == "AA");
    CHECK(ack_of(m, ack_code::error).get("MSA.1") == "AE");
    CHECK(ack_of(m, ack_code::reject).get("MSA.1") == "AR");
}

TEST_CASE("enhanced mode, asked for by MSH-15 or MSH-16, acknowledges with CA, CE and CR")
{
    const message adt = parsed(read_sample("adt_a01.hl7")); // MSH-15 AL, MSH-16 NE
    CHECK(ack_of(adt, ack_code::accept).get("MSA.1") == "CA");
    CHECK(ack_of(adt, ack_code::error).get("MSA.1") == "CE");
    CHECK(ack_of(adt, ack_code::reject).get("MSA.1") == "CR");
    const message only16 = parsed(cr("MSH|^~\\&|A|B|C|D|||ORU^R01|X1|P|2.5.1||||AL\n"));
    CHECK(ack_of(only16, ack_code::accept).get("MSA.1") == "CA");
    const message oru = parsed(read_sample("oru_r01.hl7"));
    const message a = ack_of(oru, ack_code::accept);
    CHECK(a.get("MSA.2") == "MSG00002");
    CHECK(a.get("MSH.9") == "ACK^R01^ACK");
    CHECK(a.get("MSH.5") == "LABSYS");
    CHECK(a.get("MSH.6") == "SMHC^1.2.840.114350^ISO");
}

TEST_CASE("an ACK carries MSA-3 text and an ERR segment when asked")
{
    const message m = parsed(original_mode);
    const message a = ack_of(m, ack_code::error, {.text = "bad PID|3", .error_code = 101, .error_text = "PID-3 missing"});
    CHECK(a.get("MSA.1") == "AE");
    CHECK(a.get("MSA.3").value().decoded() == "bad PID|3");
    CHECK(a.get("ERR.3") == "101^Required field missing^HL70357");
    CHECK(a.get("ERR.4") == "E");
    CHECK(a.get("ERR.8") == "PID-3 missing");
    const message b = ack_of(m, ack_code::reject, {.error_text = "no"});
    CHECK(b.get("ERR.3.1") == "207");
    const message c = ack_of(m, ack_code::accept, {.text = "ok", .error_code = 207});
    CHECK(c.count("ERR").value() == 0);
    CHECK(c.get("MSA.3") == "ok");
}

TEST_CASE("an ACK keeps the received message's delimiters")
{
    const message m = parsed(cr("MSH#*@!%#APP#FAC#ME#HERE#20240101##ORU*R01#C7#P#2.5.1\n"));
    const message a = ack_of(m, ack_code::accept, {.text = "a#b"});
    CHECK(a.delimiters() == m.delimiters());
    CHECK(a.get("MSH.9") == "ACK*R01*ACK");
    CHECK(a.get("MSA.2") == "C7");
    CHECK(a.get("MSA.3") == "a!F!b");
}

TEST_CASE("a batch without MSH cannot be acknowledged")
{
    const message m = parsed(cr("FHS|^~\\&|A\nFTS|0\n"));
    auto a = hl7::make_ack(m, ack_code::accept);
    REQUIRE(a.has_error());
    CHECK(a.error() == hl7::errc::not_hl7);
}

TEST_CASE("in a batch, an MSH segment not followed at once by the field separator is read as get() reads it")
{
    // Found by fuzzing: the header's fields count from its first field separator.
    const message m = parsed(cr("FHS|^~\\&|A\nMSH01|^~\\&|APP|FAC|ME|HERE|20240101||ADT^A01|C9|P|2.5.1\nFTS|1\n"));
    REQUIRE(m.get("MSH.10") == "C9");
    const message a = ack_of(m, ack_code::accept);
    CHECK(a.get("MSA.2") == "C9");
    CHECK(a.get("MSH.3") == "ME");
    CHECK(a.get("MSH.9") == "ACK^A01^ACK");
}

TEST_CASE("accepted succeeds for AA and CA")
{
    CHECK(hl7::accepted(parsed(read_sample("ack_adt_a01.hl7"))));
    CHECK(hl7::accepted(ack_of(parsed(read_sample("adt_a01.hl7")), ack_code::accept)));
}

TEST_CASE("accepted turns AE and AR into named errors carrying MSA-3 and ERR texts")
{
    const message m = parsed(original_mode);
    auto e = hl7::accepted(ack_of(m, ack_code::error, {.text = "cannot file", .error_code = 206}));
    REQUIRE(e.has_error());
    CHECK(e.error().code == hl7::ack_errc::application_error);
    CHECK(e.error().text == "cannot file; Application record locked");
    auto r = hl7::accepted(ack_of(m, ack_code::reject, {.error_text = "unknown patient"}));
    REQUIRE(r.has_error());
    CHECK(r.error().code == hl7::ack_errc::application_reject);
    CHECK(r.error().text == "unknown patient");
    auto ce = hl7::accepted(parsed(cr("MSH|^~\\&\nMSA|CE|X\nERR||||E||||first\nERR|||204^Unknown key^HL70357|E\n")));
    REQUIRE(ce.has_error());
    CHECK(ce.error().code == hl7::ack_errc::application_error);
    CHECK(ce.error().text == "first; Unknown key");
    auto cr_ = hl7::accepted(parsed(cr("MSH|^~\\&\nMSA|CR|X\n")));
    REQUIRE(cr_.has_error());
    CHECK(cr_.error().code == hl7::ack_errc::application_reject);
    CHECK(cr_.error().text.empty());
}

TEST_CASE("accepted reports a reply without a valid MSA-1 as a garbled ACK")
{
    for (const char* text : {"MSH|^~\\&\rPID|1\r", "MSH|^~\\&\rMSA|XX|1\r", "MSH|^~\\&\rMSA||1\r", "MSH|^~\\&\rMSA\r"}) {
        auto r = hl7::accepted(parsed(text));
        REQUIRE(r.has_error());
        CHECK(r.error().code == hl7::errc::garbled_ack);
    }
}

namespace {

hl7::outcome::result<int> code_only(const message& ack)
{
    BOOST_OUTCOME_TRY(hl7::accepted(ack));
    return 1;
}

} // namespace

TEST_CASE("a nack passes through BOOST_OUTCOME_TRY into an error_code based result")
{
    const message m = parsed(original_mode);
    auto plain = code_only(ack_of(m, ack_code::reject));
    REQUIRE(plain.has_error());
    CHECK(plain.error() == hl7::ack_errc::application_reject);
    CHECK(code_only(ack_of(m, ack_code::accept)).value() == 1);
}
