#include <hl7/model/message.hpp>

#include "support/checks.hpp"

#include <doctest/doctest.h>

#include <random>
#include <set>
#include <string>

using hl7::message;
using hl7::test::cr;
using hl7::test::parsed;
using hl7::test::read_sample;

namespace {

// The wire text at a path that must be present.
std::string raw(const message& m, std::string_view path)
{
    auto v = m.get(path);
    REQUIRE_MESSAGE(v.has_value(), path);
    CHECK_MESSAGE(v.value().present(), path);
    return std::string(v.value().raw());
}

std::string decoded(const message& m, std::string_view path)
{
    auto v = m.get(path);
    REQUIRE_MESSAGE(v.has_value(), path);
    CHECK_MESSAGE(v.value().present(), path);
    return v.value().decoded();
}

bool absent(const message& m, std::string_view path)
{
    auto v = m.get(path);
    REQUIRE_MESSAGE(v.has_value(), path);
    return !v.value().present();
}

std::size_t count(const message& m, std::string_view path)
{
    auto n = m.count(path);
    REQUIRE_MESSAGE(n.has_value(), path);
    return n.value();
}

const std::string adt_text = read_sample("adt_a01.hl7");
const std::string oru_text = read_sample("oru_r01.hl7");

} // namespace

TEST_CASE("the samples parse and serialise back to exactly their bytes")
{
    for (const char* name : {"adt_a01.hl7", "oru_r01.hl7", "ack_adt_a01.hl7", "ack_oru_r01.hl7"}) {
        const std::string bytes = read_sample(name);
        const message m = parsed(bytes);
        CHECK_MESSAGE(m.str() == bytes, name);
    }
    CHECK(parsed(adt_text).segment_count() == 9);
    CHECK(parsed(oru_text).segment_count() == 26);
}

TEST_CASE("MSH.1 is the field separator and MSH.2 the encoding characters")
{
    const message m = parsed(adt_text);
    CHECK(raw(m, "MSH.1") == "|");
    CHECK(raw(m, "MSH.2") == "^~\\&");
    CHECK(decoded(m, "MSH.1") == "|");
    CHECK(decoded(m, "MSH.2") == "^~\\&");
    CHECK(raw(m, "MSH.3") == "EPICADT");
    CHECK(raw(m, "MSH.9") == "ADT^A01^ADT_A01");
    CHECK(raw(m, "MSH.9.1") == "ADT");
    CHECK(raw(m, "MSH.9.2") == "A01");
    CHECK(raw(m, "MSH.10") == "MSG00001");
    CHECK(raw(m, "MSH.12") == "2.5.1");
    CHECK(raw(m, "MSH.16") == "NE");
    CHECK(count(m, "MSH.1") == 1);
    CHECK(count(m, "MSH.2") == 1);
}

TEST_CASE("a path below MSH.1 or MSH.2 is a bad path")
{
    const message m = parsed(adt_text);
    for (const char* p : {"MSH.1.1", "MSH.2.1", "MSH.2[1]", "MSH.1[2]"}) {
        auto v = m.get(p);
        REQUIRE_MESSAGE(v.has_error(), p);
        CHECK(v.error() == hl7::errc::invalid_path);
    }
}

TEST_CASE("fields, repetitions, components and subcomponents are found by path")
{
    const message m = parsed(adt_text);
    CHECK(raw(m, "PID.3") == "123456789^^^SMHC^MR~987-65-4321^^^USSSA^SS");
    CHECK(raw(m, "PID.3.1") == "123456789");
    CHECK(raw(m, "PID.3[1].1") == "123456789");
    CHECK(raw(m, "PID.3[2]") == "987-65-4321^^^USSSA^SS");
    CHECK(raw(m, "PID.3[2].1") == "987-65-4321");
    CHECK(raw(m, "PID.3[2].4") == "USSSA");
    CHECK(raw(m, "PID.5.1") == "DOE");
    CHECK(raw(m, "PID.5.1.1") == "DOE");
    CHECK(raw(m, "PID.5.2") == "JOHN");
    CHECK(raw(m, "PID.5[2].2") == "JACK");
    CHECK(raw(m, "PV1.7.9") == "SMHC&1.2.840.114350&ISO");
    CHECK(raw(m, "PV1.7.9.2") == "1.2.840.114350");
    CHECK(raw(m, "PV1.7.9.3") == "ISO");
    CHECK(raw(m, "OBX[2].5") == "82.5");
    CHECK(raw(m, "OBX[2].6.1") == "kg");
    CHECK(raw(m, "OBX.3.2") == "Body height");
    CHECK(raw(m, "EVN.1") == "A01");
    CHECK(raw(m, "NK1.3.2") == "Spouse");
}

TEST_CASE("a segment path gives the whole segment without its terminator")
{
    const message m = parsed(adt_text);
    CHECK(raw(m, "EVN") == "EVN|A01|20240315083015|||JSMITH^Smith^John^^^^^^SMHC^L^^^EI|20240315083000");
    CHECK(raw(m, "OBX[2]") == "OBX|2|NM|29463-7^Body weight^LN||82.5|kg^^UCUM|||||F");
    CHECK(absent(m, "OBX[4]"));
}

TEST_CASE("an absent value is distinguished from a present empty one")
{
    const message m = parsed(cr("MSH|^~\\&|A|B\nPID|1||X^^Y||\n"));
    CHECK(raw(m, "PID.2").empty());
    CHECK(raw(m, "PID.4").empty());
    CHECK(raw(m, "PID.5").empty());
    CHECK(absent(m, "PID.6"));
    CHECK(raw(m, "PID.3.2").empty());
    CHECK(raw(m, "PID.3.3") == "Y");
    CHECK(absent(m, "PID.3.4"));
    CHECK(absent(m, "PID.3[2]"));
    CHECK(absent(m, "PID.2.1"));
    CHECK(absent(m, "PID.3.2.1"));
    CHECK(absent(m, "PID[2].1"));
    CHECK(absent(m, "PV1.1"));
    CHECK(absent(m, "ZPD.1"));
    CHECK(absent(m, "MSH.5"));
    CHECK(raw(m, "MSH.4") == "B");
}

TEST_CASE("the HL7 null is returned as it is")
{
    const message m = parsed(cr("MSH|^~\\&|A|B\nPID|1|\"\"|x\n"));
    auto v = m.get("PID.2").value();
    CHECK(v.raw() == "\"\"");
    CHECK(v.decoded() == "\"\"");
    CHECK(v.is_null());
    CHECK_FALSE(m.get("PID.3").value().is_null());
    CHECK_FALSE(m.get("PID.4").value().is_null());
}

TEST_CASE("a segment id that is neither standard nor a Z-segment is a bad path")
{
    const message m = parsed(adt_text);
    for (const char* p : {"PDI.5", "XYZ.1", "ABC", "QQQ[2].1"}) {
        auto v = m.get(p);
        REQUIRE_MESSAGE(v.has_error(), p);
        CHECK(v.error() == hl7::errc::invalid_path);
    }
    CHECK(absent(m, "PV2.3"));
    CHECK(absent(m, "ZPD.1"));
    auto n = m.count("PDI");
    REQUIRE(n.has_error());
    CHECK(n.error() == hl7::errc::invalid_path);
}

TEST_CASE("a non-standard segment that the message carries can be addressed")
{
    const message m = parsed(cr("MSH|^~\\&|A\nYYY|1|two\n"));
    CHECK(raw(m, "YYY.2") == "two");
    CHECK(count(m, "YYY") == 1);
}

TEST_CASE("a malformed path given to a lookup is a bad path error")
{
    const message m = parsed(adt_text);
    for (const char* p : {"PID.0", "pid.5", "PID..5", "PID.5.", "PID[0].1", "PID.-1"}) {
        auto v = m.get(p);
        REQUIRE_MESSAGE(v.has_error(), p);
        CHECK(v.error() == hl7::errc::invalid_path);
        CHECK_FALSE(v == "");
    }
}

TEST_CASE("a lookup result compares equal to the wire text it holds")
{
    const message m = parsed(read_sample("ack_adt_a01.hl7"));
    CHECK(m.get("MSA.1") == "AA");
    CHECK(m.get("MSA.2") == "MSG00001");
    CHECK_FALSE(m.get("MSA.1") == "AE");
    CHECK(m.get("MSA.1") != "AE");
    CHECK_FALSE(m.get("MSA.3") == "");
    CHECK_FALSE(m.get("msa.1") == "AA");
}

TEST_CASE("segments are counted by id and repetitions by field")
{
    const message adt = parsed(adt_text);
    CHECK(count(adt, "OBX") == 3);
    CHECK(count(adt, "MSH") == 1);
    CHECK(count(adt, "PV2") == 0);
    CHECK(count(adt, "PID.3") == 2);
    CHECK(count(adt, "PID.5") == 2);
    CHECK(count(adt, "PID.7") == 1);
    CHECK(count(adt, "PID.2") == 0);
    CHECK(count(adt, "PID.99") == 0);
    CHECK(count(adt, "OBX[3].5") == 2);
    CHECK(count(adt, "AL1.5") == 2);
    const message oru = parsed(oru_text);
    CHECK(count(oru, "OBX") == 20);
    CHECK(count(oru, "NTE") == 1);
    for (const char* p : {"PID.3[1]", "PID.3.1", "OBX[2]"}) {
        auto n = adt.count(p);
        REQUIRE_MESSAGE(n.has_error(), p);
        CHECK(n.error() == hl7::errc::invalid_path);
    }
}

TEST_CASE("a parsed path can be reused to walk the segments with one id")
{
    const message m = parsed(oru_text);
    auto p = hl7::path::parse("OBX.3.2").value();
    std::vector<std::string> names;
    for (p.occurrence = 1; p.occurrence <= count(m, "OBX"); ++p.occurrence)
        names.emplace_back(m.get(p).value().raw());
    REQUIRE(names.size() == 20);
    CHECK(names.front() == "WBC");
    CHECK(names[7] == "Platelets");
    CHECK(names.back() == "Service comment");
}

TEST_CASE("escapes are resolved in leaf values and kept in structured ones")
{
    const message m = parsed(adt_text);
    CHECK(raw(m, "AL1.5[1]") == "Rash \\T\\ hives");
    CHECK(decoded(m, "AL1.5[1]") == "Rash & hives");
    CHECK(decoded(m, "AL1.5") == raw(m, "AL1.5"));
    CHECK(decoded(m, "OBX[3].5[1]") == "Pain 7|10 in chest & left arm; onset 2h\\ago");
    CHECK(decoded(m, "OBX[3].5[2]") == "Nausea^no vomiting");
    CHECK(decoded(m, "PID.5") == "DOE^JOHN^QUINCY^JR^DR^^L~DOE^JACK^^^^^A");
    const message oru = parsed(oru_text);
    CHECK(decoded(oru, "NTE.3") == "Results verified by J. Tech (MLS^ASCP)~reference ranges per SMHC 2024 & CLIA.");
    CHECK(decoded(oru, "OBR.4.2") == "Comprehensive metabolic panel & CBC");
}

TEST_CASE("hex escapes become the bytes they spell; formatting escapes are kept")
{
    const message m = parsed(cr("MSH|^~\\&|A\n"
                                "NTE|1|\\X41\\|a\\X0D0A\\b|x\\.br\\y|\\H\\bold\\N\\|\\Xzz\\|\\X4\\|\\C2842\\|open\\F|\\\\|\\Q\\|\\P\\\n"));
    CHECK(decoded(m, "NTE.2") == "A");
    CHECK(decoded(m, "NTE.3") == "a\r\nb");
    CHECK(decoded(m, "NTE.4") == "x\\.br\\y");
    CHECK(decoded(m, "NTE.5") == "\\H\\bold\\N\\");
    CHECK(decoded(m, "NTE.6") == "\\Xzz\\");
    CHECK(decoded(m, "NTE.7") == "\\X4\\");
    CHECK(decoded(m, "NTE.8") == "\\C2842\\");
    CHECK(decoded(m, "NTE.9") == "open\\F");
    CHECK(decoded(m, "NTE.10") == "\\\\");
    CHECK(decoded(m, "NTE.11") == "\\Q\\");
    CHECK(decoded(m, "NTE.12") == "\\P\\");
}

TEST_CASE("escapes at field and component boundaries decode within their own value")
{
    const message m = parsed(cr("MSH|^~\\&|A\nNTE|\\F\\|\\S\\^\\T\\|x\\R\\~\\E\\y\n"));
    CHECK(decoded(m, "NTE.1") == "|");
    CHECK(decoded(m, "NTE.2.1") == "^");
    CHECK(decoded(m, "NTE.2.2") == "&");
    CHECK(decoded(m, "NTE.3[1]") == "x~");
    CHECK(decoded(m, "NTE.3[2]") == "\\y");
    CHECK(count(m, "NTE.3") == 2);
}

TEST_CASE("custom delimiters are honoured for lookups and escapes")
{
    const message m = parsed(cr("MSH#*@!%#SEND#FAC#RCV##20240101##ADT*A01#ID9#P#2.5.1\n"
                                "PID#1##A*B@C*D%E%F##!F!x!S!y!T!z!E!\n"));
    CHECK(m.delimiters() == hl7::delimiters{'#', '*', '@', '!', '%', '\0'});
    CHECK(raw(m, "MSH.1") == "#");
    CHECK(raw(m, "MSH.2") == "*@!%");
    CHECK(raw(m, "MSH.3") == "SEND");
    CHECK(raw(m, "MSH.9.2") == "A01");
    CHECK(raw(m, "MSH.10") == "ID9");
    CHECK(raw(m, "PID.3.1") == "A");
    CHECK(raw(m, "PID.3[2].1") == "C");
    CHECK(raw(m, "PID.3[2].2.3") == "F");
    CHECK(decoded(m, "PID.5") == "#x*y%z!");
    CHECK(m.get("MSA.1").has_error() == false);
}

TEST_CASE("a fifth encoding character is accepted as the truncation character")
{
    const message m = parsed(cr("MSH|^~\\&#|A|B\nNTE|1|cut\\P\\here\n"));
    CHECK(m.delimiters().truncation == '#');
    CHECK(raw(m, "MSH.2") == "^~\\&#");
    CHECK(raw(m, "MSH.3") == "A");
    CHECK(decoded(m, "NTE.2") == "cut#here");
}

TEST_CASE("input that is not HL7 is a not_hl7 error")
{
    for (const char* text : {"", "M", "MS", "PID|1", "msh|^~\\&|", "\rMSH|^~\\&|A", " MSH|^~\\&", "XYZ"}) {
        auto m = message::parse(std::string_view(text));
        REQUIRE_MESSAGE(m.has_error(), std::string(text));
        CHECK(m.error() == hl7::errc::not_hl7);
    }
}

TEST_CASE("unusable delimiters are a invalid_encoding_characters error")
{
    const char* bad[] = {"MSH",           "MSH|",         "MSH|^~\\|A",   "MSH|^~\\&$%|A", "MSH|^^\\&|A",
                         "MSH|A~\\&|A",   "MSH|^~\\1|A",  "MSH|^~|\\&",   "MSH\r^~\\&",    "MSH|^~\\|&",
                         "MSH|||\\&|A",  "MSH|^~\\a|"};
    for (const char* text : bad) {
        auto m = message::parse(std::string_view(text));
        REQUIRE_MESSAGE(m.has_error(), std::string(text));
        CHECK_MESSAGE(m.error() == hl7::errc::invalid_encoding_characters, text);
    }
    CHECK(message::parse(std::string_view("MSH|^~\\&")).has_value());
}

TEST_CASE("segments ended by LF or CRLF are read the same and written back ended by CR")
{
    const std::string lf = "MSH|^~\\&|A|B\nPID|1||X\nOBX|1|NM\n";
    const std::string crlf = "MSH|^~\\&|A|B\r\nPID|1||X\r\nOBX|1|NM\r\n";
    const std::string mixed = "MSH|^~\\&|A|B\r\nPID|1||X\nOBX|1|NM\r";
    const std::string want = "MSH|^~\\&|A|B\rPID|1||X\rOBX|1|NM\r";
    for (const std::string& text : {lf, crlf, mixed}) {
        const message m = parsed(text);
        CHECK(m.str() == want);
        CHECK(m.segment_count() == 3);
        CHECK(raw(m, "PID.3") == "X");
        CHECK(raw(m, "OBX.2") == "NM");
    }
}

TEST_CASE("empty lines between segments are not segments")
{
    const message m = parsed("MSH|^~\\&|A\r\rPID|1\n\nOBX|1\r\n\r\n");
    CHECK(m.segment_count() == 3);
    CHECK(raw(m, "PID.1") == "1");
    CHECK(raw(m, "OBX.1") == "1");
}

TEST_CASE("a message without a final terminator keeps its bytes and its last field")
{
    const message m = parsed(std::string_view("MSH|^~\\&|A\rPID|1|2"));
    CHECK(m.str() == "MSH|^~\\&|A\rPID|1|2");
    CHECK(raw(m, "PID.2") == "2");
}

TEST_CASE("trailing delimiters make present empty values")
{
    const message m = parsed(cr("MSH|^~\\&|A\nPID|1|||\nPV1|1|I^^|~\n"));
    CHECK(raw(m, "PID.3").empty());
    CHECK(raw(m, "PID.4").empty());
    CHECK(absent(m, "PID.5"));
    CHECK(raw(m, "PV1.2.2").empty());
    CHECK(raw(m, "PV1.2.3").empty());
    CHECK(absent(m, "PV1.2.4"));
    CHECK(count(m, "PV1.3") == 2);
    CHECK(raw(m, "PV1.3[2]").empty());
    CHECK(absent(m, "PV1.3[2].1"));
}

TEST_CASE("UTF-8 and Latin-1 bytes pass through unchanged")
{
    const std::string utf8 = cr("MSH|^~\\&|A\nPID|1||\xC3\x9C" "ber^J\xC3\xBCrgen\n");
    const message u = parsed(utf8);
    CHECK(u.str() == utf8);
    CHECK(raw(u, "PID.3.1") == "\xC3\x9C" "ber");
    CHECK(decoded(u, "PID.3.2") == "J\xC3\xBCrgen");
    const std::string latin1 = cr("MSH|^~\\&|A\nPID|1||M\xDCLLER\n");
    const message l = parsed(latin1);
    CHECK(l.str() == latin1);
    CHECK(decoded(l, "PID.3") == "M\xDCLLER");
}

TEST_CASE("a header segment cut short has no MSH-1")
{
    const message m = parsed(cr("MSH|^~\\&|A\nPID|1\nMSH\n"));
    CHECK(absent(m, "MSH[2].1"));
    CHECK(absent(m, "MSH[2].2"));
    CHECK(raw(m, "MSH.1") == "|");
}

TEST_CASE("batch files with FHS and BHS headers parse, and their MSH segments are addressable")
{
    const message m = parsed(cr("FHS|^~\\&|SENDER|FAC\nBHS|^~\\&|SENDER\nMSH|^~\\&|A||||||ADT^A01|ONE|P|2.5\n"
                                "PID|1\nMSH|^~\\&|A||||||ADT^A01|TWO|P|2.5\nPID|2\nBTS|2\nFTS|1\n"));
    CHECK(raw(m, "FHS.1") == "|");
    CHECK(raw(m, "FHS.2") == "^~\\&");
    CHECK(raw(m, "FHS.3") == "SENDER");
    CHECK(raw(m, "BHS.3") == "SENDER");
    CHECK(count(m, "MSH") == 2);
    CHECK(raw(m, "MSH.10") == "ONE");
    CHECK(raw(m, "MSH[2].10") == "TWO");
    CHECK(raw(m, "PID[2].1") == "2");
    CHECK(raw(m, "BTS.1") == "2");
}

TEST_CASE("set replaces an existing value and escapes delimiters in it")
{
    message m = parsed(adt_text);
    REQUIRE(m.set("PID.5.1", "O'NEIL|SMITH^JR&CO~X\\Y"));
    CHECK(raw(m, "PID.5.1") == "O'NEIL\\F\\SMITH\\S\\JR\\T\\CO\\R\\X\\E\\Y");
    CHECK(decoded(m, "PID.5.1") == "O'NEIL|SMITH^JR&CO~X\\Y");
    CHECK(raw(m, "PID.5.2") == "JOHN");
    CHECK(raw(m, "PID.5[2].2") == "JACK");
    CHECK(raw(m, "PID.7") == "19700101");
    CHECK(raw(m, "MSH.10") == "MSG00001");
}

TEST_CASE("set escapes CR and LF so that a value cannot break a segment")
{
    message m = parsed(adt_text);
    REQUIRE(m.set("NTE.3", "line one\r\nline two"));
    CHECK(raw(m, "NTE.3") == "line one\\X0D\\\\X0A\\line two");
    CHECK(decoded(m, "NTE.3") == "line one\r\nline two");
    CHECK(m.segment_count() == 10);
}

TEST_CASE("set escapes the MLLP block bytes so that a value cannot cut the message's frame short")
{
    message m = parsed(adt_text);
    const std::string value = std::string("before") + '\x1c' + "\r" + '\x0b' + "after";
    REQUIRE(m.set("NTE.3", value));
    CHECK(raw(m, "NTE.3") == R"(before\X1C\\X0D\\X0B\after)");
    CHECK(decoded(m, "NTE.3") == value);
    CHECK(m.str().find_first_of("\x0b\x1c") == std::string_view::npos);
    CHECK(hl7::escape(std::string(1, '\x1c')) == "\\X1C\\");
    CHECK(hl7::escape(std::string(1, '\x0b')) == "\\X0B\\");
}

TEST_CASE("a composite value is set from its parts, each escaped, joined by the level's delimiter")
{
    message m = parsed(adt_text);
    REQUIRE(m.set("MSH.9", {"ORU", "R01", "ORU_R01"}));
    CHECK(raw(m, "MSH.9") == "ORU^R01^ORU_R01");
    CHECK(raw(m, "MSH.9.2") == "R01");
    REQUIRE(m.set("PID.5", {"O'NEIL|JR", "MARY^ANN"}));
    CHECK(raw(m, "PID.5") == "O'NEIL\\F\\JR^MARY\\S\\ANN");
    CHECK(decoded(m, "PID.5.2") == "MARY^ANN");
    REQUIRE(m.set("PID.3[2].4", {"HOSP", "1.2.3", "ISO"}));
    CHECK(raw(m, "PID.3[2].4") == "HOSP&1.2.3&ISO");
    CHECK(raw(m, "PID.3[2].4.2") == "1.2.3");
    REQUIRE(m.set("ZZZ.1", {}));
    CHECK(m.get("ZZZ.1").value().present());
    CHECK(raw(m, "ZZZ.1").empty());
    CHECK(m.set("PID.3.4.1", {"a", "b"}).error() == hl7::errc::invalid_path);
    CHECK(m.set("MSH.2", {"a"}).error() == hl7::errc::invalid_path);
}

TEST_CASE("control_id is MSH-10 as on the wire, empty when absent")
{
    CHECK(parsed(adt_text).control_id() == parsed(adt_text).get("MSH.10").value().raw());
    CHECK_FALSE(parsed(adt_text).control_id().empty());
    CHECK(parsed("MSH|^~\\&|A\r").control_id().empty());
    CHECK(message{}.control_id().empty());
}

TEST_CASE("set on an empty message creates the segment without a leading terminator")
{
    message m;
    REQUIRE(m.set("ZXY.2", "v"));
    CHECK(m.str() == "ZXY||v");
    CHECK(raw(m, "ZXY.2") == "v");
}

TEST_CASE("set on a field path replaces the whole field with all its repetitions")
{
    message m = parsed(adt_text);
    REQUIRE(m.set("PID.3", "555"));
    CHECK(raw(m, "PID.3") == "555");
    CHECK(count(m, "PID.3") == 1);
    CHECK(raw(m, "PID.5.1") == "DOE");
}

TEST_CASE("set creates missing fields, repetitions, components and subcomponents")
{
    message m = parsed(cr("MSH|^~\\&|A\nPID|1\n"));
    REQUIRE(m.set("PID.5.3", "Q"));
    CHECK(raw(m, "PID") == "PID|1||||^^Q");
    REQUIRE(m.set("PID.3[3].2", "B"));
    CHECK(raw(m, "PID.3") == "~~^B");
    REQUIRE(m.set("PID.5.3.2", "S"));
    CHECK(raw(m, "PID.5") == "^^Q&S");
    REQUIRE(m.set("PID.5[2]", "second"));
    CHECK(raw(m, "PID.5") == "^^Q&S~second");
    REQUIRE(m.set("PID.2", ""));
    CHECK(raw(m, "PID") == "PID|1||~~^B||^^Q&S~second");
    CHECK(m.str() == cr("MSH|^~\\&|A\nPID|1||~~^B||^^Q&S~second\n"));
}

TEST_CASE("set creates missing segments after the last one with the same id, or at the end")
{
    message m = parsed(cr("MSH|^~\\&|A\nPID|1\nOBX|1\nNTE|1\n"));
    REQUIRE(m.set("OBX[3].5", "three"));
    CHECK(m.str() == cr("MSH|^~\\&|A\nPID|1\nOBX|1\nOBX\nOBX|||||three\nNTE|1\n"));
    CHECK(count(m, "OBX") == 3);
    CHECK(absent(m, "OBX[2].1"));
    REQUIRE(m.set("ZPD.2", "custom"));
    CHECK(m.str() == cr("MSH|^~\\&|A\nPID|1\nOBX|1\nOBX\nOBX|||||three\nNTE|1\nZPD||custom\n"));
    CHECK(raw(m, "ZPD.2") == "custom");
}

TEST_CASE("set appends a segment to a message without a final terminator")
{
    message m = parsed(std::string_view("MSH|^~\\&|A\rPID|1"));
    REQUIRE(m.set("PV1.2", "I"));
    CHECK(m.str() == "MSH|^~\\&|A\rPID|1\rPV1||I");
}

TEST_CASE("set writes MSH fields counted from MSH-1")
{
    message m = parsed(cr("MSH|^~\\&\n"));
    REQUIRE(m.set("MSH.4", "FAC"));
    CHECK(m.str() == cr("MSH|^~\\&||FAC\n"));
    REQUIRE(m.set("MSH.9.2", "A01"));
    CHECK(raw(m, "MSH.9") == "^A01");
}

TEST_CASE("set refuses MSH.1, MSH.2, segment paths, unknown segments and malformed paths")
{
    message m = parsed(adt_text);
    for (const char* p : {"MSH.1", "MSH.2", "MSH.2.1", "PID", "OBX[2]", "PDI.1", "PID.0", "pid.1", "PID.1."}) {
        auto r = m.set(p, "x");
        REQUIRE_MESSAGE(r.has_error(), p);
        CHECK(r.error() == hl7::errc::invalid_path);
    }
    CHECK(m.str() == adt_text);
}

TEST_CASE("set refuses to create more than 65535 parts at one level and leaves the message unchanged")
{
    message m = parsed(adt_text);
    for (const char* p : {"PID.999999999", "PID.3[70000].1", "PID.5.70000", "PID.5.1.70000", "OBX[70000].1", "ZPD[65537].1",
                          "OBX[4].99999"}) {
        auto r = m.set(p, "x");
        REQUIRE_MESSAGE(r.has_error(), p);
        CHECK(r.error() == hl7::errc::invalid_path);
        CHECK(m.str() == adt_text);
    }
    REQUIRE(m.set("ZPD[65535].1", "x"));
    CHECK(count(m, "ZPD") == 65535);
    REQUIRE(m.set("PID.3[65536].1", "y"));
    CHECK(count(m, "PID.3") == 65536);
}

TEST_CASE("set uses the message's own delimiters")
{
    message m = parsed(cr("MSH#*@!%#A\nPID#1\n"));
    REQUIRE(m.set("PID.3[2].2", "x#y*z"));
    CHECK(raw(m, "PID.3") == "@*x!F!y!S!z");
    CHECK(decoded(m, "PID.3[2].2") == "x#y*z");
}

TEST_CASE("a value written with set reads back decoded as written")
{
    message m = parsed(oru_text);
    const std::string tricky[] = {"", "plain", "a|b", "^~\\&", "\\F\\", "ends with \\", "\xC3\xA9t\xC3\xA9", "tab\tand\x01"};
    for (const std::string& text : tricky) {
        REQUIRE(m.set("OBX[20].5", text));
        CHECK(decoded(m, "OBX[20].5") == text);
        CHECK(count(m, "OBX") == 20);
        CHECK(raw(m, "OBX[20].3.2") == "Service comment");
        CHECK(raw(m, "NTE.1") == "1");
    }
}

TEST_CASE("create fills the MSH from a header")
{
    auto made = message::create({.sending_application = "LAB",
                                 .sending_facility = "SMHC",
                                 .receiving_application = "EPIC",
                                 .receiving_facility = "SMHC^1.2^ISO",
                                 .message_type = "ORU",
                                 .trigger_event = "R01",
                                 .message_structure = "ORU_R01"});
    REQUIRE(made);
    const message& m = made.value();
    CHECK(raw(m, "MSH.1") == "|");
    CHECK(raw(m, "MSH.2") == "^~\\&");
    CHECK(raw(m, "MSH.3") == "LAB");
    CHECK(raw(m, "MSH.4") == "SMHC");
    CHECK(raw(m, "MSH.5") == "EPIC");
    CHECK(decoded(m, "MSH.6") == "SMHC^1.2^ISO");
    CHECK(raw(m, "MSH.9") == "ORU^R01^ORU_R01");
    CHECK(raw(m, "MSH.11") == "P");
    CHECK(raw(m, "MSH.12") == "2.5.1");
    CHECK(m.str().back() == '\r');
    CHECK(m.segment_count() == 1);
    const std::string ts = raw(m, "MSH.7");
    REQUIRE(ts.size() == 23);
    for (std::size_t i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 19, 20, 21, 22})
        CHECK_MESSAGE(std::isdigit(static_cast<unsigned char>(ts[i])), ts);
    CHECK(ts[14] == '.');
    CHECK((ts[18] == '+' || ts[18] == '-'));
    CHECK(ts.compare(0, 2, "20") == 0);
    const std::string id = raw(m, "MSH.10");
    CHECK(!id.empty());
    CHECK(id.size() <= 20);
}

TEST_CASE("create leaves out an empty message structure and honours custom delimiters")
{
    auto m = message::create({.message_type = "ADT", .trigger_event = "A04", .version = "2.3",
                              .delimiters = {'#', '*', '@', '!', '%', '\0'}});
    REQUIRE(m);
    CHECK(raw(m.value(), "MSH.2") == "*@!%");
    CHECK(raw(m.value(), "MSH.9") == "ADT*A04");
    CHECK(raw(m.value(), "MSH.12") == "2.3");
    auto bad = message::create({.delimiters = {'|', '|', '~', '\\', '&', '\0'}});
    REQUIRE(bad.has_error());
    CHECK(bad.error() == hl7::errc::invalid_encoding_characters);
}

TEST_CASE("a built message serialises to bytes that parse back to the same message")
{
    message m = message::create({.message_type = "ADT", .trigger_event = "A08"}).value();
    REQUIRE(m.set("PID.5.1", "DOE"));
    REQUIRE(m.set("PID.5.2", "JANE"));
    REQUIRE(m.set("PID.3[2].1", "X-1"));
    REQUIRE(m.set("OBX[2].5", "7|8"));
    const message back = parsed(m.str());
    CHECK(back.str() == m.str());
    CHECK(raw(back, "PID.5") == "DOE^JANE");
    CHECK(raw(back, "PID.3") == "~X-1");
    CHECK(decoded(back, "OBX[2].5") == "7|8");
}

TEST_CASE("control ids are unique within the process and at most 20 characters")
{
    std::set<std::string> seen;
    for (int i = 0; i < 100000; ++i) {
        std::string id = hl7::make_control_id();
        REQUIRE(id.size() <= 20);
        REQUIRE(id.find_first_not_of("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == std::string::npos);
        REQUIRE(seen.insert(std::move(id)).second);
    }
}

TEST_CASE("escape and unescape are inverse for any bytes")
{
    std::mt19937 rng(7);
    const hl7::delimiters d;
    for (int i = 0; i < 20000; ++i) {
        std::string text(rng() % 24, '\0');
        for (char& c : text)
            c = static_cast<char>(rng() % 256);
        const std::string e = hl7::escape(text, d);
        CHECK(e.find_first_of("|^~&\r\n") == std::string::npos);
        CHECK(hl7::unescape(e, d) == text);
    }
}

TEST_CASE("random bytes never crash the parser or the lookups")
{
    std::mt19937 rng(42);
    const std::string alphabet = "|^~\\&\r\nMSHPIDOBX0123456789 ";
    const char* paths[] = {"MSH.1", "MSH.2", "MSH.9.2", "PID.3[2].1", "PID.5.1.1", "OBX[2].5", "PID", "OBX[3]", "ZZZ.1"};
    int parsed_ok = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string text = i % 2 ? "MSH|^~\\&|" : "";
        const std::size_t n = rng() % 200;
        for (std::size_t j = 0; j < n; ++j)
            text += (rng() % 4) ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() % 256);
        auto m = message::parse(text);
        if (!m)
            continue;
        ++parsed_ok;
        for (const char* p : paths) {
            auto v = m.value().get(p);
            if (v && v.value().present()) {
                CHECK(v.value().raw().data() >= m.value().str().data());
                CHECK(v.value().raw().data() + v.value().raw().size() <= m.value().str().data() + m.value().str().size());
                (void)v.value().decoded();
            }
            (void)m.value().count(p);
        }
        message copy = m.value();
        (void)copy.set("PID.3[2].1", "x");
        CHECK(copy.get("PID.3[2].1") == "x");
    }
    CHECK(parsed_ok > 1000);
}
