// hl7 send: reads messages as a stream and sends them over one connection, one at a time:
// send, wait for the ACK, print its line, read the next. The connection runs on an
// io_context in a thread of its own, so that reading the input (which may block on a pipe)
// never holds it up.
#include "commands.hpp"
#include "input.hpp"
#include "output.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include <unistd.h>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

std::chrono::milliseconds to_ms(double seconds)
{
    constexpr double year = 365.0 * 24 * 3600; // longer is forever, and must not overflow
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(std::min(seconds, year) * 1000)));
}

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

// Runs an io_context on a thread of its own until destroyed.
class io_thread {
public:
    explicit io_thread(asio::io_context& ctx)
        : ctx_(ctx), work_(asio::make_work_guard(ctx)), thread_([&ctx] { ctx.run(); })
    {
    }
    io_thread(const io_thread&) = delete;
    io_thread& operator=(const io_thread&) = delete;
    ~io_thread()
    {
        work_.reset();
        ctx_.stop();
        thread_.join();
    }

private:
    asio::io_context& ctx_;
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    std::thread thread_;
};

// The outcome of one message of the input.
struct result {
    std::size_t index = 0;
    std::optional<std::string> control_id;
    std::optional<std::string> ack_code;
    std::optional<std::string> ack_control_id;
    std::optional<std::chrono::microseconds> round_trip;
    std::string error; // empty: none
    bool accepted = false;
    /// Set when the connection gave up without ever connecting: sending more is pointless.
    std::optional<std::string> fatal;
};

// `<n> <MSH-10> <MSA-1> <MSA-2> <round trip ms>`, then the error if any; "-" for what is absent.
std::string text_line(const result& r)
{
    auto column = [](const std::optional<std::string>& v) { return v && !v->empty() ? *v : std::string("-"); };
    std::string line = std::to_string(r.index) + ' ' + column(r.control_id) + ' ' + column(r.ack_code) + ' ' +
                       column(r.ack_control_id) + ' ';
    if (r.round_trip) {
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.3f", static_cast<double>(r.round_trip->count()) / 1000.0);
        line += ms;
    } else {
        line += '-';
    }
    if (!r.error.empty())
        line += ' ' + r.error;
    return line + '\n';
}

std::string json_line(const result& r)
{
    auto string_or_null = [](const std::optional<std::string>& v) { return v ? json_string(*v) : "null"; };
    return "{\"index\":" + std::to_string(r.index) + ",\"control_id\":" + string_or_null(r.control_id) +
           ",\"ack_code\":" + string_or_null(r.ack_code) + ",\"ack_control_id\":" + string_or_null(r.ack_control_id) +
           ",\"rtt_us\":" + (r.round_trip ? std::to_string(r.round_trip->count()) : "null") +
           ",\"error\":" + (r.error.empty() ? "null" : json_string(r.error)) + "}\n";
}

// A progress line on standard error when it is a terminal, once there are more than a few
// messages: redrawn in place at most ten times a second, cleared at the end. When standard
// output is the same terminal, result lines are written above it.
class progress {
public:
    progress() : enabled_(::isatty(STDERR_FILENO) == 1), above_(::isatty(STDOUT_FILENO) == 1) {}

    void tick(std::size_t sent, std::size_t accepted, std::size_t failed)
    {
        const auto now = steady::now();
        if (!enabled_ || sent <= 20 || (shown_ && now - drawn_ < 100ms))
            return;
        const double seconds = std::chrono::duration<double>(now - start_).count();
        char buf[160];
        std::snprintf(buf, sizeof buf, "sent %zu, acknowledged %zu, failed %zu, %.0f msg/s", sent, accepted, failed,
                      seconds > 0 ? static_cast<double>(accepted + failed) / seconds : 0.0);
        text_ = buf;
        drawn_ = now;
        draw();
    }

    void print(const std::string& line)
    {
        if (shown_ && above_)
            erase();
        write_stdout(line);
        if (!text_.empty() && above_ && enabled_)
            draw();
    }

    void finish()
    {
        if (shown_)
            erase();
        text_.clear();
    }

private:
    void draw()
    {
        std::fprintf(stderr, "\r%s\033[K", text_.c_str());
        std::fflush(stderr);
        shown_ = true;
    }
    void erase()
    {
        std::fputs("\r\033[K", stderr);
        std::fflush(stderr);
        shown_ = false;
    }

    const bool enabled_;
    const bool above_;
    const steady::time_point start_ = steady::now();
    steady::time_point drawn_{};
    std::string text_;
    bool shown_ = false;
};

// Sends one message over `conn` and waits for its outcome; `waiting` is called about ten
// times a second meanwhile.
template <class Waiting>
result send_one(connection& conn, message msg, const link_watch& watch, const std::string& peer, Waiting waiting)
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
            r.fatal = what;
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

} // namespace

int run_send(const send_options& o)
{
    if (o.port < 1 || o.port > 65535)
        throw failure(exit_usage, "invalid port '" + std::to_string(o.port) + "': not in 1-65535");
    if (!(o.ack_timeout > 0) || !(o.connect_timeout > 0))
        throw failure(exit_usage, "timeouts must be more than 0 seconds");
    if (o.max_frame == 0)
        throw failure(exit_usage, "--max-frame must be at least 1 byte");
    message_reader reader(o.files, o.max_frame);

    asio::io_context ctx;
    auto watch = std::make_shared<link_watch>();
    connection_options co;
    co.connect_timeout = to_ms(o.connect_timeout);
    co.ack_timeout = to_ms(o.ack_timeout);
    co.queue_timeout = 0ms; // the wait for a connection is bounded by the retries instead
    co.max_frame = o.max_frame;
    co.reconnect.max_attempts = o.retries;
    co.observer = [watch](const connection_event& e) { watch->on(e); };
    if (o.tls || o.tls_insecure || !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty() ||
        !o.tls_server_name.empty()) {
        if (o.tls_cert.empty() != o.tls_key.empty())
            throw failure(exit_usage, "--tls-cert and --tls-key go together");
        co.tls = tls_client_options{.ca_file = o.tls_ca,
                                    .certificate_file = o.tls_cert,
                                    .private_key_file = o.tls_key,
                                    .server_name = o.tls_server_name,
                                    .insecure_skip_verification = o.tls_insecure};
    }
    auto created = client::create(ctx.get_executor(), {.host = o.host, .defaults = std::move(co)});
    if (!created)
        throw failure(exit_usage, "invalid host '" + o.host + "'");
    auto connected = created.value().connect(o.port);
    if (!connected)
        throw failure(exit_usage, describe(connected.error()) + " (--tls-ca, --tls-cert, --tls-key)");
    connection conn = std::move(connected).value();
    const std::string peer = host_port(created.value().host().text, static_cast<std::uint16_t>(o.port));
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
            r = send_one(conn, std::move(msg).value(), *watch, peer,
                         [&] { bar.tick(sent + 1, ok_count, failed_count); });
        }
        r.index = ++sent;
        ++(r.accepted ? ok_count : failed_count);
        fatal = r.fatal;
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

} // namespace hl7::tool
