// hl7 listen: an MLLP server (hl7::server) that acknowledges each message once it is written
// out: to standard output (a record per message, or a JSON line), or durably to a file per
// message (--out DIR). Connections are served on several I/O threads; what goes to standard
// output and standard error is written by threads of their own, and files by a small pool, so
// that a slow reader or disk slows the acknowledgements of the messages waiting for it, never
// the I/O threads. (A small record with nothing waiting ahead of it is written by its I/O
// thread when standard output is a pipe or /dev/null that takes it at once.)
#include "client_flags.hpp"
#include "commands.hpp"
#include "dedup.hpp"
#include "metrics.hpp"
#include "output.hpp"
#include "store.hpp"
#include "writer.hpp"

#include <hl7/net/server.hpp>

#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using boost::system::error_code;

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
    std::vector<std::string> tls_allow_names;
    // Exposure to untrusted peers: the library's defaults.
    std::size_t max_connections = server_options{}.max_connections;
    bool max_connections_given = false; ///< asked for on the command line, not defaulted
    std::size_t max_per_source = server_options{}.max_per_source;
    double idle_timeout = 300;  ///< seconds
    double frame_timeout = 60;  ///< seconds
    double write_timeout = 30;  ///< seconds
    unsigned threads = 0;       ///< 0: one per core
    std::string metrics;        ///< HOST:PORT; empty: none
    std::vector<std::string> allow;
    bool dedup = false;
};

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

// Descriptors kept for what is not a connection: standard streams, the listening socket,
// files being written, the metrics endpoint, the resolver, the event loop.
constexpr std::size_t reserved_descriptors = 64;
constexpr unsigned disk_threads = 4;

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

std::string raw_or_empty(const message& m, const char* path)
{
    auto v = m.get(path);
    return v ? std::string(v.value().raw()) : std::string();
}

// A message as standard output shows it: one segment per line, a blank line after it.
// One allocation, and the segment ends found by memchr: a byte loop over every message was the
// listener's costliest function of its own.
std::string readable(const message& m)
{
    const std::string_view s = m.str();
    std::string text;
    text.reserve(s.size() + 2);
    text = s;
    char* const end = text.data() + text.size();
    for (char* c = text.data(); (c = static_cast<char*>(std::memchr(c, '\r', static_cast<std::size_t>(end - c))));)
        *c++ = '\n';
    if (!text.ends_with('\n'))
        text += '\n';
    text += '\n';
    return text;
}

// What a log line calls several events of kind `k`.
std::string plural(server_event::kind k)
{
    using kind = server_event::kind;
    switch (k) {
    case kind::bad_frame: return "bad frames";
    case kind::unparsable: return "unparsable messages";
    case kind::handler_error: return "handler errors";
    case kind::handshake_failed: return "failed handshakes";
    case kind::refused: return "refused connections";
    case kind::limit_reached: return "limits reached";
    case kind::timed_out: return "timeouts";
    case kind::ack_ignored: return "acknowledgements not acknowledged";
    default: return "events";
    }
}

// What the server's handler and observer share, across the I/O threads.
class listener {
public:
    listener(const listen_options& o, fd_writer& out, fd_writer& log, asio::thread_pool& disk)
        : options_(o), out_(out), log_(log), disk_(disk)
    {
        if (o.out != "-")
            store_.emplace(o.out);
        if (o.dedup)
            dedup_.emplace();
    }

    const listen_options& options() const noexcept { return options_; }
    fd_writer& out() noexcept { return out_; }
    std::optional<dedup_window>& dedup() noexcept { return dedup_; }
    std::atomic<std::uint64_t> duplicates{0};

    std::uint64_t next_index() noexcept { return ++index_; }

    // Saves `m` on the disk pool; completes with void(error_code) on the caller's executor.
    // A plain function that builds the awaitable, so that no temporary of it lives across the
    // co_await that awaits it (GCC 12).
    asio::awaitable<std::tuple<error_code>> save(const message& m)
    {
        return asio::async_initiate<const decltype(tuple_awaitable)&, void(error_code)>(
            [this, &m](auto handler) {
                asio::post(disk_, [this, &m, h = std::move(handler)]() mutable {
                    error_code ec;
                    try {
                        store_->save(m.control_id(), m.str());
                    } catch (const std::system_error& e) {
                        ec = e.code();
                        warn(e.what());
                    } catch (const std::exception& e) {
                        ec = errc::handler_failed;
                        warn(e.what());
                    }
                    asio::dispatch(asio::append(std::move(h), ec)); // on the handler's executor
                });
            },
            tuple_awaitable);
    }

    bool to_files() const noexcept { return store_.has_value(); }

    void observe(const server_event& e)
    {
        using kind = server_event::kind;
        std::string line;
        switch (e.what) {
        case kind::bad_frame:
        case kind::unparsable:
        case kind::handshake_failed:
        case kind::refused:
        case kind::limit_reached:
        case kind::timed_out:
        case kind::ack_ignored:
        case kind::accept_failed:
        case kind::handler_error: break;
        default: return;
        }
        if (e.peer == asio::ip::tcp::endpoint()) { // a count of reports left out
            warn(std::to_string(e.suppressed) + " more " + plural(e.what) + " not shown");
            return;
        }
        if (e.what == kind::ack_ignored)
            line = "an acknowledgement, not acknowledged";
        else
            line = e.what == kind::handler_error && !e.detail.empty() ? std::string(e.detail) : describe(e.error);
        if (!e.control_id.empty())
            line += " (control id " + std::string(e.control_id) + ")";
        if (!e.detail.empty() && e.what != kind::handler_error)
            line += ": " + std::string(e.detail);
        if (e.suppressed)
            line += " (and " + std::to_string(e.suppressed) + " more like it before)";
        warn((e.what == kind::accept_failed ? std::string("accepting") : host_port(e.peer)) + ": " + line);
    }

    void warn(const std::string& text) { log_.write_line("hl7: " + text + "\n"); }

private:
    const listen_options options_;
    fd_writer& out_;
    fd_writer& log_;
    asio::thread_pool& disk_;
    std::optional<message_store> store_;
    std::optional<dedup_window> dedup_;
    std::atomic<std::uint64_t> index_{0};
};

// The handler: answers `m` once it is written out. A message seen before (--dedup) gets the
// reply it got then, and is not written again.
asio::awaitable<outcome::result<message>> answer(std::shared_ptr<listener> l, const message& m, const peer_info& from)
{
    std::optional<std::string> key;
    if (l->dedup() && (key = dedup_window::key_of(m))) {
        auto seen = l->dedup()->claim(*key);
        if (seen.what == dedup_window::found::state::answered) {
            ++l->duplicates;
            if (seen.reply)
                co_return std::move(*seen.reply);
            co_return errc::no_ack_requested;
        }
        if (seen.what == dedup_window::found::state::in_progress) {
            ++l->duplicates;
            co_return make_ack(m, verdict::error,
                               {.text = "a message with this control id is being processed; send it again later"});
        }
    }
    auto reply = make_reply(m, l->options().reply);
    const std::string code = reply ? raw_or_empty(reply.value(), "MSA.1") : std::string();
    error_code ec;
    if (l->to_files()) {
        auto saving = l->save(m);
        std::tie(ec) = co_await std::move(saving);
    }
    if (!ec && (l->options().json || !l->to_files())) {
        std::string record;
        if (l->options().json)
            record = "{\"index\":" + std::to_string(l->next_index()) + ",\"peer\":" + json_string(host_port(from.address)) +
                     ",\"control_id\":" + json_string(m.control_id()) +
                     ",\"message_type\":" + json_string(raw_or_empty(m, "MSH.9")) +
                     ",\"reply_code\":" + json_string(code) + "}\n";
        else
            record = readable(m);
        if (!l->out().try_write(record)) {
            auto writing = l->out().async_write(std::move(record), tuple_awaitable);
            std::tie(ec) = co_await std::move(writing);
        }
    }
    if (ec) {
        if (key)
            l->dedup()->abandon(*key);
        co_return ec;
    }
    if (key)
        l->dedup()->finish(*key, reply ? std::optional<message>(reply.value()) : std::nullopt);
    co_return reply;
}

std::string collect_metrics(const server& srv, const listener& l)
{
    const server_counters c = srv.counters();
    exposition e;
    auto counter = [&](const char* name, const char* help, double value) {
        e.family(name, "counter", help);
        e.sample(std::string(name) + "_total", value);
    };
    e.family("messaging_client_consumed_messages", "counter", "Messages received (OpenTelemetry messaging)");
    e.sample("messaging_client_consumed_messages_total", static_cast<double>(c.received), {{"messaging_system", "hl7v2"}});
    e.family("hl7_listen_replies", "counter", "Replies written, by MSA-1");
    for (const ack_code code : {ack_code::AA, ack_code::AE, ack_code::AR, ack_code::CA, ack_code::CE, ack_code::CR})
        e.sample("hl7_listen_replies_total", static_cast<double>(c.replies_by_code[static_cast<std::size_t>(code)]),
                 {{"code", to_string(code)}});
    counter("hl7_listen_connections_accepted", "Connections accepted", static_cast<double>(c.connections));
    e.family("hl7_listen_connections_open", "gauge", "Connections open");
    e.sample("hl7_listen_connections_open", static_cast<double>(c.open));
    e.family("hl7_listen_connections_refused", "counter", "Connections refused, by the limit that refused them");
    for (const server_limit limit : {server_limit::allowed_sources, server_limit::max_connections,
                                     server_limit::max_per_source, server_limit::allowed_client_names})
        e.sample("hl7_listen_connections_refused_total", static_cast<double>(c.limits[static_cast<std::size_t>(limit)]),
                 {{"reason", to_string(limit)}});
    e.family("hl7_listen_limit_hits", "counter", "Limits and timeouts reached, by limit");
    for (std::size_t i = 0; i < server_limit_count; ++i)
        e.sample("hl7_listen_limit_hits_total", static_cast<double>(c.limits[i]),
                 {{"limit", to_string(static_cast<server_limit>(i))}});
    counter("hl7_listen_bad_frames", "Frames dropped as oversized or cut short", static_cast<double>(c.bad_frames));
    counter("hl7_listen_errors", "Bad frames, unparsable or refused messages, handler errors, failed handshakes",
            static_cast<double>(c.errors));
    counter("hl7_listen_acks_ignored", "Acknowledgements received, deliberately not acknowledged",
            static_cast<double>(c.acks_ignored));
    counter("hl7_listen_duplicates", "Messages answered from the --dedup window", static_cast<double>(l.duplicates));
    e.family("hl7_listen_network_io_bytes", "counter", "MLLP bytes, by direction (OpenTelemetry network.io.direction)");
    e.sample("hl7_listen_network_io_bytes_total", static_cast<double>(c.bytes_received),
             {{"network_io_direction", "receive"}});
    e.sample("hl7_listen_network_io_bytes_total", static_cast<double>(c.bytes_sent),
             {{"network_io_direction", "transmit"}});
    const auto& h = c.handler_time;
    e.histogram("messaging_process_duration_seconds",
                "Time from a message's arrival at the handler to its reply (OpenTelemetry messaging)", h.bounds,
                h.buckets, std::chrono::duration<double>(h.sum).count(), {{"messaging_system", "hl7v2"}});
    return e.text();
}

// Raises the soft descriptor limit to the hard one, and keeps max_connections within it,
// saying so when the value was asked for.
std::size_t fit_descriptors(std::size_t max_connections, bool given, fd_writer& log)
{
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) != 0)
        return max_connections;
    if (r.rlim_cur < r.rlim_max) {
        rlimit raised = r;
        raised.rlim_cur = r.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &raised) == 0)
            r = raised;
    }
    if (r.rlim_cur == RLIM_INFINITY || max_connections == 0 || r.rlim_cur <= reserved_descriptors)
        return max_connections;
    const auto room = static_cast<std::size_t>(r.rlim_cur - reserved_descriptors);
    if (max_connections <= room)
        return max_connections;
    if (given)
        log.write_line("hl7: --max-connections lowered to " + std::to_string(room) +
                       ": the descriptor limit is " + std::to_string(r.rlim_cur) + "\n");
    return room;
}

int run_listen(listen_options o)
{
    if (o.port < 0 || o.port > 65535)
        throw failure(exit_usage, "invalid port '" + std::to_string(o.port) + "': not in 0-65535");
    if (o.max_frame == 0)
        throw failure(exit_usage, "--max-frame must be at least 1 byte");
    for (const double s : {o.idle_timeout, o.frame_timeout, o.write_timeout})
        if (!(s >= 0))
            throw failure(exit_usage, "timeouts are seconds, 0 or more (0: none)");
    if (!o.tls_allow_names.empty() && o.tls_ca.empty())
        throw failure(exit_usage, "--tls-allow-name needs --tls-ca: client certificates must be asked for");
    const unsigned threads = o.threads != 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());

    // A reader of standard output that goes away must end the listener with a message, not kill
    // it with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    // Large buffers (frames being gathered) from mmap, given back to the system when freed:
    // glibc would otherwise raise this threshold after the first large free and keep such
    // buffers in its heap, so that memory a hostile peer made the listener take stays taken.
    ::mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    asio::io_context ctx(static_cast<int>(threads));
    // Installed before the server exists, so that a signal is never missed once it listens.
    asio::signal_set signals(ctx, SIGINT, SIGTERM);
    std::atomic<bool> stdout_broken{false};
    std::function<void()> stop;
    // Declared after the io_context, so destroyed (their threads joined, what they hold
    // completed into it) before it.
    std::optional<fd_writer> log(std::in_place, STDERR_FILENO);
    fd_writer out(STDOUT_FILENO, [&](error_code) {
        stdout_broken = true;
        asio::post(ctx, [&] { stop(); });
    });
    asio::thread_pool disk(disk_threads);
    o.max_connections = fit_descriptors(o.max_connections, o.max_connections_given, *log);
    auto l = std::make_shared<listener>(o, out, *log, disk);

    const std::string host(strip_brackets(o.host));
    server_options so{.host = host,
                      .port = static_cast<std::uint16_t>(o.port),
                      .max_frame = o.max_frame,
                      .handler = [l](const message& m, const peer_info& p) { return answer(l, m, p); },
                      .observer = [l](const server_event& e) { l->observe(e); }};
    so.allowed_sources = o.allow;
    so.max_connections = o.max_connections;
    so.max_per_source = o.max_per_source;
    so.idle_timeout = to_ms(o.idle_timeout);
    so.frame_timeout = to_ms(o.frame_timeout);
    so.write_timeout = to_ms(o.write_timeout);
    if (o.tls || !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty() || !o.tls_allow_names.empty()) {
        if (o.tls_cert.empty() || o.tls_key.empty())
            throw failure(exit_usage, "TLS needs --tls-cert and --tls-key");
        so.tls = tls_server_options{.certificate_file = o.tls_cert, .private_key_file = o.tls_key,
                                    .client_ca_file = o.tls_ca, .allowed_client_names = o.tls_allow_names};
    }
    const auto close_timeout = so.close_timeout;
    auto created = server::create(ctx.get_executor(), std::move(so));
    if (!created && created.error() == errc::tls_setup_failed)
        throw failure(exit_usage, describe(created.error()) + " (--tls-cert, --tls-key, --tls-ca)");
    if (!created && created.error() == errc::invalid_host)
        throw failure(exit_usage, "invalid host '" + o.host + "': listen takes an IPv4 or IPv6 address");
    if (!created && created.error() == errc::invalid_network)
        throw failure(exit_usage, "invalid --allow: each is an IPv4 or IPv6 network, such as 10.0.0.0/8 or 2001:db8::/32");
    if (!created)
        throw failure(exit_failed, "cannot listen on " + host_port(host, static_cast<std::uint16_t>(o.port)) + ": " +
                                       describe(created.error()));
    server srv = std::move(created).value();

    std::optional<metrics_endpoint> metrics;
    if (!o.metrics.empty()) {
        metrics.emplace(serve_metrics(ctx.get_executor(), o.metrics, [&srv, l] { return collect_metrics(srv, *l); }));
        l->warn("metrics at http://" + host_port(metrics->local_endpoint()) + "/metrics");
    }
    // Nothing runs before ctx does: this line is the first on standard output.
    write_stdout("listening on " + host_port(srv.local_endpoint()) + "\n");

    // Stopping lets the connections finish what they have in hand; a handler that cannot (its
    // record waits for a standard output nobody reads) is given up after close_timeout.
    asio::steady_timer give_up(ctx);
    std::atomic<bool> stopping{false};
    stop = [&] {
        if (stopping.exchange(true))
            return;
        if (stdout_broken)
            l->warn("standard output is closed: stopping");
        if (metrics)
            metrics->stop();
        srv.async_close([&] { ctx.stop(); });
        give_up.expires_after(close_timeout + std::chrono::seconds(2));
        give_up.async_wait([&](error_code ec) {
            if (!ec)
                ctx.stop();
        });
    };
    signals.async_wait([&](error_code ec, int) {
        if (ec)
            return;
        stop();
        // A second signal while stopping: stop at once.
        signals.async_wait([&](error_code again, int) {
            if (!again)
                ctx.stop();
        });
    });

    std::vector<std::thread> workers;
    for (unsigned i = 1; i < threads; ++i)
        workers.emplace_back([&ctx] { ctx.run(); });
    ctx.run();
    for (auto& w : workers)
        w.join();

    const server_counters c = srv.counters();
    log.reset(); // what it holds is written before the summary
    std::fprintf(stderr, "hl7: stopped: %llu connection%s, %llu received, %llu replied, %llu errors\n",
                 static_cast<unsigned long long>(c.connections), c.connections == 1 ? "" : "s",
                 static_cast<unsigned long long>(c.received), static_cast<unsigned long long>(c.replied),
                 static_cast<unsigned long long>(c.errors));
    return stdout_broken ? exit_failed : exit_ok;
}

} // namespace

command define_listen(CLI::App& app)
{
    auto o = std::make_shared<listen_options>();
    auto reply = std::make_shared<std::string>("AA");
    CLI::App* listen = app.add_subcommand("listen", "Receive messages over MLLP and acknowledge them");
    listen->footer(
        "The first line on standard output is 'listening on <host>:<port>'. Each message is acknowledged once it is\n"
        "written out (to a file of its own with --out, synced to disk first). SIGINT or SIGTERM stops it, with a\n"
        "summary on standard error, exit status 0; a standard output that is closed stops it with exit status 1.\n"
        "Limits and timeouts: 0 turns one off.");
    listen->add_option("--port,-p", o->port, "Port to listen on; 0 picks a free one")->type_name("PORT")->required();
    listen->add_option("--host", o->host, "IPv4 or IPv6 address to bind")->type_name("HOST")->capture_default_str();
    listen->add_option("--reply", *reply,
                       "AA: accept, but reject (AR) a message without MSH-9, MSH-10 or MSH-12; AE or AR: answer "
                       "every message so")
        ->type_name("AA|AE|AR")
        ->capture_default_str();
    listen->add_option("--out", o->out,
                       "Write each message to a file of its own in DIR (created if missing), named "
                       "<number>-<control id>.hl7, numbered on from the files already there, never overwriting one; "
                       "'-' (the default): to standard output, a segment per line, a blank line after each message")
        ->type_name("DIR|-");
    listen->add_flag("--json", o->json,
                     "Print one JSON object per message instead: index, peer, control_id, message_type, reply_code");
    listen->add_flag("--dedup", o->dedup,
                     "Answer a message whose MSH-10 (with MSH-3 and MSH-4) was among the last 10000 answered with the "
                     "same reply, without writing it again");
    listen->add_option("--max-frame", o->max_frame, "Largest message accepted")
        ->type_name("BYTES")
        ->capture_default_str();
    auto* max_connections = listen->add_option("--max-connections", o->max_connections,
                       "Connections open at once; more are refused (kept below the descriptor limit)")
        ->type_name("N")
        ->capture_default_str();
    listen->add_option("--max-per-source", o->max_per_source,
                       "Connections open at once from one IPv4 address or IPv6 /64; more are refused")
        ->type_name("N")
        ->capture_default_str();
    listen->add_option("--idle-timeout", o->idle_timeout, "Seconds a connection may go without a message")
        ->type_name("S")
        ->capture_default_str();
    listen->add_option("--frame-timeout", o->frame_timeout, "Seconds a message may take to arrive whole")
        ->type_name("S")
        ->capture_default_str();
    listen->add_option("--write-timeout", o->write_timeout, "Seconds a reply may take to be read by the peer")
        ->type_name("S")
        ->capture_default_str();
    listen->add_option("--threads", o->threads, "I/O threads (0, the default: one per core)")->type_name("N");
    listen->add_option("--allow", o->allow,
                       "Accept connections only from this network (CIDR, IPv4 or IPv6: 10.0.0.0/8, 2001:db8::/32, "
                       "192.0.2.7); repeatable. Default: from anywhere")
        ->type_name("CIDR")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    listen->add_option("--metrics", o->metrics, "Serve Prometheus metrics at http://HOST:PORT/metrics")
        ->type_name("HOST:PORT");
    listen->add_flag("--tls", o->tls, "Use TLS (implied by any --tls-* option); needs --tls-cert and --tls-key");
    listen->add_option("--tls-cert", o->tls_cert, "PEM server certificate")->type_name("FILE");
    listen->add_option("--tls-key", o->tls_key, "PEM private key of --tls-cert")->type_name("FILE");
    listen->add_option("--tls-ca", o->tls_ca, "PEM file of the CAs of accepted client certificates; when given, "
                                              "every client must present one (mutual TLS)")
        ->type_name("FILE");
    listen->add_option("--tls-allow-name", o->tls_allow_names,
                       "With --tls-ca: let in only clients whose certificate carries this name as its subject CN or "
                       "a subjectAltName DNS name or IP address; repeatable")
        ->type_name("NAME")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    return {listen, [o, reply, max_connections] {
                o->reply = reply_verdict(*reply);
                o->max_connections_given = max_connections->count() > 0;
                return run_listen(*o);
            }};
}

} // namespace hl7::tool
