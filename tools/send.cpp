// hl7 send: reads messages as a stream and sends them over one connection, one at a time:
// send, wait for the ACK, print its line, read the next. The connection runs on an
// io_context in a thread of its own, so that reading the input (which may block on a pipe)
// never holds it up.
#include "client_flags.hpp"
#include "commands.hpp"
#include "input.hpp"
#include "output.hpp"
#include "report.hpp"
#include "send_outbox.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <mutex>
#include <optional>


namespace hl7::tool {

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// What the connection's observer saw that the results need. Written on the connection's
// strand, read by the main thread.
class link_watch {
public:
    void on(const connection_event& e)
    {
        std::lock_guard lock(mutex_);
        switch (e.what) {
        case connection_event::kind::connected: connected_ = true; break;
        case connection_event::kind::disconnected: dropped_ = e.error; break;
        case connection_event::kind::reconnect_scheduled:
        case connection_event::kind::gave_up:
            if (e.error)
                failure_ = e.error;
            attempts_ = e.attempt;
            break;
        default: break;
        }
    }

    bool ever_connected() const
    {
        std::lock_guard lock(mutex_);
        return connected_;
    }

    // Why the last connection attempt failed, and how many failed in a row.
    std::pair<boost::system::error_code, std::uint32_t> last_failure() const
    {
        std::lock_guard lock(mutex_);
        return {failure_, attempts_};
    }

    // Why the link dropped last (a TLS alert names what the handshake could not).
    boost::system::error_code last_drop() const
    {
        std::lock_guard lock(mutex_);
        return dropped_;
    }

private:
    mutable std::mutex mutex_;
    bool connected_ = false;
    boost::system::error_code failure_;
    boost::system::error_code dropped_;
    std::uint32_t attempts_ = 0;
};

// Sends one message over `conn` and waits for its outcome; `waiting` is called about ten
// times a second meanwhile.
// `fatal` is set when the connection gave up without ever connecting: sending more is pointless.
template <class Waiting>
result send_one(connection& conn, message msg, const link_watch& watch, const std::string& peer,
                std::optional<std::string>& fatal, Waiting waiting)
{
    result r;
    if (!msg.control_id().empty())
        r.control_id = std::string(msg.control_id());
    if (conn.state() == connection_state::failed)
        conn.start(); // it gave up on an earlier message; this one gets a new round of attempts
    std::promise<std::pair<boost::system::error_code, hl7::ack>> done;
    auto pending = done.get_future();
    conn.async_send(std::move(msg), [done = std::move(done)](boost::system::error_code ec, hl7::ack ack) mutable {
        done.set_value({ec, std::move(ack)});
    });
    while (pending.wait_for(100ms) != std::future_status::ready)
        waiting();
    auto [ec, ack] = pending.get();

    if (ec == errc::not_connected) {
        const auto [why, attempts] = watch.last_failure();
        const std::string what = describe(why ? why : ec) + " (" + peer + ")";
        r.error = "gave up after " + std::to_string(attempts) + " connection attempt" + (attempts == 1 ? "" : "s") +
                  ": " + what;
        if (!watch.ever_connected())
            fatal = what;
    } else if (ec == errc::connection_lost && watch.last_drop()) {
        r.error = describe(ec) + ": " + describe(watch.last_drop());
    } else if (ec) {
        r.error = describe(ec);
    } else {
        r.ack_code = std::string(to_string(ack.code()));
        r.ack_control_id = std::string(ack.control_id());
        r.round_trip = ack.round_trip();
        r.accepted = ack.accepted();
        if (!r.accepted) {
            const std::string why = ack.explanation();
            r.error = describe(ack.error()) + (why.empty() ? "" : ": " + why);
        }
    }
    return r;
}

struct send_options {
    client_flags client;
    send_outbox_flags outbox;
    bool json = false;
    std::vector<std::string> files; ///< none or "-": standard input
};

int run_send(const send_options& o)
{
    if (o.outbox.enabled())
        return run_send_outbox(o.outbox, o.client, o.json, o.files);
    connection_options co = o.client.options();
    message_reader reader(o.files, o.client.max_frame);

    asio::io_context ctx;
    auto watch = std::make_shared<link_watch>();
    co.queue_timeout = 0ms; // the wait for a connection is bounded by the retries instead
    co.observer = [watch](const connection_event& e) { watch->on(e); };
    auto created = client::create(ctx.get_executor(), {.host = o.client.host, .defaults = std::move(co)});
    if (!created)
        throw failure(exit_usage, "invalid host '" + o.client.host + "'");
    auto connected = created.value().connect(o.client.port);
    if (!connected)
        throw failure(exit_usage, describe(connected.error()) + " (--tls-ca, --tls-cert, --tls-key)");
    connection conn = std::move(connected).value();
    const std::string peer = o.client.peer();
    io_thread io(ctx);

    progress bar;
    std::size_t sent = 0, ok_count = 0, failed_count = 0;
    std::optional<std::string> fatal;
    while (!fatal) {
        std::optional<input_message> item = reader.next();
        if (!item)
            break;
        result r;
        if (!item->error.empty()) {
            r.error = item->error;
        } else if (auto msg = message::parse(std::move(item->text)); !msg) {
            r.error = "input message does not parse: " + describe(msg.error());
        } else {
            r = send_one(conn, std::move(msg).value(), *watch, peer, fatal,
                         [&] { bar.tick(sent + 1, ok_count, failed_count); });
        }
        r.index = ++sent;
        ++(r.accepted ? ok_count : failed_count);
        bar.print(o.json ? json_line(r) : text_line(r));
        bar.tick(sent, ok_count, failed_count);
    }
    bar.finish();
    conn.async_close(asio::use_future).get();

    if (fatal)
        throw failure(exit_failed, *fatal); // the rest of the input is left unsent
    if (sent == 0)
        std::fputs("hl7: no messages in the input\n", stderr);
    return failed_count == 0 ? exit_ok : exit_failed;
}

} // namespace

command define_send(CLI::App& app)
{
    auto o = std::make_shared<send_options>();
    CLI::App* send = app.add_subcommand("send", "Send messages over MLLP and print their acknowledgements");
    send->footer("Messages are sent in order over one connection, one at a time. One line per message:\n"
                 "  <n> <MSH-10> <MSA-1> <MSA-2> <round trip ms> [error]   ('-' for what is absent)\n"
                 "A message that fails is reported on its line and the next one is sent; but when the first\n"
                 "connection attempts all fail, the rest of the input is not sent.\n"
                 "Exit status: 0 when every message got AA or CA, 1 otherwise, 2 for a usage error.");
    o->client.define(*send);
    o->outbox.define(*send);
    send->add_flag("--json", o->json,
                   "One JSON object per line instead: index, control_id, ack_code, ack_control_id, rtt_us, error");
    send->add_option("FILE", o->files,
                     "Files of messages; none or '-': standard input. Segments end in CR, LF or CRLF; messages are "
                     "separated by blank lines or the next MSH; MLLP-framed input and FHS/BHS batches are accepted")
        ->type_name("");
    return {send, [o] { return run_send(*o); }};
}

} // namespace hl7::tool
