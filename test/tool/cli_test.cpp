// The hl7 command line itself: help, version and usage errors.
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

using namespace hl7::test;

TEST_CASE("hl7 --version prints the project version and --help lists the commands")
{
    const auto version = run({tool(), "--version"});
    CHECK(version.status == 0);
    CHECK(version.out == std::string("hl7 ") + HL7_VERSION + "\n");

    const auto help = run({tool(), "--help"});
    CHECK(help.status == 0);
    for (const char* command : {"send", "listen", "get"})
        CHECK(help.out.find(command) != std::string::npos);
    for (const char* command : {"send", "listen", "get"}) {
        const auto sub = run({tool(), command, "--help"});
        CHECK(sub.status == 0);
        CHECK(sub.out.find(std::string("Usage: hl7 ") + command) != std::string::npos);
    }
}

TEST_CASE("usage errors exit 2 with one line on standard error naming the problem")
{
    struct usage_case {
        std::vector<std::string> args;
        std::string says;
    };
    const std::vector<usage_case> cases = {
        {{}, "A subcommand is required"},
        {{"frobnicate"}, "frobnicate"},
        {{"send"}, "--port is required"},
        {{"send", "--port", "0"}, "invalid port '0'"},
        {{"send", "--port", "70000"}, "invalid port '70000'"},
        {{"send", "--port", "x"}, "--port"},
        {{"send", "--port", "5", "--host", "bad_host"}, "invalid host 'bad_host'"},
        {{"send", "--port", "5", "--host", "999.1.1.1"}, "invalid host '999.1.1.1'"},
        {{"send", "--port", "5", "--ack-timeout", "0"}, "timeouts must be more than 0 seconds"},
        {{"send", "--port", "5", "--bogus"}, "--bogus"},
        {{"send", "--port", "5", "/nonexistent/input.hl7"}, "cannot open '/nonexistent/input.hl7'"},
        {{"listen"}, "--port is required"},
        {{"listen", "--port", "-1"}, "invalid port '-1'"},
        {{"listen", "--port", "0", "--reply", "XX"}, "invalid --reply 'XX'"},
        {{"listen", "--port", "0", "--host", "localhost"}, "invalid host 'localhost'"},
        {{"get"}, "PATH is required"},
    };
    for (const auto& c : cases) {
        std::vector<std::string> argv{tool()};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        std::string shown;
        for (const auto& a : c.args)
            shown += a + ' ';
        CAPTURE(shown);
        const auto r = run(argv);
        CHECK(r.status == 2);
        CHECK(r.out == "");
        CHECK(lines(r.err).size() == 1);
        CHECK(r.err.starts_with("hl7: "));
        CHECK(r.err.find(c.says) != std::string::npos);
    }
}
