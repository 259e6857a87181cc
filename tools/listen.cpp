// hl7 listen: an MLLP server (hl7::server) that acknowledges each message and writes it out.
// Everything runs on one thread, so the handler and the observer share state without locks.
#include "commands.hpp"
#include "output.hpp"

#include <hl7/net/server.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;

struct listen_options {
    std::string host = "127.0.0.1";
    int port = -1;
    /// accept: AA, or AR for a message without MSH-9, MSH-10 or MSH-12; otherwise every
    /// message gets this verdict.
    verdict reply = verdict::accept;
    std::string out = "-"; ///< "-": standard output; otherwise a directory, one file per message
    bool json = false;
    std::size_t max_frame = mllp::default_max_frame;
    /// TLS (on when `tls` or any tls_* option is given): certificate and key required;
    /// tls_ca, when set, requires and verifies client certificates.
    bool tls = false;
    std::string tls_ca, tls_cert, tls_key;
};

verdict reply_verdict(std::string text)
{
    for (char& c : text)
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const auto code = parse_ack_code(text);
    if (!code || (*code != ack_code::AA && *code != ack_code::AE && *code != ack_code::AR))
        throw failure(exit_usage, "invalid --reply '" + text + "': one of AA, AE, AR");
    return verdict_of(*code);
}

// The fields a message must have for `--reply AA` to accept it.
struct required_field {
    const char* path;  // what must be valued
    int field;         // its MSH field number, for ERR-2
    const char* name;  // how the error names it
};

constexpr required_field required_fields[] = {
    {"MSH.9.1", 9, "MSH-9 (message type)"},
    {"MSH.10", 10, "MSH-10 (message control id)"},
    {"MSH.12", 12, "MSH-12 (version id)"},
};

std::vector<required_field> missing_fields(const message& m)
{
    std::vector<required_field> missing;
    for (const required_field& f : required_fields) {
        auto v = m.get(f.path);
        if (!v || v.value().raw().empty())
            missing.push_back(f);
    }
    return missing;
}

// The reply `options` ask for: AE or AR for everything, or AA unless a required field is
// missing, which is answered AR with HL7 error 101 and an ERR segment naming the field.
outcome::result<message> make_reply(const message& m, verdict asked)
{
    if (asked != verdict::accept) {
        const std::string text = std::string("hl7 listen --reply ") + (asked == verdict::error ? "AE" : "AR");
        return make_ack(m, asked, {.text = text});
    }
    const auto missing = missing_fields(m);
    if (missing.empty())
        return make_ack(m, verdict::accept);
    std::string text = "required field";
    text += missing.size() > 1 ? "s " : " ";
    for (std::size_t i = 0; i < missing.size(); ++i)
        text += (i == 0 ? "" : ", ") + std::string(missing[i].name);
    text += missing.size() > 1 ? " are missing" : " is missing";
    auto ack = make_ack(m, verdict::reject, {.error_code = 101, .error_text = text});
    // ERR-2, the error location (ERL): segment MSH, occurrence 1, the first missing field.
    if (ack)
        (void)ack.value().set("ERR.2", {"MSH", "1", std::to_string(missing.front().field)});
    return ack;
}

// A file name made of the sequence number and the control id, in characters safe anywhere.
std::string file_name(std::uint64_t index, std::string_view control_id)
{
    char number[24];
    std::snprintf(number, sizeof number, "%06llu", static_cast<unsigned long long>(index));
    std::string name = number;
    if (!control_id.empty()) {
        name += '-';
        for (char c : control_id.substr(0, 64)) {
            const bool safe = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                              c == '_' || c == '.';
            name += safe ? c : '_';
        }
    }
    return name + ".hl7";
}

std::string raw_or_empty(const message& m, const char* path)
{
    auto v = m.get(path);
    return v ? std::string(v.value().raw()) : std::string();
}

// What the server's handler and observer share.
class listener {
public:
    explicit listener(const listen_options& o) : options_(o)
    {
        if (o.out == "-")
            return;
        std::error_code ec;
        fs::create_directories(o.out, ec);
        if (ec || !fs::is_directory(o.out))
            throw failure(exit_failed, "cannot create directory '" + o.out + "': " + (ec ? ec.message() : "not a directory"));
    }

    // Runs on the connection's strand right after observe() reported the message as
    // received: nothing else runs in between on this single thread, so peer_ is its sender.
    outcome::result<message> answer(const message& m)
    {
        auto reply = make_reply(m, options_.reply);
        record(m, reply ? raw_or_empty(reply.value(), "MSA.1") : std::string());
        return reply;
    }

    void observe(const server_event& e)
    {
        using kind = server_event::kind;
        switch (e.what) {
        case kind::received: peer_ = e.peer; break;
        case kind::bad_frame:
        case kind::unparsable:
            warn(host_port(e.peer) + ": " + describe(e.error) +
                 (e.control_id.empty() ? "" : " (control id " + std::string(e.control_id) + ")"));
            break;
        case kind::handler_error: warn(host_port(e.peer) + ": " + std::string(e.detail)); break;
        case kind::handshake_failed: warn(host_port(e.peer) + ": " + describe(e.error)); break;
        default: break;
        }
    }

private:
    static void warn(const std::string& text)
    {
        std::fprintf(stderr, "hl7: %s\n", text.c_str());
    }

    void record(const message& m, const std::string& reply_code)
    {
        ++index_;
        const std::string control_id = raw_or_empty(m, "MSH.10");
        if (options_.out != "-") {
            const fs::path file = fs::path(options_.out) / file_name(index_, control_id);
            std::ofstream out(file, std::ios::binary);
            out.write(m.str().data(), static_cast<std::streamsize>(m.str().size()));
            out.close();
            if (!out)
                throw std::runtime_error("cannot write '" + file.string() + "'");
        }
        if (options_.json) {
            write_stdout("{\"index\":" + std::to_string(index_) + ",\"peer\":" + json_string(host_port(peer_)) +
                         ",\"control_id\":" + json_string(control_id) +
                         ",\"message_type\":" + json_string(raw_or_empty(m, "MSH.9")) +
                         ",\"reply_code\":" + json_string(reply_code) + "}\n");
        } else if (options_.out == "-") {
            // Readable: one segment per line, a blank line after the message.
            std::string text(m.str());
            for (char& c : text)
                if (c == '\r')
                    c = '\n';
            if (!text.ends_with('\n'))
                text += '\n';
            write_stdout(text + '\n');
        }
    }

    const listen_options options_;
    std::uint64_t index_ = 0;
    asio::ip::tcp::endpoint peer_;
};

asio::awaitable<outcome::result<message>> answer(std::shared_ptr<listener> l, const message& m)
{
    co_return l->answer(m);
}

int run_listen(const listen_options& o)
{
    if (o.port < 0 || o.port > 65535)
        throw failure(exit_usage, "invalid port '" + std::to_string(o.port) + "': not in 0-65535");
    if (o.max_frame == 0)
        throw failure(exit_usage, "--max-frame must be at least 1 byte");
    auto l = std::make_shared<listener>(o);

    asio::io_context ctx;
    // Installed before the server exists, so that a signal is never missed once it listens.
    asio::signal_set signals(ctx, SIGINT, SIGTERM);
    const std::string host(strip_brackets(o.host));
    server_options so{.host = host,
                      .port = static_cast<std::uint16_t>(o.port),
                      .max_frame = o.max_frame,
                      .handler = [l](const message& m) { return answer(l, m); },
                      .observer = [l](const server_event& e) { l->observe(e); }};
    if (o.tls || !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty()) {
        if (o.tls_cert.empty() || o.tls_key.empty())
            throw failure(exit_usage, "TLS needs --tls-cert and --tls-key");
        so.tls = tls_server_options{.certificate_file = o.tls_cert, .private_key_file = o.tls_key,
                                    .client_ca_file = o.tls_ca};
    }
    auto created = server::create(ctx.get_executor(), std::move(so));
    if (!created && created.error() == errc::tls_setup_failed)
        throw failure(exit_usage, describe(created.error()) + " (--tls-cert, --tls-key, --tls-ca)");
    if (!created && created.error() == errc::invalid_host)
        throw failure(exit_usage, "invalid host '" + o.host + "': listen takes an IPv4 or IPv6 address");
    if (!created)
        throw failure(exit_failed, "cannot listen on " + host_port(host, static_cast<std::uint16_t>(o.port)) + ": " +
                                       describe(created.error()));
    server srv = std::move(created).value();
    write_stdout("listening on " + host_port(srv.local_endpoint()) + "\n");

    signals.async_wait([&](boost::system::error_code ec, int) {
        if (ec)
            return;
        srv.async_close([&] {
            const server_counters c = srv.counters();
            std::fprintf(stderr, "hl7: stopped: %llu connection%s, %llu received, %llu replied, %llu errors\n",
                         static_cast<unsigned long long>(c.connections), c.connections == 1 ? "" : "s",
                         static_cast<unsigned long long>(c.received),
                         static_cast<unsigned long long>(c.replied), static_cast<unsigned long long>(c.errors));
            ctx.stop();
        });
        // A second signal while stopping: stop at once.
        signals.async_wait([&](boost::system::error_code again, int) {
            if (!again)
                ctx.stop();
        });
    });
    ctx.run();
    return exit_ok;
}

} // namespace

command define_listen(CLI::App& app)
{
    auto o = std::make_shared<listen_options>();
    auto reply = std::make_shared<std::string>("AA");
    CLI::App* listen = app.add_subcommand("listen", "Receive messages over MLLP and acknowledge them");
    listen->footer("The first line on standard output is 'listening on <host>:<port>'. SIGINT or SIGTERM stops\n"
                   "it, with a summary on standard error, exit status 0.");
    listen->add_option("--port,-p", o->port, "Port to listen on; 0 picks a free one")->type_name("PORT")->required();
    listen->add_option("--host", o->host, "IPv4 or IPv6 address to bind")->type_name("HOST")->capture_default_str();
    listen->add_option("--reply", *reply,
                       "AA: accept, but reject (AR) a message without MSH-9, MSH-10 or MSH-12; AE or AR: answer "
                       "every message so")
        ->type_name("AA|AE|AR")
        ->capture_default_str();
    listen->add_option("--out", o->out,
                       "Write each message to a file of its own in DIR (created if missing); '-' (the default): "
                       "to standard output, a segment per line, a blank line after each message")
        ->type_name("DIR|-");
    listen->add_flag("--json", o->json,
                     "Print one JSON object per message instead: index, peer, control_id, message_type, reply_code");
    listen->add_option("--max-frame", o->max_frame, "Largest message accepted")
        ->type_name("BYTES")
        ->capture_default_str();
    listen->add_flag("--tls", o->tls, "Use TLS (implied by any --tls-* option); needs --tls-cert and --tls-key");
    listen->add_option("--tls-cert", o->tls_cert, "PEM server certificate")->type_name("FILE");
    listen->add_option("--tls-key", o->tls_key, "PEM private key of --tls-cert")->type_name("FILE");
    listen->add_option("--tls-ca", o->tls_ca, "PEM file of the CAs of accepted client certificates; when given, "
                                              "every client must present one (mutual TLS)")
        ->type_name("FILE");
    return {listen, [o, reply] {
                o->reply = reply_verdict(*reply);
                return run_listen(*o);
            }};
}

} // namespace hl7::tool
