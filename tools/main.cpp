// hl7: send, receive and inspect HL7 v2 messages over MLLP. The command line is read here;
// each command defines its flags and runs in its own file (send.cpp, listen.cpp, get.cpp,
// outbox.cpp).
#include "commands.hpp"
#include "output.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>

#ifndef HL7_VERSION
#error "HL7_VERSION must be defined by the build"
#endif

namespace {

using namespace hl7::tool;

int run(int argc, char** argv)
{
    CLI::App app{"Send, receive and inspect HL7 v2 messages over MLLP.", "hl7"};
    app.set_version_flag("--version", std::string("hl7 ") + HL7_VERSION);
    app.require_subcommand(1);
    app.footer("Run 'hl7 COMMAND --help' for the options of a command.");
    const command commands[] = {define_send(app), define_listen(app), define_get(app), define_outbox(app)};

    if (const std::string first = argc > 1 ? argv[1] : "-";
        first[0] != '-' && std::none_of(std::begin(commands), std::end(commands),
                                        [&](const command& c) { return c.app->get_name() == first; }))
        throw failure(exit_usage, "unknown command '" + first + "': use send, listen, get or outbox (see 'hl7 --help')");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string name = "hl7";
        for (const command& c : commands)
            if (c.app->parsed())
                name += " " + c.app->get_name();
        throw failure(exit_usage, std::string(e.what()) + " (see '" + name + " --help')");
    }
    for (const command& c : commands)
        if (c.app->parsed())
            return c.run();
    return exit_usage;
}

} // namespace

int main(int argc, char** argv)
{
    try {
        return run(argc, argv);
    } catch (const failure& f) {
        std::fprintf(stderr, "hl7: %s\n", f.what());
        return f.status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hl7: %s\n", e.what());
        return exit_failed;
    } catch (...) {
        std::fputs("hl7: unexpected error\n", stderr);
        return exit_failed;
    }
}
