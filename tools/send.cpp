// hl7 send: reads messages as a stream and sends them over one connection, in input order,
// and prints one line per message, in input order.
//
// Everything runs on one thread, the io_context's: reading the input, the connection and the
// output. A pipe or a terminal on standard input is waited on by the io_context, so that the
// connection keeps running while the input is idle; a regular file is read as needed. One
// message is queued behind the one awaiting its acknowledgement, so that the next goes out as
// soon as an ACK arrives. Output lines are gathered and written in blocks: within 20 ms, and
// before the program waits for its input, and at the end (a line at a time on a terminal).
#include "client_flags.hpp"
#include "commands.hpp"
#include "input.hpp"
#include "metrics.hpp"
#include "output.hpp"
#include "report.hpp"
#include "send_outbox.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <deque>
#include <memory>
#include <optional>

#include <unistd.h>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// What the connection's observer saw that the results need: why the link dropped or why the
// attempts failed. Everything runs on one thread, so no locking.
struct link_watch {
    bool connected = false;            // connected at least once
    bool up = false;                   // connected now
    boost::system::error_code failure; // why the last connection attempt failed
    std::uint32_t attempts = 0;        // failed attempts in a row
    boost::system::error_code dropped; // why the link dropped last

    void on(const connection_event& e)
    {
        switch (e.what) {
        case connection_event::kind::connected: connected = up = true; break;
        case connection_event::kind::disconnected:
            up = false;
            dropped = e.error;
            break;
        case connection_event::kind::reconnect_scheduled:
        case connection_event::kind::gave_up:
            if (e.error)
                failure = e.error;
            attempts = e.attempt;
            break;
        default: break;
        }
    }
};

// Standard output, written in blocks. Flushed within `delay` of the first line not yet
// written, when asked to, and when a block is full; on a terminal at once.
class line_output {
public:
    explicit line_output(asio::any_io_executor ex) : timer_(ex), terminal_(::isatty(STDOUT_FILENO) == 1) {}

    void add(const std::string& line)
    {
        pending_ += line;
        if (terminal_ || pending_.size() >= block)
            flush();
        else if (!armed_) {
            armed_ = true;
            timer_.expires_after(delay);
            timer_.async_wait([this](boost::system::error_code ec) {
                armed_ = false;
                if (!ec)
                    flush();
            });
        }
    }

    void flush()
    {
        if (pending_.empty())
            return;
        write_stdout(pending_);
        pending_.clear();
    }

    // The terminal shows a progress line, which must not be drawn over pending lines.
    bool terminal() const noexcept { return terminal_; }

private:
    static constexpr std::size_t block = 64 * 1024;
    static constexpr auto delay = 20ms;

    asio::steady_timer timer_;
    const bool terminal_;
    bool armed_ = false;
    std::string pending_;
};

struct send_options {
    client_flags client;
    send_outbox_flags outbox;
    bool json = false;
    std::string metrics;            ///< HOST:PORT of the Prometheus endpoint; empty: none
    std::vector<std::string> files; ///< none or "-": standard input
};

// The send loop: as many messages outstanding as the window allows, results printed in order.
class sender {
public:
    sender(asio::io_context& ctx, const send_options& o, message_reader& reader, connection conn,
           std::shared_ptr<link_watch> watch)
        : ctx_(ctx), options_(o), reader_(reader), conn_(std::move(conn)), watch_(std::move(watch)),
          input_wait_(ctx), ticker_(ctx), out_(ctx.get_executor())
    {
    }
    sender(const sender&) = delete;
    sender& operator=(const sender&) = delete;
    ~sender()
    {
        if (input_wait_.is_open())
            (void)input_wait_.release(); // the reader owns the descriptor
    }

    int run()
    {
        asio::post(ctx_, [this] { pump(); });
        if (bar_enabled())
            tick();
        ctx_.run();
        bar_.finish();
        if (given_up_)
            std::fprintf(stderr, "hl7: %s\n", given_up_->c_str());
        if (index_ == 0)
            std::fputs("hl7: no messages in the input\n", stderr);
        return failed_ == 0 ? exit_ok : exit_failed;
    }

    // What --metrics serves. Scrapes run on the io_context's thread like everything else.
    std::string metrics_text() const
    {
        const connection_counters c = conn_.counters();
        exposition e;
        auto counter = [&](const char* name, const char* help, std::uint64_t value) {
            e.family(name, "counter", help);
            e.sample(std::string(name) + "_total", static_cast<double>(value));
        };
        auto gauge = [&](const char* name, const char* help, double value) {
            e.family(name, "gauge", help);
            e.sample(name, value);
        };
        e.family("messaging_client_sent_messages", "counter", "Messages written whole (OpenTelemetry messaging)");
        e.sample("messaging_client_sent_messages_total", static_cast<double>(c.sent), {{"messaging_system", "hl7v2"}});
        e.family("hl7_send_acks", "counter", "Acknowledgements received, by MSA-1");
        for (const ack_code code : {ack_code::AA, ack_code::AE, ack_code::AR, ack_code::CA, ack_code::CE, ack_code::CR})
            e.sample("hl7_send_acks_total", static_cast<double>(acks_[static_cast<std::size_t>(code)]),
                     {{"code", to_string(code)}});
        counter("hl7_send_timeouts", "Messages that got no acknowledgement within --ack-timeout", c.timed_out);
        counter("hl7_send_failures", "Messages that failed otherwise (link lost, not connected, invalid ACK...)", c.failed);
        counter("hl7_send_reconnects", "Connections made after the first", c.reconnects);
        counter("hl7_send_discarded_frames", "Frames from the peer that answered no message", c.discarded);
        counter("hl7_send_input_messages", "Messages read from the input", index_);
        gauge("hl7_send_connected", "1 while the connection is up", watch_->up ? 1.0 : 0.0);
        gauge("hl7_send_outstanding", "Messages handed to the connection and not completed yet",
              static_cast<double>(outstanding_));
        gauge("hl7_send_queued", "Of those, the ones not written yet", static_cast<double>(c.queued));
        e.histogram("messaging_client_operation_duration_seconds",
                    "Round trips of the acknowledged messages, from the write to the ACK (OpenTelemetry messaging)",
                    round_trips::bounds, round_trips_.buckets, round_trips_.sum, {{"messaging_system", "hl7v2"}});
        return e.text();
    }

private:
    struct slot {
        result r;
        bool done = false;
    };

    struct round_trips {
        static constexpr std::array<double, 14> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};
        std::array<std::uint64_t, bounds.size() + 1> buckets{};
        double sum = 0; // seconds

        void observe(std::chrono::microseconds d)
        {
            const double seconds = std::chrono::duration<double>(d).count();
            sum += seconds;
            std::size_t i = 0;
            while (i < bounds.size() && seconds > bounds[i])
                ++i;
            ++buckets[i];
        }
    };

    // Starts what can be started, prints what is finished, and finishes when all is done.
    void pump()
    {
        while (outstanding_ < window() && !input_done_ && !waiting_input_) {
            bool finished = false;
            std::optional<input_message> item = reader_.poll(finished);
            if (!item) {
                if (finished)
                    input_done_ = true;
                else
                    wait_for_input();
                break;
            }
            start(std::move(*item));
        }
        print_ready();
        if (input_done_ && slots_.empty())
            finish();
    }

    void start(input_message item)
    {
        slots_.emplace_back();
        slot& s = slots_.back();
        s.r.index = ++index_;
        if (!item.error.empty()) {
            s.r.error = item.error;
            s.done = true;
            return;
        }
        auto msg = message::parse(std::move(item.text));
        if (!msg) {
            s.r.error = "input message does not parse: " + describe(msg.error());
            s.done = true;
            return;
        }
        if (!msg.value().control_id().empty())
            s.r.control_id = std::string(msg.value().control_id());
        if (given_up_) { // the connection gave up: what is left is reported, not sent
            s.r.error = not_sent();
            s.done = true;
            return;
        }
        ++outstanding_;
        const std::size_t index = s.r.index;
        conn_.async_send(std::move(msg).value(), [this, index](boost::system::error_code ec, hl7::ack ack) {
            --outstanding_;
            complete(find(index), ec, std::move(ack));
            pump();
        });
    }

    slot& find(std::size_t index)
    {
        return slots_[index - slots_.front().r.index];
    }

    void complete(slot& s, boost::system::error_code ec, const hl7::ack& ack)
    {
        s.done = true;
        result& r = s.r;
        if (ec == errc::not_connected) {
            if (!given_up_) {
                const std::string why = describe(watch_->failure ? watch_->failure : ec) + " (" + options_.client.peer() + ")";
                given_up_ = watch_->connected ? "gave up after " + std::to_string(watch_->attempts) +
                                                    " connection attempt" + (watch_->attempts == 1 ? "" : "s") +
                                                    ": " + why
                                              : why;
                reason_ = "gave up after " + std::to_string(watch_->attempts) + " connection attempt" +
                          (watch_->attempts == 1 ? "" : "s") + ": " + why;
            }
            r.error = not_sent();
        } else if (ec == errc::connection_lost && watch_->dropped) {
            r.error = describe(ec) + ": " + describe(watch_->dropped);
        } else if (ec) {
            r.error = describe(ec);
        } else {
            ++acks_[static_cast<std::size_t>(ack.code())];
            round_trips_.observe(ack.round_trip());
            r.ack_code = std::string(to_string(ack.code()));
            r.ack_control_id = std::string(ack.control_id());
            r.round_trip = ack.round_trip();
            r.accepted = ack.accepted();
            if (!r.accepted) {
                const std::string why = ack.explanation();
                r.error = describe(ack.error()) + (why.empty() ? "" : ": " + why);
            }
        }
    }

    std::string not_sent() const { return "not sent: " + reason_; }

    void print_ready()
    {
        while (!slots_.empty() && slots_.front().done) {
            const result& r = slots_.front().r;
            ++(r.accepted ? accepted_ : failed_);
            const std::string line = options_.json ? json_line(r) : text_line(r);
            slots_.pop_front();
            if (bar_enabled()) {
                bar_.print(line);
                bar_.tick(index_ - slots_.size(), accepted_, failed_);
            } else {
                out_.add(line);
            }
        }
    }

    // A pipe or a terminal with nothing to read yet: wait for it, with the output flushed so
    // that a reader of the results sees them while the input is idle.
    void wait_for_input()
    {
        out_.flush();
        waiting_input_ = true;
        if (!input_wait_.is_open() || watched_fd_ != reader_.fd()) {
            if (input_wait_.is_open())
                (void)input_wait_.release(); // the reader owns the descriptor
            watched_fd_ = reader_.fd();
            input_wait_.assign(watched_fd_);
        }
        input_wait_.async_wait(asio::posix::descriptor_base::wait_read, [this](boost::system::error_code) {
            waiting_input_ = false;
            pump();
        });
    }

    void finish()
    {
        if (finished_)
            return;
        finished_ = true;
        out_.flush();
        ticker_.cancel();
        if (input_wait_.is_open())
            (void)input_wait_.release();
        conn_.async_close([this] { ctx_.stop(); });
    }

    bool bar_enabled() const { return stderr_terminal_; }

    // The progress line, redrawn about ten times a second on a terminal.
    void tick()
    {
        bar_.tick(index_, accepted_, failed_);
        ticker_.expires_after(100ms);
        ticker_.async_wait([this](boost::system::error_code ec) {
            if (!ec)
                tick();
        });
    }

    // Messages handed to the connection at once: those the connection may have in flight
    // (--window) and one more, queued, so that the next is ready the moment an ACK frees a place.
    std::size_t window() const { return options_.client.window + 1; }

    asio::io_context& ctx_;
    const send_options& options_;
    message_reader& reader_;
    connection conn_;
    std::shared_ptr<link_watch> watch_;
    asio::posix::stream_descriptor input_wait_;
    int watched_fd_ = -1;
    asio::steady_timer ticker_;
    line_output out_;
    progress bar_;
    const bool stderr_terminal_ = ::isatty(STDERR_FILENO) == 1;
    std::deque<slot> slots_; // from the oldest not yet printed, in input order
    std::size_t outstanding_ = 0;
    std::size_t index_ = 0;
    std::size_t accepted_ = 0, failed_ = 0;
    std::array<std::uint64_t, 6> acks_{}; // by ack_code
    round_trips round_trips_;
    bool input_done_ = false, waiting_input_ = false, finished_ = false;
    std::optional<std::string> given_up_; // what standard error says once the connection gave up
    std::string reason_;                  // why the messages after that are not sent
};

int run_send(const send_options& o)
{
    if (o.outbox.enabled()) {
        if (!o.metrics.empty())
            throw failure(exit_usage, "--metrics serves a connection's counts; with --outbox, serve the outbox's with "
                                      "hl7 outbox enqueue and hl7 outbox run --metrics");
        return run_send_outbox(o.outbox, o.client, o.json, o.files);
    }
    connection_options co = o.client.options();
    message_reader reader(o.files, o.client.max_frame); // checks the files before anything connects
    asio::io_context ctx(1);
    auto watch = std::make_shared<link_watch>();
    co.queue_timeout = 0ms; // the wait for a connection is bounded by the retries instead
    co.observer = [watch](const connection_event& e) { watch->on(e); };
    auto created = client::create(ctx.get_executor(), {.host = o.client.host, .defaults = std::move(co)});
    if (!created)
        throw failure(exit_usage, "invalid host '" + o.client.host + "'");
    auto connected = created.value().connect(o.client.port);
    if (!connected)
        throw failure(exit_usage, describe(connected.error()) + " (--tls-ca, --tls-cert, --tls-key)");
    sender s(ctx, o, reader, std::move(connected).value(), watch);
    std::optional<metrics_endpoint> endpoint; // after the sender, which it reads: stopped before it goes
    if (!o.metrics.empty()) {
        endpoint.emplace(serve_metrics(ctx.get_executor(), o.metrics, [&s] { return s.metrics_text(); }));
        std::fprintf(stderr, "hl7: metrics at http://%s/metrics\n", host_port(endpoint->local_endpoint()).c_str());
    }
    return s.run();
}

} // namespace

command define_send(CLI::App& app)
{
    auto o = std::make_shared<send_options>();
    CLI::App* send = app.add_subcommand("send", "Send messages over MLLP and print their acknowledgements");
    send->footer("Messages are sent in order over one connection, one at a time. One line per message:\n"
                 "  <n> <MSH-10> <MSA-1> <MSA-2> <round trip ms> [error]   ('-' for what is absent)\n"
                 "A message that fails is reported on its line and the next one is sent. Once the connection\n"
                 "gives up (--retries failed attempts in a row), the messages left are reported as not sent.\n"
                 "Exit status: 0 when every message got AA or CA, 1 otherwise, 2 for a usage error.");
    o->client.define(*send);
    o->outbox.define(*send);
    send->add_option("--metrics", o->metrics,
                     "Serve Prometheus metrics at http://HOST:PORT/metrics while sending (messages sent, ACKs by "
                     "code, timeouts, failures, reconnects, round trips); port 0 picks one, named on standard error")
        ->type_name("HOST:PORT");
    send->add_flag("--json", o->json,
                   "One JSON object per line instead: index, control_id, ack_code, ack_control_id, rtt_us, error");
    send->add_option("FILE", o->files,
                     "Files of messages; none or '-': standard input. Segments end in CR, LF or CRLF; messages are "
                     "separated by blank lines or the next MSH; MLLP-framed input and FHS/BHS batches are accepted")
        ->type_name("");
    return {send, [o] { return run_send(*o); }};
}

} // namespace hl7::tool
