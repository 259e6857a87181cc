// The examples, run against the library's own server through `hl7 listen`: one listener
// for the ADT feed and one for the results feed.
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

using namespace hl7::test;

namespace {

void run_example(const char* variable)
{
    listener adt({"--json"});
    listener oru({"--json"});
    const auto r = run({env_path(variable), "127.0.0.1", adt.port(), oru.port(), HL7_SAMPLES_DIR});
    CHECK(r.status == 0);
    CHECK(r.err == "");
    const auto out = lines(r.out);
    CHECK(out.size() == 2);
    CHECK(std::count(out.begin(), out.end(), "ADT MSG00001: CA (accepted)") == 1);
    CHECK(std::count(out.begin(), out.end(), "ORU MSG00002: AA (accepted)") == 1);

    // Each listener got its own message, once.
    const auto adt_seen = lines(adt.stop().out);
    const auto oru_seen = lines(oru.stop().out);
    REQUIRE(adt_seen.size() == 2);
    REQUIRE(oru_seen.size() == 2);
    CHECK(adt_seen[1].find("\"control_id\":\"MSG00001\"") != std::string::npos);
    CHECK(oru_seen[1].find("\"control_id\":\"MSG00002\"") != std::string::npos);
}

} // namespace

TEST_CASE("the seed example sends the ADT and ORU samples on two connections and both are accepted")
{
    run_example("HL7_EXAMPLE_SEED");
}

TEST_CASE("the callback example does the same with completion handlers")
{
    run_example("HL7_EXAMPLE_CALLBACK");
}

TEST_CASE("an example whose peer refuses the connection says so and exits 1")
{
    listener adt;
    loopback_socket closed;
    REQUIRE(closed.bound());
    for (const char* variable : {"HL7_EXAMPLE_SEED", "HL7_EXAMPLE_CALLBACK"}) {
        CAPTURE(variable);
        const auto r = run({env_path(variable), "127.0.0.1", adt.port(), closed.port(), HL7_SAMPLES_DIR});
        CHECK(r.status == 1);
        CHECK(r.out.find("ADT MSG00001: CA (accepted)") != std::string::npos);
        CHECK(r.out.find("ORU MSG00002: failed: not connected") != std::string::npos);
    }
}

TEST_CASE("frame-samples frames the samples into one MLLP stream and decodes them back intact")
{
    const auto r = run({env_path("HL7_EXAMPLE_FRAME_SAMPLES"), sample("adt_a01.hl7"), sample("oru_r01.hl7")});
    CHECK(r.status == 0);
    CHECK(r.out.find("2 messages framed into") != std::string::npos);
}
