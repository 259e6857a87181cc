// The hl7 tool's commands. Each defines its own subcommand and flags (in its own file) and
// returns how to run it; main.cpp parses the command line and runs the one given. A command
// returns the exit status, or throws failure for an error that ends it (see output.hpp).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace hl7::tool {

/// A subcommand of `hl7` and what runs it once the command line is parsed.
struct command {
    CLI::App* app;
    std::function<int()> run;
};

command define_send(CLI::App& app);   ///< `hl7 send` (send.cpp)
command define_listen(CLI::App& app); ///< `hl7 listen` (listen.cpp)
command define_get(CLI::App& app);    ///< `hl7 get` (get.cpp)
command define_outbox(CLI::App& app); ///< `hl7 outbox` (outbox.cpp)

} // namespace hl7::tool
