// `hl7 get`: values by path from files and standard input, decoded or raw, and its errors.
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <hl7/model/message.hpp>

#include <doctest/doctest.h>

using namespace hl7::test;

TEST_CASE("get prints the decoded values of the sample's paths, one per line")
{
    const auto r = run({tool(), "get", "PID.5.1", "MSH.9.2", "PID.3[2].1", "OBX[3].5[1]", "--file",
                        sample("adt_a01.hl7")});
    CHECK(r.status == 0);
    CHECK(r.err == "");
    CHECK(r.out == "DOE\nA01\n987-65-4321\nPain 7|10 in chest & left arm; onset 2h\\ago\n");
}

TEST_CASE("an absent value prints an empty line and the other values keep their places")
{
    const auto r = run({tool(), "get", "PID.99", "MSA.1", "ZPI.1", "MSH.10", "--file", sample("oru_r01.hl7")});
    CHECK(r.status == 0);
    CHECK(r.out == "\n\n\nMSG00002\n");
}

TEST_CASE("get --raw prints values as on the wire, escapes kept")
{
    const auto r = run({tool(), "get", "--raw", "OBX[3].5[1]", "PID.5.1", "-f", sample("adt_a01.hl7")});
    CHECK(r.status == 0);
    CHECK(r.out == "Pain 7\\F\\10 in chest \\T\\ left arm; onset 2h\\E\\ago\nDOE\n");
}

TEST_CASE("get reads the message from standard input, plain or MLLP-framed, with any line ends")
{
    const std::string msg = small_message("IN1", "\n");
    std::string framed(1, '\x0b');
    framed += cr_lines(msg);
    framed += "\x1c\r";
    std::string after_blank_lines = "\n\n";
    after_blank_lines += msg;
    for (const std::string& input : {msg, framed, after_blank_lines}) {
        const auto r = run({tool(), "get", "MSH.10", "PID.5.2"}, input);
        CHECK(r.status == 0);
        CHECK(r.out == "IN1\nJOHN\n");
    }
}

TEST_CASE("an invalid path exits 2 with a message naming the path")
{
    for (const char* path : {"PID.0", "pid.5", "PID..1", "MSH.1.1", "PDI.5"}) {
        CAPTURE(path);
        const auto r = run({tool(), "get", "PID.5.1", path, "--file", sample("adt_a01.hl7")});
        CHECK(r.status == 2);
        CHECK(r.out == "");
        CHECK(r.err == "hl7: invalid path '" + std::string(path) + "'\n");
    }
}

TEST_CASE("get reads a non-standard segment that the message carries, by the same rule as the library")
{
    const std::string text = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5.1\nXYZ|first|second\n";
    CHECK(hl7::message::parse(hl7::test::cr(text)).value().get("XYZ.2") == "second");
    const auto r = run({tool(), "get", "XYZ.1", "XYZ.2"}, text);
    CHECK(r.status == 0);
    CHECK(r.out == "first\nsecond\n");
}

TEST_CASE("input that does not parse exits 1 with a message")
{
    const auto r = run({tool(), "get", "PID.5.1"}, "PID|1||123\n");
    CHECK(r.status == 1);
    CHECK(r.out == "");
    CHECK(r.err == "hl7: standard input: not an HL7 message: it does not start with MSH, FHS or BHS\n");

    temp_dir dir;
    const auto bad = run({tool(), "get", "MSH.9", "--file", dir.write("bad.hl7", "MSH|^^^^|A\r")});
    CHECK(bad.status == 1);
    CHECK(bad.err.find("bad.hl7: MSH-1/MSH-2 do not define usable delimiters") != std::string::npos);
}

TEST_CASE("a file that does not exist is a usage error")
{
    const auto r = run({tool(), "get", "MSH.9", "--file", "/nonexistent/message.hl7"});
    CHECK(r.status == 2);
    CHECK(r.err.starts_with("hl7: cannot open '/nonexistent/message.hl7'"));
}
