// hl7: send, receive and inspect HL7 v2 messages over MLLP. The command line is read here;
// each command lives in its own file (send.cpp, listen.cpp, get.cpp).
#include "commands.hpp"
#include "output.hpp"

#include <CLI/CLI.hpp>

#include <cctype>
#include <cstdio>
#include <exception>
#include <iostream>

#ifndef HL7_VERSION
#error "HL7_VERSION must be defined by the build"
#endif

namespace {

using namespace hl7::tool;

hl7::verdict reply_verdict(std::string text)
{
    for (char& c : text)
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const auto code = hl7::parse_ack_code(text);
    if (!code || (*code != hl7::ack_code::AA && *code != hl7::ack_code::AE && *code != hl7::ack_code::AR))
        throw failure(exit_usage, "invalid --reply '" + text + "': one of AA, AE, AR");
    return hl7::verdict_of(*code);
}

int run(int argc, char** argv)
{
    CLI::App app{"Send, receive and inspect HL7 v2 messages over MLLP.", "hl7"};
    app.set_version_flag("--version", std::string("hl7 ") + HL7_VERSION);
    app.require_subcommand(1);
    app.footer("Run 'hl7 COMMAND --help' for the options of a command.");

    send_options so;
    CLI::App* send = app.add_subcommand("send", "Send messages over MLLP and print their acknowledgements");
    send->footer("Messages are sent in order over one connection, one at a time. One line per message:\n"
                 "  <n> <MSH-10> <MSA-1> <MSA-2> <round trip ms> [error]   ('-' for what is absent)\n"
                 "A message that fails is reported on its line and the next one is sent; but when the first\n"
                 "connection attempts all fail, the rest of the input is not sent.\n"
                 "Exit status: 0 when every message got AA or CA, 1 otherwise, 2 for a usage error.");
    send->add_option("--port,-p", so.port, "Port to connect to (1-65535)")->type_name("PORT")->required();
    send->add_option("--host", so.host, "IPv4 address, IPv6 address (brackets optional) or DNS name")
        ->type_name("HOST")
        ->capture_default_str();
    send->add_option("--ack-timeout", so.ack_timeout, "Seconds to wait for each acknowledgement")
        ->type_name("S")
        ->capture_default_str();
    send->add_option("--connect-timeout", so.connect_timeout, "Seconds allowed for each connection attempt")
        ->type_name("S")
        ->capture_default_str();
    send->add_option("--retries", so.retries, "Consecutive failed connection attempts before giving up (0: never)")
        ->type_name("N")
        ->capture_default_str();
    send->add_option("--max-frame", so.max_frame, "Largest message or acknowledgement")
        ->type_name("BYTES")
        ->capture_default_str();
    send->add_flag("--json", so.json,
                   "One JSON object per line instead: index, control_id, ack_code, ack_control_id, rtt_us, error");
    send->add_flag("--tls", so.tls, "Use TLS (implied by any --tls-* option); the server's certificate is verified");
    send->add_option("--tls-ca", so.tls_ca, "PEM file of the CAs to trust (default: the system's)")->type_name("FILE");
    send->add_option("--tls-cert", so.tls_cert, "PEM client certificate, for mutual TLS")->type_name("FILE");
    send->add_option("--tls-key", so.tls_key, "PEM private key of --tls-cert")->type_name("FILE");
    send->add_option("--tls-server-name", so.tls_server_name,
                     "Name (or address) the server's certificate must carry (default: --host)")
        ->type_name("NAME");
    send->add_flag("--tls-insecure", so.tls_insecure,
                   "DANGEROUS, for tests: accept any server certificate for any name (still encrypted)");
    send->add_option("FILE", so.files,
                     "Files of messages; none or '-': standard input. Segments end in CR, LF or CRLF; messages are "
                     "separated by blank lines or the next MSH; MLLP-framed input and FHS/BHS batches are accepted")
        ->type_name("");

    listen_options lo;
    std::string reply = "AA";
    CLI::App* listen = app.add_subcommand("listen", "Receive messages over MLLP and acknowledge them");
    listen->footer("The first line on standard output is 'listening on <host>:<port>'. SIGINT or SIGTERM stops\n"
                   "it, with a summary on standard error, exit status 0.");
    listen->add_option("--port,-p", lo.port, "Port to listen on; 0 picks a free one")->type_name("PORT")->required();
    listen->add_option("--host", lo.host, "IPv4 or IPv6 address to bind")->type_name("HOST")->capture_default_str();
    listen->add_option("--reply", reply,
                       "AA: accept, but reject (AR) a message without MSH-9, MSH-10 or MSH-12; AE or AR: answer "
                       "every message so")
        ->type_name("AA|AE|AR")
        ->capture_default_str();
    listen->add_option("--out", lo.out,
                       "Write each message to a file of its own in DIR (created if missing); '-' (the default): "
                       "to standard output, a segment per line, a blank line after each message")
        ->type_name("DIR|-");
    listen->add_flag("--json", lo.json,
                     "Print one JSON object per message instead: index, peer, control_id, message_type, reply_code");
    listen->add_option("--max-frame", lo.max_frame, "Largest message accepted")
        ->type_name("BYTES")
        ->capture_default_str();
    listen->add_flag("--tls", lo.tls, "Use TLS (implied by any --tls-* option); needs --tls-cert and --tls-key");
    listen->add_option("--tls-cert", lo.tls_cert, "PEM server certificate")->type_name("FILE");
    listen->add_option("--tls-key", lo.tls_key, "PEM private key of --tls-cert")->type_name("FILE");
    listen->add_option("--tls-ca", lo.tls_ca, "PEM file of the CAs of accepted client certificates; when given, "
                                              "every client must present one (mutual TLS)")
        ->type_name("FILE");

    get_options go;
    CLI::App* get = app.add_subcommand("get", "Print values of a message by path");
    get->footer("Prints the value at each path, one per line; an absent value prints an empty line.\n"
                "Paths are SEG[n].F[r].C.S: PID.5.1, MSH.9.2, PID.3[2].1, OBX[3].5, MSH.10.\n"
                "Exit status: 1 when the message does not parse, 2 for a bad path.");
    get->add_flag("--raw", go.raw, "Print values as on the wire, escapes kept (default: decoded)");
    get->add_option("--file,-f", go.file, "File holding the message; '-': standard input")
        ->type_name("FILE")
        ->capture_default_str();
    get->add_option("PATH", go.paths, "Paths to print")->type_name("")->required();

    if (const std::string first = argc > 1 ? argv[1] : "-";
        first[0] != '-' && first != "send" && first != "listen" && first != "get")
        throw failure(exit_usage, "unknown command '" + first + "': use send, listen or get (see 'hl7 --help')");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string command = "hl7";
        for (const CLI::App* sub : {send, listen, get})
            if (sub->parsed())
                command += " " + sub->get_name();
        throw failure(exit_usage, std::string(e.what()) + " (see '" + command + " --help')");
    }

    if (send->parsed())
        return run_send(so);
    if (listen->parsed()) {
        lo.reply = reply_verdict(reply);
        return run_listen(lo);
    }
    return run_get(go);
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
