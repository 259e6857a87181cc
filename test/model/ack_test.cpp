#include <hl7/model/ack.hpp>

#include "support/checks.hpp"

#include <doctest/doctest.h>

#include <boost/outcome/try.hpp>

using hl7::ack_code;
using hl7::message;
using hl7::verdict;
using hl7::test::cr;
using hl7::test::parsed;
using hl7::test::read_sample;

namespace {

message ack_of(const message& received, verdict v, const hl7::ack_options& options = {})
{
    auto a = hl7::make_ack(received, v, options);
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
    const message a = ack_of(m, verdict::accept);
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
    CHECK(ack_of(m, verdict::accept).get("MSA.1") == "AA");
    CHECK(ack_of(m, verdict::error).get("MSA.1") == "AE");
    CHECK(ack_of(m, verdict::reject).get("MSA.1") == "AR");
}

TEST_CASE("enhanced mode acknowledges with CA, CE and CR when MSH-15 asks, with AA when only MSH-16 does")
{
    const message adt = parsed(read_sample("adt_a01.hl7")); // MSH-15 AL, MSH-16 NE
    CHECK(ack_of(adt, verdict::accept).get("MSA.1") == "CA");
    CHECK(ack_of(adt, verdict::error).get("MSA.1") == "CE");
    CHECK(ack_of(adt, verdict::reject).get("MSA.1") == "CR");
    const message only16 = parsed(cr("MSH|^~\\&|A|B|C|D|||ORU^R01|X1|P|2.5.1||||AL\n"));
    CHECK(ack_of(only16, verdict::accept).get("MSA.1") == "AA");
    const message oru = parsed(read_sample("oru_r01.hl7"));
    const message a = ack_of(oru, verdict::accept);
    CHECK(a.get("MSA.2") == "MSG00002");
    CHECK(a.get("MSH.9") == "ACK^R01^ACK");
    CHECK(a.get("MSH.5") == "LABSYS");
    CHECK(a.get("MSH.6") == "SMHC^1.2.840.114350^ISO");
}

TEST_CASE("an ACK carries MSA-3 text and an ERR segment when asked")
{
    const message m = parsed(original_mode);
    const message a = ack_of(m, verdict::error, {.text = "bad PID|3", .error_code = 101, .error_text = "PID-3 missing"});
    CHECK(a.get("MSA.1") == "AE");
    CHECK(a.get("MSA.3").value().decoded() == "bad PID|3");
    CHECK(a.get("ERR.3") == "101^Required field missing^HL70357");
    CHECK(a.get("ERR.4") == "E");
    CHECK(a.get("ERR.8") == "PID-3 missing");
    const message b = ack_of(m, verdict::reject, {.error_text = "no"});
    CHECK(b.get("ERR.3.1") == "207");
    const message c = ack_of(m, verdict::accept, {.text = "ok", .error_code = 207});
    CHECK(c.count("ERR").value() == 0);
    CHECK(c.get("MSA.3") == "ok");
}

TEST_CASE("an ACK keeps the received message's delimiters")
{
    const message m = parsed(cr("MSH#*@!%#APP#FAC#ME#HERE#20240101##ORU*R01#C7#P#2.5.1\n"));
    const message a = ack_of(m, verdict::accept, {.text = "a#b"});
    CHECK(a.delimiters() == m.delimiters());
    CHECK(a.get("MSH.9") == "ACK*R01*ACK");
    CHECK(a.get("MSA.2") == "C7");
    CHECK(a.get("MSA.3") == "a!F!b");
}

TEST_CASE("a batch without MSH cannot be acknowledged")
{
    const message m = parsed(cr("FHS|^~\\&|A\nFTS|0\n"));
    auto a = hl7::make_ack(m, verdict::accept);
    REQUIRE(a.has_error());
    CHECK(a.error() == hl7::errc::not_hl7);
}

TEST_CASE("in a batch, an MSH segment not followed at once by the field separator is read as get() reads it")
{
    // Found by fuzzing: the header's fields count from its first field separator.
    const message m = parsed(cr("FHS|^~\\&|A\nMSH01|^~\\&|APP|FAC|ME|HERE|20240101||ADT^A01|C9|P|2.5.1\nFTS|1\n"));
    REQUIRE(m.get("MSH.10") == "C9");
    const message a = ack_of(m, verdict::accept);
    CHECK(a.get("MSA.2") == "C9");
    CHECK(a.get("MSH.3") == "ME");
    CHECK(a.get("MSH.9") == "ACK^A01^ACK");
}

TEST_CASE("every combination of MSH-15 and MSH-16 gets the acknowledgement it asks for, or none")
{
    // The rules at the top of ack.hpp, spelled out: for each MSH-15 and MSH-16 value and each
    // verdict, the MSA-1 expected, or "-" for no acknowledgement at all.
    struct row {
        const char* msh15;
        const char* msh16;
        const char* accept; // MSA-1 for verdict::accept
        const char* error;  // for verdict::error
        const char* reject; // for verdict::reject
    };
    const row table[] = {
        {"", "", "AA", "AE", "AR"},   // original mode
        {"AL", "", "CA", "CE", "CR"}, {"AL", "AL", "CA", "CE", "CR"}, {"AL", "NE", "CA", "CE", "CR"},
        {"AL", "ER", "CA", "CE", "CR"}, {"AL", "SU", "CA", "CE", "CR"},
        {"NE", "", "-", "-", "-"},    {"NE", "AL", "AA", "AE", "AR"}, {"NE", "NE", "-", "-", "-"},
        {"NE", "ER", "-", "AE", "AR"}, {"NE", "SU", "AA", "-", "-"},
        {"ER", "", "-", "CE", "CR"},  {"ER", "AL", "AA", "CE", "CR"}, {"ER", "NE", "-", "CE", "CR"},
        {"ER", "ER", "-", "CE", "CR"}, {"ER", "SU", "AA", "CE", "CR"},
        {"SU", "", "CA", "-", "-"},   {"SU", "AL", "CA", "AE", "AR"}, {"SU", "NE", "CA", "-", "-"},
        {"SU", "ER", "CA", "AE", "AR"}, {"SU", "SU", "CA", "-", "-"},
        {"", "AL", "AA", "AE", "AR"}, {"", "NE", "-", "-", "-"},    {"", "ER", "-", "AE", "AR"},
        {"", "SU", "AA", "-", "-"},
        {"XX", "", "CA", "CE", "CR"}, {"", "XX", "AA", "AE", "AR"}, {"XX", "NE", "CA", "CE", "CR"},
        {"NE", "XX", "AA", "AE", "AR"},
    };
    for (const row& r : table) {
        const message m = parsed(std::string("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5.1|||") + r.msh15 + "|" +
                                 r.msh16 + "\r");
        const std::pair<verdict, const char*> cases[] = {
            {verdict::accept, r.accept}, {verdict::error, r.error}, {verdict::reject, r.reject}};
        for (const auto& c : cases) {
            const verdict v = c.first;
            const char* const expected = c.second;
            CAPTURE(r.msh15);
            CAPTURE(r.msh16);
            CAPTURE(to_string(v));
            const auto code = hl7::ack_code_for(m, v);
            auto a = hl7::make_ack(m, v);
            if (std::string_view(expected) == "-") {
                CHECK_FALSE(code.has_value());
                REQUIRE(a.has_error());
                CHECK(a.error() == hl7::errc::no_ack_requested);
            } else {
                REQUIRE(code.has_value());
                CHECK(to_string(*code) == expected);
                REQUIRE(a.has_value());
                CHECK(a.value().get("MSA.1") == expected);
            }
        }
    }
}

TEST_CASE("an acknowledgement is never acknowledged")
{
    const message ack = parsed(read_sample("ack_adt_a01.hl7"));
    for (const verdict v : {verdict::accept, verdict::error, verdict::reject}) {
        CHECK_FALSE(hl7::ack_code_for(ack, v).has_value());
        CHECK(hl7::make_ack(ack, v).error() == hl7::errc::no_ack_requested);
    }
}

TEST_CASE("codes and verdicts have one spelling each, read back by parse_ack_code")
{
    const ack_code all[] = {ack_code::AA, ack_code::AE, ack_code::AR, ack_code::CA, ack_code::CE, ack_code::CR};
    const char* spelled[] = {"AA", "AE", "AR", "CA", "CE", "CR"};
    const verdict verdicts[] = {verdict::accept, verdict::error, verdict::reject,
                                verdict::accept, verdict::error, verdict::reject};
    for (int i = 0; i < 6; ++i) {
        CHECK(to_string(all[i]) == spelled[i]);
        CHECK(hl7::parse_ack_code(spelled[i]) == all[i]);
        CHECK(hl7::verdict_of(all[i]) == verdicts[i]);
    }
    CHECK(to_string(verdict::accept) == "accept");
    CHECK(to_string(verdict::error) == "error");
    CHECK(to_string(verdict::reject) == "reject");
    for (const char* bad : {"", "aa", "A", "AAA", "XX", "AA "})
        CHECK_FALSE(hl7::parse_ack_code(bad).has_value());
}

TEST_CASE("a read acknowledgement gives its code, verdict, MSA-2 and round trip")
{
    auto a = hl7::ack::read(parsed(read_sample("ack_adt_a01.hl7")), std::chrono::microseconds(1234));
    REQUIRE(a.has_value());
    CHECK(a.value().accepted());
    CHECK(a.value().verdict() == verdict::accept);
    CHECK(!a.value().error());
    CHECK(a.value().control_id() == parsed(read_sample("adt_a01.hl7")).control_id());
    CHECK(a.value().round_trip() == std::chrono::microseconds(1234));
    CHECK(a.value().message().str() == parsed(read_sample("ack_adt_a01.hl7")).str());
    const hl7::ack copy = a.value(); // the copy reads its own bytes
    CHECK(copy.control_id() == a.value().control_id());
}

TEST_CASE("AE and AR read as named errors carrying MSA-3 and ERR texts")
{
    const message m = parsed(original_mode);
    auto e = hl7::ack::read(ack_of(m, verdict::error, {.text = "cannot file", .error_code = 206}));
    REQUIRE(e.has_value());
    CHECK_FALSE(e.value().accepted());
    CHECK(e.value().code() == ack_code::AE);
    CHECK(e.value().error() == hl7::ack_errc::application_error);
    CHECK(e.value().text() == "cannot file");
    CHECK(e.value().explanation() == "cannot file; Application record locked");
    REQUIRE(e.value().errors().size() == 1);
    CHECK(e.value().errors()[0].code == "206");
    CHECK(e.value().errors()[0].code_text == "Application record locked");
    CHECK(e.value().errors()[0].severity == "E");
    auto r = hl7::ack::read(ack_of(m, verdict::reject, {.error_text = "unknown patient"}));
    REQUIRE(r.has_value());
    CHECK(r.value().error() == hl7::ack_errc::application_reject);
    CHECK(r.value().explanation() == "unknown patient");
    CHECK(r.value().errors()[0].user_message == "unknown patient");
    auto ce = hl7::ack::read(parsed(cr("MSH|^~\\&\nMSA|CE|X\nERR||MSH^1^9||E||||first\nERR|||204^Unknown key^HL70357|E\n")));
    REQUIRE(ce.has_value());
    CHECK(ce.value().error() == hl7::ack_errc::application_error);
    CHECK(ce.value().explanation() == "first; Unknown key");
    REQUIRE(ce.value().errors().size() == 2);
    CHECK(ce.value().errors()[0].location == "MSH^1^9");
    auto cr_ = hl7::ack::read(parsed(cr("MSH|^~\\&\nMSA|CR|X\n")));
    REQUIRE(cr_.has_value());
    CHECK(cr_.value().error() == hl7::ack_errc::application_reject);
    CHECK(cr_.value().explanation().empty());
}

TEST_CASE("a reply without a valid MSA-1 or with an empty MSA-2 is an invalid ACK")
{
    for (const char* text : {"MSH|^~\\&\rPID|1\r", "MSH|^~\\&\rMSA|XX|1\r", "MSH|^~\\&\rMSA||1\r", "MSH|^~\\&\rMSA\r",
                             "MSH|^~\\&\rMSA|AA\r", "MSH|^~\\&\rMSA|AA|\r", "MSH|^~\\&\rMSA|aa|1\r"}) {
        CAPTURE(text);
        auto r = hl7::ack::read(parsed(text));
        REQUIRE(r.has_error());
        CHECK(r.error() == hl7::errc::invalid_ack);
    }
}

TEST_CASE("a default acknowledgement is not accepted and reads as an invalid ACK")
{
    const hl7::ack none;
    CHECK_FALSE(none.accepted());
    CHECK(none.error() == hl7::errc::invalid_ack);
    CHECK(none.control_id().empty());
    CHECK(none.message().str().empty());
}
