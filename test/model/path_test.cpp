#include <hl7/model/message.hpp>

#include <doctest/doctest.h>

#include <random>
#include <string>

using hl7::path;

namespace {

path parsed(std::string_view text)
{
    auto p = path::parse(text);
    REQUIRE_MESSAGE(p.has_value(), text);
    return p.value();
}

} // namespace

TEST_CASE("a segment path names the whole first segment")
{
    const path p = parsed("PID");
    CHECK(std::string_view(p.segment.data(), 3) == "PID");
    CHECK(p.occurrence == 1);
    CHECK(p.field == 0);
    CHECK(p.repetition == 0);
    CHECK(p.component == 0);
    CHECK(p.subcomponent == 0);
}

TEST_CASE("a field path names all repetitions of the field")
{
    const path p = parsed("PID.3");
    CHECK(p.field == 3);
    CHECK(p.repetition == 0);
    CHECK(p.component == 0);
}

TEST_CASE("a path below the field level takes repetition 1 unless told otherwise")
{
    CHECK(parsed("PID.3.1") == parsed("PID.3[1].1"));
    const path p = parsed("PID.3[2].1");
    CHECK(p.repetition == 2);
    CHECK(p.component == 1);
}

TEST_CASE("every level of a full path is read")
{
    const path p = parsed("OBX[12].5[3].2.4");
    CHECK(std::string_view(p.segment.data(), 3) == "OBX");
    CHECK(p.occurrence == 12);
    CHECK(p.field == 5);
    CHECK(p.repetition == 3);
    CHECK(p.component == 2);
    CHECK(p.subcomponent == 4);
}

TEST_CASE("segment ids may contain digits after the first letter")
{
    CHECK(parsed("PV1.2").field == 2);
    CHECK(parsed("NK1").field == 0);
    CHECK(parsed("ZX9.1").field == 1);
}

TEST_CASE("an explicit repetition without a component names one whole repetition")
{
    const path p = parsed("PID.3[2]");
    CHECK(p.repetition == 2);
    CHECK(p.component == 0);
}

TEST_CASE("malformed paths are invalid_path errors, never crashes")
{
    const char* bad[] = {
        "",            "P",           "PI",          "pid.5",       "Pid.5",       "PIDX.1",     "1ID.1",
        "P-D.1",       "PID.",        "PID.0",       "PID.-1",      "PID.+1",      "PID..1",     "PID.5.",
        "PID.5..1",    "PID.5.0",     "PID.5.1.0",   "PID.a",       "PID.5.b",     "PID[0]",     "PID[]",
        "PID[1",       "PID[x].1",    "PID[-1].1",   "PID.3[0]",    "PID.3[]",     "PID.3[2",    "PID.3.1[2]",
        "PID.3.1.1[1]", "PID.5.1.1.1", "PID.5 ",      " PID.5",      "PID.5\n",     "PID.1234567890",
        "PID[1234567890]", "PID.3[1234567890]", ".PID", "PID.5.1.",   "PID.3][",     "PID.3[1]x",  "MSA-1",
    };
    for (const char* text : bad) {
        auto p = path::parse(text);
        CHECK_MESSAGE(p.has_error(), text);
        if (p.has_error())
            CHECK(p.error() == hl7::errc::invalid_path);
    }
}

TEST_CASE("the largest index that fits is accepted")
{
    CHECK(parsed("PID.999999999").field == 999999999u);
}

TEST_CASE("to_string gives the canonical text that parses back to the same path")
{
    const char* texts[] = {"PID", "OBX[2]", "PID.3", "PID.3[2]", "PID.3[2].1", "PID.5.1", "PV1.7.9.2", "OBX[3].5[2].1.1"};
    for (const char* text : texts) {
        const path p = parsed(text);
        CHECK(p.to_string() == text);
        CHECK(parsed(p.to_string()) == p);
    }
    CHECK(parsed("PID[1].3[1].1").to_string() == "PID.3.1");
}

TEST_CASE("random path texts never crash the path parser")
{
    std::mt19937 rng(20240315);
    const std::string alphabet = "PIDOBXMSH0123456789.[]-Z";
    int accepted = 0;
    for (int i = 0; i < 200000; ++i) {
        std::string text(rng() % 16, ' ');
        for (char& c : text)
            c = alphabet[rng() % alphabet.size()];
        auto p = path::parse(text);
        if (p) {
            ++accepted;
            CHECK(parsed(p.value().to_string()) == p.value());
        } else {
            CHECK(p.error() == hl7::errc::invalid_path);
        }
    }
    CHECK(accepted > 0);
}
