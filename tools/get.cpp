// hl7 get: the values at paths of one message (a batch counts as one message here, so that
// its FHS/BHS segments can be read too).
#include "commands.hpp"
#include "output.hpp"

#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>

#include <cerrno>
#include <fstream>
#include <iostream>
#include <sstream>

namespace hl7::tool {

namespace {

std::string read_all(const std::string& file)
{
    if (file == "-") {
        std::ostringstream s;
        s << std::cin.rdbuf();
        return s.str();
    }
    std::ifstream in(file, std::ios::binary);
    if (!in)
        throw failure(exit_usage, "cannot open '" + file + "': " + describe({errno, boost::system::system_category()}));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// The message's bytes: leading whitespace and a byte order mark dropped, and the payload of
// the first frame when the input is MLLP-framed.
std::string unwrap(std::string bytes, const std::string& source)
{
    if (bytes.starts_with("\xEF\xBB\xBF"))
        bytes.erase(0, 3);
    bytes.erase(0, bytes.find_first_not_of(" \t\r\n"));
    if (bytes.empty() || bytes[0] != mllp::start_block)
        return bytes;
    mllp::decoder decoder(bytes.size());
    decoder.feed(bytes);
    while (auto frame = decoder.next())
        if (*frame)
            return std::string(frame->value());
    throw failure(exit_failed, source + ": no complete MLLP frame");
}

struct get_options {
    std::vector<std::string> paths;
    std::string file = "-";
    bool raw = false;
};

int run_get(const get_options& o)
{
    // The syntax of the paths is checked before any input is read; whether a segment id is
    // known is checked by the lookups, against the message, as the library always does.
    std::vector<hl7::path> paths;
    for (const std::string& text : o.paths) {
        auto p = hl7::path::parse(text);
        if (!p)
            throw failure(exit_usage, "invalid path '" + text + "'");
        paths.push_back(p.value());
    }

    const std::string source = o.file == "-" ? "standard input" : o.file;
    auto msg = message::parse(unwrap(read_all(o.file), source));
    if (!msg)
        throw failure(exit_failed, source + ": " + describe(msg.error()));

    std::string out;
    for (std::size_t i = 0; i < paths.size(); ++i) {
        const auto v = msg.value().get(paths[i]);
        if (!v)
            throw failure(exit_usage, "invalid path '" + o.paths[i] + "'");
        out += o.raw ? std::string(v.value().raw()) : v.value().decoded();
        out += '\n';
    }
    write_stdout(out);
    return exit_ok;
}

} // namespace

command define_get(CLI::App& app)
{
    auto o = std::make_shared<get_options>();
    CLI::App* get = app.add_subcommand("get", "Print values of a message by path");
    get->footer("Prints the value at each path, one per line; an absent value prints an empty line.\n"
                "Paths are SEG[n].F[r].C.S: PID.5.1, MSH.9.2, PID.3[2].1, OBX[3].5, MSH.10.\n"
                "Exit status: 1 when the message does not parse, 2 for an invalid path.");
    get->add_flag("--raw", o->raw, "Print values as on the wire, escapes kept (default: decoded)");
    get->add_option("--file,-f", o->file, "File holding the message; '-': standard input")
        ->type_name("FILE")
        ->capture_default_str();
    get->add_option("PATH", o->paths, "Paths to print")->type_name("")->required();
    return {get, [o] { return run_get(*o); }};
}

} // namespace hl7::tool
